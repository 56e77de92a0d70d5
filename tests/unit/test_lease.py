"""The Lease protocol against an in-memory API that enforces resourceVersion
preconditions like the real one (the real API is exercised by the e2e suite)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from canary_operator.api.models import Phase
from canary_operator.kube.api import Conflict
from canary_operator.lock.lease import (
    LEASE_DURATION_SECONDS,
    TAKEOVER_GRACE_SECONDS,
    LeaseLock,
    lease_name,
)
from canary_operator.lock.queue import Candidate
from tests.harness.fake_api import Clock, FakeApi

NS = "ns"


def rollout(name: str, created: str, phase: Phase = Phase.QUEUED) -> Candidate:
    return Candidate(name=name, uid=f"uid-{name}", created=created, phase=phase)


async def alive(namespace: str, name: str, uid: str) -> bool:
    return True


@pytest.fixture
def kube() -> FakeApi:
    return FakeApi()


def lease_of(kube: FakeApi) -> dict[str, Any]:
    return next(iter(kube.objects.values()))


async def test_first_in_queue_acquires_and_others_wait(kube: FakeApi) -> None:
    lock = LeaseLock(kube, Clock())  # type: ignore[arg-type]
    a, b = rollout("a", "2026-01-01T00:00:00Z"), rollout("b", "2026-01-01T00:00:01Z")
    view_b = await lock.observe(NS, "web", b, [a, b], True, alive)
    assert not view_b.held and view_b.position == 2
    view_a = await lock.observe(NS, "web", a, [a, b], True, alive)
    assert view_a.held and view_a.token == 1
    assert lease_of(kube)["spec"]["holderIdentity"] == "uid-a"
    view_b = await lock.observe(NS, "web", b, [a, b], True, alive)
    assert not view_b.held and view_b.busy and view_b.holder == "a"


async def test_a_live_holder_is_never_taken_over_however_long_its_lease_stood_still(
    kube: FakeApi,
) -> None:
    clock = Clock()
    a = rollout("a", "2026-01-01T00:00:00Z", Phase.PROGRESSING)
    b = rollout("b", "2026-01-01T00:00:01Z")
    holder = LeaseLock(kube, clock)  # type: ignore[arg-type]
    assert (await holder.observe(NS, "web", a, [a], True, alive)).held
    waiter = LeaseLock(kube, clock)  # type: ignore[arg-type]  # another operator process
    # Nobody renews (a slow check, a stalled API, a dead operator): the holder still runs.
    for _ in range(5):
        view = await waiter.observe(NS, "web", b, [a, b], True, alive)
        assert not view.held and view.busy and view.holder == "a"
        clock.now += LEASE_DURATION_SECONDS
    # Even with the index saying nothing about it, a fresh check that it runs is enough.
    view = await waiter.observe(NS, "web", b, [b], True, alive)
    assert not view.held and view.busy
    assert lease_of(kube)["spec"]["holderIdentity"] == "uid-a"
    history = json.loads(lease_of(kube)["metadata"]["annotations"]["canary-operator.dev/history"])
    assert [h["holder"] for h in history] == ["a"] and "takenOverBy" not in history[0]


async def test_a_holder_the_index_shows_ended_is_confirmed_fresh_before_a_takeover(
    kube: FakeApi,
) -> None:
    a = rollout("a", "2026-01-01T00:00:00Z", Phase.PROGRESSING)
    a_ended = rollout("a", "2026-01-01T00:00:00Z", Phase.SUCCEEDED)
    b = rollout("b", "2026-01-01T00:00:01Z")
    clock = Clock()
    lock = LeaseLock(kube, clock)  # type: ignore[arg-type]
    await lock.observe(NS, "web", a, [a], True, alive)
    asked: list[tuple[str, str, str]] = []

    async def still_running(namespace: str, name: str, uid: str) -> bool:
        asked.append((namespace, name, uid))
        return True  # the index was stale: the API server says it runs

    view = await lock.observe(NS, "web", b, [a_ended, b], True, still_running)
    assert not view.held and view.busy and asked == []  # within the grace: not even asked
    clock.now += TAKEOVER_GRACE_SECONDS
    view = await lock.observe(NS, "web", b, [a_ended, b], True, still_running)
    assert not view.held and view.busy
    assert asked == [(NS, "a", "uid-a")]

    async def ended(namespace: str, name: str, uid: str) -> bool:
        return False

    taken = await lock.observe(NS, "web", b, [a_ended, b], True, ended)
    assert taken.held and taken.recovered_from == "a" and taken.token == 2


async def test_only_the_head_of_the_queue_asks_whether_the_holder_still_runs(
    kube: FakeApi,
) -> None:
    a = rollout("a", "2026-01-01T00:00:00Z", Phase.SUCCEEDED)
    b, c = rollout("b", "2026-01-01T00:00:01Z"), rollout("c", "2026-01-01T00:00:02Z")
    lock = LeaseLock(kube, Clock())  # type: ignore[arg-type]
    await lock.observe(NS, "web", rollout("a", a.created), [], True, alive)
    asked: list[str] = []

    async def check(namespace: str, name: str, uid: str) -> bool:
        asked.append(name)
        return False

    view = await lock.observe(NS, "web", c, [a, b, c], True, check)
    assert not view.held and view.position == 2 and asked == []
    view = await lock.observe(NS, "web", b, [a, b, c], False, check)  # does not want it
    assert not view.held and asked == []


async def test_a_lease_naming_no_rollout_is_taken_only_after_it_stood_still(
    kube: FakeApi,
) -> None:
    """A holder this operator cannot judge (written by hand or by another tool): only
    expiry, on our own monotonic clock, tells that it is abandoned."""
    clock = Clock()
    b = rollout("b", "2026-01-01T00:00:01Z")
    name = lease_name("web")
    where = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
    await kube.create(
        where,
        {
            "metadata": {"name": name, "namespace": NS, "annotations": {}},
            "spec": {"holderIdentity": "someone", "leaseDurationSeconds": 30},
        },
    )
    waiter = LeaseLock(kube, clock)  # type: ignore[arg-type]
    assert not (await waiter.observe(NS, "web", b, [b], True, alive)).held
    clock.now += 20
    foreign = await kube.get(f"{where}/{name}")
    assert foreign is not None
    await kube.replace(f"{where}/{name}", foreign)  # its writer renews: a new version
    clock.now += 20
    assert not (await waiter.observe(NS, "web", b, [b], True, alive)).held
    clock.now += LEASE_DURATION_SECONDS
    taken = await waiter.observe(NS, "web", b, [b], True, alive)
    assert taken.held and taken.recovered_from == "someone"


async def test_a_gone_holder_is_taken_over_after_a_short_grace(kube: FakeApi) -> None:
    clock = Clock()
    a = rollout("a", "2026-01-01T00:00:00Z", Phase.PROGRESSING)
    b = rollout("b", "2026-01-01T00:00:01Z")
    lock = LeaseLock(kube, clock)  # type: ignore[arg-type]
    await lock.observe(NS, "web", a, [a], True, alive)

    async def gone(namespace: str, name: str, uid: str) -> bool:
        return False

    assert not (await lock.observe(NS, "web", b, [b], True, gone)).held  # a not in the index
    clock.now += TAKEOVER_GRACE_SECONDS
    taken = await lock.observe(NS, "web", b, [b], True, gone)
    assert taken.held and taken.recovered_from == "a"


async def test_an_ended_holder_that_releases_within_the_grace_hands_over_cleanly(
    kube: FakeApi,
) -> None:
    """The normal handoff: the waiter sees the holder's terminal status (watch) a moment
    before the holder's release; it waits for the release rather than take over."""
    clock = Clock()
    a = rollout("a", "2026-01-01T00:00:00Z", Phase.CLEANING_UP)
    a_ended = rollout("a", "2026-01-01T00:00:00Z", Phase.SUCCEEDED)
    b = rollout("b", "2026-01-01T00:00:01Z")
    lock = LeaseLock(kube, clock)  # type: ignore[arg-type]
    await lock.observe(NS, "web", a, [a], True, alive)

    async def ended(namespace: str, name: str, uid: str) -> bool:
        return False

    assert not (await lock.observe(NS, "web", b, [a_ended, b], True, ended)).held
    clock.now += 0.05
    assert await lock.release(NS, "web", "uid-a")
    taken = await lock.observe(NS, "web", b, [a_ended, b], True, ended)
    assert taken.held and taken.recovered_from is None and taken.token == 2
    history = json.loads(lease_of(kube)["metadata"]["annotations"]["canary-operator.dev/history"])
    assert [h["holder"] for h in history] == ["a", "b"]
    assert all("takenOverBy" not in h for h in history)


async def test_only_one_of_two_racing_writers_wins(kube: FakeApi) -> None:
    a, b = rollout("a", "2026-01-01T00:00:00Z"), rollout("b", "2026-01-01T00:00:00Z")
    first, second = LeaseLock(kube, Clock()), LeaseLock(kube, Clock())  # type: ignore[arg-type]
    await first.observe(NS, "web", a, [a], True, alive)
    await first.release(NS, "web", "uid-a")
    stale = await kube.get(
        f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{lease_name('web')}"
    )
    assert stale is not None
    # a writes first; b's write carries the version it read before: 409, not a 2nd holder
    assert (await first.observe(NS, "web", a, [a, b], True, alive)).held
    stale["spec"]["holderIdentity"] = "uid-b"
    with pytest.raises(Conflict):
        await kube.replace(
            f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{lease_name('web')}", stale
        )
    assert not (await second.observe(NS, "web", b, [a, b], True, alive)).held


async def test_release_only_by_the_holder_and_records_it(kube: FakeApi) -> None:
    a = rollout("a", "2026-01-01T00:00:00Z")
    lock = LeaseLock(kube, Clock())  # type: ignore[arg-type]
    await lock.observe(NS, "web", a, [a], True, alive)
    assert not await lock.release(NS, "web", "uid-someone-else")
    assert await lock.release(NS, "web", "uid-a")
    body = lease_of(kube)
    assert body["spec"]["holderIdentity"] is None
    history = json.loads(body["metadata"]["annotations"]["canary-operator.dev/history"])
    assert "released" in history[-1]
    # the fencing token keeps counting across holders
    assert (await lock.observe(NS, "web", a, [a], True, alive)).token == 2


async def test_confirm_is_true_only_for_the_holder_with_its_token(kube: FakeApi) -> None:
    a, b = rollout("a", "2026-01-01T00:00:00Z"), rollout("b", "2026-01-01T00:00:01Z")
    lock = LeaseLock(kube, Clock())  # type: ignore[arg-type]
    assert not await lock.confirm(NS, "web", "uid-a", 1)  # no lease yet
    await lock.observe(NS, "web", a, [a], True, alive)
    assert await lock.confirm(NS, "web", "uid-a", 1)
    assert not await lock.confirm(NS, "web", "uid-a", 2)  # a later acquisition's token
    assert not await lock.confirm(NS, "web", "uid-b", 1)
    await lock.release(NS, "web", "uid-a")
    assert not await lock.confirm(NS, "web", "uid-a", 1)
    await lock.observe(NS, "web", b, [b], True, alive)
    assert await lock.confirm(NS, "web", "uid-b", 2)


async def test_a_held_lease_is_renewed_by_the_renewer_also_after_a_restart(
    kube: FakeApi,
) -> None:
    a = rollout("a", "2026-01-01T00:00:00Z", Phase.PROGRESSING)
    first = LeaseLock(kube, Clock())  # type: ignore[arg-type]
    await first.observe(NS, "web", a, [a], True, alive)
    assert first.renewer.holds(NS, lease_name("web"))
    restarted = LeaseLock(kube, Clock())  # type: ignore[arg-type]  # a new operator process
    assert not restarted.renewer.holds(NS, lease_name("web"))
    view = await restarted.observe(NS, "web", a, [a], False, alive)
    assert view.held and view.token == 1
    assert restarted.renewer.holds(NS, lease_name("web"))
    await restarted.release(NS, "web", "uid-a")
    assert not restarted.renewer.holds(NS, lease_name("web"))


async def test_a_stale_view_of_the_would_be_holder_does_not_take_a_free_lock(
    kube: FakeApi,
) -> None:
    """Another operator process ended this rollout's run and released the lock after we
    read the rollout: the fresh read right before acquiring says so."""
    a = rollout("a", "2026-01-01T00:00:00Z", Phase.CLEANING_UP)

    async def moved_on() -> bool:
        return False

    async def as_read() -> bool:
        return True

    view = await LeaseLock(kube, Clock()).observe(  # type: ignore[arg-type]
        NS, "web", a, [a], True, alive, moved_on
    )
    assert not view.held and kube.objects == {}
    view = await LeaseLock(kube, Clock()).observe(  # type: ignore[arg-type]
        NS, "web", a, [a], True, alive, as_read
    )
    assert view.held and view.token == 1


class CountingApi(FakeApi):
    """Counts the reads of the Lease that reach the API."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, path: str) -> dict[str, Any] | None:
        self.gets += 1
        return await super().get(path)


async def held_by_a() -> tuple[CountingApi, LeaseLock]:
    api = CountingApi()
    a = rollout("a", "2026-01-01T00:00:00Z", Phase.PROGRESSING)
    lock = LeaseLock(api, Clock())  # type: ignore[arg-type]
    assert (await lock.observe(NS, "web", a, [a], True, alive)).held
    return api, lock


async def test_the_holder_releases_against_the_version_it_wrote_without_reading_it() -> None:
    api, lock = await held_by_a()
    reads = api.gets
    assert await lock.release(NS, "web", "uid-a")
    assert api.gets == reads  # the renewer's version (its acquisition) was current
    body = lease_of(api)
    assert body["spec"]["holderIdentity"] is None
    history = json.loads(body["metadata"]["annotations"]["canary-operator.dev/history"])
    assert history[-1]["holder"] == "a" and "released" in history[-1]
    assert not lock.renewer.holds(NS, lease_name("web"))


async def written_behind_our_back(api: CountingApi, **spec: Any) -> None:
    """The Lease's spec changed by another writer (this process never sees it)."""
    where = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{lease_name('web')}"
    lease = await api.get(where)
    assert lease is not None
    lease["spec"].update(spec)
    await api.replace(where, lease)


async def test_a_write_the_holder_did_not_see_costs_one_fresh_read_then_the_release() -> None:
    """Another operator process renewed the lease (same holder, same token) after our
    last view: the conditional release meets a 409, reads the Lease once and releases."""
    api, lock = await held_by_a()
    await written_behind_our_back(api, renewTime="2026-01-01T00:00:09.000000Z")
    reads = api.gets
    assert await lock.release(NS, "web", "uid-a")
    assert api.gets == reads + 1
    assert lease_of(api)["spec"]["holderIdentity"] is None


async def test_a_lease_taken_by_another_since_our_last_view_is_left_to_it() -> None:
    """A force release and a new holder we did not see: our release is refused (409),
    the fresh read shows someone else holds it, and it stays theirs."""
    api, lock = await held_by_a()
    await written_behind_our_back(api, holderIdentity="uid-b", leaseTransitions=2)
    assert not await lock.release(NS, "web", "uid-a")
    assert lease_of(api)["spec"]["holderIdentity"] == "uid-b"


async def test_a_release_without_a_view_of_its_own_reads_the_lease_first() -> None:
    """A restarted process that never saw the lease held: the fresh read decides."""
    api = CountingApi()
    a = rollout("a", "2026-01-01T00:00:00Z", Phase.PROGRESSING)
    await LeaseLock(api, Clock()).observe(NS, "web", a, [a], True, alive)  # type: ignore[arg-type]
    restarted = LeaseLock(api, Clock())  # type: ignore[arg-type]
    reads = api.gets
    assert await restarted.release(NS, "web", "uid-a")
    assert api.gets == reads + 1
    assert lease_of(api)["spec"]["holderIdentity"] is None


async def test_taking_the_lock_says_so_once_and_a_held_view_does_not() -> None:
    api = CountingApi()
    a = rollout("a", "2026-01-01T00:00:00Z", Phase.PROGRESSING)
    lock = LeaseLock(api, Clock())  # type: ignore[arg-type]
    taken = await lock.observe(NS, "web", a, [a], True, alive)
    assert taken.held and taken.acquired
    again = await lock.observe(NS, "web", a, [a], True, alive)
    assert again.held and not again.acquired


async def test_an_acquisition_says_which_free_version_it_was_conditional_on() -> None:
    """ "" when it created the Lease, the free Lease's version when it took that, and
    nothing after a takeover (the Lease was held, by an ended holder, until then)."""
    api = CountingApi()
    clock = Clock()
    a = rollout("a", "2026-01-01T00:00:00Z", Phase.PROGRESSING)
    b = rollout("b", "2026-01-01T00:00:01Z", Phase.PROGRESSING)
    lock = LeaseLock(api, clock)  # type: ignore[arg-type]
    assert (await lock.observe(NS, "web", a, [a], True, alive)).acquired_over == ""
    await lock.release(NS, "web", "uid-a")
    free = lease_of(api)["metadata"]["resourceVersion"]
    assert await lock.cached_version(NS, "web") == free
    taken = await lock.observe(NS, "web", b, [b], True, alive)
    assert taken.held and taken.acquired_over == free

    async def gone(namespace: str, name: str, uid: str) -> bool:
        return False

    c = rollout("c", "2026-01-01T00:00:02Z")
    assert not (await lock.observe(NS, "web", c, [c], True, gone)).held  # b not in the index
    clock.now += TAKEOVER_GRACE_SECONDS
    over = await lock.observe(NS, "web", c, [c], True, gone)
    assert over.held and over.recovered_from == "b" and over.acquired_over is None
