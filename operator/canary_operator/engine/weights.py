"""The pure arithmetic of traffic weights: how many canary (and, in mode Shift, stable)
pods a weight needs per router kind, and the weight the router will then report."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from canary_operator.api.models import ReplicasMode


@dataclass(frozen=True)
class WeightPlan:
    canary_replicas: int
    expected_weight: int  # what the router will read back once settled


def plan_weight(router_kind: str, stable_replicas: int, weight: int, minimum: int) -> WeightPlan:
    """How many canary pods a weight needs, and the weight the router will then report.

    replicas: the stable Deployment keeps all its pods; traffic follows the canary's
    share of pods, so a weight w needs c pods with c / (N + c) closest to w from above.
    gatewayAPI, nginx, istio: weights are exact; the canary gets w % of the stable's
    size (at least the size the canary step asked for) so it can carry its share.
    """
    n = max(stable_replicas, 1)
    if weight <= 0:
        # Under the replicas router any canary pod takes traffic, so 0 % means none.
        return WeightPlan(minimum if router_kind != "replicas" else 0, 0)
    if router_kind != "replicas":
        return WeightPlan(max(minimum, math.ceil(n * weight / 100)), weight)
    if weight >= 100:
        raise ValueError("the replicas router cannot send 100% to the canary")
    canary = max(1, math.ceil(n * weight / (100 - weight)))
    return WeightPlan(canary, replicas_weight(n, canary))


def run_mode(asked: ReplicasMode | None, recorded: ReplicasMode | None) -> ReplicasMode:
    """The replicas router's mode of a run: the spec's, else the one recorded in status
    (this run's, set at its start, or the previous run's), else Add: a run that an
    operator older than status.replicasMode started, whose default was Add. (A rollout's
    first run records DEFAULT_REPLICAS_MODE before it starts: engine/start.py.)"""
    return asked or recorded or ReplicasMode.ADD


@dataclass(frozen=True)
class ShiftPlan:
    """Replicas router, mode Shift: the sizes of both Deployments for one step."""

    canary_replicas: int
    stable_replicas: int
    expected_weight: int  # the canary's share of pods once both are ready


def stable_floor(original: int, min_stable: int) -> int:
    """The fewest stable pods a Shift run leaves up: minStableReplicas (at least 1, so
    the stable always takes a share), never more than the stable had."""
    return min(max(min_stable, 1), max(original, 1))


def plan_shift(original: int, weight: int, min_stable: int) -> ShiftPlan:
    """The (canary, stable) pair closest to `weight` that keeps the total at the stable's
    original replicas N, or N + 1, and the stable at or above its floor.

    Facts taken from Argo Rollouts' basic canary (utils/replicaset/canary.go,
    approximateWeightedCanaryStableReplicaCounts and its tests): a weight strictly
    between 0 and 100 keeps at least one pod on each side; with its default maxSurge a
    total of N + 1 is allowed when that is closer to the weight (3 replicas at 10 % ->
    1 canary + 3 stable = 25 %, not 1 + 2 = 33 %); the closest share wins, a tie goes
    to the smaller total, then to the larger canary. The floor is ours (Argo's
    basic canary has none).
    """
    n = max(original, 1)
    if weight <= 0:
        return ShiftPlan(0, n, 0)
    if weight >= 100:
        raise ValueError("the replicas router cannot send 100% to the canary")
    floor = stable_floor(n, min_stable)
    best: tuple[Fraction, int, int] | None = None
    chosen = (1, n)
    for total in (n, n + 1):
        for stable in range(floor, n + 1):
            canary = total - stable
            if canary < 1:
                continue
            key = (abs(Fraction(100 * canary, total) - weight), total, -canary)
            if best is None or key < best:
                best, chosen = key, (canary, stable)
    canary, stable = chosen
    return ShiftPlan(canary, stable, replicas_weight(stable, canary))


def plan_shift_canary(original: int, canary: int, min_stable: int) -> ShiftPlan:
    """A `canary: {replicas: C}` step in mode Shift: C canary pods, and the stable shrunk
    so the total stays at N + 1 at most (never below its floor, never above N)."""
    n = max(original, 1)
    stable = max(stable_floor(n, min_stable), min(n, n + 1 - canary))
    return ShiftPlan(canary, stable, replicas_weight(stable, canary))


def original_replicas(current: int, recorded_original: int | None, written: int | None) -> int:
    """The stable's size to restore. Without a record: what it has now. With one: the
    recorded original, unless someone else (a user, an HPA, a GitOps sync) wrote another
    count since the operator's last write: that count is then adopted as the original
    (their change is kept, and the split is recomputed from it)."""
    if recorded_original is None or written is None or current != written:
        return current
    return recorded_original


def shift_reach(original: int, weight: int, min_stable: int) -> str | None:
    """Why mode Shift cannot bring `weight` within one pod of the `original` stable's
    replicas, or None. Without a floor every weight strictly between 0 and 100 is
    within one pod (the closest split is: 3 replicas, 10 % -> 1 + 3 = 25 %, as Argo
    Rollouts' basic canary does), so only a floor that keeps too many stable pods (or
    100 %) is refused."""
    if weight <= 0:
        return None
    if weight >= 100:
        return "100 % is not reachable with the replicas router (use a promote step)"
    n = max(original, 1)
    plan = plan_shift(n, weight, min_stable)
    if _within_a_pod(plan, weight):
        return None
    floor = stable_floor(n, min_stable)
    fits = [f for f in range(floor - 1, 0, -1) if _within_a_pod(plan_shift(n, weight, f), weight)]
    needs = f"minStableReplicas {fits[0]} at most" if fits else "a lower minStableReplicas"
    return (
        f"{weight} % reaches {plan.expected_weight} % on {n} replicas "
        f"({plan.canary_replicas} canary + {plan.stable_replicas} stable): "
        f"minStableReplicas {floor} keeps {floor} of the {n} stable pods; "
        f"{weight} % needs {needs}"
    )


def _within_a_pod(plan: ShiftPlan, weight: int) -> bool:
    total = plan.canary_replicas + plan.stable_replicas
    return abs(Fraction(100 * plan.canary_replicas, total) - weight) <= Fraction(100, total)


def replicas_weight(stable_ready: int, canary_ready: int) -> int:
    total = stable_ready + canary_ready
    return 0 if total == 0 or canary_ready == 0 else round(100 * canary_ready / total)
