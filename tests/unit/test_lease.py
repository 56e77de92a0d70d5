"""The Lease protocol against an in-memory API that enforces resourceVersion
preconditions like the real one (the real API is exercised by the e2e suite)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import pytest

from canary_operator.api.models import Phase
from canary_operator.kube.api import Conflict
from canary_operator.lock.lease import (
    HISTORY_ANNOTATION,
    HOLDER_ANNOTATION,
    IDENTITY_ANNOTATION,
    LEASE_DURATION_SECONDS,
    TAKEOVER_GRACE_SECONDS,
    LeaseLock,
    lease_name,
)
from canary_operator.lock.queue import Candidate
from tests.harness.fake_api import Clock, FakeApi

NS = "ns"


def rollout(name: str, created: str, phase: Phase = Phase.QUEUED) -> Candidate:
    return Candidate(name=name, uid=f"uid-{name}", applied=created, phase=phase)


async def alive(namespace: str, name: str, identity: str | None) -> bool:
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
    assert view_a.held and view_a.token == 1 and view_a.tokens == (("web", 1),)
    # The holder is the run (uid/run), and the identity this operator wrote is kept beside
    # it: anything else in holderIdentity is someone else's.
    lease = lease_of(kube)
    assert lease["spec"]["holderIdentity"] == "uid-a/1"
    assert lease["metadata"]["annotations"][IDENTITY_ANNOTATION] == "uid-a/1"
    assert lease["metadata"]["annotations"][HOLDER_ANNOTATION] == "a"
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
    assert lease_of(kube)["spec"]["holderIdentity"] == "uid-a/1"
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
    asked: list[tuple[str, str, str | None]] = []

    async def still_running(namespace: str, name: str, identity: str | None) -> bool:
        asked.append((namespace, name, identity))
        return True  # the index was stale: the API server says it runs

    view = await lock.observe(NS, "web", b, [a_ended, b], True, still_running)
    assert not view.held and view.busy and asked == []  # within the grace: not even asked
    clock.now += TAKEOVER_GRACE_SECONDS
    view = await lock.observe(NS, "web", b, [a_ended, b], True, still_running)
    assert not view.held and view.busy
    assert asked == [(NS, "a", "uid-a/1")]  # the run is asked about, not the rollout

    async def ended(namespace: str, name: str, identity: str | None) -> bool:
        return False

    taken = await lock.observe(NS, "web", b, [a_ended, b], True, ended)
    assert taken.held and taken.recovered_from == "a" and taken.token == 2


async def test_only_the_head_of_the_queue_asks_whether_the_holder_still_runs(
    kube: FakeApi,
) -> None:
    a = rollout("a", "2026-01-01T00:00:00Z", Phase.SUCCEEDED)
    b, c = rollout("b", "2026-01-01T00:00:01Z"), rollout("c", "2026-01-01T00:00:02Z")
    lock = LeaseLock(kube, Clock())  # type: ignore[arg-type]
    await lock.observe(NS, "web", rollout("a", a.applied), [], True, alive)
    asked: list[str] = []

    async def check(namespace: str, name: str, identity: str | None) -> bool:
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
    assert taken.held and (taken.recovered_from or "").startswith(
        "someone, not a run of this operator"
    )


async def test_a_gone_holder_is_taken_over_after_a_short_grace(kube: FakeApi) -> None:
    clock = Clock()
    a = rollout("a", "2026-01-01T00:00:00Z", Phase.PROGRESSING)
    b = rollout("b", "2026-01-01T00:00:01Z")
    lock = LeaseLock(kube, clock)  # type: ignore[arg-type]
    await lock.observe(NS, "web", a, [a], True, alive)

    async def gone(namespace: str, name: str, identity: str | None) -> bool:
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

    async def ended(namespace: str, name: str, identity: str | None) -> bool:
        return False

    assert not (await lock.observe(NS, "web", b, [a_ended, b], True, ended)).held
    clock.now += 0.05
    assert await lock.release(NS, "web", "uid-a", 1)
    taken = await lock.observe(NS, "web", b, [a_ended, b], True, ended)
    assert taken.held and taken.recovered_from is None and taken.token == 2
    history = json.loads(lease_of(kube)["metadata"]["annotations"]["canary-operator.dev/history"])
    assert [h["holder"] for h in history] == ["a", "b"]
    assert all("takenOverBy" not in h for h in history)


async def test_only_one_of_two_racing_writers_wins(kube: FakeApi) -> None:
    a, b = rollout("a", "2026-01-01T00:00:00Z"), rollout("b", "2026-01-01T00:00:00Z")
    first, second = LeaseLock(kube, Clock()), LeaseLock(kube, Clock())  # type: ignore[arg-type]
    await first.observe(NS, "web", a, [a], True, alive)
    await first.release(NS, "web", "uid-a", 1)
    stale = await kube.get(
        f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{lease_name('web')}"
    )
    assert stale is not None
    # a writes first; b's write carries the version it read before: 409, not a 2nd holder
    assert (await first.observe(NS, "web", a, [a, b], True, alive)).held
    stale["spec"]["holderIdentity"] = "uid-b/1"
    with pytest.raises(Conflict):
        await kube.replace(
            f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{lease_name('web')}", stale
        )
    assert not (await second.observe(NS, "web", b, [a, b], True, alive)).held


async def test_release_only_by_the_holder_and_records_it(kube: FakeApi) -> None:
    a = rollout("a", "2026-01-01T00:00:00Z")
    lock = LeaseLock(kube, Clock())  # type: ignore[arg-type]
    await lock.observe(NS, "web", a, [a], True, alive)
    assert not await lock.release(NS, "web", "uid-someone-else", 1)
    assert not await lock.release(NS, "web", "uid-a", 2)  # another run of the same rollout
    assert lease_of(kube)["spec"]["holderIdentity"] == "uid-a/1"
    assert await lock.release(NS, "web", "uid-a", 1)
    body = lease_of(kube)
    assert body["spec"]["holderIdentity"] is None
    annotations = body["metadata"]["annotations"]
    assert HOLDER_ANNOTATION not in annotations and IDENTITY_ANNOTATION not in annotations
    history = json.loads(body["metadata"]["annotations"]["canary-operator.dev/history"])
    assert "released" in history[-1]
    # the fencing token keeps counting across holders
    assert (await lock.observe(NS, "web", a, [a], True, alive)).token == 2


async def test_confirm_is_true_only_for_the_holder_with_its_token(kube: FakeApi) -> None:
    a, b = rollout("a", "2026-01-01T00:00:00Z"), rollout("b", "2026-01-01T00:00:01Z")
    lock = LeaseLock(kube, Clock())  # type: ignore[arg-type]
    assert not await lock.confirm(NS, "web", "uid-a", 1, 1)  # no lease yet
    await lock.observe(NS, "web", a, [a], True, alive)
    assert await lock.confirm(NS, "web", "uid-a", 1, 1)
    assert not await lock.confirm(NS, "web", "uid-a", 1, 2)  # a later acquisition's token
    assert not await lock.confirm(NS, "web", "uid-a", 2, 1)  # another run of the rollout
    assert not await lock.confirm(NS, "web", "uid-b", 1, 1)
    await lock.release(NS, "web", "uid-a", 1)
    assert not await lock.confirm(NS, "web", "uid-a", 1, 1)
    await lock.observe(NS, "web", b, [b], True, alive)
    assert await lock.confirm(NS, "web", "uid-b", 1, 2)


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
    await restarted.release(NS, "web", "uid-a", 1)
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
    assert await lock.release(NS, "web", "uid-a", 1)
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
    assert await lock.release(NS, "web", "uid-a", 1)
    assert api.gets == reads + 1
    assert lease_of(api)["spec"]["holderIdentity"] is None


async def test_a_lease_taken_by_another_since_our_last_view_is_left_to_it() -> None:
    """A force release and a new holder we did not see: our release is refused (409),
    the fresh read shows someone else holds it, and it stays theirs."""
    api, lock = await held_by_a()
    await written_behind_our_back(api, holderIdentity="uid-b/1", leaseTransitions=2)
    assert not await lock.release(NS, "web", "uid-a", 1)
    assert lease_of(api)["spec"]["holderIdentity"] == "uid-b/1"


async def test_a_release_without_a_view_of_its_own_reads_the_lease_first() -> None:
    """A restarted process that never saw the lease held: the fresh read decides."""
    api = CountingApi()
    a = rollout("a", "2026-01-01T00:00:00Z", Phase.PROGRESSING)
    await LeaseLock(api, Clock()).observe(NS, "web", a, [a], True, alive)  # type: ignore[arg-type]
    restarted = LeaseLock(api, Clock())  # type: ignore[arg-type]
    reads = api.gets
    assert await restarted.release(NS, "web", "uid-a", 1)
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
    await lock.release(NS, "web", "uid-a", 1)
    free = lease_of(api)["metadata"]["resourceVersion"]
    assert await lock.cached_version(NS, "web") == free
    taken = await lock.observe(NS, "web", b, [b], True, alive)
    assert taken.held and taken.acquired_over == free

    async def gone(namespace: str, name: str, identity: str | None) -> bool:
        return False

    c = rollout("c", "2026-01-01T00:00:02Z")
    assert not (await lock.observe(NS, "web", c, [c], True, gone)).held  # b not in the index
    clock.now += TAKEOVER_GRACE_SECONDS
    over = await lock.observe(NS, "web", c, [c], True, gone)
    assert over.held and over.recovered_from == "b" and over.acquired_over is None


# ------------------------------------------------------------ the holder is the run

LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
WEB = f"{LEASES}/{lease_name('web')}"


def run_of_a(run: int, phase: Phase = Phase.QUEUED) -> Candidate:
    """Rollout a's run `run` (its uid stays; each run is a new holder)."""
    return replace(rollout("a", "2026-01-01T00:00:00Z", phase), run=run)


async def test_a_late_release_or_confirm_of_run_1_cannot_touch_run_2s_lease(
    kube: FakeApi,
) -> None:
    """Run 1 released; run 2 of the same rollout (after an edit) took the lease. Run 1's
    late release (retried, or from another operator process) and a late fencing read of
    run 1 see run 2's holderIdentity: nothing of run 1 passes for run 2."""
    clock = Clock()
    lock = LeaseLock(kube, clock)  # type: ignore[arg-type]
    assert (await lock.observe(NS, "web", run_of_a(1), [run_of_a(1)], True, alive)).held
    assert await lock.release(NS, "web", "uid-a", 1)
    second = await lock.observe(NS, "web", run_of_a(2), [run_of_a(2)], True, alive)
    assert second.held and second.token == 2
    assert lease_of(kube)["spec"]["holderIdentity"] == "uid-a/2"
    version = lease_of(kube)["metadata"]["resourceVersion"]
    # The same process (whose renewer holds run 2's lease) and another one (no view).
    for process in (lock, LeaseLock(kube, Clock())):  # type: ignore[arg-type]
        assert not await process.release(NS, "web", "uid-a", 1)
        assert not await process.confirm(NS, "web", "uid-a", 1, 1)
        assert not await process.confirm(NS, "web", "uid-a", 1, 2)  # not even with its token
        assert await process.confirm(NS, "web", "uid-a", 2, 2)
    assert lease_of(kube)["metadata"]["resourceVersion"] == version  # nothing written
    assert lease_of(kube)["spec"]["holderIdentity"] == "uid-a/2"
    # Run 1's late release left run 2's renewal alone: it is renewed when due.
    clock.now += lock.renewer.renew_every
    renewals = lock.renewer.renew_due()
    assert len(renewals) == 1
    await asyncio.wait_for(asyncio.gather(*renewals), timeout=5)
    assert lease_of(kube)["metadata"]["resourceVersion"] != version
    assert lease_of(kube)["spec"]["holderIdentity"] == "uid-a/2"
    assert await lock.release(NS, "web", "uid-a", 2)
    assert lease_of(kube)["spec"]["holderIdentity"] is None


async def test_run_2_takes_over_run_1s_unreleased_lease_after_the_grace_and_a_fresh_check(
    kube: FakeApi,
) -> None:
    """Run 1 ended without releasing (its release was lost). Run 2 of the same rollout
    takes the lease over only after the grace, and only once a fresh read of the
    rollout says run 1 is over (status.run moved on)."""
    clock = Clock()
    holder = LeaseLock(kube, clock)  # type: ignore[arg-type]
    assert (
        await holder.observe(NS, "web", run1 := run_of_a(1, Phase.PROGRESSING), [run1], True, alive)
    ).held
    status_run = 1  # status.run as the API server has it
    asked: list[str | None] = []

    async def fresh_check(namespace: str, name: str, identity: str | None) -> bool:
        asked.append(identity)
        return name == "a" and identity == f"uid-a/{status_run}"

    lock = LeaseLock(kube, clock)  # type: ignore[arg-type]  # another operator process
    run2 = run_of_a(2)
    view = await lock.observe(NS, "web", run2, [run2], True, fresh_check)
    assert not view.held and view.busy and view.holder == "a" and asked == []  # the grace
    clock.now += TAKEOVER_GRACE_SECONDS - 0.1
    assert not (await lock.observe(NS, "web", run2, [run2], True, fresh_check)).held
    assert asked == []
    clock.now += 0.1
    # The fresh read still shows run 1 (the index was ahead of it): left to run 1.
    assert not (await lock.observe(NS, "web", run2, [run2], True, fresh_check)).held
    assert asked == ["uid-a/1"]
    assert lease_of(kube)["spec"]["holderIdentity"] == "uid-a/1"
    status_run = 2
    taken = await lock.observe(NS, "web", run2, [run2], True, fresh_check)
    assert asked == ["uid-a/1", "uid-a/1"]
    assert taken.held and taken.token == 2 and taken.recovered_from == "a"
    assert lease_of(kube)["spec"]["holderIdentity"] == "uid-a/2"
    history = json.loads(lease_of(kube)["metadata"]["annotations"][HISTORY_ANNOTATION])
    assert [(h["run"], h.get("takenOverBy")) for h in history] == [(1, "a"), (2, None)]
    # Run 1's late release, from the process that held it, finds run 2 holding it.
    assert not await holder.release(NS, "web", "uid-a", 1)
    assert lease_of(kube)["spec"]["holderIdentity"] == "uid-a/2"


async def test_an_ended_run_s_lease_is_not_kept_alive_by_this_process(kube: FakeApi) -> None:
    """The process that held run 1's lease renews what it holds while the rollout is
    active, and after an edit the rollout is active again (run 2, Queued). Renewals
    would restart the grace over and over; run 2's first look stops them."""
    clock = Clock()
    lock = LeaseLock(kube, clock)  # type: ignore[arg-type]
    assert (
        await lock.observe(NS, "web", run1 := run_of_a(1, Phase.PROGRESSING), [run1], True, alive)
    ).held
    lock.renewer.holder_active = lambda namespace, uid: True  # rollout a runs (run 2)
    run2 = run_of_a(2)

    async def moved_on(namespace: str, name: str, identity: str | None) -> bool:
        return False

    assert not (await lock.observe(NS, "web", run2, [run2], True, moved_on)).held
    assert not lock.renewer.holds(NS, lease_name("web"))
    for _ in range(3):
        clock.now += lock.renewer.renew_every
        assert lock.renewer.renew_due() == []
    taken = await lock.observe(NS, "web", run2, [run2], True, moved_on)
    assert taken.held and lease_of(kube)["spec"]["holderIdentity"] == "uid-a/2"
    assert lock.renewer.holder(NS, lease_name("web")) == "uid-a/2"


async def test_a_rollout_gone_on_to_its_next_run_keeps_that_run_s_place_in_the_queue(
    kube: FakeApi,
) -> None:
    """Run 1 of a holds the lease unreleased; a's run 2 was applied before c: c sees
    a's run 2 ahead of it (it does not take a's place because a's old run holds)."""
    clock = Clock()
    lock = LeaseLock(kube, clock)  # type: ignore[arg-type]
    assert (
        await lock.observe(NS, "web", run1 := run_of_a(1, Phase.PROGRESSING), [run1], True, alive)
    ).held
    a2 = replace(run_of_a(2), applied="2026-01-01T00:05:00Z")
    c = rollout("c", "2026-01-01T00:07:00Z")
    asked: list[str] = []

    async def moved_on(namespace: str, name: str, identity: str | None) -> bool:
        asked.append(name)
        return False

    clock.now += TAKEOVER_GRACE_SECONDS
    view = await lock.observe(NS, "web", c, [a2, c], True, moved_on)
    assert not view.held and view.position == 2 and asked == []
    await lock.observe(NS, "web", a2, [a2, c], True, moved_on)  # starts a2's grace
    clock.now += TAKEOVER_GRACE_SECONDS
    taken = await lock.observe(NS, "web", a2, [a2, c], True, moved_on)
    assert taken.held and lease_of(kube)["spec"]["holderIdentity"] == "uid-a/2"


# ------------------------------------------------------------------ foreign holders

LEGACY_UID = "0f8fad5b-d9cb-469f-a165-70867728950e"  # a uid: 36 characters


async def put_lease(kube: FakeApi, identity: str, annotations: dict[str, str], **spec: Any) -> None:
    await kube.create(
        LEASES,
        {
            "metadata": {"name": lease_name("web"), "namespace": NS, "annotations": annotations},
            "spec": {"holderIdentity": identity, "leaseTransitions": 4, **spec},
        },
    )


@pytest.mark.parametrize(
    ("identity", "annotations"),
    [
        # Someone rewrote holderIdentity and kept our annotations (the identity we wrote).
        ("other-tool", {HOLDER_ANNOTATION: "a", IDENTITY_ANNOTATION: "uid-a/1"}),
        (LEGACY_UID, {HOLDER_ANNOTATION: "a", IDENTITY_ANNOTATION: "uid-a/1"}),
        ("uid-a/2", {HOLDER_ANNOTATION: "a", IDENTITY_ANNOTATION: "uid-a/1"}),
        # ... or kept only the holder annotation, with no identity of ours beside it.
        ("other-tool", {HOLDER_ANNOTATION: "a"}),
    ],
)
async def test_a_foreign_holder_is_respected_for_its_own_lease_duration(
    kube: FakeApi, identity: str, annotations: dict[str, str]
) -> None:
    await put_lease(kube, identity, annotations, leaseDurationSeconds=3600)
    clock = Clock()
    lock = LeaseLock(kube, clock)  # type: ignore[arg-type]
    b = rollout("b", "2026-01-01T00:00:01Z")
    asked: list[str] = []

    async def gone(namespace: str, name: str, identity: str | None) -> bool:
        asked.append(name)
        return False  # rollout a (named by the annotation) has long ended

    view = await lock.observe(NS, "web", b, [b], True, gone)
    assert not view.held and view.busy and (view.holder or "").startswith(identity)
    for _ in range(6):  # a minute, looked at every 10 s
        clock.now += 10
        view = await lock.observe(NS, "web", b, [b], True, gone)
        assert not view.held and view.busy
    clock.now += 3600 - 60 - 1
    assert not (await lock.observe(NS, "web", b, [b], True, gone)).held
    assert lease_of(kube)["spec"]["holderIdentity"] == identity
    clock.now += 1  # unchanged for its leaseDurationSeconds, on our clock
    taken = await lock.observe(NS, "web", b, [b], True, gone)
    assert taken.held and taken.token == 5 and (taken.recovered_from or "").startswith(identity)
    assert asked == []  # no rollout's state decides over a foreign holder
    assert lease_of(kube)["spec"]["holderIdentity"] == "uid-b/1"


async def test_a_foreign_holder_s_renewal_restarts_its_duration(kube: FakeApi) -> None:
    await put_lease(kube, "other-tool", {HOLDER_ANNOTATION: "a"}, leaseDurationSeconds=3600)
    clock = Clock()
    lock = LeaseLock(kube, clock)  # type: ignore[arg-type]
    b = rollout("b", "2026-01-01T00:00:01Z")
    assert not (await lock.observe(NS, "web", b, [b], True, alive)).held
    clock.now += 3000
    renewed = lease_of(kube)
    await kube.replace(WEB, renewed)  # its holder renews: a new version
    assert not (await lock.observe(NS, "web", b, [b], True, alive)).held
    clock.now += 3599
    assert not (await lock.observe(NS, "web", b, [b], True, alive)).held
    clock.now += 1
    assert (await lock.observe(NS, "web", b, [b], True, alive)).held


async def test_a_legacy_lease_naming_a_live_rollout_by_its_uid_is_still_its_holder(
    kube: FakeApi,
) -> None:
    """Written before the upgrade: holderIdentity the bare uid, the holder annotation,
    no identity annotation. It names the rollout's run in progress: that run holds it,
    confirms and releases it; nobody else takes it while the rollout runs."""
    await put_lease(kube, LEGACY_UID, {HOLDER_ANNOTATION: "a"}, leaseDurationSeconds=30)
    clock = Clock()
    a = Candidate(
        name="a", uid=LEGACY_UID, applied="2026-01-01T00:00:00Z", phase=Phase.PROGRESSING, run=3
    )
    b = rollout("b", "2026-01-01T00:00:01Z")
    waiter = LeaseLock(kube, clock)  # type: ignore[arg-type]
    asked: list[str] = []

    async def check(namespace: str, name: str, identity: str | None) -> bool:
        asked.append(name)
        return True

    for _ in range(4):
        view = await waiter.observe(NS, "web", b, [a, b], True, check)
        assert not view.held and view.busy and view.holder == "a"
        assert view.holder_phase == "Progressing"
        clock.now += LEASE_DURATION_SECONDS * 10
    assert asked == []  # a live holder: not even asked about
    holder = LeaseLock(kube, clock)  # type: ignore[arg-type]  # e.g. after the upgrade
    held = await holder.observe(NS, "web", a, [a, b], True, check)
    assert held.held and held.token == 4 and held.tokens == (("web", 4),)
    assert await holder.confirm(NS, "web", LEGACY_UID, 3, 4)
    assert lease_of(kube)["spec"]["holderIdentity"] == LEGACY_UID  # not rewritten
    assert await holder.release(NS, "web", LEGACY_UID, 3)
    assert lease_of(kube)["spec"]["holderIdentity"] is None
    taken = await waiter.observe(NS, "web", b, [b], True, check)
    assert taken.held and taken.token == 5 and taken.recovered_from is None
