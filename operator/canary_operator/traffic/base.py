"""The traffic router interface (the arithmetic of weights is in engine/weights.py)."""

from __future__ import annotations

from typing import Protocol

from canary_operator.engine.types import RouteView


class PermanentRouteError(Exception):
    """The router's object is missing, or not as the router needs it (no rule to the
    stable Service, ...): the rollout's configuration is at fault, not a transient error."""


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
