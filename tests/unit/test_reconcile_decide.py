"""reconcile/decide.py: the engine says what it needs observed (Need); decide observes
exactly that, each need once, and asks again. The real engine plans throughout; a spy
only records what it asked for."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.api.models import Phase
from canary_operator.engine import machine
from canary_operator.engine.types import (
    DeleteCanaryObjects,
    EnsureCanary,
    Need,
    Observed,
    Plan,
    ReleaseLock,
    Rollout,
)
from canary_operator.kube.rollouts import FINALIZER
from canary_operator.reconcile.decide import decide
from canary_operator.reconcile.errors import RetryLater
from tests.harness.reconcile_fixtures import (
    LEASES,
    NAME,
    PODS,
    SERVICES,
    UID,
    Cluster,
    fake_cluster,
    rollout_body,
)

CANARY_POD = {
    "metadata": {
        "name": "web-canary-7d9-x2",
        "labels": {"canary-operator.dev/target": "web", "canary-operator.dev/role": "canary"},
    },
    "status": {"phase": "Pending"},
}


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with fake_cluster() as made:
        yield made


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[Need | None]:
    """What each plan of the real engine asked to have observed next."""
    needs: list[Need | None] = []
    real = machine.plan

    def spy(rollout: Rollout, obs: Observed) -> Plan:
        result = real(rollout, obs)
        needs.append(result.observe_next)
        return result

    monkeypatch.setattr(machine, "plan", spy)
    return needs


async def test_a_new_rollout_on_a_free_lock_validates_locks_and_starts(
    cluster: Cluster, asked: list[Need | None]
) -> None:
    cluster.with_target()
    ctx = await cluster.observed(cluster.add_rollout(rollout_body()))
    assert not ctx.obs.lock.held
    cluster.clear()
    asked.clear()
    plan = await decide(ctx)
    assert asked == [Need.VALIDATION, Need.LOCK, Need.START, None]
    assert ctx.obs.answered == {Need.VALIDATION, Need.LOCK, Need.START}
    assert plan.status.phase == Phase.PROGRESSING and plan.status.run == 1
    assert any(isinstance(a, EnsureCanary) for a in plan.actions)
    # Through the caches: the Lease's version before the fresh read, the canary's
    # names free for this target (validation), the Lease read again to take it, the
    # finalizer written once (the free-lock precondition), the Lease created.
    assert cluster.kube.requests == [
        "GET leases/cro-lock-web",
        "GET deployments/web-canary",
        "GET services/web-canary",
        "GET leases/cro-lock-web",
        "PATCH canaryrollouts/web-v2",
        "POST leases",
    ]
    # From the API server: the target once (validation; the acquisition was
    # conditional on the Lease as it was before that read, so the read stands at
    # START), the dry run of the canary, then the canary's objects.
    assert cluster.fresh.requests.count("GET deployments/web") == 1
    assert sorted(cluster.fresh.requests) == [
        "GET canaryrollouts/web-v2",  # at START: another process may have started the run
        "GET deployments/web",
        "GET deployments/web-canary",
        "GET jobs",
        "GET pods",
        "GET services/web-canary",
        "POST deployments?dryRun",
    ]
    assert ctx.obs.lock.acquired and ctx.obs.lock.token == 1 and ctx.targets.fresh
    lease = cluster.kube.stored(f"{LEASES}/cro-lock-web")
    assert lease is not None and lease["spec"]["holderIdentity"] == f"{UID}/1"  # run 1
    assert FINALIZER in ctx.body["metadata"]["finalizers"]
    assert (
        ctx.body["metadata"]["resourceVersion"] == cluster.rollout()["metadata"]["resourceVersion"]
    )


async def test_a_queued_rollout_taking_the_lock_reads_the_target_fresh_once(
    cluster: Cluster, asked: list[Need | None]
) -> None:
    """Its lock was taken at observation, before any fresh read: nothing stands for
    the target, which START reads; validation then uses that read."""
    cluster.with_target()
    queued = rollout_body(status={"phase": "Queued", "run": 1}, finalizer=True)
    ctx = await cluster.observed(cluster.add_rollout(queued))
    assert ctx.obs.lock.held and ctx.obs.lock.acquired
    cluster.clear()
    asked.clear()
    plan = await decide(ctx)
    assert asked[:2] == [Need.START, Need.VALIDATION] and asked[-1] is None
    assert plan.status.phase == Phase.PROGRESSING
    assert cluster.fresh.requests.count("GET deployments/web") == 1
    assert "GET leases/cro-lock-web" not in cluster.kube.requests  # the lock is as observed


async def test_a_new_rollout_behind_a_held_lock_queues_without_taking_it(
    cluster: Cluster, asked: list[Need | None]
) -> None:
    await cluster.progressing()  # web-v2 holds the lock
    ctx = await cluster.observed(cluster.add_rollout(rollout_body(name="web-v3", uid="uid-3")))
    cluster.clear()
    asked.clear()
    plan = await decide(ctx)
    assert asked == [Need.VALIDATION, Need.LOCK, None]
    assert plan.status.phase == Phase.QUEUED
    assert not ctx.obs.lock.held and ctx.obs.lock.holder == NAME
    assert not any(r.startswith(("POST leases", "PUT leases")) for r in cluster.kube.requests)
    assert "PATCH canaryrollouts/web-v3" not in cluster.kube.requests


async def test_validation_problems_end_the_run_before_it_touches_anything(
    cluster: Cluster, asked: list[Need | None]
) -> None:
    cluster.with_target()
    await cluster.kube.delete(f"{SERVICES}/web")
    ctx = await cluster.observed(cluster.add_rollout(rollout_body()))
    cluster.clear()
    asked.clear()
    plan = await decide(ctx)
    assert asked == [Need.VALIDATION, None]
    assert ctx.obs.spec_problems == (
        "spec.target.service: Service 'web' not found in namespace shop",
    )
    assert plan.status.phase == Phase.FAILED
    # Never asked for the lock (the cache reads: the Lease's version, the canary's names).
    assert cluster.kube.requests == [
        "GET leases/cro-lock-web",
        "GET deployments/web-canary",
        "GET services/web-canary",
    ]


async def test_a_spec_that_cannot_be_checked_yet_says_so_and_retries(
    cluster: Cluster,
) -> None:
    cluster.with_target()
    ctx = await cluster.observed(cluster.add_rollout(rollout_body()))
    cluster.fresh.fail_next("GET", "deployments/web", ApiException(status=503, reason="Busy"))
    cluster.clear()
    with pytest.raises(RetryLater, match="cannot check the spec yet: API error 503 Busy"):
        await decide(ctx)
    stored = cluster.rollout()
    assert "cannot check the spec yet" in stored["status"]["message"]
    assert cluster.kube.requests[-1] == "PUT canaryrollouts/web-v2/status"
    assert not any(r.startswith("POST leases") for r in cluster.kube.requests)


async def test_a_cleanup_about_to_be_verified_reads_through_the_api(
    cluster: Cluster, asked: list[Need | None]
) -> None:
    body = await cluster.cleaning_up(deleted=True)
    ctx = await cluster.observed(body)
    # A canary pod created a moment ago, which the first (cached) observation missed.
    cluster.kube.put(f"{PODS}/web-canary-7d9-x2", CANARY_POD)
    cluster.clear()
    asked.clear()
    plan = await decide(ctx)
    assert asked == [Need.VERIFICATION, None]
    assert sorted(cluster.fresh.requests) == [
        "GET deployments/web",
        "GET deployments/web-canary",
        "GET jobs",
        "GET pods",
        "GET services/web-canary",
    ]
    assert ctx.obs.canary_pods == 1
    assert not any(isinstance(a, ReleaseLock) for a in plan.actions)
    assert any(isinstance(a, DeleteCanaryObjects) for a in plan.actions)
    assert plan.status.phase == Phase.CLEANING_UP


async def test_a_verified_cleanup_releases_the_lock(
    cluster: Cluster, asked: list[Need | None]
) -> None:
    ctx = await cluster.observed(await cluster.cleaning_up(deleted=True))
    cluster.clear()
    asked.clear()
    plan = await decide(ctx)
    assert asked == [Need.VERIFICATION, None]
    assert any(isinstance(a, ReleaseLock) for a in plan.actions)
    assert plan.status.phase == Phase.FAILED
