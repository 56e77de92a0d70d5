"""Unit tests of the per-lock queue (`lock/queue.py`): order, position, Supersede."""

from __future__ import annotations

import random

import pytest

from canary_operator.api.models import ConcurrencyPolicy, Phase
from canary_operator.lock.queue import Candidate, QueueView, newest_waiting, order, view

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
