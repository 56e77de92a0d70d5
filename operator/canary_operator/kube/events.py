"""Kubernetes Events about a rollout (what `kubectl describe cro` shows).

Repeats are aggregated the way Kubernetes' own recorder does it (client-go
tools/record/events_cache.go, `EventCorrelator`), so a retry loop shows as one Event
with a growing `count` and a moving `lastTimestamp`, not as a new Event per attempt:

- the *same* event (source component and instance, involved object, type, reason and
  message: getEventKey) seen again updates the Event it created (count + 1,
  lastTimestamp; eventObserve);
- events that differ only by message (same source, object, type, reason:
  EventAggregatorByReasonFunc) are combined once 10 different messages came within
  10 minutes: from then on one Event "(combined from similar events): <latest
  message>" is counted instead (EventAggregate, defaultAggregateMaxEvents,
  defaultAggregateIntervalInSeconds);
- the caches are LRUs of 4096 entries (maxLruCacheEntries).

The bookkeeping is pure (`EventCorrelator`, driven by the caller's clock); the
recorder only turns its answers into a create or a patch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.api import models
from canary_operator.api.timestamps import iso, precise
from canary_operator.kube.api import Kube, path

log = logging.getLogger(__name__)

CACHE_ENTRIES = 4096
AGGREGATE_MAX_EVENTS = 10
AGGREGATE_INTERVAL = 600.0  # seconds
COMBINED_PREFIX = "(combined from similar events): "


@dataclass(frozen=True)
class EventKey:
    """What makes two events "the same" (getEventKey); `message` left out, what makes
    them "similar" (the aggregate key)."""

    component: str
    instance: str
    namespace: str
    name: str
    uid: str
    type: str
    reason: str
    message: str = ""

    def similar(self) -> EventKey:
        return EventKey(
            self.component,
            self.instance,
            self.namespace,
            self.name,
            self.uid,
            self.type,
            self.reason,
        )


@dataclass
class Observation:
    """What the correlator decided for one event: create `name`, or patch it with
    `count` (and the message, which may have become the combined one)."""

    name: str
    count: int
    first_timestamp: str
    message: str
    create: bool


@dataclass
class _Logged:
    name: str
    count: int
    first_timestamp: str


@dataclass
class _Aggregate:
    messages: set[str] = field(default_factory=set)
    last_seen: float = float("-inf")


class _Lru(OrderedDict[Any, Any]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)

    def fetch(self, key: Any) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value


class EventCorrelator:
    """client-go's aggregation and counting rules, without I/O."""

    def __init__(
        self,
        new_name: Callable[[str], str],
        size: int = CACHE_ENTRIES,
        max_events: int = AGGREGATE_MAX_EVENTS,
        interval: float = AGGREGATE_INTERVAL,
    ) -> None:
        self.new_name = new_name
        self.max_events = max_events
        self.interval = interval
        self._aggregates: _Lru = _Lru(size)
        self._logged: _Lru = _Lru(size)

    def observe(self, key: EventKey, now: float, timestamp: str) -> Observation:
        """`now` is a monotonic reading (the aggregation window), `timestamp` what a new
        Event's firstTimestamp says."""
        similar = key.similar()
        record: _Aggregate | None = self._aggregates.fetch(similar)
        if record is None or now - record.last_seen > self.interval:
            record = _Aggregate()
        record.messages.add(key.message)
        record.last_seen = now
        self._aggregates.put(similar, record)
        message, cache_key = key.message, key
        if len(record.messages) >= self.max_events:
            record.messages.pop()  # the set never grows past the limit
            message, cache_key = COMBINED_PREFIX + key.message, similar
        logged: _Logged | None = self._logged.fetch(cache_key)
        if logged is None:
            logged = _Logged(self.new_name(key.name), 1, timestamp)
            self._logged.put(cache_key, logged)
            return Observation(logged.name, 1, timestamp, message, create=True)
        logged.count += 1
        return Observation(logged.name, logged.count, logged.first_timestamp, message, False)

    def forget(self, key: EventKey, name: str) -> None:
        """The Event named `name` is gone (expired): the next occurrence creates anew."""
        for cache_key in (key, key.similar()):
            logged = self._logged.get(cache_key)
            if logged is not None and logged.name == name:
                del self._logged[cache_key]


# Events waiting for the background sender; past this many (an API server too slow to
# take them) new ones are dropped with a warning: an Event is best effort.
MAX_PENDING = 2048
STOP_FLUSH_SECONDS = 5.0


@dataclass
class _Stamped:
    """An event as decided when it happened: its moment and the correlator's verdict."""

    key: EventKey
    seen: Observation
    moment: datetime


class EventRecorder:
    def __init__(self, kube: Kube, component: str = "canary-operator") -> None:
        self.kube = kube
        self.component = component
        self.instance = socket.gethostname()
        self.correlator = EventCorrelator(lambda name: f"{name}.{secrets.token_hex(8)}")
        self.dropped = 0
        self._pending: asyncio.Queue[_Stamped] | None = None
        self._sender: asyncio.Task[None] | None = None

    def post(
        self, namespace: str, name: str, uid: str, reason: str, message: str, warning: bool
    ) -> None:
        """Record an event without waiting for its write: it is stamped and counted now
        (its eventTime is this moment) and written by one background sender, in order.
        A reconcile announces its transition this way, so the next step or the lock's
        next holder never waits on Event writes."""
        stamped = self._stamp(namespace, name, uid, reason, message, warning)
        if self._pending is None:
            self._pending = asyncio.Queue()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send(self._pending), name="events")
        if self._pending.qsize() >= MAX_PENDING:
            self.dropped += 1
            log.warning("dropped event %s for %s/%s: %d waiting", reason, namespace, name,
                        MAX_PENDING)  # fmt: skip
            return
        self._pending.put_nowait(stamped)

    async def emit(
        self, namespace: str, name: str, uid: str, reason: str, message: str, warning: bool
    ) -> None:
        """Record an event and wait for its write (for callers already off the
        reconcile path)."""
        await self._write(self._stamp(namespace, name, uid, reason, message, warning))

    async def flush(self) -> None:
        """Wait until every posted event is written (or given up)."""
        if self._pending is not None:
            await self._pending.join()

    async def stop(self) -> None:
        """Write what is still waiting (for a few seconds at most), then stop the sender."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), STOP_FLUSH_SECONDS)
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None

    def _stamp(
        self, namespace: str, name: str, uid: str, reason: str, message: str, warning: bool
    ) -> _Stamped:
        moment = datetime.now(UTC)
        type_ = "Warning" if warning else "Normal"
        key = EventKey(
            self.component, self.instance, namespace, name, uid, type_, reason, message[:1024]
        )
        seen = self.correlator.observe(key, time.monotonic(), _seconds(moment))
        log.info("%s/%s %s: %s", namespace, name, reason, key.message)
        return _Stamped(key, seen, moment)

    async def _send(self, pending: asyncio.Queue[_Stamped]) -> None:
        while True:
            stamped = await pending.get()
            try:
                await self._write(stamped)
            finally:
                pending.task_done()

    async def _write(self, stamped: _Stamped) -> None:
        key, seen, moment = stamped.key, stamped.seen, stamped.moment
        now = _seconds(moment)
        try:
            if not seen.create:
                try:
                    await self.kube.merge_patch(
                        path("", "v1", "events", key.namespace, seen.name),
                        {"count": seen.count, "lastTimestamp": now, "message": seen.message},
                    )
                    return
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    self.correlator.forget(key, seen.name)  # expired: record it anew
                    seen = self.correlator.observe(key, time.monotonic(), now)
            await self.kube.create(
                path("", "v1", "events", key.namespace),
                self._body(key.namespace, key.name, key.uid, key.reason, key.type, seen, moment),
            )
        except Exception as exc:  # an event is best effort; never block a rollout on it
            log.warning(
                "could not record event %s for %s/%s: %s", key.reason, key.namespace, key.name, exc
            )

    def _body(
        self,
        namespace: str,
        name: str,
        uid: str,
        reason: str,
        type_: str,
        seen: Observation,
        moment: datetime,
    ) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": seen.name, "namespace": namespace},
            "involvedObject": {
                "apiVersion": f"{models.GROUP}/{models.VERSION}",
                "kind": models.KIND,
                "name": name,
                "namespace": namespace,
                "uid": uid,
            },
            "reason": reason,
            "message": seen.message,
            "type": type_,
            "firstTimestamp": seen.first_timestamp,
            "lastTimestamp": _seconds(moment),
            "count": seen.count,
            "source": {"component": self.component},
            "reportingComponent": self.component,
            # Microseconds: several events often fall in one second, and timestamps in
            # seconds would leave their order to chance (`kubectl events` sorts on this).
            "eventTime": precise(moment),
            "reportingInstance": self.instance,
            "action": reason,
        }


def _seconds(moment: datetime) -> str:
    return iso(moment)
