"""`kubectl canary undo TARGET [--to-revision N]` (cli/commands_undo.py) against the
in-memory API: the undo rollout it creates from the rollback window kept on the
target, and what bad input says (nothing created then)."""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from canary_operator.api.models import CanaryRolloutSpec
from canary_operator.api.timestamps import iso
from canary_operator.cli.client import CliError, Session
from canary_operator.cli.commands_undo import cmd_undo
from canary_operator.cli.kubectl_canary import build_parser
from canary_operator.kube import objects
from canary_operator.kube.api import JsonObj, path
from canary_operator.kube.rollouts import rollout_path
from tests.harness.fake_kube import FakeKube
from tests.harness.reconcile_fixtures import rollout_body, spec, target

NS = "ns"
TARGET = path("apps", "v1", "deployments", NS, "web")
PROMOTER_UID = "0a1b2c3d-0000-4000-8000-00000000000b"
LIVE = f"{PROMOTER_UID}/2"
WINDOW = "canary-operator.dev/rollback-window"


def kept(image: str, revision: str, expires: datetime | None = None) -> JsonObj:
    return {
        "revision": revision,
        "template": {
            "metadata": {"creationTimestamp": None, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": image}]},
        },
        "images": {"app": image},
        "promotedBy": None,
        "replacedBy": LIVE,
        "replacedAt": "2026-12-08T09:00:00Z",
        "expiresAt": iso(expires) if expires else None,
    }


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    api_client = ApiClient()
    try:
        yield FakeKube(api_client)
    finally:
        await api_client.close()


def promoted_target(kube: FakeKube, window: list[JsonObj] | None) -> None:
    body = target(image="web:2.0")
    annotations = {objects.PROMOTED_BY: LIVE}
    if window is not None:
        annotations[WINDOW] = json.dumps(window)
    body["metadata"]["annotations"] = annotations
    kube.put(TARGET, body)


def promoter(kube: FakeKube) -> None:
    """The rollout that promoted web:2.0: the undo copies its routing, lock group and window."""
    fields: dict[str, Any] = {
        "lockGroup": "shop",
        "trafficRouting": {"replicas": {"mode": "Shift"}},
        "rollbackWindow": {"revisions": 3},
    }
    body = rollout_body(spec(**fields), name="web-v2", uid=PROMOTER_UID)
    body["metadata"]["namespace"] = NS
    kube.put(rollout_path(NS, "web-v2"), body)


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["undo", *argv])


async def undo(kube: FakeKube, *argv: str) -> int:
    return await cmd_undo(Session(kube, NS, "https://api.test"), args(*argv, "--no-wait"))


def created(kube: FakeKube) -> list[JsonObj]:
    return [b for w, b in kube.bodies if w.startswith("POST canaryrollouts")]


async def test_undo_creates_a_rollout_that_promotes_the_previous_template(
    kube: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    promoted_target(kube, [kept("web:1.0", "1")])
    promoter(kube)
    assert await undo(kube, "web") == 0
    [body] = created(kube)
    meta = body["metadata"]
    assert meta["name"].startswith("undo-web-") and meta["namespace"] == NS
    assert meta["labels"] == {"canary-operator.dev/undo": "true"}
    assert meta["annotations"] == {"canary-operator.dev/undo": LIVE}
    assert body["spec"] == {
        "target": {"deployment": "web", "service": "web"},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "web:1.0"}]},
        },
        "steps": [{"name": "undo", "promote": {}}],
        "lockGroup": "shop",
        "trafficRouting": {"replicas": {"mode": "Shift"}},
        "rollbackWindow": {"revisions": 3},
    }
    CanaryRolloutSpec.model_validate(body["spec"])  # as the CRD takes it
    out = capsys.readouterr().out
    assert out == (
        f"canaryrollout/{meta['name']} created: web back to revision 1 (web:1.0) under lock "
        "cro-lock-shop, cro-lock-web (it queues for the lock like any run)\n"
    )


async def test_to_revision_picks_that_kept_version(kube: FakeKube) -> None:
    promoted_target(kube, [kept("web:1.1", "3"), kept("web:1.0", "1")])
    assert await undo(kube, "web", "--to-revision", "1") == 0
    [body] = created(kube)
    assert body["spec"]["template"]["spec"]["containers"][0]["image"] == "web:1.0"
    assert body["spec"]["target"] == {"deployment": "web"}  # no rollout left to copy from


@pytest.mark.parametrize(
    ("argv", "setup", "message"),
    [
        (
            ["nope"],
            "window",
            'deployment "nope" not found in namespace "ns"',
        ),
        (
            ["web"],
            "unpromoted",
            "deployment web carries no promotion by canary-operator (annotation "
            "canary-operator.dev/promoted-by): there is nothing to undo; nothing was changed",
        ),
        (
            ["web"],
            "no window",
            "deployment web has no previous version kept (annotation "
            "canary-operator.dev/rollback-window): a promotion by canary-operator keeps the "
            "version it replaces unless the promoting rollout's spec.rollbackWindow.revisions "
            "is 0; nothing was changed",
        ),
        (
            ["web", "--to-revision", "7"],
            "window",
            "--to-revision 7: deployment web keeps no such revision (kept: revision 1 "
            "(web:1.0)); nothing was changed",
        ),
        (
            ["web", "--to-revision", "0"],
            "window",
            "--to-revision 0: a revision is a number from 1",
        ),
        (
            ["web"],
            "expired",
            "the rollback window of revision 1 (web:1.0) on deployment web expired at",
        ),
    ],
)
async def test_bad_input_says_what_and_creates_nothing(
    kube: FakeKube, argv: list[str], setup: str, message: str
) -> None:
    if setup == "window":
        promoted_target(kube, [kept("web:1.0", "1")])
    elif setup == "no window":
        promoted_target(kube, None)
    elif setup == "expired":
        promoted_target(kube, [kept("web:1.0", "1", datetime.now(UTC) - timedelta(minutes=1))])
    else:
        kube.put(TARGET, target(image="web:2.0"))
    with pytest.raises(CliError) as err:
        await undo(kube, *argv)
    assert str(err.value).startswith(message)
    assert created(kube) == []


def test_undo_parses_its_arguments() -> None:
    parsed = build_parser().parse_args(["undo", "web", "--to-revision", "3", "-n", "shop"])
    assert (parsed.target, parsed.to_revision, parsed.namespace) == ("web", 3, "shop")
    assert (parsed.no_wait, parsed.timeout) == (False, "10m")
