"""The ledger: which deliveries a rollout has had, kept on the rollout itself.

A delivery key (run/trigger[/occurrence]/service) is recorded in the annotation
`notifications.canary-operator.dev/notified` (as Argo's notifications-engine does):
`pending` before the first attempt, `sent` after success, `failed` when given up. A
restarted operator re-sends what was `pending` and never what was `sent`. (A message
can be lost if the operator dies between the status write and the `pending` mark; it
can be sent twice if it dies between a delivery and its `sent` mark.)
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from canary_operator.kube.api import Conflict, JsonObj, Kube
from canary_operator.kube.rollouts import rollout_path
from canary_operator.notifications import triggers
from canary_operator.notifications.config import Subscription
from canary_operator.notifications.triggers import Fired

log = logging.getLogger(__name__)

LEDGER_ANNOTATION = "notifications.canary-operator.dev/notified"
LEDGER_LIMIT = 64  # entries kept on a rollout (oldest dropped first)
PENDING, SENT, FAILED = "pending", "sent", "failed"
# A ledger write is conditional on the rollout's version: tries, and the pause before
# the n-th retry (n x this), so that a burst of status writes does not drop a mark.
LEDGER_TRIES = 10
LEDGER_RETRY_SECONDS = 0.05


@dataclass(frozen=True)
class Delivery:
    namespace: str
    name: str
    uid: str
    fired: Fired
    subscription: Subscription
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        return f"{self.fired.key}/{self.subscription.service}"


def ledger(body: JsonObj) -> dict[str, str]:
    raw = (body["metadata"].get("annotations") or {}).get(LEDGER_ANNOTATION)
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def parse_key(key: str) -> tuple[Fired, str] | None:
    """Inverse of Delivery.key: run/trigger[/occurrence]/service."""
    parts = key.split("/")
    if len(parts) not in (3, 4) or not parts[0].isdigit() or parts[1] not in triggers.TRIGGERS:
        return None
    occurrence = parts[2] if len(parts) == 4 else ""
    return Fired(parts[1], int(parts[0]), occurrence), parts[-1]


class Ledger:
    """Writes delivery states to the rollouts (best effort; conditional writes)."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._locks: dict[str, asyncio.Lock] = {}

    async def mark(self, delivery: Delivery, state: str) -> None:
        """Record a delivery's state on the rollout (best effort; conditional write)."""
        lock = self._locks.setdefault(delivery.uid, asyncio.Lock())
        rollout = rollout_path(delivery.namespace, delivery.name)
        async with lock:
            for attempt in range(LEDGER_TRIES):
                if attempt:
                    # Another writer won: a run that ends writes its status several times
                    # within a second (and drops its finalizer); let the burst pass.
                    await asyncio.sleep(LEDGER_RETRY_SECONDS * attempt)
                try:
                    body = await asyncio.wait_for(self.kube.get(rollout), 10)
                    if body is None or body["metadata"].get("uid") != delivery.uid:
                        return
                    entries = ledger(body)
                    if entries.get(delivery.key) == state:
                        return
                    entries.pop(delivery.key, None)
                    entries[delivery.key] = state
                    while len(entries) > LEDGER_LIMIT:
                        entries.pop(next(iter(entries)))
                    patch = {
                        "metadata": {
                            "resourceVersion": body["metadata"]["resourceVersion"],
                            "annotations": {LEDGER_ANNOTATION: json.dumps(entries)},
                        }
                    }
                    await asyncio.wait_for(self.kube.merge_patch(rollout, patch), 10)
                    return
                except Conflict:
                    continue
                except Exception as exc:
                    log.warning(
                        "notification ledger of %s/%s: %s", delivery.namespace, delivery.name, exc
                    )
                    return
            log.warning(
                "notification ledger of %s/%s: %s not marked %s (%d conflicts in a row)",
                delivery.namespace,
                delivery.name,
                delivery.key,
                state,
                LEDGER_TRIES,
            )
