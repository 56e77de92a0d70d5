"""The `gatewayAPI` router: weights on an HTTPRoute's backendRefs.

Every rule that sends traffic to the stable Service gets a second backendRef to the
canary Service; the two weights always add up to 100. Writes carry the resourceVersion
they read (a concurrent edit makes them fail and retry) and the lock's fencing token.
The stable backendRef's original weight is kept in an annotation and restored on reset.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from canary_operator.engine.types import RouteView
from canary_operator.kube.api import JsonObj, Kube, path
from canary_operator.kube.objects import FENCING
from canary_operator.traffic.base import PermanentRouteError

ORIGINAL_WEIGHTS = "canary-operator.dev/original-weights"


def is_service_ref(ref: JsonObj, name: str) -> bool:
    return bool(
        ref.get("name") == name
        and ref.get("kind", "Service") == "Service"
        and ref.get("group", "") in ("", "core")
    )


class GatewayAPIRouter:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        route: str,
        stable_service: str,
        canary_service: str,
        fencing_token: str,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.route = route
        self.stable = stable_service
        self.canary = canary_service
        self.token = fencing_token
        self._path = path("gateway.networking.k8s.io", "v1", "httproutes", namespace, route)

    def _rules(self, body: JsonObj) -> list[list[JsonObj]]:
        return [
            rule.setdefault("backendRefs", [])
            for rule in body.get("spec", {}).get("rules", [])
            if any(is_service_ref(r, self.stable) for r in rule.get("backendRefs", []))
        ]

    async def read(self) -> RouteView:
        body = await self.kube.get(self._path)
        if body is None:  # no route: nothing can send traffic to the canary through it
            return RouteView(weight=0)
        weights: list[int] = []
        named = False
        for refs in self._rules(body):
            named = named or any(is_service_ref(r, self.canary) for r in refs)
            stable = sum(int(r.get("weight", 1)) for r in refs if is_service_ref(r, self.stable))
            canary = sum(int(r.get("weight", 1)) for r in refs if is_service_ref(r, self.canary))
            total = stable + canary
            weights.append(0 if total == 0 else round(100 * canary / total))
        if not weights:
            return RouteView(weight=0, error=f"HTTPRoute {self.route} has no rule to {self.stable}")
        # Report the largest share any rule sends to the canary: cleanup must see 0 everywhere.
        return RouteView(weight=max(weights), references_canary=named)

    async def set_weight(self, weight: int) -> None:
        body = await self.kube.get(self._path)
        if body is None:
            raise PermanentRouteError(f"HTTPRoute {self.route} not found")
        updated = copy.deepcopy(body)
        rules = self._rules(updated)
        if not rules:
            raise PermanentRouteError(f"HTTPRoute {self.route} has no rule to {self.stable}")
        annotations = updated["metadata"].setdefault("annotations", {})
        if ORIGINAL_WEIGHTS not in annotations:
            annotations[ORIGINAL_WEIGHTS] = json.dumps(
                [
                    [r.get("weight") for r in refs if is_service_ref(r, self.stable)]
                    for refs in rules
                ]
            )
        for refs in rules:
            stable_ref = next(r for r in refs if is_service_ref(r, self.stable))
            stable_ref["weight"] = 100 - weight
            canary_ref = next((r for r in refs if is_service_ref(r, self.canary)), None)
            if canary_ref is None:
                canary_ref = {k: v for k, v in stable_ref.items() if k in ("port", "group", "kind")}
                canary_ref["name"] = self.canary
                refs.append(canary_ref)
            canary_ref["weight"] = weight
        if updated != body:
            annotations[FENCING] = self.token
            await self.kube.replace(self._path, updated)

    async def canary_labels_to_drop(self, service_selector: dict[str, str]) -> set[str]:
        """The stable Service's selector: only the canary Service reaches canary pods."""
        return set(service_selector)

    async def reset(self) -> None:
        body = await self.kube.get(self._path)
        if body is None:
            return
        updated = copy.deepcopy(body)
        annotations = updated["metadata"].setdefault("annotations", {})
        recorded = ORIGINAL_WEIGHTS in annotations
        original: list[Any] = json.loads(annotations.pop(ORIGINAL_WEIGHTS, "[]"))
        for i, refs in enumerate(self._rules(updated)):
            refs[:] = [r for r in refs if not is_service_ref(r, self.canary)]
            if not recorded:
                continue  # we never changed the stable weights: leave them alone
            saved = original[i] if i < len(original) else []
            for j, ref in enumerate(r for r in refs if is_service_ref(r, self.stable)):
                before = saved[j] if j < len(saved) else None
                if before is None:
                    ref.pop("weight", None)
                else:
                    ref["weight"] = before
        if updated != body:
            annotations[FENCING] = self.token
            await self.kube.replace(self._path, updated)
