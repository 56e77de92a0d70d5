"""Background delivery of notifications: which triggers fired, one message per
trigger per run and service, each delivered by a task of its own.

Nothing here runs on the reconcile path: the reconciler's hook (`transition`) only
computes which triggers fired and schedules tasks; every HTTP call, every read of the
configuration and every ledger write happens in those tasks, each with its own time
limit. A chat endpoint that hangs or answers 500 delays only its own messages: no
step, cleanup or lock waits on it, and neither does any other endpoint (each has
bounds of its own: endpoints.py).

Dedupe: in this process, a delivery key (run/trigger[/occurrence]/service) is sent
once. Across restarts, the key is recorded on the rollout (ledger.py). How one message
goes out is in delivery.py; one attempt and the backoff between attempts in sender.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from canary_operator.api.models import CanaryRolloutStatus, Phase
from canary_operator.kube.api import JsonObj, Kube
from canary_operator.notifications import config, triggers
from canary_operator.notifications.config import ConfigError
from canary_operator.notifications.delivery import Courier, EventSink, NotificationMetrics
from canary_operator.notifications.endpoints import DEFAULT_LIMITS, Limits
from canary_operator.notifications.ledger import FAILED, PENDING, SENT, Delivery, ledger, parse_key
from canary_operator.notifications.reader import ConfigReader
from canary_operator.notifications.sender import DEFAULT_BACKOFF, Backoff
from canary_operator.notifications.triggers import Fired

log = logging.getLogger(__name__)


class Notifier:
    def __init__(
        self,
        kube: Kube,
        events: EventSink,
        metrics: NotificationMetrics | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        limits: Limits = DEFAULT_LIMITS,
        config_ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.events = events
        self.metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._keys: OrderedDict[tuple[str, str], None] = OrderedDict()  # (uid, key) taken
        self._said: OrderedDict[tuple[str, str], None] = OrderedDict()  # config problems told
        self._seen_uids: set[str] = set()
        self._timers: dict[tuple[str, int], asyncio.Task[None]] = {}  # (uid, run) lock-waiting
        self._bodies: dict[str, JsonObj] = {}  # uid -> latest body seen
        self._configs = ConfigReader(kube, config_ttl, clock)
        self.courier = Courier(
            kube, events, metrics, backoff, limits, self._configs, self._spawn, self._tell_once
        )
        # Only a running controller (the leader) notifies: a standby replica sees the
        # same watch events and must not resume or time anything.
        self._stopped = True

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._stopped = False

    async def stop(self) -> None:
        self._stopped = True
        self._seen_uids.clear()  # a later start resumes what is pending
        tasks = [*self._tasks, *self._timers.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.courier.stop()

    async def idle(self) -> None:
        """Wait until no delivery is in flight (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ---------------------------------------------------------------- inputs

    def transition(
        self, body: JsonObj, old: CanaryRolloutStatus | None, new: CanaryRolloutStatus
    ) -> None:
        """The reconciler wrote `new` over `old` (after the write; synchronous, no I/O)."""
        if self._stopped:
            return
        self._remember(body)
        for fired in triggers.fired(old, new):
            self._submit(body, fired)
        self._time_lock_wait(body, new)

    def seen(self, body: JsonObj, deleted: bool = False) -> None:
        """A rollout as the watch shows it: resumes what a previous process left
        pending, and times lock waits (also of rollouts whose status does not change)."""
        if self._stopped:
            return
        uid = body["metadata"].get("uid", "")
        if deleted:
            self._bodies.pop(uid, None)
            for key in [k for k in self._timers if k[0] == uid]:
                self._timers.pop(key).cancel()
            return
        self._remember(body)
        if uid not in self._seen_uids:
            self._seen_uids.add(uid)
            self._resume_pending(body)
        try:
            status = CanaryRolloutStatus.model_validate(body.get("status") or {})
        except ValueError:
            return
        self._time_lock_wait(body, status)

    def _remember(self, body: JsonObj) -> None:
        self._bodies[body["metadata"].get("uid", "")] = body

    # ---------------------------------------------------------------- submit

    def _submit(self, body: JsonObj, fired: Fired, extra: dict[str, Any] | None = None) -> None:
        meta = body["metadata"]
        subs, problems = config.subscriptions(meta.get("annotations"))
        for problem in problems:
            self._tell_once(body, f"{fired.run}/{problem}", problem)
        recorded = ledger(body)
        for sub in subs:
            if sub.trigger != fired.trigger:
                continue
            delivery = Delivery(
                meta["namespace"], meta["name"], meta["uid"], fired, sub, extra or {}
            )
            if recorded.get(delivery.key) in (SENT, FAILED) or not self._take(delivery):
                continue
            self._spawn(self.courier.deliver(body, delivery))

    def _take(self, delivery: Delivery) -> bool:
        key = (delivery.uid, delivery.key)
        if key in self._keys:
            return False
        self._keys[key] = None
        while len(self._keys) > 10_000:
            self._keys.popitem(last=False)
        return True

    def _resume_pending(self, body: JsonObj) -> None:
        meta = body["metadata"]
        subs, _ = config.subscriptions(meta.get("annotations"))
        for key, state in ledger(body).items():
            parsed = parse_key(key)
            if state != PENDING or parsed is None:
                continue
            fired, service = parsed
            sub = next(
                (s for s in subs if s.trigger == fired.trigger and s.service == service), None
            )
            if sub is None:
                continue
            delivery = Delivery(meta["namespace"], meta["name"], meta["uid"], fired, sub)
            if self._take(delivery):
                log.info("%s/%s: resuming notification %s", meta["namespace"], meta["name"], key)
                self._spawn(self.courier.deliver(body, delivery))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        self._gauge()

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._gauge()
            if not t.cancelled() and t.exception() is not None:
                log.error("notification task failed", exc_info=t.exception())

        task.add_done_callback(done)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.notifications_in_flight(len(self._tasks))

    # ---------------------------------------------------------- lock waiting

    def _time_lock_wait(self, body: JsonObj, status: CanaryRolloutStatus) -> None:
        uid = body["metadata"].get("uid", "")
        key = (uid, status.run)
        waiting = status.phase == Phase.QUEUED and bool(status.queued_at)
        if not waiting:
            for other in [k for k in self._timers if k[0] == uid]:
                self._timers.pop(other).cancel()
            return
        if key in self._timers:
            return
        subs, _ = config.subscriptions(body["metadata"].get("annotations"))
        if not any(s.trigger == triggers.LOCK_WAITING for s in subs):
            return
        assert status.queued_at is not None
        task = asyncio.get_running_loop().create_task(
            self._lock_wait(body["metadata"]["namespace"], uid, status.run, status.queued_at)
        )
        self._timers[key] = task
        task.add_done_callback(lambda _t: self._timers.pop(key, None))

    async def _lock_wait(self, namespace: str, uid: str, run: int, queued_at: str) -> None:
        cfg = await self._configs.get(namespace)
        if isinstance(cfg, ConfigError):
            return  # said when a delivery needs it
        after = cfg.lock_waiting_after().total_seconds()
        since = _parse_time(queued_at)
        waited = (datetime.now(UTC) - since).total_seconds()
        if waited < after:
            await asyncio.sleep(after - waited)
        body = self._bodies.get(uid)
        if body is None:
            return
        status = CanaryRolloutStatus.model_validate(body.get("status") or {})
        if status.phase != Phase.QUEUED or status.run != run:
            return
        waited = (datetime.now(UTC) - since).total_seconds()
        self._submit(
            body,
            Fired(triggers.LOCK_WAITING, run),
            {"waited": f"{int(waited // 60)}m{int(waited % 60)}s"},
        )

    # --------------------------------------------------------------- deliver

    # ------------------------------------------------------------- events

    def _tell_once(self, body: JsonObj, key: str, message: str) -> None:
        meta = body["metadata"]
        said = (meta.get("uid", ""), key)
        if said in self._said:
            return
        self._said[said] = None
        while len(self._said) > 10_000:
            self._said.popitem(last=False)

        async def tell() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.events.emit(
                        meta["namespace"],
                        meta["name"],
                        meta["uid"],
                        "NotificationConfigInvalid",
                        message,
                        True,
                    ),
                    10,
                )

        self._spawn(tell())


def _parse_time(text: str) -> datetime:
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        with contextlib.suppress(ValueError):
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
    return datetime.now(UTC)
