"""reconcile/status.py: the status write (conditional on the version read), an invalid
spec's terminal status, and the Events that announce a written transition."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from canary_operator.api.models import CanaryRolloutSpec, CanaryRolloutStatus, Phase, dump_status
from canary_operator.engine.types import Emit
from canary_operator.kube.rollouts import rollout_path
from canary_operator.reconcile import status
from canary_operator.reconcile.errors import RetryLater
from tests.harness.reconcile_fixtures import (
    EVENTS,
    NAME,
    NS,
    UID,
    Cluster,
    fake_cluster,
    rollout_body,
)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with fake_cluster() as made:
        yield made


QUEUED = CanaryRolloutStatus(phase=Phase.QUEUED, run=1, message="waiting")


async def test_a_status_write_is_conditional_and_known_at_once(cluster: Cluster) -> None:
    body = cluster.add_rollout(rollout_body())
    written = await status.write(cluster.deps, body, QUEUED)
    assert written is not None and written["status"] == dump_status(QUEUED)
    assert cluster.kube.requests == [f"PUT canaryrollouts/{NAME}/status"]
    known = cluster.deps.index.body(NS, NAME)
    assert known is not None and known["status"]["phase"] == "Queued"
    assert cluster.rollout()["status"] == dump_status(QUEUED)


async def test_an_unchanged_status_is_not_written(cluster: Cluster) -> None:
    body = cluster.add_rollout(rollout_body(status=dump_status(QUEUED)))
    assert await status.write(cluster.deps, body, QUEUED) is body
    assert cluster.kube.requests == []


async def test_a_lost_race_or_a_rollout_gone_is_none(cluster: Cluster) -> None:
    body = cluster.add_rollout(rollout_body())
    await cluster.kube.merge_patch(rollout_path(NS, NAME), {"metadata": {"labels": {"x": "y"}}})
    assert await status.write(cluster.deps, body, QUEUED) is None  # 409: re-read, decide again
    assert cluster.rollout().get("status") is None
    await cluster.kube.delete(rollout_path(NS, NAME))
    assert await status.write(cluster.deps, body, QUEUED) is None  # 404


async def test_other_failures_of_the_write_are_raised(cluster: Cluster) -> None:
    body = cluster.add_rollout(rollout_body())
    cluster.kube.fail_next("PUT", "canaryrollouts", ApiException(status=500, reason="Oops"))
    with pytest.raises(ApiException):
        await status.write(cluster.deps, body, QUEUED)


def invalid_spec() -> ValidationError:
    with pytest.raises(ValidationError) as refused:
        CanaryRolloutSpec.model_validate({"target": {"deployment": "web"}, "steps": []})
    return refused.value


async def test_an_invalid_spec_fails_the_rollout_clearly(cluster: Cluster) -> None:
    body = rollout_body()
    body["metadata"]["generation"] = 3
    body = cluster.add_rollout(body)
    await status.invalid(cluster.deps, body, invalid_spec())
    written = cluster.rollout()["status"]
    assert written["phase"] == "Failed"
    assert written["observedGeneration"] == 3
    assert written["message"].startswith("invalid spec: spec.steps: ")
    assert written["outcome"]["result"] == "InvalidSpec"
    assert written["completedAt"]
    conditions = {c["type"]: c for c in written["conditions"]}
    assert (conditions["Failed"]["status"], conditions["Failed"]["reason"]) == (
        "True",
        "InvalidSpec",
    )
    assert (conditions["Completed"]["status"], conditions["Completed"]["reason"]) == (
        "False",
        "InvalidSpec",
    )
    assert conditions["Failed"]["observedGeneration"] == 3


async def test_an_invalid_spec_of_an_ended_rollout_is_left_alone(cluster: Cluster) -> None:
    body = cluster.add_rollout(rollout_body(status={"phase": "Succeeded"}))
    await status.invalid(cluster.deps, body, invalid_spec())
    assert cluster.kube.requests == []


async def test_an_invalid_spec_of_a_started_run_is_retried(cluster: Cluster) -> None:
    """Its cleanup needs a readable spec: no terminal status without it."""
    body = cluster.add_rollout(rollout_body(status={"phase": "Progressing", "run": 1}))
    with pytest.raises(ValueError, match="spec no longer readable by this operator"):
        await status.invalid(cluster.deps, body, invalid_spec())
    assert cluster.kube.requests == []


async def test_an_announcement_is_an_event_on_the_rollout(cluster: Cluster) -> None:
    ctx = cluster.context(cluster.add_rollout(rollout_body()))
    status.announce(cluster.deps, ctx.rollout, Emit("StepStarted", "step 1 started"))
    status.announce(cluster.deps, ctx.rollout, Emit("Oops", "it broke", warning=True))
    assert cluster.kube.requests == []  # written in the background
    await cluster.deps.events.flush()
    assert cluster.kube.requests == ["POST events", "POST events"]
    by_reason = {e["reason"]: e for e in await cluster.kube.list(EVENTS)}
    assert by_reason["StepStarted"]["type"] == "Normal"
    assert by_reason["Oops"]["type"] == "Warning"
    assert by_reason["Oops"]["involvedObject"]["uid"] == UID
    assert by_reason["Oops"]["involvedObject"]["name"] == NAME


async def test_saying_retrying_writes_it_once_and_announces_it(cluster: Cluster) -> None:
    ctx = await cluster.observed(await cluster.progressing())
    said = await status.say_retrying(ctx, "cannot check the spec yet: timed out")
    assert isinstance(said, RetryLater) and str(said) == "cannot check the spec yet: timed out"
    stored = cluster.rollout()["status"]
    assert stored["message"] == "retrying: cannot check the spec yet: timed out"
    assert stored["phase"] == "Progressing"
    await cluster.deps.events.flush()
    assert "POST events" in cluster.kube.requests


async def test_saying_retrying_after_a_lost_race_announces_nothing(cluster: Cluster) -> None:
    ctx = await cluster.observed(await cluster.progressing())
    await cluster.kube.merge_patch(rollout_path(NS, NAME), {"metadata": {"labels": {"x": "y"}}})
    cluster.clear()
    await status.say_retrying(ctx, "timed out")
    await cluster.deps.events.flush()
    assert cluster.kube.requests == [f"PUT canaryrollouts/{NAME}/status"]
