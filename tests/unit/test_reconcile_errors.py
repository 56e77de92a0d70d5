"""reconcile/errors.py: what a retry may cure and what was refused for good; and the
words a user reads for each (kube/api.py `describe`, which the reconcile uses)."""

from __future__ import annotations

import aiohttp
import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.kube.api import Conflict, describe
from canary_operator.reconcile.errors import TRANSIENT, RetryLater, refused


def test_describe_names_no_python_class() -> None:
    assert describe(ApiException(status=503, reason="Service Unavailable")) == (
        "API error 503 Service Unavailable"
    )
    assert describe(TimeoutError()) == "timed out"
    assert describe(TimeoutError("after 30 s")) == "timed out: after 30 s"
    assert describe(aiohttp.ClientConnectionError("reset by peer")) == (
        "connection failed: reset by peer"
    )
    assert (
        describe(ConnectionRefusedError(111, "refused")) == "connection failed: [Errno 111] refused"
    )
    assert describe(ValueError("target Deployment web not found")) == (
        "target Deployment web not found"
    )
    assert describe(ValueError()) == "unexpected error"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ApiException(status=422, reason="Unprocessable Entity"), True),
        (ApiException(status=400, reason="Bad Request"), True),
        (ApiException(status=500, reason="failed to create typed patch object"), True),
        # Forbidden is for good too (validation.refused_for_good), but RBAC can be
        # granted while the run waits: the reconcile retries it.
        (ApiException(status=403, reason="Forbidden"), False),
        (ApiException(status=500, reason="Internal Server Error"), False),
        (ApiException(status=503, reason="Service Unavailable"), False),
        (TimeoutError(), False),
        (ValueError("x"), False),
    ],
)
def test_refused(exc: BaseException, expected: bool) -> None:
    assert refused(exc) is expected


def test_transient_failures() -> None:
    for exc in (
        ApiException(status=500),
        Conflict("409"),
        aiohttp.ClientError(),
        TimeoutError(),
        ConnectionResetError(),
    ):
        assert isinstance(exc, TRANSIENT)
    assert not isinstance(ValueError("x"), TRANSIENT)
    assert RetryLater.described


def test_a_connection_failure_without_words_says_no_answer() -> None:
    assert describe(aiohttp.ClientError()) == "connection failed: no answer"
