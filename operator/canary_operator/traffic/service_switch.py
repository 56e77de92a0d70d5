"""A blue-green's switch with the replicas router: the active (stable) Service's selector.

Before the switch the active Service selects the target's pods only (the preview's pods
do not carry the labels of its selector: `canary_labels_to_drop`), and the preview
Service the preview's only. The switch points the active Service's selector at the
preview's pods (its role labels) in one write; the selector it replaces is recorded on
the Service in the same write (annotation ORIGINAL_SELECTOR), so that a switch back, by
this run's cleanup or by the recovery of another rollout after an operator restart,
puts exactly that selector back. Every write is conditional on the resourceVersion read
(fencing: the reconcile's FencedWrites confirms the lock before it).

Read back as a weight, as every router is: 100 when the Service selects the preview's
pods, else 0; the record still on the Service (a switch not undone) references the
canary. Setting a weight of 100 switches, any other weight switches back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import replace

from canary_operator.engine.types import RouteView
from canary_operator.kube.api import JsonObj, Kube, path
from canary_operator.traffic.base import PermanentRouteError, TrafficRouter

# JSON on the active Service while it is switched: the selector to put back.
ORIGINAL_SELECTOR = "canary-operator.dev/original-selector"


def _selector(body: JsonObj) -> dict[str, str]:
    return dict((body.get("spec") or {}).get("selector") or {})


def recorded_selector(body: JsonObj) -> dict[str, str] | None:
    """The selector recorded by a switch (None: not switched, or unreadable)."""
    raw = ((body.get("metadata") or {}).get("annotations") or {}).get(ORIGINAL_SELECTOR)
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        return None
    if not isinstance(data, dict) or not data:
        return None
    return {str(k): str(v) for k, v in data.items()}


def selector_patch(have: Mapping[str, str], want: Mapping[str, str]) -> dict[str, str | None]:
    """A merge patch of a selector from `have` to exactly `want`."""
    return {**{k: None for k in have if k not in want}, **want}


class ServiceSwitchRouter:
    def __init__(
        self, kube: Kube, namespace: str, service: str, preview_selector: Mapping[str, str]
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.service = service
        self.preview = dict(preview_selector)

    @property
    def path(self) -> str:
        return path("", "v1", "services", self.namespace, self.service)

    async def _get(self) -> JsonObj:
        body = await self.kube.get(self.path)
        if body is None:
            raise PermanentRouteError(f"Service {self.service} (spec.target.service) not found")
        return body

    async def read(self) -> RouteView:
        body = await self.kube.get(self.path)
        if body is None:
            return RouteView(weight=0, error=f"Service {self.service} not found")
        switched = _selector(body) == self.preview
        recorded = recorded_selector(body) is not None
        return RouteView(weight=100 if switched else 0, references_canary=switched or recorded)

    async def set_weight(self, weight: int) -> None:
        if weight >= 100:
            await self.switch()
        else:
            await self.reset()

    async def switch(self) -> None:
        """All traffic of the active Service to the preview's pods."""
        body = await self._get()
        have = _selector(body)
        if have == self.preview:
            return
        meta = body["metadata"]
        patch_meta: JsonObj = {"resourceVersion": meta["resourceVersion"]}
        if recorded_selector(body) is None:  # a switch again keeps the first record
            if not have:
                raise PermanentRouteError(f"Service {self.service} has no selector to switch")
            patch_meta["annotations"] = {ORIGINAL_SELECTOR: json.dumps(have, sort_keys=True)}
        await self.kube.merge_patch(
            self.path,
            {"metadata": patch_meta, "spec": {"selector": selector_patch(have, self.preview)}},
        )

    async def reset(self) -> None:
        """Back to the selector recorded by the switch, and the record removed."""
        body = await self.kube.get(self.path)
        if body is None:
            return
        original = recorded_selector(body)
        if original is None:
            return
        meta = body["metadata"]
        await self.kube.merge_patch(
            self.path,
            {
                "metadata": {
                    "resourceVersion": meta["resourceVersion"],
                    "annotations": {ORIGINAL_SELECTOR: None},
                },
                "spec": {"selector": selector_patch(_selector(body), original)},
            },
        )

    async def canary_labels_to_drop(self, service_selector: dict[str, str]) -> set[str]:
        """The active Service's own selector (as recorded, once switched): the preview's
        pods must not carry it, or the Service would reach them before the switch."""
        body = await self.kube.get(self.path)
        original = recorded_selector(body) if body is not None else None
        selector = original if original is not None else service_selector
        return {k for k in selector if k not in self.preview}


class RestoresSelector:
    """A canary's router, with a blue-green's switch undone first. A recovery runs with
    the router of the rollout that took the lock over (a canary of the same target,
    say), and a blue-green whose cleanup never ran (its operator gone and its lock
    taken over, its finalizer removed by hand) may have left the active Service on its
    preview's pods, which that cleanup would delete. Made only when the Service, as
    the reconcile read it, carries the record (reconcile/context.py): read, the record
    names the canary; reset, the selector goes back before the router's own reset."""

    def __init__(self, inner: TrafficRouter, switch: ServiceSwitchRouter) -> None:
        self.inner = inner
        self.switch = switch

    async def read(self) -> RouteView:
        view, service = await asyncio.gather(
            self.inner.read(), self.switch.kube.get(self.switch.path)
        )
        if service is None or recorded_selector(service) is None:
            return view
        return replace(view, references_canary=True)

    async def set_weight(self, weight: int) -> None:
        await self.inner.set_weight(weight)

    async def reset(self) -> None:
        await self.switch.reset()
        await self.inner.reset()

    async def canary_labels_to_drop(self, service_selector: dict[str, str]) -> set[str]:
        return await self.inner.canary_labels_to_drop(service_selector)
