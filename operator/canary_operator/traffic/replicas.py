"""The `replicas` router: no traffic router, the stable Service reaches canary pods too.

Traffic follows the share of ready pods, so the weight is a function of the canary
Deployment's size; setting a weight is done by scaling the canary (the machine asks
for that through EnsureCanary), and resetting means scaling the canary to zero.
"""

from __future__ import annotations

from canary_operator.engine.types import RouteView
from canary_operator.kube.api import Kube, path
from canary_operator.traffic.base import replicas_weight


class ReplicasRouter:
    def __init__(self, kube: Kube, namespace: str, stable: str, canary: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.stable = stable
        self.canary = canary

    def _deployment(self, name: str) -> str:
        return path("apps", "v1", "deployments", self.namespace, name)

    async def read(self) -> RouteView:
        canary = await self.kube.get(self._deployment(self.canary))
        if canary is None:
            return RouteView(weight=0)
        stable = await self.kube.get(self._deployment(self.stable))
        stable_ready = int(((stable or {}).get("status") or {}).get("readyReplicas") or 0)
        canary_ready = int((canary.get("status") or {}).get("readyReplicas") or 0)
        # Only ready pods are Service endpoints: a canary whose pods cannot start takes
        # no traffic, and the weight shown must not say otherwise. (Cleanup does not
        # rely on this: it deletes the canary whatever its weight reads.)
        return RouteView(weight=replicas_weight(stable_ready, canary_ready))

    async def set_weight(self, weight: int) -> None:
        """Nothing to write: the canary's size carries the weight."""

    async def reset(self) -> None:
        if await self.kube.get(self._deployment(self.canary)) is not None:
            await self.kube.merge_patch(self._deployment(self.canary), {"spec": {"replicas": 0}})

    async def canary_labels_to_drop(self, service_selector: dict[str, str]) -> set[str]:
        """None: the stable Service reaching canary pods is how this router works."""
        return set()
