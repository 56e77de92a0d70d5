"""lock/run_lock.py: the lock as one run meets it in a reconcile, on the fake cluster:
the precondition of taking a free lock, the fence before each write, the check that a
holder still runs, and when a read made before the lock was taken still stands."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.engine.types import LockView
from canary_operator.index import candidate
from canary_operator.kube.api import Conflict
from canary_operator.kube.rollouts import FINALIZER, rollout_path
from canary_operator.lock.lease import lease_name
from canary_operator.lock.renewer import lease_path
from canary_operator.lock.run_lock import LockLost, RunLock, StillAsRead
from tests.harness.reconcile_fixtures import NAME, NS, UID, Cluster, fake_cluster, rollout_body

ROLLOUT = rollout_path(NS, NAME)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with fake_cluster() as made:
        yield made


def run_lock(cluster: Cluster) -> RunLock:
    return RunLock(cluster.deps.lock, cluster.fresh, NS, "web", UID)


async def test_without_the_finalizer_the_precondition_is_its_conditional_write(
    cluster: Cluster,
) -> None:
    body = cluster.add_rollout(rollout_body())
    cluster.clear()
    assert await StillAsRead(cluster.kube, cluster.fresh, body)()
    assert cluster.kube.requests == [f"PATCH canaryrollouts/{NAME}"]
    assert cluster.fresh.requests == []  # the write shows the version current: no read
    stored = cluster.rollout()
    assert FINALIZER in stored["metadata"]["finalizers"]
    # The body the reconcile holds takes the answer's metadata.
    assert body["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]


async def test_a_stale_view_without_the_finalizer_never_passes(cluster: Cluster) -> None:
    stale = cluster.add_rollout(rollout_body())
    cluster.kube.put(ROLLOUT, rollout_body())  # changed since it was read
    assert not await StillAsRead(cluster.kube, cluster.fresh, stale)()
    assert FINALIZER not in (cluster.rollout()["metadata"].get("finalizers") or [])


async def test_a_rollout_gone_does_not_pass(cluster: Cluster) -> None:
    body = cluster.add_rollout(rollout_body())
    cluster.kube.fail_next("PATCH", "canaryrollouts", ApiException(status=404))
    assert not await StillAsRead(cluster.kube, cluster.fresh, body)()


async def test_another_failure_of_the_write_is_raised(cluster: Cluster) -> None:
    body = cluster.add_rollout(rollout_body())
    cluster.kube.fail_next("PATCH", "canaryrollouts", ApiException(status=500))
    with pytest.raises(ApiException):
        await StillAsRead(cluster.kube, cluster.fresh, body)()


async def test_with_the_finalizer_the_precondition_is_a_fresh_read(cluster: Cluster) -> None:
    body = cluster.add_rollout(rollout_body(finalizer=True))
    cluster.clear()
    assert await StillAsRead(cluster.kube, cluster.fresh, body)()
    assert cluster.fresh.requests == [f"GET canaryrollouts/{NAME}"]
    assert cluster.kube.requests == []
    cluster.kube.put(ROLLOUT, rollout_body(finalizer=True))  # changed since it was read
    assert not await StillAsRead(cluster.kube, cluster.fresh, body)()


async def test_the_fence_lets_the_acquisition_confirm_the_first_write_only(
    cluster: Cluster,
) -> None:
    body = cluster.add_rollout(rollout_body(status={"phase": "Queued"}))
    me = candidate(body)
    assert me is not None
    lock = run_lock(cluster)
    view = await lock.observe(me, [], True, StillAsRead(cluster.kube, cluster.fresh, body))
    assert view.held and view.acquired
    cluster.clear()
    fence = lock.fence(view)
    await fence()  # the acquisition's answer stands for this one
    assert cluster.fresh.requests == []
    await fence()  # every later write reads the Lease again
    assert cluster.fresh.requests == [f"GET leases/{lease_name('web')}"]


async def test_the_fence_raises_lock_lost_once_another_holds_it(cluster: Cluster) -> None:
    body = cluster.add_rollout(rollout_body(status={"phase": "Queued"}))
    me = candidate(body)
    assert me is not None
    lock = run_lock(cluster)
    view = await lock.observe(me, [], True, StillAsRead(cluster.kube, cluster.fresh, body))
    where = lease_path(NS, lease_name("web"))
    taken = cluster.kube.stored(where)
    assert taken is not None
    taken["spec"]["holderIdentity"] = "someone-else"
    taken["spec"]["leaseTransitions"] = 2
    await cluster.kube.replace(where, taken)
    fence = lock.fence(LockView(name=view.name, held=True, token=view.token))
    with pytest.raises(LockLost, match="no longer held with token 1"):
        await fence()


async def test_a_holder_runs_until_the_api_server_says_it_ended(cluster: Cluster) -> None:
    lock = run_lock(cluster)
    cluster.add_rollout(rollout_body(status={"phase": "Progressing"}))
    assert await lock.holder_running(NS, NAME, UID)
    assert not await lock.holder_running(NS, NAME, "another-uid")  # recreated
    cluster.kube.put(ROLLOUT, rollout_body(status={"phase": "Failed"}))
    assert not await lock.holder_running(NS, NAME, UID)
    assert not await lock.holder_running(NS, "gone", "uid-gone")


def test_a_read_stands_only_when_the_lease_stood_free_at_its_version() -> None:
    taken = LockView(name="l", held=True, acquired=True, acquired_over="7")
    assert RunLock.read_stands("7", taken)
    assert not RunLock.read_stands("6", taken)  # the Lease changed after the read
    assert not RunLock.read_stands(None, taken)  # no read before the lock was taken
    over = LockView(name="l", held=True, acquired=True, acquired_over=None)
    assert not RunLock.read_stands("7", over)  # taken over from a stale holder
    created = LockView(name="l", held=True, acquired=True, acquired_over="")
    assert RunLock.read_stands("", created)  # no Lease before the read, none until created


async def test_the_conflict_type_is_the_apis(cluster: Cluster) -> None:
    """The precondition's 409 is `Conflict`, as Kube.request raises it."""
    body = cluster.add_rollout(rollout_body())
    cluster.kube.fail_next("PATCH", "canaryrollouts", Conflict("changed"))
    assert not await StillAsRead(cluster.kube, cluster.fresh, body)()
