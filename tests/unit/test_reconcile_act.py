"""reconcile/act.py: each write to the target fenced (confirmed right before it, each
write on its own, that the run still holds its lock), and what a failed action means
for the plan that asked for it (act_on). On the fake cluster, with the real engine.

The first five tests are those of the old tests/unit/test_reconciler_fencing.py:
"confirm" is now the fresh read of the Lease, "DELETE a" the delete of Job a; the lock
taken in the same reconcile no longer stands in for the first write's confirmation.
(More in test_fence_each_write.py; against the real API server: e2e/test_exclusion.py,
e2e/test_cached_reads.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.api.models import Phase, Result
from canary_operator.engine.types import (
    Action,
    DeleteCanaryObjects,
    DeleteJob,
    Emit,
    EnsureCanary,
    Plan,
    RemoveFinalizer,
    ScaleStable,
)
from canary_operator.kube.rollouts import FINALIZER, rollout_path
from canary_operator.lock.run_lock import LockLost
from canary_operator.reconcile import act
from canary_operator.reconcile.canary import RUN_ANNOTATION
from canary_operator.reconcile.context import ReconcileContext
from canary_operator.reconcile.decide import decide
from tests.harness.reconcile_fixtures import (
    DEPLOYMENTS,
    JOBS,
    LEASES,
    NAME,
    NS,
    SERVICES,
    UID,
    Cluster,
    fake_cluster,
)

CONFIRM = "GET leases/cro-lock-web"
GOING = {"deletionTimestamp": "2026-12-07T00:00:00Z", "finalizers": ["foregroundDeletion"]}


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with fake_cluster() as made:
        yield made


async def running(cluster: Cluster, acquired: bool = False) -> ReconcileContext:
    """A run in progress (step 1, holding its lock with token 1) as one reconcile
    observed it; `acquired`: as if the lock had been taken in this very reconcile."""
    ctx = await cluster.observed(await cluster.progressing())
    ctx.obs = replace(ctx.obs, lock=replace(ctx.obs.lock, acquired=acquired))
    assert ctx.obs.lock.held and ctx.obs.lock.token == 1
    run = {RUN_ANNOTATION: f"{UID}/{ctx.rollout.status.run}"}
    for name in ("a", "b"):
        cluster.kube.put(f"{JOBS}/{name}", {"metadata": {"name": name, "annotations": run}})
    cluster.clear()
    return ctx


async def act_on(ctx: ReconcileContext, actions: list[Action]) -> None:
    await act.act(ctx, Plan(status=ctx.rollout.status, actions=actions))


def lose_the_lock(cluster: Cluster) -> None:
    lease = cluster.kube.stored(f"{LEASES}/cro-lock-web")
    assert lease is not None
    lease["spec"].update(holderIdentity="uid-someone", leaseTransitions=2)
    cluster.kube.put(f"{LEASES}/cro-lock-web", lease)


def writes(cluster: Cluster) -> list[str]:
    return [r for r in cluster.kube.store.requests if r == CONFIRM or not r.startswith("GET")]


def each_confirmed(requests: list[str]) -> bool:
    """Every write comes right after a fencing read (nothing between them)."""
    return all(
        i > 0 and requests[i - 1] == CONFIRM
        for i, r in enumerate(requests)
        if not r.startswith("GET")
    )


# ------------------------------------------- ported from test_reconciler_fencing.py


async def test_every_write_is_confirmed_right_before_it(cluster: Cluster) -> None:
    ctx = await running(cluster, acquired=False)
    await act_on(ctx, [DeleteJob("a"), DeleteJob("b")])
    assert writes(cluster) == [CONFIRM, "DELETE jobs/a", CONFIRM, "DELETE jobs/b"]
    assert cluster.fresh.requests == [CONFIRM, CONFIRM]  # the fence reads the API server


async def test_a_lock_taken_in_this_reconcile_is_read_again_before_the_first_write(
    cluster: Cluster,
) -> None:
    """The acquisition does not stand in for the first write's fencing read: the
    start's dry-runs and webhooks may sit between the two. (Whether the Fence's first
    call reads the Lease or not, act makes it read before the first write.)"""
    ctx = await running(cluster, acquired=True)
    await act_on(ctx, [DeleteJob("a"), DeleteJob("b")])
    assert writes(cluster)[-4:] == [CONFIRM, "DELETE jobs/a", CONFIRM, "DELETE jobs/b"]
    assert each_confirmed(cluster.kube.store.requests)


async def test_a_lost_lock_stops_the_write(cluster: Cluster) -> None:
    ctx = await running(cluster)
    lose_the_lock(cluster)
    with pytest.raises(LockLost):
        await act_on(ctx, [DeleteJob("a")])
    assert writes(cluster) == [CONFIRM]
    assert cluster.kube.stored(f"{JOBS}/a") is not None


async def test_objects_already_being_deleted_are_not_deleted_again_nor_fenced(
    cluster: Cluster,
) -> None:
    ctx = await running(cluster)
    for where in (f"{DEPLOYMENTS}/web-canary", f"{SERVICES}/web-canary"):
        going = cluster.kube.stored(where)
        assert going is not None
        going["metadata"].update(GOING)
        cluster.kube.put(where, going)
    cluster.clear()
    await act_on(ctx, [DeleteCanaryObjects()])
    assert writes(cluster) == []
    # One still there: confirmed, then deleted; the one going is left to go.
    service = cluster.kube.stored(f"{SERVICES}/web-canary")
    assert service is not None
    del service["metadata"]["deletionTimestamp"]
    cluster.kube.put(f"{SERVICES}/web-canary", service)
    await act_on(ctx, [DeleteCanaryObjects()])
    assert writes(cluster) == [CONFIRM, "DELETE services/web-canary"]


async def test_the_finalizer_removed_is_known_at_once(cluster: Cluster) -> None:
    """After the terminal status, the finalizer's removal goes into the index, so the
    reconcile the status write's own event wakes does not send it again."""
    ctx = await running(cluster)
    written = cluster.rollout()
    assert FINALIZER in written["metadata"]["finalizers"]
    ctx.body = written
    await act.execute(ctx, RemoveFinalizer())
    assert cluster.kube.requests == [f"PATCH canaryrollouts/{NAME}"]
    body = cluster.deps.index.body(NS, NAME)
    assert body is not None and not body["metadata"].get("finalizers")
    cluster.deps.index.update(written)  # the status write's own event, older: does not undo it
    body = cluster.deps.index.body(NS, NAME)
    assert body is not None and not body["metadata"].get("finalizers")
    stored = cluster.kube.stored(rollout_path(NS, NAME))
    assert stored is not None and not stored["metadata"].get("finalizers")


# ------------------------------------------------------------ what a failure means


async def scaled_by_someone(cluster: Cluster) -> tuple[ReconcileContext, Plan]:
    """A run whose canary someone scaled down: the plan re-applies it (a fenced write).
    (Down, not up: mode Shift, the default, would keep a larger canary until its step's
    sizes are settled, growing before shrinking.)"""
    await cluster.progressing()
    canary = cluster.kube.stored(f"{DEPLOYMENTS}/web-canary")
    assert canary is not None
    canary["spec"]["replicas"] = 0
    cluster.kube.put(f"{DEPLOYMENTS}/web-canary", canary)
    ctx = await cluster.observed(cluster.rollout())
    plan = await decide(ctx)
    assert plan.actions == [EnsureCanary(replicas=1)]
    cluster.clear()
    return ctx, plan


async def test_a_plan_carried_out(cluster: Cluster) -> None:
    ctx, plan = await scaled_by_someone(cluster)
    result, error = await act.act_on(ctx, plan)
    assert result is plan and error is None
    assert writes(cluster) == [CONFIRM, "PATCH deployments/web-canary"]
    canary = cluster.kube.stored(f"{DEPLOYMENTS}/web-canary")
    assert canary is not None and canary["spec"]["replicas"] == 1
    assert ctx.acting == [EnsureCanary(replicas=1)]


async def test_a_lost_lock_is_a_lock_lost_plan(cluster: Cluster) -> None:
    ctx, plan = await scaled_by_someone(cluster)
    lose_the_lock(cluster)
    result, error = await act.act_on(ctx, plan)
    assert error is None
    assert result.status.outcome is not None
    assert result.status.outcome.result == Result.LOCK_LOST
    assert "no longer held" in (result.status.outcome.message or "")
    # It asks for nothing that touches the target.
    assert all(isinstance(a, Emit) for a in result.actions)
    assert writes(cluster) == [CONFIRM]


@pytest.mark.parametrize("status", [500, 503, 403])
async def test_a_failure_a_retry_may_cure_keeps_the_lock_and_says_so(
    cluster: Cluster, status: int
) -> None:
    ctx, plan = await scaled_by_someone(cluster)
    cluster.kube.fail_next("PATCH", "deployments/web-canary", ApiException(status, "Oops"))
    result, error = await act.act_on(ctx, plan)
    assert error == f"API error {status} Oops"
    assert result.status.phase == Phase.PROGRESSING
    assert result.status.lock is not None and result.status.lock.token == 1
    assert result.status.message == f"retrying: API error {status} Oops"
    assert result.status.outcome is None


@pytest.mark.parametrize("status", [422, 400])
async def test_a_refused_write_fails_the_step_that_asked_for_it(
    cluster: Cluster, status: int
) -> None:
    ctx, plan = await scaled_by_someone(cluster)
    cluster.kube.fail_next("PATCH", "deployments/web-canary", ApiException(status, "Invalid"))
    result, error = await act.act_on(ctx, plan)
    assert error is None  # nothing to retry: the run ends
    outcome = result.status.outcome
    assert outcome is not None and outcome.result == Result.STEP_FAILED
    assert outcome.failed_step == 1 and f"API error {status} Invalid" in (outcome.message or "")
    assert result.status.phase == Phase.CLEANING_UP


async def test_a_missing_target_fails_the_step(cluster: Cluster) -> None:
    ctx, plan = await scaled_by_someone(cluster)
    ctx.targets.target = None
    result, error = await act.act_on(ctx, plan)
    assert error is None and result.status.outcome is not None
    assert "target Deployment web not found" in (result.status.outcome.message or "")
    assert writes(cluster) == []


async def test_a_failed_cleanup_action_backs_off_without_a_retry_error(
    cluster: Cluster,
) -> None:
    ctx = await cluster.observed(await cluster.cleaning_up())
    plan = await decide(ctx)
    assert any(isinstance(a, DeleteCanaryObjects) for a in plan.actions)
    cluster.clear()
    cluster.kube.fail_next("DELETE", "deployments", ApiException(500, "Oops"))
    result, error = await act.act_on(ctx, plan)
    assert error is None
    assert result.status.phase == Phase.CLEANING_UP
    assert "API error 500 Oops" in (result.status.message or "")


async def test_what_follows_the_status_is_not_done_before_it(cluster: Cluster) -> None:
    ctx = await running(cluster)
    await act_on(ctx, [Emit("Reason", "message"), RemoveFinalizer()])
    assert cluster.kube.store.requests == [] and ctx.acting == []
    assert act.after_status(RemoveFinalizer())
    assert not act.after_status(ScaleStable(replicas=1, original=3, floor=1))
