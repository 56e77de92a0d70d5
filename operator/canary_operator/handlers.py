"""kopf wiring only: watches feed the work queue; the reconciler does the work.

No kopf state is stored on the objects (only `on.event` handlers are used), and the
finalizer is the operator's own, so cleanup is decided by the state machine alone.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from canary_operator.api import models
from canary_operator.api.models import Phase
from canary_operator.checks.inflight import CheckRunner
from canary_operator.kube import objects
from canary_operator.kube.api import Kube, load_config
from canary_operator.kube.events import EventRecorder
from canary_operator.lock.lease import LOCK_KEY_ANNOTATION, LOCK_LABEL, LeaseLock
from canary_operator.notifications.notifier import Notifier
from canary_operator.reconciler import Reconciler, RolloutIndex, parse_spec
from canary_operator.web import RunOptions, Services
from canary_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)


class Controller:
    """The work queue and what runs beside it, apart from reconciles: the lease
    renewer and the background checks. Started and stopped as one (by the leader)."""

    def __init__(self, kube: Kube, workers: int = 8) -> None:
        self.kube = kube
        self.index = RolloutIndex()
        self.lock = LeaseLock(kube)
        self.checks = CheckRunner(wake=self.wake)
        events = EventRecorder(kube)
        self.reconciler = Reconciler(kube, self.lock, self.index, events, self.checks)
        # Notifications go out from tasks of their own, after the status write.
        self.notifier = Notifier(kube, events)
        self.reconciler.on_transition = self.notifier.transition
        self.queue = WorkQueue(lambda key: self.reconciler.reconcile(*key), workers=workers)
        self.lock.renewer.on_lost = self.wake
        self.lock.renewer.holder_active = self.index.active
        # (namespace, lease) -> (holder uid, token) last seen: renewals wake nobody.
        self._lease_holders: dict[tuple[str, str], tuple[str | None, int]] = {}

    def start(self) -> None:
        self.lock.renewer.start()
        self.notifier.start()
        self.queue.start()

    async def stop(self) -> None:
        await self.queue.stop()
        await self.notifier.stop()
        await self.checks.stop()
        await self.lock.renewer.stop()

    def wake(self, namespace: str, name: str) -> None:
        self.queue.add((namespace, name))

    def on_rollout(self, event_type: str | None, body: dict[str, Any]) -> None:
        self.index.update(body, deleted=event_type == "DELETED")
        self.notifier.seen(body, deleted=event_type == "DELETED")
        if event_type != "DELETED":
            self.queue.add((body["metadata"]["namespace"], body["metadata"]["name"]))
        else:
            self.checks.forget(body["metadata"]["namespace"], body["metadata"]["name"])
        # A rollout that changed phase may unblock others sharing its lock.
        self.wake_lock_group(body)

    def wake_lock_group(self, body: dict[str, Any]) -> None:
        try:
            key = parse_spec(body).lock_key
        except Exception:
            return
        ns = body["metadata"]["namespace"]
        for other in self.index.sharing_lock(ns, key):
            if other["metadata"]["name"] != body["metadata"]["name"]:
                self.queue.add((ns, other["metadata"]["name"]))

    def on_lease(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A lock changed hands: wake the rollouts that share it (event-driven handoff).
        A renewal changes nothing anyone waits for, so it wakes nobody."""
        self.lock.renewer.seen(body)
        meta = body["metadata"]
        ns = meta["namespace"]
        spec = body.get("spec") or {}
        holder = (
            None if event_type == "DELETED" else spec.get("holderIdentity") or None,
            int(spec.get("leaseTransitions") or 0),
        )
        if self._lease_holders.get((ns, meta["name"])) == holder:
            return
        self._lease_holders[(ns, meta["name"])] = holder
        key = (meta.get("annotations") or {}).get(LOCK_KEY_ANNOTATION)
        if key is None:
            return
        for other in self.index.sharing_lock(ns, key):
            if not Phase((other.get("status") or {}).get("phase") or "Pending").terminal:
                self.queue.add((ns, other["metadata"]["name"]))

    def on_owned(self, body: dict[str, Any]) -> None:
        """A canary Deployment or a Job changed: reconcile the rollout it belongs to."""
        labels = body["metadata"].get("labels") or {}
        name = labels.get(objects.ROLLOUT_LABEL)
        if name:
            self.queue.add((body["metadata"]["namespace"], name))

    def on_deployment(self, body: dict[str, Any]) -> None:
        self.on_owned(body)
        ns = body["metadata"]["namespace"]
        for name in self.index.targeting(ns, body["metadata"]["name"]):
            self.queue.add((ns, name))


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Safety between operator replicas comes from the Lease protocol and resourceVersion
    # preconditions, not from kopf peering.
    settings.peering.standalone = True
    # Least privilege: no runtime list/watch of CRDs and namespaces. The CRD must be
    # installed before the operator starts; namespaces are given by name (-n).
    settings.scanning.disabled = True
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 120
    api_client = await load_config()
    kube = Kube(api_client)
    options = memo.get("options") or RunOptions(http_port=0)
    controller = Controller(kube, workers=options.workers)
    # HTTP endpoints, metrics and (optionally) leader election; only the leader
    # starts the work queue.
    services = Services(kube, options, controller)
    metrics = services.state.metrics
    controller.reconciler.on_status_written = metrics.record
    controller.queue.metrics = metrics
    controller.lock.renewer.on_renewal = metrics.lease_renewal
    controller.notifier.metrics = metrics
    memo["controller"] = controller
    memo["api_client"] = api_client
    memo["services"] = services
    await services.start()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo["services"].stop()
    await memo["api_client"].close()


@kopf.on.event(models.GROUP, models.VERSION, models.PLURAL)
async def rollout_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    memo["controller"].on_rollout(event.get("type"), dict(event["object"]))


@kopf.on.event(models.GROUP, models.VERSION, models.PLURAL)
async def rollout_metrics(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    """Rollouts by phase, as the watch sees them (also those with no status write)."""
    meta, status = event["object"]["metadata"], event["object"].get("status") or {}
    phase = None if event.get("type") == "DELETED" else status.get("phase") or "Pending"
    memo["services"].state.metrics.observe(meta["namespace"], meta["name"], phase)


@kopf.on.event("coordination.k8s.io", "v1", "leases", labels={LOCK_LABEL: "true"})
async def lease_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    memo["controller"].on_lease(event.get("type"), dict(event["object"]))


@kopf.on.event("apps", "v1", "deployments")
async def deployment_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    memo["controller"].on_deployment(dict(event["object"]))


@kopf.on.event("batch", "v1", "jobs", labels={objects.MANAGED_BY: objects.OPERATOR})
async def job_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    memo["controller"].on_owned(dict(event["object"]))
