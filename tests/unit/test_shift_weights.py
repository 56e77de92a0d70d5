"""The replica arithmetic of the replicas router's mode Shift (`traffic/base.py`),
exhaustively: every weight 0..99, stable sizes 1..10, every floor.

The expectations of the table below are Argo Rollouts' own for its basic canary with
a surge allowed (utils/replicaset/canary_test.go,
TestApproximateWeightedNewStableReplicaCounts, the `maxSurge: 1` rows): the same
inputs give the same split here (floor 1, the default).
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from canary_operator.engine.weights import (
    ShiftPlan,
    original_replicas,
    plan_shift,
    plan_shift_canary,
    plan_weight,
    replicas_weight,
    stable_floor,
)

SIZES = range(1, 11)
WEIGHTS = range(0, 100)


def allowed(n: int, floor: int) -> list[tuple[int, int]]:
    """Every (canary, stable) pair Shift may choose for a non-zero weight: at least one
    canary pod, the stable between its floor and its original size, N or N + 1 pods."""
    low = min(max(floor, 1), n)
    return [(c, s) for s in range(low, n + 1) for c in range(1, n + 2) if c + s in (n, n + 1)]


def error(weight: int, canary: int, stable: int) -> Fraction:
    return abs(Fraction(100 * canary, canary + stable) - weight)


@pytest.mark.parametrize(
    ("replicas", "weight", "canary", "stable"),
    [
        (1, 1, 1, 1),
        (1, 49, 1, 1),
        (1, 50, 1, 1),
        (1, 99, 1, 1),
        (2, 1, 1, 2),
        (2, 50, 1, 1),
        (2, 99, 2, 1),
        (3, 10, 1, 3),
        (3, 25, 1, 3),
        (3, 33, 1, 2),
        (3, 34, 1, 2),
        (3, 49, 2, 2),
        (3, 50, 2, 2),
        (10, 1, 1, 10),
        (10, 18, 2, 9),
        (10, 19, 2, 9),
        (10, 20, 2, 8),
        (10, 23, 2, 8),
        (10, 24, 3, 8),
        (10, 25, 3, 8),
        (10, 99, 10, 1),
    ],
)
def test_the_split_is_argo_rollouts_basic_canary_split(
    replicas: int, weight: int, canary: int, stable: int
) -> None:
    got = plan_shift(replicas, weight, min_stable=1)
    assert (got.canary_replicas, got.stable_replicas) == (canary, stable)
    assert got.expected_weight == replicas_weight(stable, canary)


@pytest.mark.parametrize("n", SIZES)
def test_every_weight_every_size_every_floor(n: int) -> None:
    for floor in range(1, n + 2):
        low = stable_floor(n, floor)
        pairs = allowed(n, floor)
        previous_share = -1
        for weight in WEIGHTS:
            got = plan_shift(n, weight, floor)
            c, s = got.canary_replicas, got.stable_replicas
            if weight == 0:
                assert got == ShiftPlan(0, n, 0), "0 %: no canary, the stable untouched"
                continue
            where = f"N={n} floor={floor} weight={weight}: {got}"
            assert c >= 1, f"a weight needs a canary pod: {where}"
            assert low <= s <= n, f"the stable stays within [floor, N]: {where}"
            assert c + s in (n, n + 1), f"N or N + 1 pods in all: {where}"
            # the closest share of every allowed split (none is strictly closer)
            assert all(error(weight, *p) >= error(weight, c, s) for p in pairs), where
            # ties go to fewer pods
            ties = [p for p in pairs if error(weight, *p) == error(weight, c, s)]
            assert c + s == min(a + b for a, b in ties), where
            assert got.expected_weight == replicas_weight(s, c)
            # a larger weight never gets a smaller share
            assert got.expected_weight >= previous_share, where
            previous_share = got.expected_weight
            # never more pods than mode Add needs for the same weight (N + canary)
            assert c + s <= n + plan_weight("replicas", n, weight, 1).canary_replicas


def test_a_floor_caps_the_share_and_pods_stay_bounded() -> None:
    # 3 replicas, 90 %: Argo's split is 3 canary + 1 stable (75 %); keeping 2 stable
    # pods the closest is 2 + 2 (50 %); a floor at N keeps the stable whole.
    assert plan_shift(3, 90, 1) == ShiftPlan(3, 1, 75)
    assert plan_shift(3, 90, 2) == ShiftPlan(2, 2, 50)
    assert plan_shift(3, 90, 3) == ShiftPlan(1, 3, 25)
    assert plan_shift(3, 90, 99) == ShiftPlan(1, 3, 25)  # the floor is at most N


def test_pods_per_weight_against_mode_add() -> None:
    # The case: 3 replicas at 90 %: Add starts 27 canary pods, Shift 3.
    assert plan_weight("replicas", 3, 90, 1).canary_replicas == 27
    assert plan_shift(3, 90, 1).canary_replicas == 3


@pytest.mark.parametrize("weight", [100, 150])
def test_100_percent_is_refused(weight: int) -> None:
    with pytest.raises(ValueError, match="cannot send 100%"):
        plan_shift(4, weight, 1)


def test_a_stable_at_zero_replicas_counts_as_one() -> None:
    assert plan_shift(0, 50, 1) == plan_shift(1, 50, 1)


@pytest.mark.parametrize("n", SIZES)
def test_a_canary_step_keeps_at_most_one_extra_pod(n: int) -> None:
    for floor in range(1, n + 2):
        low = stable_floor(n, floor)
        for canary in range(1, 2 * n + 2):
            got = plan_shift_canary(n, canary, floor)
            assert got.canary_replicas == canary
            assert low <= got.stable_replicas <= n
            if n + 1 - canary >= low:  # the floor does not bind: one pod more than N
                assert canary + got.stable_replicas == n + 1
            else:  # it binds: the stable keeps exactly its floor
                assert got.stable_replicas == low
            assert got.expected_weight == replicas_weight(got.stable_replicas, canary)


def test_one_canary_pod_beside_the_whole_stable() -> None:
    assert plan_shift_canary(3, 1, 1) == ShiftPlan(1, 3, 25)
    assert plan_shift_canary(3, 2, 1) == ShiftPlan(2, 2, 50)
    assert plan_shift_canary(3, 5, 1) == ShiftPlan(5, 1, 83)
    assert plan_shift_canary(3, 5, 2) == ShiftPlan(5, 2, 71)


def test_floor() -> None:
    assert stable_floor(3, 1) == 1
    assert stable_floor(3, 0) == 1  # the stable always keeps a pod
    assert stable_floor(3, 2) == 2
    assert stable_floor(3, 7) == 3  # never more than it had


@pytest.mark.parametrize(
    ("current", "original", "written", "restore"),
    [
        (3, None, None, 3),  # no record: what it has
        (1, 3, 1, 3),  # the operator's own write: the recorded original
        (5, 3, 1, 5),  # someone else scaled it to 5 since: theirs is kept
        (1, 3, 2, 1),  # ... or down to 1
    ],
)
def test_original_replicas(
    current: int, original: int | None, written: int | None, restore: int
) -> None:
    assert original_replicas(current, original, written) == restore
