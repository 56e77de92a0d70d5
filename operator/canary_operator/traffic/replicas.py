"""The `replicas` router: no traffic router, the stable Service reaches canary pods too.

Traffic follows the share of ready pods, so the weight is a function of the two
Deployments' sizes; setting a weight is done by scaling the canary (the machine asks
for that through EnsureCanary) and, in mode Shift, the stable too (ScaleStable);
resetting means scaling the canary to zero.

Mode Shift writes the stable Deployment's replicas, so it records the original count on
the target first (`StableRecord`, one annotation, in the same write as the first scale
down). `RestoresStable` wraps whatever router a rollout uses: its reset scales the stable
back to that count, waits for the stable's pods, removes the record, and only then lets
the router take the canary's traffic away. Any router, because a recovery cleanup runs
with the router of the rollout that took the lock over, whatever the run that scaled the
stable down used.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from canary_operator.engine.types import RouteView, StableRecord
from canary_operator.engine.weights import original_replicas, replicas_weight
from canary_operator.kube.api import Conflict, JsonObj, Kube, path
from canary_operator.kube.objects import STABLE_REPLICAS
from canary_operator.traffic.base import TrafficRouter


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
        # rely on this: it deletes the canary whatever its weight reads.) In mode Shift
        # this is the same share: canary ready / (canary ready + stable ready).
        return RouteView(weight=replicas_weight(stable_ready, canary_ready))

    async def set_weight(self, weight: int) -> None:
        """Nothing to write: the canary's size carries the weight."""

    async def reset(self) -> None:
        # Asked again until the canary's pods are gone: written once (the cache holds
        # the answer of that write), then nothing is left to write.
        canary = await self.kube.get(self._deployment(self.canary))
        if canary is not None and _replicas(canary) != 0:
            # The canary as read: a patch may not change the uid, so one made again under
            # its name since (by another run) is refused, not scaled down.
            uid = {"uid": canary["metadata"]["uid"]} if canary["metadata"].get("uid") else {}
            await self.kube.merge_patch(
                self._deployment(self.canary), {"metadata": uid, "spec": {"replicas": 0}}
            )

    async def canary_labels_to_drop(self, service_selector: dict[str, str]) -> set[str]:
        """None: the stable Service reaching canary pods is how this router works."""
        return set()


# ------------------------------------------------------------ the stable's own size


def stable_record(body: JsonObj | None) -> StableRecord | None:
    """The record on a target (None when absent, or edited into something unreadable:
    then there is nothing known to restore)."""
    raw = (((body or {}).get("metadata") or {}).get("annotations") or {}).get(STABLE_REPLICAS)
    try:
        data = json.loads(raw) if raw else None
        if not isinstance(data, dict):
            return None
        record = StableRecord(int(data["original"]), int(data["written"]), int(data["floor"]))
    except (ValueError, KeyError, TypeError):
        return None
    return record if min(record.original, record.written, record.floor) >= 0 else None


def _record_text(original: int, written: int, floor: int, by: str) -> str:
    body = {"original": original, "written": written, "floor": floor, "by": by}
    return json.dumps(body, sort_keys=True)


def _replicas(body: JsonObj) -> int:
    return int((body.get("spec") or {}).get("replicas", 1))


async def scale_stable(
    kube: Kube,
    namespace: str,
    name: str,
    replicas: int,
    original: int,
    floor: int,
    by: str,
    fresh: Kube | None = None,
) -> None:
    """Write the stable's replicas and the record in one merge patch, conditional on the
    resourceVersion just read (fencing; `by` names the run and its lock token).

    A merge patch (an update), not a server-side apply: an apply would have to keep
    applying `spec.replicas` for as long as the operator wants to own it, and dropping
    it from a later apply would remove the field (the Deployment would fall back to 1
    replica). An update leaves `canary-operator` as the field's last manager, as
    `kubectl scale` does; the value is the user's original again after cleanup."""
    deployment = path("apps", "v1", "deployments", namespace, name)

    async def once(reads: Kube) -> None:
        target = await reads.get(deployment)
        if target is None:
            raise ValueError(f"target Deployment {name} not found")
        record = stable_record(target)
        if _replicas(target) == replicas and record == StableRecord(original, replicas, floor):
            return
        await kube.merge_patch(
            deployment,
            {
                "metadata": {
                    "resourceVersion": target["metadata"]["resourceVersion"],
                    "annotations": {STABLE_REPLICAS: _record_text(original, replicas, floor, by)},
                },
                "spec": {"replicas": replicas},
            },
        )

    await _fresh(once, kube, fresh)


async def _fresh(
    write: Callable[[Kube], Awaitable[None]],
    kube: Kube,
    fresh: Kube | None,
    attempts: int = 3,
) -> None:
    """Read-then-write, again on a 409: the Deployment controller writes the target's
    status all the time, and each write changes the resourceVersion the patch is
    conditional on. The first read may come from the cache (nothing to write is then
    the common case and costs no request); a retry reads from the API server
    (`fresh`). Each write, a retry's too, goes through `kube`, which (in a reconcile,
    kube/api.py FencedWrites) confirms the lock again right before it: a retry is
    never covered by the first attempt's confirmation."""
    for attempt in range(attempts):
        try:
            await write(kube if attempt == 0 else fresh or kube)
            return
        except Conflict:
            if attempt == attempts - 1:
                raise


def _cannot_create_pods(body: JsonObj) -> bool:
    for condition in (body.get("status") or {}).get("conditions") or []:
        kind, value = condition.get("type"), condition.get("status")
        if (kind == "ReplicaFailure" and value == "True") or (
            kind == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            return True
    return False


@dataclass(frozen=True)
class Restore:
    """What restoring the stable takes, read from the target and its record."""

    replicas: int  # to restore
    scaled: bool  # spec.replicas is that already
    ready: bool  # and enough of its pods are ready for the canary to go
    waiting_for: str


def restore_state(body: JsonObj | None) -> Restore | None:
    """None when the target has no record: nothing to restore."""
    record = stable_record(body)
    if body is None or record is None:
        return None
    current = _replicas(body)
    want = original_replicas(current, record.original, record.written)
    name = body["metadata"]["name"]
    if current != want:
        return Restore(
            want, False, False, f"stable Deployment {name} to be scaled back to {want} replicas"
        )
    status = body.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    observed = int(status.get("observedGeneration") or 0) >= int(
        body["metadata"].get("generation") or 0
    )
    # The canary goes once the stable is back at full size. A stable that cannot create
    # its pods (quota, admission: perhaps the canary's pods hold what it needs) would
    # keep the canary forever: then the floor the run kept is enough.
    enough = ready >= want or (_cannot_create_pods(body) and ready >= min(record.floor, want))
    if not (observed and enough):
        return Restore(
            want, True, False, f"{ready}/{want} pods of the stable Deployment {name} ready"
        )
    return Restore(want, True, True, f"the record {STABLE_REPLICAS} to be removed from {name}")


class RestoresStable:
    """Any router, with the stable Deployment's size restored first on reset."""

    def __init__(
        self,
        inner: TrafficRouter,
        kube: Kube,
        namespace: str,
        stable: str,
        by: str,
        fresh: Kube | None = None,
    ):
        self.inner = inner
        self.kube = kube
        self.fresh = fresh
        self.namespace = namespace
        self.stable = stable
        self.by = by

    def _deployment(self) -> str:
        return path("apps", "v1", "deployments", self.namespace, self.stable)

    async def read(self) -> RouteView:
        view, target = await asyncio.gather(self.inner.read(), self.kube.get(self._deployment()))
        restore = restore_state(target)
        return replace(view, restoring=f"waiting for {restore.waiting_for}") if restore else view

    async def set_weight(self, weight: int) -> None:
        await self.inner.set_weight(weight)

    async def canary_labels_to_drop(self, service_selector: dict[str, str]) -> set[str]:
        return await self.inner.canary_labels_to_drop(service_selector)

    async def reset(self) -> None:
        """Stable back to its size and ready, record removed, then the router's reset:
        the canary loses its traffic (and, here, its pods) only after that."""
        await _fresh(self._reset, self.kube, self.fresh)

    async def _reset(self, reads: Kube) -> None:
        target = await reads.get(self._deployment())
        restore = restore_state(target)
        if target is not None and restore is not None:
            record = stable_record(target)
            assert record is not None
            version = target["metadata"]["resourceVersion"]
            if not restore.scaled:
                text = _record_text(restore.replicas, restore.replicas, record.floor, self.by)
                await self.kube.merge_patch(
                    self._deployment(),
                    {
                        "metadata": {
                            "resourceVersion": version,
                            "annotations": {STABLE_REPLICAS: text},
                        },
                        "spec": {"replicas": restore.replicas},
                    },
                )
                return
            if not restore.ready:
                return  # the canary keeps its pods until the stable's are back
            await self.kube.merge_patch(
                self._deployment(),
                {"metadata": {"resourceVersion": version, "annotations": {STABLE_REPLICAS: None}}},
            )
        await self.inner.reset()
