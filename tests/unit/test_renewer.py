"""The lease renewer: renewals on their own schedule, independent of reconciles,
against the in-memory API with resourceVersion preconditions."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.api.models import Phase
from canary_operator.lock.lease import LeaseLock, lease_name
from canary_operator.lock.queue import Candidate
from canary_operator.lock.renewer import LeaseRenewer
from tests.harness.cluster import wait_for_async
from tests.harness.fake_api import Clock, FakeApi

NS = "ns"


class FlakyApi(FakeApi):
    """FakeApi whose lease writes can fail or hang on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_with: Exception | None = None
        self.hang: dict[str, asyncio.Event] = {}  # lease path -> released when set

    async def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.fail_with is not None:
            raise self.fail_with
        gate = self.hang.get(path)
        if gate is not None:
            await gate.wait()
        return await super().replace(path, body)


def rollout(name: str) -> Candidate:
    return Candidate(
        name=name, uid=f"uid-{name}", applied="2026-01-01T00:00:00Z", phase=Phase.QUEUED
    )


async def alive(namespace: str, name: str, identity: str | None) -> bool:
    return True


def lease_path(key: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{lease_name(key)}"


async def acquire(kube: FakeApi, clock: Clock, *keys: str) -> LeaseLock:
    lock = LeaseLock(kube, clock)  # type: ignore[arg-type]
    for key in keys:
        me = rollout(f"r-{key}")
        assert (await lock.observe(NS, key, me, [me], True, alive)).held
    return lock


async def finish(tasks: list[asyncio.Task[None]]) -> None:
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)


def version(kube: FakeApi, key: str) -> str:
    return str(kube.objects[lease_path(key)]["metadata"]["resourceVersion"])


async def test_renews_each_held_lease_when_due_and_not_before() -> None:
    kube, clock = FakeApi(), Clock()
    lock = await acquire(kube, clock, "web", "api")
    before = {k: version(kube, k) for k in ("web", "api")}
    assert lock.renewer.renew_due() == []  # just acquired
    clock.now += lock.renewer.renew_every
    await finish(lock.renewer.renew_due())
    for key in ("web", "api"):
        assert version(kube, key) != before[key]
        spec = kube.objects[lease_path(key)]["spec"]
        # The run's identity and token, unchanged: a renewal is no new acquisition.
        assert spec["holderIdentity"] == f"uid-r-{key}/1" and spec["leaseTransitions"] == 1
    assert lock.renewer.renew_due() == []


async def test_a_hanging_write_holds_no_other_lease_back() -> None:
    kube, clock = FlakyApi(), Clock()
    lock = await acquire(kube, clock, "slow", "fast")
    gate = kube.hang[lease_path("slow")] = asyncio.Event()
    before = version(kube, "fast")
    clock.now += lock.renewer.renew_every
    tasks = lock.renewer.renew_due()
    assert len(tasks) == 2
    done, pending = await asyncio.wait(tasks, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1 and version(kube, "fast") != before
    # The slow one is not started twice while it runs.
    clock.now += lock.renewer.renew_every
    again = lock.renewer.renew_due()
    assert len(again) == 1
    gate.set()
    await finish([*pending, *again])


async def test_a_renewal_that_times_out_is_an_error_and_the_next_one_clears_it() -> None:
    kube, clock = FlakyApi(), Clock()
    lock = await acquire(kube, clock, "web")
    lock.renewer.write_timeout = 0.05
    results: list[bool] = []
    lock.renewer.on_renewal = results.append
    kube.hang[lease_path("web")] = asyncio.Event()  # never released: times out
    clock.now += lock.renewer.renew_every
    await finish(lock.renewer.renew_due())
    assert lock.renewer.error(NS, lease_name("web")) == "lease renewal failed: timed out"
    assert lock.renewer.holds(NS, lease_name("web"))  # failing to renew is not losing
    del kube.hang[lease_path("web")]
    kube.fail_with = ApiException(status=503, reason="Service Unavailable")
    await finish(lock.renewer.renew_due())  # still due: the last one did not go through
    assert "503" in (lock.renewer.error(NS, lease_name("web")) or "")
    kube.fail_with = None
    await finish(lock.renewer.renew_due())
    assert lock.renewer.error(NS, lease_name("web")) is None
    assert results == [False, False, True]


async def test_a_409_from_someone_renewing_the_same_holder_counts_as_renewed() -> None:
    kube, clock = FakeApi(), Clock()
    lock = await acquire(kube, clock, "web")
    other = copy.deepcopy(kube.objects[lease_path("web")])
    other["spec"]["renewTime"] = "2026-01-01T00:00:05.000000Z"
    await kube.replace(lease_path("web"), other)  # the other operator process renewed
    lost: list[tuple[str, str]] = []
    lock.renewer.on_lost = lambda ns, name: lost.append((ns, name))
    clock.now += lock.renewer.renew_every
    await finish(lock.renewer.renew_due())
    assert lost == [] and lock.renewer.holds(NS, lease_name("web"))
    assert lock.renewer.renew_due() == []  # renewed (by the other): not due again yet


async def test_a_lease_taken_by_another_holder_is_lost_and_its_rollout_woken() -> None:
    kube, clock = FakeApi(), Clock()
    lock = await acquire(kube, clock, "web")
    taken = copy.deepcopy(kube.objects[lease_path("web")])
    taken["spec"].update(holderIdentity="uid-intruder/1", leaseTransitions=2)
    await kube.replace(lease_path("web"), taken)  # a human's edit, say
    lost: list[tuple[str, str]] = []
    lock.renewer.on_lost = lambda ns, name: lost.append((ns, name))
    clock.now += lock.renewer.renew_every
    await finish(lock.renewer.renew_due())
    assert lost == [(NS, "r-web")]
    assert not lock.renewer.holds(NS, lease_name("web"))
    assert kube.objects[lease_path("web")]["spec"]["holderIdentity"] == "uid-intruder/1"


async def test_a_later_run_of_the_same_rollout_holding_the_lease_is_a_loss_for_this_run() -> None:
    """The holder is the run: run 2 of the same rollout (same uid) holding the lease is
    not run 1 renewed, neither in a 409's fresh read nor in a watch event."""
    kube, clock = FakeApi(), Clock()
    lock = await acquire(kube, clock, "web", "api")
    for key in ("web", "api"):
        taken = copy.deepcopy(kube.objects[lease_path(key)])
        taken["spec"].update(holderIdentity=f"uid-r-{key}/2", leaseTransitions=2)
        await kube.replace(lease_path(key), taken)
    lost: list[tuple[str, str]] = []
    lock.renewer.on_lost = lambda ns, name: lost.append((ns, name))
    lock.renewer.seen(kube.objects[lease_path("api")])  # the watch
    assert lost == [(NS, "r-api")] and not lock.renewer.holds(NS, lease_name("api"))
    clock.now += lock.renewer.renew_every
    await finish(lock.renewer.renew_due())  # the 409, then the fresh read
    assert lost == [(NS, "r-api"), (NS, "r-web")]
    assert not lock.renewer.holds(NS, lease_name("web"))
    for key in ("web", "api"):
        assert kube.objects[lease_path(key)]["spec"]["holderIdentity"] == f"uid-r-{key}/2"


async def test_the_watch_tells_of_a_lost_lease_and_of_renewals_by_others() -> None:
    kube, clock = FakeApi(), Clock()
    lock = await acquire(kube, clock, "web")
    lost: list[tuple[str, str]] = []
    lock.renewer.on_lost = lambda ns, name: lost.append((ns, name))
    clock.now += lock.renewer.renew_every
    renewed = copy.deepcopy(kube.objects[lease_path("web")])
    renewed["metadata"]["resourceVersion"] = str(kube.version + 1)
    lock.renewer.seen(renewed)  # same holder, newer version: someone renewed it
    assert lock.renewer.renew_due() == [] and lost == []
    stale = copy.deepcopy(renewed)
    stale["metadata"]["resourceVersion"] = "1"
    stale["spec"]["holderIdentity"] = "uid-old"
    lock.renewer.seen(stale)  # an older version arriving late changes nothing
    assert lock.renewer.holds(NS, lease_name("web"))
    taken = copy.deepcopy(renewed)
    taken["metadata"]["resourceVersion"] = str(kube.version + 2)
    taken["spec"]["holderIdentity"] = "uid-other"
    lock.renewer.seen(taken)
    assert lost == [(NS, "r-web")] and not lock.renewer.holds(NS, lease_name("web"))


async def test_a_holder_that_ended_or_went_is_not_kept_alive() -> None:
    kube, clock = FakeApi(), Clock()
    lock = await acquire(kube, clock, "web")
    before = version(kube, "web")
    lock.renewer.holder_active = lambda ns, uid: False
    clock.now += lock.renewer.renew_every
    assert lock.renewer.renew_due() == []
    assert not lock.renewer.holds(NS, lease_name("web")) and version(kube, "web") == before


async def test_the_renewal_loop_runs_on_its_own_until_stopped() -> None:
    """The real schedule, without a reconcile anywhere: the loop renews by itself."""
    kube = FakeApi()
    renewer = LeaseRenewer(kube, renew_every=0.0)  # type: ignore[arg-type]
    lock = LeaseLock(kube, renewer=renewer)  # type: ignore[arg-type]
    me = rollout("r")
    assert (await lock.observe(NS, "web", me, [me], True, alive)).held
    before = int(version(kube, "web"))
    renewer.start()
    try:
        await wait_for_async(lambda: int(version(kube, "web")) >= before + 2, 10, 0.05)
    finally:
        await renewer.stop()
    after = version(kube, "web")
    await asyncio.sleep(0)  # nothing left running: the version stays
    assert version(kube, "web") == after


@pytest.mark.parametrize("status", [500, 429])
async def test_failures_are_counted(status: int) -> None:
    kube, clock = FlakyApi(), Clock()
    lock = await acquire(kube, clock, "web")
    counts: list[bool] = []
    lock.renewer.on_renewal = counts.append
    kube.fail_with = ApiException(status=status, reason="nope")
    clock.now += lock.renewer.renew_every
    await finish(lock.renewer.renew_due())
    assert counts == [False]
