"""The traffic router interface, and the pure arithmetic of weights per router kind."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from canary_operator.engine.types import RouteView


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


def replicas_weight(stable_ready: int, canary_ready: int) -> int:
    total = stable_ready + canary_ready
    return 0 if total == 0 or canary_ready == 0 else round(100 * canary_ready / total)


class TrafficRouter(Protocol):
    """Moves traffic between the stable and canary Services of one rollout.

    Implementations read back what they wrote: `read()` is the truth the state
    machine acts on, so a write that silently did not take effect is noticed.
    """

    async def read(self) -> RouteView: ...

    async def set_weight(self, weight: int) -> None: ...

    async def reset(self) -> None:
        """Route 100 % to stable and remove every reference to the canary."""
        ...

    async def canary_labels_to_drop(self, service_selector: dict[str, str]) -> set[str]:
        """Labels of the stable pod template the canary's pods must not carry, so that
        only this router sends them traffic."""
        ...
