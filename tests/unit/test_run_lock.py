"""lock/run_lock.py: the lock as one run meets it in a reconcile, on the fake cluster:
the precondition of taking a free lock, the fence before each write, the check that a
holder still runs, and when a read made before the lock was taken still stands."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.engine.types import LockView
from canary_operator.index import RolloutIndex, candidate, parse_spec
from canary_operator.kube.api import Conflict, JsonObj
from canary_operator.kube.rollouts import FINALIZER, rollout_path
from canary_operator.lock.keys import lock_keys, target_key
from canary_operator.lock.lease import (
    HISTORY_ANNOTATION,
    TAKEOVER_GRACE_SECONDS,
    LeaseLock,
    Look,
    lease_name,
)
from canary_operator.lock.queue import Candidate
from canary_operator.lock.renewer import lease_path
from canary_operator.lock.run_lock import LockLost, RunLock, StillAsRead
from tests.harness.fake_api import Clock
from tests.harness.reconcile_fixtures import (
    NAME,
    NS,
    UID,
    Cluster,
    fake_cluster,
    rollout_body,
    spec,
)

ROLLOUT = rollout_path(NS, NAME)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with fake_cluster() as made:
        yield made


def run_lock(cluster: Cluster) -> RunLock:
    return RunLock(cluster.deps.lock, cluster.fresh, NS, ("web",), "web", UID, 1)


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


async def test_the_fence_reads_the_lease_before_every_write_also_the_first_after_taking_it(
    cluster: Cluster,
) -> None:
    """The acquisition does not stand in for the first write's fencing read: what came
    between them (server-side dry-runs through admission webhooks, a stalled process)
    may have been long enough for the lock to change hands."""
    body = cluster.add_rollout(rollout_body(status={"phase": "Queued"}))
    me = candidate(body)
    assert me is not None
    lock = run_lock(cluster)
    view = await lock.observe(me, {}, True, StillAsRead(cluster.kube, cluster.fresh, body))
    assert view.held and view.acquired and view.tokens == (("web", 1),)
    cluster.clear()
    fence = lock.fence(view)
    await fence()
    assert cluster.fresh.requests == [f"GET leases/{lease_name('web')}"]
    await fence()
    assert cluster.fresh.requests == [f"GET leases/{lease_name('web')}"] * 2
    assert cluster.kube.requests == []  # never the watch-fed view


async def test_the_fence_raises_lock_lost_once_another_holds_it(cluster: Cluster) -> None:
    body = cluster.add_rollout(rollout_body(status={"phase": "Queued"}))
    me = candidate(body)
    assert me is not None
    lock = run_lock(cluster)
    view = await lock.observe(me, {}, True, StillAsRead(cluster.kube, cluster.fresh, body))
    fence = lock.fence(view)
    await fence()
    where = lease_path(NS, lease_name("web"))
    taken = cluster.kube.stored(where)
    assert taken is not None
    taken["spec"]["holderIdentity"] = "someone-else"
    taken["spec"]["leaseTransitions"] = 2
    await cluster.kube.replace(where, taken)
    with pytest.raises(LockLost, match=r"lock cro-lock-web \(token 1\) no longer held"):
        await fence()


async def test_a_fence_of_a_view_holding_nothing_never_passes(cluster: Cluster) -> None:
    body = cluster.add_rollout(rollout_body(status={"phase": "Queued"}))
    me = candidate(body)
    assert me is not None
    lock = run_lock(cluster)
    await lock.observe(me, {}, True, StillAsRead(cluster.kube, cluster.fresh, body))
    with pytest.raises(LockLost):  # a view with no tokens: nothing it could confirm
        await lock.fence(LockView(name=lease_name("web"), held=True, token=1))()


async def test_a_holder_runs_until_the_api_server_says_its_run_ended(cluster: Cluster) -> None:
    lock = run_lock(cluster)
    cluster.add_rollout(rollout_body(status={"phase": "Progressing", "run": 1}))
    assert await lock.holder_running(NS, NAME, f"{UID}/1")
    assert await lock.holder_running(NS, NAME, UID)  # a legacy holder: the run in progress
    assert not await lock.holder_running(NS, NAME, "another-uid/1")  # recreated
    assert not await lock.holder_running(NS, NAME, "another-uid")
    assert not await lock.holder_running(NS, NAME, None)
    # An edit: run 1 ended, run 2 queued. The rollout runs, run 1 does not.
    cluster.kube.put(ROLLOUT, rollout_body(status={"phase": "Queued", "run": 2}))
    assert not await lock.holder_running(NS, NAME, f"{UID}/1")
    assert await lock.holder_running(NS, NAME, f"{UID}/2")
    cluster.kube.put(ROLLOUT, rollout_body(status={"phase": "Progressing"}))  # no run yet: 1
    assert await lock.holder_running(NS, NAME, f"{UID}/1")
    cluster.kube.put(ROLLOUT, rollout_body(status={"phase": "Failed", "run": 2}))
    assert not await lock.holder_running(NS, NAME, f"{UID}/2")
    assert not await lock.holder_running(NS, NAME, UID)
    assert not await lock.holder_running(NS, "gone", "uid-gone/1")
    # Always the API server itself, never the watch-fed view.
    assert cluster.kube.requests == [] and cluster.fresh.requests


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


# ------------------------------------------------------ several locks: all or none


def queued(
    name: str, created: str, *, group: str | None = None, deployment: str = "web", run: int = 1
) -> JsonObj:
    """A waiting rollout of `deployment`, of `group` if given."""
    fields: JsonObj = {"target": {"deployment": deployment, "service": "web"}}
    if group is not None:
        fields["lockGroup"] = group
    body = rollout_body(
        spec(**fields), {"phase": "Queued", "run": run}, name=name, uid=f"uid-{name}"
    )
    body["metadata"]["creationTimestamp"] = created
    return body


def lock_of(cluster: Cluster, body: JsonObj, lock: LeaseLock | None = None) -> RunLock:
    """The RunLock of `body`'s run, as ReconcileContext makes it."""
    made = parse_spec(body)
    run = max(int((body.get("status") or {}).get("run") or 0), 1)
    keys, target = lock_keys(made), target_key(made.target.deployment)
    uid = body["metadata"]["uid"]
    return RunLock(lock or cluster.deps.lock, cluster.fresh, NS, keys, target, uid, run)


async def observe(
    cluster: Cluster,
    body: JsonObj,
    *,
    wants: bool = True,
    lock: LeaseLock | None = None,
    index: RolloutIndex | None = None,
) -> LockView:
    """One reconcile's look at the locks of `body` (as stored now), as observe_lock
    makes it: everyone of each key from `index` (the cluster's by default)."""
    name = body["metadata"]["name"]
    stored = cluster.rollout(name)
    me = candidate(stored)
    assert me is not None
    seen = index or cluster.deps.index
    run_lock = lock_of(cluster, stored, lock)
    sharing = {key: seen.sharing_lock(NS, key) for key in run_lock.keys}
    return await run_lock.observe(
        me, sharing, wants, StillAsRead(cluster.kube, cluster.fresh, stored)
    )


def lease(cluster: Cluster, key: str) -> JsonObj | None:
    return cluster.kube.stored(lease_path(NS, lease_name(key)))


def holder(cluster: Cluster, key: str) -> str | None:
    found = lease(cluster, key)
    return found["spec"].get("holderIdentity") if found is not None else None


async def end_run(cluster: Cluster, body: JsonObj, phase: str = "Succeeded") -> None:
    """The run ends (terminal status written, as the watch shows it) and releases."""
    name = body["metadata"]["name"]
    stored = cluster.rollout(name)
    cluster.add_rollout({**stored, "status": {**stored["status"], "phase": phase}})
    assert await lock_of(cluster, stored).release()


async def test_a_grouped_run_takes_its_target_s_lock_and_its_group_s_in_lease_name_order(
    cluster: Cluster,
) -> None:
    body = cluster.add_rollout(queued("a", "2026-12-07T10:00:00Z", group="frontend"))
    assert lock_of(cluster, body).keys == ("frontend", "web")  # cro-lock-frontend < -web
    cluster.clear()
    view = await observe(cluster, body)
    assert view.held and view.acquired
    assert view.name == lease_name("web")  # the view names the target's lock
    assert view.tokens == (("frontend", 1), ("web", 1))
    created = [b["metadata"]["name"] for entry, b in cluster.kube.bodies if "leases" in entry]
    assert created == [lease_name("frontend"), lease_name("web")]
    assert holder(cluster, "frontend") == holder(cluster, "web") == "uid-a/1"
    again = await observe(cluster, body)
    assert again.held and not again.acquired and again.tokens == view.tokens


async def test_when_the_second_take_loses_a_race_the_first_is_given_back(
    cluster: Cluster,
) -> None:
    """Both Leases free when looked at; between that look and the take of the second,
    another operator process takes it for a plain rollout of the same target: the
    grouped run holds neither, and the group's lock is free again."""
    grouped = cluster.add_rollout(queued("a", "2026-12-07T10:00:00Z", group="frontend"))
    plain = cluster.add_rollout(queued("b", "2026-12-07T10:00:01Z"))
    elsewhere = RolloutIndex()  # the other process has not seen a yet
    elsewhere.update(cluster.rollout("b"))
    other = LeaseLock(cluster.kube, fresh=cluster.fresh)

    class Racing(LeaseLock):
        async def take(self, namespace: str, looked: Look, me: Candidate) -> LockView:
            if looked.key == "web":
                assert (await observe(cluster, plain, lock=other, index=elsewhere)).held
            return await super().take(namespace, looked, me)

    racing = Racing(cluster.kube, fresh=cluster.fresh)
    view = await observe(cluster, grouped, lock=racing)
    assert not view.held and not view.acquired and not view.tokens
    assert holder(cluster, "web") == "uid-b/1"
    assert holder(cluster, "frontend") is None  # taken, then given back
    frontend = lease(cluster, "frontend")
    assert frontend is not None and frontend["spec"]["leaseTransitions"] == 1
    history = json.loads(frontend["metadata"]["annotations"][HISTORY_ANNOTATION])
    assert [h["holder"] for h in history] == ["a"] and "released" in history[0]
    assert not racing.renewer.holds(NS, lease_name("frontend"))
    view = await observe(cluster, grouped, lock=racing)  # the next reconcile
    assert not view.held and view.busy and view.holder == "b"
    assert holder(cluster, "frontend") is None


async def test_a_waiting_run_holding_part_of_its_locks_gives_it_back(cluster: Cluster) -> None:
    """A process stopped between the two acquisitions of a run; meanwhile a plain
    rollout of the target took the target's lock. The waiting run gives back what it
    holds, rather than keep the group waiting on a run that cannot start."""
    grouped = cluster.add_rollout(queued("a", "2026-12-07T10:00:00Z", group="frontend"))
    plain = cluster.add_rollout(queued("b", "2026-12-07T10:00:01Z"))
    me = candidate(grouped)
    assert me is not None
    half = await cluster.deps.lock.observe(NS, "frontend", me, [me], True, still_running)
    assert half.held and holder(cluster, "frontend") == "uid-a/1"
    only_b = RolloutIndex()
    only_b.update(cluster.rollout("b"))
    assert (await observe(cluster, plain, index=only_b)).held
    for wants in (False, True):
        view = await observe(cluster, grouped, wants=wants)
        assert not view.held and view.busy and view.holder == "b"
        assert holder(cluster, "frontend") is None
        assert holder(cluster, "web") == "uid-b/1"


async def test_a_run_owing_a_cleanup_keeps_what_it_holds(cluster: Cluster) -> None:
    """Giving back is for waiting runs only: one that touched the target keeps its
    locks until its cleanup is done (a lost lock shows as not held)."""
    body = queued("a", "2026-12-07T10:00:00Z", group="frontend")
    grouped = cluster.add_rollout({**body, "status": {"phase": "Progressing", "run": 1}})
    me = candidate(grouped)
    assert me is not None
    assert (await cluster.deps.lock.observe(NS, "frontend", me, [me], True, still_running)).held
    where = lease_path(NS, lease_name("web"))
    cluster.kube.put(
        where,
        {
            "metadata": {"name": lease_name("web")},
            "spec": {"holderIdentity": "other-tool", "leaseDurationSeconds": 3600},
        },
    )
    view = await observe(cluster, grouped)
    assert not view.held and view.busy
    assert holder(cluster, "frontend") == "uid-a/1" and holder(cluster, "web") == "other-tool"


async def test_release_gives_up_every_lock_of_the_run_and_only_its_own(cluster: Cluster) -> None:
    body = cluster.add_rollout(queued("a", "2026-12-07T10:00:00Z", group="frontend"))
    assert (await observe(cluster, body)).held
    cluster.clear()
    run_lock = lock_of(cluster, body)
    assert await run_lock.release()
    written = [b["metadata"]["name"] for entry, b in cluster.kube.bodies if "leases" in entry]
    assert written == [lease_name("web"), lease_name("frontend")]  # the reverse order
    assert holder(cluster, "frontend") is None and holder(cluster, "web") is None
    assert not await run_lock.release()  # nothing left to release
    # Another run's locks are not this run's to release.
    assert (await observe(cluster, body)).held
    assert not await RunLock(
        cluster.deps.lock, cluster.fresh, NS, run_lock.keys, "web", "uid-a", 2
    ).release()
    assert holder(cluster, "frontend") == holder(cluster, "web") == "uid-a/1"


@pytest.mark.parametrize("grouped_first", [True, False])
@pytest.mark.parametrize("stale_indexes", [False, True])
async def test_a_grouped_and_a_plain_rollout_of_one_target_never_both_hold(
    cluster: Cluster, grouped_first: bool, stale_indexes: bool
) -> None:
    """Rollout a of Deployment web in group frontend, rollout b of web without a group
    (issue 23, what was seen 1). Whichever applied first runs; the other waits for it,
    also when each is judged by a process that has not seen the other (each then thinks
    it is the head and the other's lease stale: the fresh read of the holder decides)."""
    a_at, b_at = ("10:00:00", "10:00:01") if grouped_first else ("10:00:01", "10:00:00")
    grouped = cluster.add_rollout(queued("a", f"2026-12-07T{a_at}Z", group="frontend"))
    plain = cluster.add_rollout(queued("b", f"2026-12-07T{b_at}Z"))
    clock = Clock()
    indexes: dict[str, RolloutIndex | None] = {"a": None, "b": None}
    locks: dict[str, LeaseLock | None] = {"a": None, "b": None}
    if stale_indexes:
        for name in ("a", "b"):
            index = indexes[name] = RolloutIndex()
            index.update(cluster.rollout(name))
            locks[name] = LeaseLock(cluster.kube, clock, fresh=cluster.fresh)  # a process
    first, second = (grouped, plain) if grouped_first else (plain, grouped)
    order = [first, second, first, second]
    views: dict[str, LockView] = {}
    for body in order:
        name = body["metadata"]["name"]
        views[name] = await observe(cluster, body, lock=locks[name], index=indexes[name])
        assert not (views.get("a", NONE).held and views.get("b", NONE).held)
        # Past the grace: a holder that looks stale is asked about, fresh.
        clock.now += TAKEOVER_GRACE_SECONDS
    winner, loser = first["metadata"]["name"], second["metadata"]["name"]
    assert views[winner].held and not views[loser].held
    if stale_indexes:
        assert f"GET canaryrollouts/{winner}" in cluster.fresh.requests
    assert views[loser].busy and views[loser].holder == winner
    assert holder(cluster, "web") == f"uid-{winner}/1"
    assert holder(cluster, "frontend") == ("uid-a/1" if grouped_first else None)
    # The winner's run ends and releases: the other one goes.
    await end_run(cluster, first)
    if stale_indexes:
        for name, seen in indexes.items():
            assert seen is not None
            seen.update(cluster.rollout(name))
    after = await observe(cluster, second, lock=locks[loser], index=indexes[loser])
    assert after.held
    assert holder(cluster, "web") == f"uid-{loser}/1"
    assert holder(cluster, "frontend") == ("uid-a/1" if not grouped_first else None)


async def test_targets_whose_canary_names_collide_share_one_lock(cluster: Cluster) -> None:
    """web.v1 and web-v1 both get web-v1-canary: one lock, cro-lock-web-v1."""
    dotted = cluster.add_rollout(queued("a", "2026-12-07T10:00:00Z", deployment="web.v1"))
    dashed = cluster.add_rollout(queued("b", "2026-12-07T10:00:01Z", deployment="web-v1"))
    assert lock_of(cluster, dotted).keys == lock_of(cluster, dashed).keys == ("web-v1",)
    assert (await observe(cluster, dotted)).held
    view = await observe(cluster, dashed)
    assert not view.held and view.busy and view.holder == "a"
    leases = [k for k in cluster.kube.store.objects if k[1] == "leases"]
    assert [k[3] for k in leases] == [lease_name("web-v1")]


# ------------------------------------------------------------------ the fence, again


async def test_the_fence_confirms_every_lock_and_names_the_one_lost(cluster: Cluster) -> None:
    body = cluster.add_rollout(queued("a", "2026-12-07T10:00:00Z", group="frontend"))
    view = await observe(cluster, body)
    fence = lock_of(cluster, body).fence(view)
    cluster.clear()
    await fence()
    reads = sorted(cluster.fresh.requests)
    assert reads == [f"GET leases/{lease_name('frontend')}", f"GET leases/{lease_name('web')}"]
    await fence()
    assert len(cluster.fresh.requests) == 4  # every lock, before every write
    # The group's lock is taken from under the run (a human's force release, say).
    where = lease_path(NS, lease_name("frontend"))
    taken = cluster.kube.stored(where)
    assert taken is not None
    taken["spec"].update(holderIdentity="uid-intruder/1", leaseTransitions=2)
    await cluster.kube.replace(where, taken)
    with pytest.raises(LockLost) as lost:
        await fence()
    assert f"{lease_name('frontend')} (token 1)" in str(lost.value)
    assert lease_name("web") not in str(lost.value)


async def test_a_late_write_or_release_of_run_1_is_fenced_off_once_run_2_holds(
    cluster: Cluster,
) -> None:
    body = cluster.add_rollout(queued("a", "2026-12-07T10:00:00Z", group="frontend"))
    run1 = lock_of(cluster, body)
    fence1 = run1.fence(await observe(cluster, body))
    await fence1()
    await end_run(cluster, body)  # run 1 ends and releases; an edit starts run 2
    cluster.add_rollout({**cluster.rollout("a"), "status": {"phase": "Queued", "run": 2}})
    view2 = await observe(cluster, body)
    assert view2.held and view2.tokens == (("frontend", 2), ("web", 2))
    assert holder(cluster, "web") == holder(cluster, "frontend") == "uid-a/2"
    with pytest.raises(LockLost):
        await fence1()
    assert not await run1.release()  # run 1's late release
    assert holder(cluster, "web") == holder(cluster, "frontend") == "uid-a/2"
    await lock_of(cluster, cluster.rollout("a")).fence(view2)()


async def test_run_2_takes_over_run_1s_locks_once_the_api_server_shows_run_1_over(
    cluster: Cluster,
) -> None:
    """Run 1 ended without releasing (a lost release). Run 2 of the same rollout takes
    both locks over, after the grace, on a fresh read of the rollout."""
    clock = Clock()
    lock = LeaseLock(cluster.kube, clock, fresh=cluster.fresh)
    body = queued("a", "2026-12-07T10:00:00Z", group="frontend")
    cluster.add_rollout({**body, "status": {"phase": "Progressing", "run": 1}})
    assert (await observe(cluster, body, lock=lock)).held
    cluster.add_rollout({**cluster.rollout("a"), "status": {"phase": "Queued", "run": 2}})
    cluster.clear()
    view = await observe(cluster, body, lock=lock)
    assert not view.held and view.busy and view.holder == "a"
    assert f"GET canaryrollouts/{NAME}" not in cluster.fresh.requests
    assert cluster.fresh.requests == []  # within the grace: not even asked
    clock.now += TAKEOVER_GRACE_SECONDS
    taken = await observe(cluster, body, lock=lock)
    assert taken.held and taken.recovered_from == "a" and taken.acquired_over is None
    assert "GET canaryrollouts/a" in cluster.fresh.requests  # the fresh check
    assert taken.tokens == (("frontend", 2), ("web", 2))
    assert holder(cluster, "web") == holder(cluster, "frontend") == "uid-a/2"


async def still_running(namespace: str, name: str, identity: str | None) -> bool:
    return True


NONE = LockView(name="")
