"""Unit tests of the per-lock queue (`lock/queue.py`): order, position, Supersede."""

from __future__ import annotations

import random

import pytest

from canary_operator.api.models import ConcurrencyPolicy, Phase
from canary_operator.index import candidate
from canary_operator.lock.queue import UNSEEN, Candidate, QueueView, newest_waiting, order, view

QUEUE, SUPERSEDE = ConcurrencyPolicy.QUEUE, ConcurrencyPolicy.SUPERSEDE
OWING = [Phase.PROGRESSING, Phase.PAUSED, Phase.CLEANING_UP]
WAITING = [Phase.PENDING, Phase.QUEUED]
TERMINAL = [Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED, Phase.SUPERSEDED]


def cand(
    name: str,
    minute: int,
    phase: Phase = Phase.QUEUED,
    policy: ConcurrencyPolicy = QUEUE,
    deleting: bool = False,
) -> Candidate:
    return Candidate(
        name=name,
        uid=f"uid-{name}",
        applied=f"2024-05-01T12:{minute:02d}:00Z",
        phase=phase,
        policy=policy,
        deleting=deleting,
    )


def names(candidates: list[Candidate]) -> list[str]:
    return [c.name for c in candidates]


def views(
    candidates: list[Candidate], holder: str | None = None, free: bool = True
) -> dict[str, QueueView]:
    holder_uid = f"uid-{holder}" if holder else None
    return {c.name: view(c, candidates, holder_uid, free) for c in candidates}


def heads(candidates: list[Candidate], holder: str | None = None, free: bool = True) -> list[str]:
    return [n for n, v in views(candidates, holder, free).items() if v.may_acquire]


# ------------------------------------------------------------------------ order


def test_order_is_fifo_by_creation() -> None:
    queue = [cand("c", 3), cand("a", 1), cand("b", 2, Phase.PENDING)]
    assert names(order(queue, None)) == ["a", "b", "c"]


def test_order_breaks_creation_ties_by_name() -> None:
    assert names(order([cand("b", 1), cand("a", 1), cand("c", 0)], None)) == ["c", "a", "b"]


@pytest.mark.parametrize("owing", OWING)
def test_rollouts_owing_a_cleanup_go_first_even_when_newer(owing: Phase) -> None:
    queue = [cand("old", 1), cand("ower", 9, owing), cand("mid", 5)]
    assert names(order(queue, None)) == ["ower", "old", "mid"]


def test_owers_among_themselves_are_fifo() -> None:
    queue = [cand("b", 2, Phase.CLEANING_UP), cand("a", 3, Phase.PAUSED), cand("w", 0)]
    assert names(order(queue, None)) == ["b", "a", "w"]


def test_order_leaves_out_the_holder_terminal_and_deleting_waiting_rollouts() -> None:
    queue = [
        cand("holder", 0, Phase.PROGRESSING),
        *(cand(p.value, 1, p) for p in TERMINAL),
        cand("gone", 2, deleting=True),
        cand("gone-pending", 2, Phase.PENDING, deleting=True),
        cand("deleting-ower", 3, Phase.CLEANING_UP, deleting=True),
        cand("w", 4),
    ]
    assert names(order(queue, "uid-holder")) == ["deleting-ower", "w"]


# ---------------------------------------------------------------- view / acquire


def test_position_counts_from_one_and_only_the_head_may_acquire() -> None:
    queue = [cand("a", 1), cand("b", 2), cand("c", 3)]
    result = views(queue)
    assert [result[n].position for n in "abc"] == [1, 2, 3]
    assert all(v.waiting == 3 for v in result.values())
    assert heads(queue) == ["a"]


def test_nobody_may_acquire_a_busy_lock() -> None:
    queue = [cand("holder", 0, Phase.PROGRESSING), cand("a", 1), cand("b", 2)]
    result = views(queue, holder="holder", free=False)
    assert not any(v.may_acquire for v in result.values())
    assert (result["a"].position, result["b"].position) == (1, 2)
    assert result["holder"].position == 0
    assert result["a"].waiting == 2


def test_a_stale_holder_lets_the_head_take_over() -> None:
    # lease.py passes holder None once the holder may be taken over.
    queue = [cand("dead", 0, Phase.SUCCEEDED), cand("a", 1), cand("b", 2)]
    assert heads(queue) == ["a"]


def test_a_waiting_rollout_being_deleted_never_acquires() -> None:
    queue = [cand("gone", 1, deleting=True), cand("next", 2)]
    result = views(queue)
    assert result["gone"].position == 0 and not result["gone"].may_acquire
    assert heads(queue) == ["next"]


def test_an_ower_being_deleted_still_acquires_to_clean_up() -> None:
    queue = [cand("ower", 5, Phase.CLEANING_UP, deleting=True), cand("w", 1)]
    assert heads(queue) == ["ower"]


# ---------------------------------------------------------------------- Supersede


def test_supersede_only_the_newest_waiting_may_start() -> None:
    queue = [cand(f"v{i}", i, policy=SUPERSEDE) for i in range(1, 5)]
    result = views(queue)
    assert [result[f"v{i}"].superseded_by for i in range(1, 4)] == ["v4"] * 3
    assert result["v4"].superseded_by is None
    assert result["v4"].position == 1
    assert heads(queue) == ["v4"]


def test_supersede_while_the_lock_is_busy_still_supersedes() -> None:
    queue = [
        cand("running", 0, Phase.PAUSED, SUPERSEDE),
        cand("v1", 1, policy=SUPERSEDE),
        cand("v2", 2, policy=SUPERSEDE),
    ]
    result = views(queue, holder="running", free=False)
    assert result["v1"].superseded_by == "v2"
    assert result["running"].superseded_by is None, "a running rollout is never superseded"
    assert result["v2"].position == 1 and not result["v2"].may_acquire


def test_supersede_a_rollout_owing_cleanup_still_goes_first() -> None:
    queue = [
        cand("v1", 1, policy=SUPERSEDE),
        cand("ower", 2, Phase.CLEANING_UP, SUPERSEDE),
        cand("v3", 3, policy=SUPERSEDE),
    ]
    result = views(queue)
    assert result["v3"].position == 2 and not result["v3"].may_acquire
    assert heads(queue) == ["ower"]
    assert result["v1"].superseded_by == "v3"


def test_supersede_ignores_a_newest_rollout_being_deleted() -> None:
    queue = [cand("v1", 1, policy=SUPERSEDE), cand("v2", 2, policy=SUPERSEDE, deleting=True)]
    result = views(queue)
    assert result["v1"].superseded_by is None
    assert heads(queue) == ["v1"]


def test_queue_policy_rollouts_are_never_superseded() -> None:
    queue = [cand("q", 1), cand("s", 2, policy=SUPERSEDE)]
    result = views(queue)
    assert result["q"].superseded_by is None
    assert (result["q"].position, result["s"].position) == (1, 2)
    assert heads(queue) == ["q"], "the newest Supersede rollout does not jump a Queue one"


def test_newest_waiting() -> None:
    queue = [cand("a", 1), cand("b", 3, Phase.PENDING), cand("run", 9, Phase.PROGRESSING)]
    assert newest_waiting(queue) == queue[1]
    assert newest_waiting([cand("x", 1, Phase.FAILED)]) is None


# ------------------------------------------------------------------- properties


def _random_candidates(rng: random.Random) -> list[Candidate]:
    phases = [*OWING, *WAITING, *WAITING, *TERMINAL]
    return [
        cand(
            f"r{i}",
            rng.randint(0, 5),  # ties on purpose
            rng.choice(phases),
            rng.choice([QUEUE, SUPERSEDE, ConcurrencyPolicy.REJECT]),
            rng.random() < 0.15,
        )
        for i in range(rng.randint(1, 7))
    ]


@pytest.mark.parametrize("seed", range(300))
def test_every_rollout_agrees_on_a_single_head(seed: int) -> None:
    rng = random.Random(seed)
    queue = _random_candidates(rng)
    result = views(queue)
    lead = heads(queue)
    assert len(lead) <= 1, f"several heads {lead} in {queue}"
    runnable = [c for c in order(queue, None) if result[c.name].superseded_by is None]
    # Liveness: a free lock always has a taker when someone can run.
    assert len(lead) == (1 if runnable else 0)
    if lead:
        owers = [c for c in queue if c.owes_cleanup]
        if owers:
            assert lead[0] == min(owers, key=lambda c: (c.applied, c.name)).name
    for c in queue:
        if result[c.name].superseded_by is not None:
            assert c.policy == SUPERSEDE and c.waiting
            assert not result[c.name].may_acquire
        if not c.active:
            assert result[c.name].position == 0 and not result[c.name].may_acquire


def test_the_index_knows_which_uids_are_active() -> None:
    from canary_operator.index import RolloutIndex

    def body(uid: str, phase: str | None) -> dict[str, object]:
        return {
            "metadata": {"namespace": "ns", "name": "web-v2", "uid": uid},
            "spec": {"target": {"deployment": "web"}, "steps": [{"canary": {}}]},
            "status": {"phase": phase} if phase else {},
        }

    index = RolloutIndex()
    index.update(body("u1", None))
    assert index.active("ns", "u1") and not index.active("other", "u1")
    index.update(body("u1", "Succeeded"))
    assert not index.active("ns", "u1")
    index.update(body("u1", "Progressing"))
    index.update(body("u2", "Queued"))  # recreated under the same name
    assert index.active("ns", "u2") and not index.active("ns", "u1")
    index.update(body("u2", "Queued"), deleted=True)
    assert not index.active("ns", "u2")


# ------------------------------------------------------- runs arrive when applied


def rollout_body(
    name: str,
    created: str,
    status: dict[str, object] | None,
    generation: int = 1,
    policy: ConcurrencyPolicy = QUEUE,
) -> dict[str, object]:
    return {
        "metadata": {
            "namespace": "ns",
            "name": name,
            # Specs are parsed once per (uid, generation): one uid per spec here.
            "uid": f"uid-{name}-{policy.value}-{generation}",
            "generation": generation,
            "creationTimestamp": created,
        },
        "spec": {
            "target": {"deployment": "web"},
            "steps": [{"canary": {}}],
            "concurrency": {"policy": policy.value},
        },
        **({"status": status} if status is not None else {}),
    }


def as_queued(body: dict[str, object]) -> Candidate:
    found = candidate(body)
    assert found is not None
    return found


def edited(
    name: str,
    created: str,
    since: str,
    policy: ConcurrencyPolicy = QUEUE,
    phase: str = "Queued",
) -> Candidate:
    """Rollout `name`, created at `created`, whose spec was edited (run 2), the edit
    recorded by the operator at `since`."""
    status = {"phase": phase, "observedGeneration": 2, "versionSince": since, "run": 2}
    return as_queued(rollout_body(name, created, status, generation=2, policy=policy))


def new(name: str, created: str, policy: ConcurrencyPolicy = QUEUE) -> Candidate:
    status = {"phase": "Queued", "observedGeneration": 1, "versionSince": created}
    return as_queued(rollout_body(name, created, status, policy=policy))


def test_the_index_dates_a_run_by_when_its_spec_was_applied() -> None:
    created = "2026-12-07T10:00:00Z"
    # A new rollout not yet seen by the operator: its creation.
    fresh = as_queued(rollout_body("n", created, None))
    assert (fresh.applied, fresh.queued_at, fresh.run) == (created, UNSEEN, 1)
    # A status without observedGeneration (written before it was kept): its creation.
    old = as_queued(rollout_body("o", created, {"phase": "Queued", "run": 3}))
    assert (old.applied, old.run) == (created, 3)
    # Recorded, no edit: versionSince is the creation.
    assert new("r", created).applied == created
    # observedGeneration != generation: an edit the operator has not recorded yet.
    unseen = as_queued(
        rollout_body("e", created, {"phase": "Succeeded", "observedGeneration": 1}, generation=2)
    )
    assert unseen.applied == UNSEEN
    # An edit recorded with microseconds: the second it was applied; within that
    # second, the moment itself.
    since = "2026-12-07T10:05:07.123456Z"
    run2 = edited("e", created, since)
    assert run2.applied == "2026-12-07T10:05:07Z" and run2.run == 2
    assert run2.arrival == ("2026-12-07T10:05:07Z", since, "e")
    # So it ranks after a rollout created in the second before, before one created in
    # the next (creationTimestamps have whole seconds).
    ranked = order([new("y", "2026-12-07T10:05:08Z"), run2, new("x", "2026-12-07T10:05:06Z")], None)
    assert names(ranked) == ["x", "e", "y"]


def test_an_edit_of_an_old_rollout_ranks_behind_a_rollout_that_waited_before_it() -> None:
    """a was created long ago; b was applied and waits; then a's image is edited: a's
    run 2 arrives after b, whatever the age of rollout a."""
    b = new("b", "2026-12-07T10:03:00Z")
    a2 = edited("a", "2026-12-07T09:00:00Z", "2026-12-07T10:05:00.500000Z")
    for candidates in ([a2, b], [b, a2]):
        assert names(order(candidates, None)) == ["b", "a"]
        assert view(b, candidates, None, True).may_acquire
        position = view(a2, candidates, None, True)
        assert position.position == 2 and not position.may_acquire
    # An edit applied before b arrived keeps its place ahead of b.
    early = edited("a", "2026-12-07T09:00:00Z", "2026-12-07T10:02:59.999999Z")
    assert names(order([b, early], None)) == ["a", "b"]


def test_within_one_second_the_moment_the_operator_saw_each_run_decides() -> None:
    b = as_queued(
        rollout_body(
            "b",
            "2026-12-07T10:05:00Z",
            {"phase": "Queued", "queuedAt": "2026-12-07T10:05:00.400000Z"},
        )
    )
    a2 = edited("a", "2026-12-07T09:00:00Z", "2026-12-07T10:05:00.700000Z")
    assert b.applied == a2.applied
    assert names(order([a2, b], None)) == ["b", "a"]


@pytest.mark.parametrize("edit_last", [True, False])
def test_supersede_the_last_applied_run_is_the_one_that_runs(edit_last: bool) -> None:
    """Both wait: b (3.0) and a's run 2 (4.0, an edit of an older rollout). The one
    applied last runs and the other is superseded by it, in whichever order the
    rollouts are looked at."""
    b = new("b", "2026-12-07T10:03:00Z", SUPERSEDE)
    since = "2026-12-07T10:05:00.500000Z" if edit_last else "2026-12-07T10:01:00.500000Z"
    a2 = edited("a", "2026-12-07T09:00:00Z", since, SUPERSEDE)
    last, other = (a2, b) if edit_last else (b, a2)
    for candidates in ([a2, b], [b, a2]):
        assert newest_waiting(candidates) == last
        result = {c.name: view(c, candidates, None, True) for c in candidates}
        assert result[last.name].may_acquire and result[last.name].superseded_by is None
        assert result[other.name].superseded_by == last.name
        assert not result[other.name].may_acquire


def test_an_edit_not_yet_recorded_ranks_last_and_under_supersede_is_the_newest() -> None:
    status = {"phase": "Queued", "observedGeneration": 1, "run": 2}
    for policy in (QUEUE, SUPERSEDE):
        unseen = as_queued(
            rollout_body("a", "2026-12-07T09:00:00Z", status, generation=2, policy=policy)
        )
        later = new("z", "2026-12-07T23:59:59Z", policy)
        assert unseen.applied == UNSEEN
        assert names(order([unseen, later], None)) == ["z", "a"]
        if policy == SUPERSEDE:
            assert newest_waiting([unseen, later]) == unseen
            assert view(later, [unseen, later], None, True).superseded_by == "a"


@pytest.mark.parametrize("seed", range(100))
def test_supersede_always_runs_the_last_applied_whatever_the_order_seen(seed: int) -> None:
    rng = random.Random(seed)
    candidates = [
        Candidate(
            name=f"r{i}",
            uid=f"uid-r{i}",
            applied=f"2026-12-07T10:{rng.randint(0, 3):02d}:00Z",
            queued_at=f"2026-12-07T10:00:00.{rng.randint(0, 999999):06d}Z",
            phase=rng.choice(WAITING),
            policy=SUPERSEDE,
        )
        for i in range(rng.randint(2, 6))
    ]
    last = max(candidates, key=lambda c: (c.applied, c.queued_at, c.name))
    for _ in range(3):
        rng.shuffle(candidates)
        assert heads(candidates) == [last.name]
        result = views(candidates)
        assert all(result[c.name].superseded_by == last.name for c in candidates if c != last)
