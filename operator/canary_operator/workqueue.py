"""A de-duplicating, delaying work queue of rollout keys (controller-runtime style).

A key is processed by one worker at a time; events arriving meanwhile mark it dirty
so it runs once more afterwards. Failures retry with exponential backoff; an event
for a backing-off key (an abort, say) still runs it at once.

Reconciles never wait on user endpoints (checks run in the background) and lease
renewal does not depend on them, so a backlog or a slow API call delays work but
cannot cost a holder its lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger(__name__)

Key = tuple[str, str]
Reconcile = Callable[[Key], Awaitable[float | None]]
# (seconds one reconcile took, whether it succeeded)
Observer = Callable[[float, bool], None]


class QueueMetrics(Protocol):
    def queue_depth(self, n: int) -> None: ...

    def queue_latency(self, seconds: float) -> None: ...

    def reconciled(self, seconds: float, ok: bool) -> None: ...


class WorkQueue:
    def __init__(
        self,
        reconcile: Reconcile,
        workers: int = 8,
        max_backoff: float = 10.0,
        metrics: QueueMetrics | None = None,
    ) -> None:
        self._reconcile = reconcile
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._failures: dict[Key, int] = {}
        self._workers_count = workers
        self._workers: list[asyncio.Task[None]] = []
        self._max_backoff = max_backoff
        self.metrics = metrics
        self._enqueued: dict[Key, float] = {}  # monotonic time a queued key was added

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._workers_count)]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    def add(self, key: Key, delay: float = 0.0) -> None:
        if delay > 0:
            existing = self._timers.get(key)
            loop = asyncio.get_running_loop()
            when = loop.time() + delay
            if existing is not None and existing.when() <= when:
                return
            if existing is not None:
                existing.cancel()
            self._timers[key] = loop.call_at(when, self._fire, key)
            return
        if key in self._running:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._enqueued[key] = time.monotonic()
            self._queue.put_nowait(key)
            if self.metrics is not None:
                self.metrics.queue_depth(self._queue.qsize())

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._running.add(key)
            enqueued = self._enqueued.pop(key, None)
            if self.metrics is not None:
                self.metrics.queue_depth(self._queue.qsize())
                if enqueued is not None:
                    self.metrics.queue_latency(time.monotonic() - enqueued)
            delay: float | None
            started = time.monotonic()
            ok = False
            try:
                delay = await self._reconcile(key)
                self._failures.pop(key, None)
                ok = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                count = self._failures.get(key, 0) + 1
                self._failures[key] = count
                delay = min(self._max_backoff, 0.25 * 2**count)
                log.log(
                    logging.WARNING,
                    "reconcile of %s/%s failed (attempt %d); retry in %.1fs: %s",
                    key[0],
                    key[1],
                    count,
                    delay,
                    exc,
                    # A failure already described in the rollout's status needs no trace.
                    exc_info=not getattr(exc, "described", False),
                )
            finally:
                self._running.discard(key)
                if self.metrics is not None:
                    self.metrics.reconciled(time.monotonic() - started, ok)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif delay is not None:
                self.add(key, delay)
