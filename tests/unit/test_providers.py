"""Metric providers against scripted HTTP servers on 127.0.0.1 (no Prometheus here;
tests/integration/test_prometheus_provider.py uses a real one)."""

from __future__ import annotations

import math
import time
from typing import Any

import aiohttp
import pytest

from canary_operator.analysis.providers import (
    MetricProvider,
    PrometheusProvider,
    ProviderError,
    WebhookMetricProvider,
)
from canary_operator.analysis.queries import QUERY_VARIABLES, render_query
from tests.harness.fake_http import HANG, FakeServer, Reply
from tests.harness.prometheus import free_port

TS = 1_700_000_000.123


def vector(*values: str, labels: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": (labels or [{}] * len(values))[i], "value": [TS, v]}
                for i, v in enumerate(values)
            ],
        },
    }


def scalar(value: str) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "scalar", "result": [TS, value]}}


# ----------------------------------------------------------------------- prometheus


async def test_prometheus_single_sample_vector() -> None:
    async with FakeServer(Reply(body=vector("0.25"))) as server:
        value = await PrometheusProvider(server.url, 5).query('sum(x{role="canary"})', {})
    assert value == 0.25
    (request,) = server.requests
    assert (request.method, request.path) == ("GET", "/api/v1/query")
    assert request.query == {"query": 'sum(x{role="canary"})'}


async def test_prometheus_scalar() -> None:
    async with FakeServer(Reply(body=scalar("42"))) as server:
        assert await PrometheusProvider(server.url, 5).query("scalar(x)", {}) == 42.0


async def test_prometheus_empty_vector_is_no_data() -> None:
    async with FakeServer(Reply(body=vector())) as server:
        assert await PrometheusProvider(server.url, 5).query("absent_metric", {}) is None


@pytest.mark.parametrize(
    ("text", "check"),
    [
        ("NaN", math.isnan),
        ("+Inf", lambda v: v == math.inf),
        ("-Inf", lambda v: v == -math.inf),
        ("1e-3", lambda v: v == 0.001),
    ],
)
async def test_prometheus_special_values(text: str, check: Any) -> None:
    async with FakeServer(Reply(body=vector(text))) as server:
        assert check(await PrometheusProvider(server.url, 5).query("x", {}))


async def test_prometheus_several_series_is_an_error_naming_the_count() -> None:
    labels = [{"__name__": "x", "pod": f"p{i}"} for i in range(4)]
    async with FakeServer(Reply(body=vector("1", "2", "3", "4", labels=labels))) as server:
        with pytest.raises(ProviderError) as info:
            await PrometheusProvider(server.url, 5).query("x", {})
    message = str(info.value)
    assert "returned 4 series, expected one" in message
    assert 'x{pod="p0"}' in message and "sum(...)" in message
    assert server.url in message


async def test_prometheus_error_status_is_reported() -> None:
    body = {"status": "error", "errorType": "bad_data", "error": 'parse error at char 4: "}"'}
    async with FakeServer(Reply(400, body)) as server:
        with pytest.raises(ProviderError) as info:
            await PrometheusProvider(server.url, 5).query("sum(", {})
    assert str(info.value) == (
        f"Prometheus at {server.url} refused the query (HTTP 400, bad_data): "
        'parse error at char 4: "}"'
    )


async def test_prometheus_non_json_answer_is_reported() -> None:
    async with FakeServer(Reply(502, "<html>bad gateway</html>\n" + "x" * 500)) as server:
        with pytest.raises(ProviderError) as info:
            await PrometheusProvider(server.url, 5).query("x", {})
    message = str(info.value)
    assert f"Prometheus at {server.url} answered HTTP 502 without a JSON body" in message
    assert "<html>bad gateway</html>" in message
    assert len(message) < 320  # the body is cut at 200 characters


async def test_prometheus_range_vector_is_refused() -> None:
    body = {"status": "success", "data": {"resultType": "matrix", "result": []}}
    async with FakeServer(Reply(body=body)) as server:
        with pytest.raises(ProviderError, match="range vector"):
            await PrometheusProvider(server.url, 5).query("x[5m]", {})


async def test_prometheus_malformed_sample_is_refused() -> None:
    body = {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1]}]}}
    async with FakeServer(Reply(body=body)) as server:
        with pytest.raises(ProviderError, match="malformed sample"):
            await PrometheusProvider(server.url, 5).query("x", {})


async def test_prometheus_timeout() -> None:
    async with FakeServer(HANG) as server:
        started = time.monotonic()
        with pytest.raises(ProviderError) as info:
            await PrometheusProvider(server.url, 0.3).query("x", {})
        assert time.monotonic() - started < 5
    assert str(info.value) == f"Prometheus at {server.url}: no answer within 0.3s"


async def test_prometheus_unreachable() -> None:
    address = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ProviderError) as info:
        await PrometheusProvider(address, 5).query("x", {})
    assert str(info.value).startswith(f"Prometheus at {address} is unreachable: ")


async def test_prometheus_trailing_slash_and_shared_session() -> None:
    async with FakeServer(Reply(body=vector("1"))) as server, aiohttp.ClientSession() as session:
        provider = PrometheusProvider(server.url + "/", 5, session=session)
        assert await provider.query("x", {}) == 1.0
        assert await provider.query("y", {}) == 1.0
        assert not session.closed  # the caller's session is left open
    assert [r.path for r in server.requests] == ["/api/v1/query"] * 2


async def test_prometheus_credentials_stay_out_of_messages() -> None:
    port = free_port()
    with pytest.raises(ProviderError) as info:
        await PrometheusProvider(f"http://user:secret@127.0.0.1:{port}", 5).query("x", {})
    assert "secret" not in str(info.value)
    assert f"http://127.0.0.1:{port}" in str(info.value)


# -------------------------------------------------------------------------- webhook


async def test_webhook_provider_posts_query_and_context() -> None:
    async with FakeServer(Reply(body={"value": 0.5})) as server:
        provider = WebhookMetricProvider(server.url + "/measure", 5, {"Authorization": "Bearer t"})
        value = await provider.query("errors", {"role": "canary", "weight": 5})
    assert value == 0.5
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/measure")
    assert request.json() == {"query": "errors", "context": {"role": "canary", "weight": 5}}
    assert request.headers["Authorization"] == "Bearer t"
    assert request.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"value": None}, None),
        ({"value": 3}, 3.0),
        ({"value": "NaN"}, "nan"),
        ({"value": "+Inf"}, math.inf),
    ],
)
async def test_webhook_provider_values(answer: dict[str, Any], expected: Any) -> None:
    async with FakeServer(Reply(body=answer)) as server:
        value = await WebhookMetricProvider(server.url, 5, {}).query("q", {})
    if expected == "nan":
        assert value is not None and math.isnan(value)
    else:
        assert value == expected


@pytest.mark.parametrize(
    ("reply", "fragment"),
    [
        (Reply(500, "boom"), "answered HTTP 500: boom"),
        (Reply(404, ""), "answered HTTP 404: (empty body)"),
        (Reply(200, "not json"), "answered non-JSON: not json"),
        (Reply(body={"val": 1}), 'expected {"value": number or null}, got {"val": 1}'),
        (Reply(body=[1]), 'expected {"value": number or null}'),
        (Reply(body={"value": True}), '"value" must be a number or null, got True'),
        (Reply(body={"value": "high"}), "got 'high'"),
        (Reply(body={"value": [1]}), "got [1]"),
    ],
)
async def test_webhook_provider_errors(reply: Reply, fragment: str) -> None:
    async with FakeServer(reply) as server:
        with pytest.raises(ProviderError) as info:
            await WebhookMetricProvider(server.url, 5, {}).query("q", {})
    assert str(info.value).startswith(f"metric webhook {server.url}")
    assert fragment in str(info.value)


async def test_webhook_provider_timeout_and_unreachable() -> None:
    async with FakeServer(HANG) as server:
        with pytest.raises(ProviderError, match=r"no answer within 0.2s"):
            await WebhookMetricProvider(server.url, 0.2, {}).query("q", {})
    with pytest.raises(ProviderError, match="is unreachable"):
        await WebhookMetricProvider(f"http://127.0.0.1:{free_port()}", 5, {}).query("q", {})


async def test_webhook_provider_invalid_header_is_a_provider_error() -> None:
    async with FakeServer(Reply(body={"value": 1})) as server:
        provider = WebhookMetricProvider(server.url, 5, {"X-Token": "a\nb"})
        with pytest.raises(ProviderError, match="invalid request"):
            await provider.query("q", {})


def test_providers_satisfy_the_protocol() -> None:
    providers: list[MetricProvider] = [
        PrometheusProvider("http://127.0.0.1:9", 1),
        WebhookMetricProvider("http://127.0.0.1:9", 1, {}),
    ]
    assert len(providers) == 2


# --------------------------------------------------------------------- render_query

VARIABLES = {"role": "canary", "deployment": "web-canary", "namespace": "shop", "rollout": "r1"}


def test_render_query_replaces_every_variable() -> None:
    template = (
        'sum(rate(errors{namespace="{{namespace}}",deployment="{{ deployment }}",'
        'role="{{role}}"}[1m])) / sum(rate(requests{deployment="{{deployment}}"}[1m]))'
        " # {{  rollout  }}"
    )
    assert render_query(template, VARIABLES) == (
        'sum(rate(errors{namespace="shop",deployment="web-canary",role="canary"}[1m]))'
        ' / sum(rate(requests{deployment="web-canary"}[1m])) # r1'
    )
    assert set(QUERY_VARIABLES) == set(VARIABLES)


def test_render_query_leaves_promql_braces_alone() -> None:
    assert render_query('up{job="a"}', VARIABLES) == 'up{job="a"}'
    assert render_query("x{a=~'{1,2}'}", VARIABLES) == "x{a=~'{1,2}'}"


@pytest.mark.parametrize("placeholder", ["{{pod}}", "{{ args.service }}", "{{}}", "{{Role}}"])
def test_render_query_refuses_unknown_variables(placeholder: str) -> None:
    name = placeholder.strip("{}").strip()
    with pytest.raises(ValueError) as info:
        render_query(f"x{{a='{placeholder}'}}", VARIABLES)
    assert f"unknown variable {{{{{name}}}}}" in str(info.value)
    assert "{{role}}, {{deployment}}, {{namespace}}, {{rollout}}" in str(info.value)
