"""kopf wiring only: the rollouts' watch and the operator's lifecycle. The controller
(controller.py) watches the rest through its own caches and does the work.

No kopf state is stored on the objects (only `on.event` handlers are used), and the
finalizer is the operator's own, so cleanup is decided by the state machine alone.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from canary_operator.api import models
from canary_operator.controller import Controller
from canary_operator.kube.api import Kube, load_config
from canary_operator.metrics import Metrics
from canary_operator.web import RunOptions, Services

log = logging.getLogger(__name__)


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
    settings.persistence.diffbase_storage = NoDiffBase()
    api_client = await load_config()
    options = memo.get("options") or RunOptions(http_port=0)
    # Counts what every part does: the API requests, reconciles, renewals, notifications.
    metrics = Metrics()
    kube = Kube(api_client, on_request=metrics.api_request)
    controller = Controller(
        kube, workers=options.workers, namespaces=options.namespaces, metrics=metrics
    )
    # HTTP endpoints, metrics and (optionally) leader election; only the leader
    # starts the work queue.
    services = Services(kube, options, controller, metrics)
    controller.start_watching()
    memo["controller"] = controller
    memo["api_client"] = api_client
    memo["services"] = services
    await services.start()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo["services"].stop()
    await memo["controller"].stop_watching()
    await memo["api_client"].close()


class NoDiffBase(kopf.DiffBaseStorage):
    """Event handlers only: kopf would still copy every event's body to work out a
    "last handled" essence that no handler of ours reads (a sixth of the operator's
    CPU per rollout event, measured). Nothing is built, stored or fetched."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.event(models.GROUP, models.VERSION, models.PLURAL)
async def rollout_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    obj = event["object"]
    memo["controller"].on_rollout(event.get("type"), dict(obj))
    # Rollouts by phase, as the watch sees them (also those with no status write).
    meta, status = obj["metadata"], obj.get("status") or {}
    phase = None if event.get("type") == "DELETED" else status.get("phase") or "Pending"
    memo["services"].state.metrics.observe(meta["namespace"], meta["name"], phase)
