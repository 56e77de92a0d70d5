"""The `istio` router: weights on the HTTP routes of one or more VirtualServices.

Every selected HTTP route (by name, or every route with a destination to stable) gets
a canary destination beside its stable one; the two weights add up to 100. Istio sends
a destination `weight / (sum of weights)` of a route's requests, and all of them when
it is the route's only destination (istio.io/api networking/v1alpha3/virtual_service.proto,
HTTPRouteDestination) — `route_share` computes exactly that, and `read()` reports the
largest share any selected route sends to the canary.

Two ways to tell stable from canary:
- by host: stable destinations name the stable Service, the canary one the canary
  Service the operator creates;
- by subset: both name the DestinationRule's host, with its stable and canary subsets.

Writes carry the resourceVersion they read and the lock's fencing token. The stable
destinations' original weights are kept in an annotation on each VirtualService and
restored by reset, which also removes every canary destination; nothing else in the
user's objects is changed.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from canary_operator.api.models import IstioRouting, IstioVirtualService
from canary_operator.engine.types import RouteView
from canary_operator.kube.api import JsonObj, Kube, path
from canary_operator.kube.objects import FENCING
from canary_operator.traffic.base import PermanentRouteError

ORIGINAL_WEIGHTS = "canary-operator.dev/original-weights"
GROUP, VERSION = "networking.istio.io", "v1"


def service_of(host: str, namespace: str) -> tuple[str, str] | None:
    """(service, namespace) a Kubernetes host name means, relative to `namespace`
    (Istio resolves short names in the VirtualService's namespace)."""
    parts = host.split(".")
    if len(parts) == 1:
        return parts[0], namespace
    if len(parts) == 2 or (len(parts) >= 3 and parts[2] == "svc"):
        return parts[0], parts[1]
    return None


@dataclass(frozen=True)
class Sides:
    """How destinations are told apart: by service, or by subset of one host."""

    namespace: str
    stable_service: str
    canary_service: str
    stable_subset: str | None = None
    canary_subset: str | None = None

    def _service(self, dest: JsonObj) -> tuple[str, str] | None:
        return service_of(str((dest.get("destination") or {}).get("host", "")), self.namespace)

    def is_stable(self, dest: JsonObj) -> bool:
        if self._service(dest) != (self.stable_service, self.namespace):
            return False
        subset = (dest.get("destination") or {}).get("subset")
        return subset == self.stable_subset if self.stable_subset else not subset

    def is_canary(self, dest: JsonObj) -> bool:
        subset = (dest.get("destination") or {}).get("subset")
        if self.canary_subset:
            return (
                self._service(dest) == (self.stable_service, self.namespace)
                and subset == self.canary_subset
            )
        return self._service(dest) == (self.canary_service, self.namespace) and not subset

    def canary_of(self, stable: JsonObj) -> JsonObj:
        """A canary destination shaped like the stable one (same port, headers)."""
        clone = {k: copy.deepcopy(v) for k, v in stable.items() if k != "weight"}
        destination = clone.setdefault("destination", {})
        if self.canary_subset:
            destination["subset"] = self.canary_subset
        else:
            destination["host"] = self.canary_service
            destination.pop("subset", None)
        return clone


def route_share(destinations: list[JsonObj], sides: Sides) -> int:
    """Percent of a route's requests that go to the canary, by Istio's rule."""
    if not destinations:
        return 0
    if len(destinations) == 1:
        return 100 if sides.is_canary(destinations[0]) else 0
    total = sum(max(int(d.get("weight") or 0), 0) for d in destinations)
    canary = sum(max(int(d.get("weight") or 0), 0) for d in destinations if sides.is_canary(d))
    return 0 if total == 0 else round(100 * canary / total)


def _key(index: int, route: JsonObj) -> str:
    return f"name:{route['name']}" if route.get("name") else f"index:{index}"


def selected_routes(
    body: JsonObj, vs: IstioVirtualService, sides: Sides, strict: bool
) -> list[tuple[str, JsonObj]]:
    """The HTTP routes of a VirtualService this rollout weights, with their keys."""
    http: list[JsonObj] = (body.get("spec") or {}).get("http") or []
    if vs.routes:
        chosen = [(_key(i, r), r) for i, r in enumerate(http) if r.get("name") in vs.routes]
        missing = set(vs.routes) - {r.get("name") for _, r in chosen}
        if strict and missing:
            raise PermanentRouteError(
                f"VirtualService {vs.name} has no HTTP route named {', '.join(sorted(missing))}"
            )
    else:
        chosen = [
            (_key(i, r), r)
            for i, r in enumerate(http)
            if any(sides.is_stable(d) for d in r.get("route") or [])
        ]
    if strict and not chosen:
        raise PermanentRouteError(f"VirtualService {vs.name} has no HTTP route to stable")
    return chosen


def weigh(body: JsonObj, vs: IstioVirtualService, sides: Sides, weight: int) -> JsonObj:
    """The VirtualService with its selected routes at `weight` % canary (a copy)."""
    updated = copy.deepcopy(body)
    routes = selected_routes(updated, vs, sides, strict=True)
    annotations = updated["metadata"].setdefault("annotations", {})
    original: dict[str, Any] = {}
    for key, route in routes:
        destinations: list[JsonObj] = route.setdefault("route", [])
        stable = [d for d in destinations if sides.is_stable(d)]
        others = [d for d in destinations if not sides.is_stable(d) and not sides.is_canary(d)]
        if len(stable) != 1 or others:
            raise PermanentRouteError(
                f"VirtualService {vs.name} route {key}: needs exactly one stable destination "
                f"and no other (has {len(stable)} stable, {len(others)} other)"
            )
        original[key] = stable[0].get("weight")
        canary = next((d for d in destinations if sides.is_canary(d)), None)
        if canary is None:
            canary = sides.canary_of(stable[0])
            destinations.append(canary)
        stable[0]["weight"] = 100 - weight
        canary["weight"] = weight
        # A second canary destination (added by hand) would take a share too.
        route["route"] = [d for d in destinations if not sides.is_canary(d) or d is canary]
    if ORIGINAL_WEIGHTS not in annotations:
        annotations[ORIGINAL_WEIGHTS] = json.dumps(original, sort_keys=True)
    return updated


def unweigh(body: JsonObj, sides: Sides) -> JsonObj:
    """The VirtualService with no canary destination and the stable weights it had."""
    updated = copy.deepcopy(body)
    annotations = updated["metadata"].get("annotations") or {}
    original: dict[str, Any] = json.loads(annotations.pop(ORIGINAL_WEIGHTS, "{}"))
    # The user's object ends as it was: our annotations go too (the API server does
    # not keep an empty map, so dropping it restores an object that had none).
    annotations.pop(FENCING, None)
    if not annotations:
        updated["metadata"].pop("annotations", None)
    for i, route in enumerate((updated.get("spec") or {}).get("http") or []):
        if "route" not in route:
            continue
        route["route"] = [d for d in route["route"] if not sides.is_canary(d)]
        key = _key(i, route)
        if key not in original:
            continue  # never changed by us: leave it alone
        for dest in route["route"]:
            if sides.is_stable(dest):
                if original[key] is None:
                    dest.pop("weight", None)
                else:
                    dest["weight"] = original[key]
    return updated


class IstioRouter:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        config: IstioRouting,
        stable_service: str,
        canary_service: str,
        fencing_token: str,
        canary_pod_labels: dict[str, str],
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.config = config
        self.token = fencing_token
        self.canary_pod_labels = canary_pod_labels
        rule = config.destination_rule
        self.sides = Sides(
            namespace,
            stable_service,
            canary_service,
            rule.stable_subset_name if rule else None,
            rule.canary_subset_name if rule else None,
        )

    def _path(self, kind: str, name: str) -> str:
        return path(GROUP, VERSION, kind, self.namespace, name)

    async def _subsets(self) -> dict[str, dict[str, str]]:
        """The DestinationRule's subsets (name -> labels), checked for subset routing:
        its host a Service here, the canary subset selecting exactly the canary pods."""
        rule = self.config.destination_rule
        assert rule is not None
        body = await self.kube.get(self._path("destinationrules", rule.name))
        if body is None:
            raise PermanentRouteError(f"DestinationRule {rule.name} not found")
        spec = body.get("spec") or {}
        host = service_of(str(spec.get("host", "")), self.namespace)
        if host is None or host[1] != self.namespace:
            raise PermanentRouteError(
                f"DestinationRule {rule.name}: host {spec.get('host')!r} is not a Service "
                f"of namespace {self.namespace}"
            )
        subsets = {
            str(s.get("name")): dict(s.get("labels") or {}) for s in spec.get("subsets") or []
        }
        for name in (rule.stable_subset_name, rule.canary_subset_name):
            if name not in subsets:
                raise PermanentRouteError(f"DestinationRule {rule.name} has no subset {name}")
        canary = subsets[rule.canary_subset_name]
        if not canary or any(self.canary_pod_labels.get(k) != v for k, v in canary.items()):
            wanted = ", ".join(f"{k}: {v}" for k, v in self.canary_pod_labels.items())
            raise PermanentRouteError(
                f"DestinationRule {rule.name}: subset {rule.canary_subset_name} must select "
                f"the canary pods by their labels ({wanted})"
            )
        return subsets

    async def canary_labels_to_drop(self, service_selector: dict[str, str]) -> set[str]:
        """By host: the stable Service's selector (only the canary Service reaches the
        canary). By subset: the canary must stay behind the stable host, so it keeps the
        selector and loses the labels only the stable subset uses."""
        rule = self.config.destination_rule
        if rule is None:
            return set(service_selector)
        stable = (await self._subsets())[rule.stable_subset_name]
        drop = set(stable) - set(service_selector)
        if not drop:
            raise PermanentRouteError(
                f"DestinationRule {rule.name}: subset {rule.stable_subset_name} selects only by "
                f"the Service's selector labels, so it would select the canary pods too; give "
                f"it a label of the stable pods the Service does not select by"
            )
        return drop

    async def _sides(self, strict: bool) -> Sides:
        """In subset mode the host is the DestinationRule's (checked when `strict`)."""
        rule = self.config.destination_rule
        if rule is None:
            return self.sides
        if strict:
            await self._subsets()
        body = await self.kube.get(self._path("destinationrules", rule.name))
        host = service_of(str(((body or {}).get("spec") or {}).get("host", "")), self.namespace)
        if host is None or host[1] != self.namespace:
            return self.sides
        return Sides(
            self.namespace,
            host[0],
            self.sides.canary_service,
            rule.stable_subset_name,
            rule.canary_subset_name,
        )

    async def read(self) -> RouteView:
        sides = await self._sides(strict=False)
        shares: list[int] = []
        named = False
        for vs in self.config.virtual_services:
            body = await self.kube.get(self._path("virtualservices", vs.name))
            if body is None:
                continue  # no VirtualService: nothing can send traffic through it
            for route in (body.get("spec") or {}).get("http") or []:
                named = named or any(sides.is_canary(d) for d in route.get("route") or [])
            for _, route in selected_routes(body, vs, sides, strict=False):
                shares.append(route_share(route.get("route") or [], sides))
        return RouteView(weight=max(shares, default=0), references_canary=named)

    async def set_weight(self, weight: int) -> None:
        sides = await self._sides(strict=True)
        bodies = []
        for vs in self.config.virtual_services:
            body = await self.kube.get(self._path("virtualservices", vs.name))
            if body is None:
                raise PermanentRouteError(f"VirtualService {vs.name} not found")
            bodies.append((vs, body, weigh(body, vs, sides, weight)))
        # Every VirtualService is checked before any is written.
        for vs, body, updated in bodies:
            if updated != body:
                updated["metadata"].setdefault("annotations", {})[FENCING] = self.token
                await self.kube.replace(self._path("virtualservices", vs.name), updated)

    async def reset(self) -> None:
        sides = await self._sides(strict=False)
        for vs in self.config.virtual_services:
            body = await self.kube.get(self._path("virtualservices", vs.name))
            if body is None:
                continue
            updated = unweigh(body, sides)
            if updated != body:
                await self.kube.replace(self._path("virtualservices", vs.name), updated)
