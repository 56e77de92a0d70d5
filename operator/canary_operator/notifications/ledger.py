"""The ledger: which deliveries a rollout has had, kept on the rollout itself.

A delivery key (run/trigger[/occurrence]/service) is recorded in the annotation
`notifications.canary-operator.dev/notified` (as Argo's notifications-engine does):
`pending` as the first attempt goes out, `sent` after success, `failed` when given up.
A restarted operator re-sends what was `pending` and never what was `sent`. (A message
can be lost if the operator dies after the status write, before the `pending` mark is
written and before an attempt succeeded; it can be sent twice if it dies between a
delivery and its `sent` mark.) The `pending` write and the first attempt go out
together: a message never waits for the API server, and the windows above are no
larger than with the mark first (an attempt that succeeds before its `pending` mark is
written has been delivered; its `sent` mark is asked for after, so it is written after).
"""

from __future__ import annotations

import asyncio
import contextlib
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


@dataclass
class _Batch:
    """Marks of one rollout not yet written, and who waits for them."""

    namespace: str
    name: str
    states: dict[str, str] = field(default_factory=dict)
    waiting: list[asyncio.Future[None]] = field(default_factory=list)


class Ledger:
    """Writes delivery states to the rollouts (best effort; conditional writes).

    One writer per rollout: marks asked for while a write of that rollout is under way
    go out together in its next write, so the deliveries of one transition (one per
    service) cost one read and one write, and a delivery to one endpoint never waits
    behind a queue of marks for the others."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._batches: dict[str, _Batch] = {}  # uid -> marks not yet being written
        self._writers: dict[str, asyncio.Task[None]] = {}

    async def mark(self, delivery: Delivery, state: str) -> None:
        """Record a delivery's state on the rollout; returns once it is written (or
        could not be: logged)."""
        await self.want(delivery, state)

    def want(self, delivery: Delivery, state: str) -> asyncio.Future[None]:
        """Ask for a delivery's state to be recorded (at once, in order: a state asked
        for later is written later or in the same write, and wins); the future is done
        once it is written (or could not be: logged)."""
        uid = delivery.uid
        batch = self._batches.get(uid)
        if batch is None:
            batch = self._batches[uid] = _Batch(delivery.namespace, delivery.name)
        batch.states.pop(delivery.key, None)
        batch.states[delivery.key] = state
        written = asyncio.get_running_loop().create_future()
        batch.waiting.append(written)
        if uid not in self._writers:
            self._writers[uid] = asyncio.get_running_loop().create_task(self._write_all(uid))
        return written

    async def stop(self) -> None:
        writers = list(self._writers.values())
        for task in writers:
            task.cancel()
        for task in writers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _write_all(self, uid: str) -> None:
        batch: _Batch | None = None
        try:
            while (batch := self._batches.pop(uid, None)) is not None:
                await self._write(uid, batch)
                _resolve(batch)
        finally:
            self._writers.pop(uid, None)
            for left in (batch, self._batches.pop(uid, None)):
                if left is not None:
                    _resolve(left)

    async def _write(self, uid: str, batch: _Batch) -> None:
        rollout = rollout_path(batch.namespace, batch.name)
        for attempt in range(LEDGER_TRIES):
            if attempt:
                # Another writer won: a run that ends writes its status several times
                # within a second (and drops its finalizer); let the burst pass.
                await asyncio.sleep(LEDGER_RETRY_SECONDS * attempt)
            try:
                body = await asyncio.wait_for(self.kube.get(rollout), 10)
                if body is None or body["metadata"].get("uid") != uid:
                    return
                entries = ledger(body)
                changed = {k: v for k, v in batch.states.items() if entries.get(k) != v}
                if not changed:
                    return
                for key, state in changed.items():
                    entries.pop(key, None)
                    entries[key] = state
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
                log.warning("notification ledger of %s/%s: %s", batch.namespace, batch.name, exc)
                return
        log.warning(
            "notification ledger of %s/%s: %s not marked (%d conflicts in a row)",
            batch.namespace,
            batch.name,
            ", ".join(f"{k} {v}" for k, v in batch.states.items()),
            LEDGER_TRIES,
        )


def _resolve(batch: _Batch) -> None:
    for waiter in batch.waiting:
        if not waiter.done():
            waiter.set_result(None)
