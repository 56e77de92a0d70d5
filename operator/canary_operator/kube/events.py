"""Kubernetes Events about a rollout (what `kubectl describe cro` shows)."""

from __future__ import annotations

import logging
import secrets
import socket
from datetime import UTC, datetime

from canary_operator.api import models
from canary_operator.kube.api import Kube, path

log = logging.getLogger(__name__)


class EventRecorder:
    def __init__(self, kube: Kube, component: str = "canary-operator") -> None:
        self.kube = kube
        self.component = component
        self.instance = socket.gethostname()

    async def emit(
        self, namespace: str, name: str, uid: str, reason: str, message: str, warning: bool
    ) -> None:
        moment = datetime.now(UTC)
        now = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{secrets.token_hex(8)}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": f"{models.GROUP}/{models.VERSION}",
                "kind": models.KIND,
                "name": name,
                "namespace": namespace,
                "uid": uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": self.component},
            "reportingComponent": self.component,
            # Microseconds: several events often fall in one second, and timestamps in
            # seconds would leave their order to chance (`kubectl events` sorts on this).
            "eventTime": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "reportingInstance": self.instance,
            "action": reason,
        }
        log.info("%s/%s %s: %s", namespace, name, reason, message)
        try:
            await self.kube.create(path("", "v1", "events", namespace), body)
        except Exception as exc:  # an event is best effort; never block a rollout on it
            log.warning("could not record event %s for %s/%s: %s", reason, namespace, name, exc)
