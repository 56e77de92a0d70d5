"""Requests sent continuously through a Service while a version changes, each recorded
with the version that answered it (the demo app's X-App-Version), and what they show:
when the wanted version first answered, from when on it answered everything, and how
many requests failed on the way.

Each request is one GET on a fresh connection (tests.harness.realnode.one_request), so
kube-proxy picks an endpoint per request, as for independent clients. The load is
paced (``rate`` requests a second in all, over ``workers`` threads) so that it does
not take a core of its own on a small machine.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from tests.harness.realnode import one_request


@dataclass(frozen=True)
class Answer:
    sent: float  # monotonic
    done: float
    version: str  # X-App-Version, "unreachable", or "?"
    error: str | None  # "HTTP 503", an exception's name, or None


class Load:
    """GET ``path`` on host:port from ``workers`` threads until stopped; every answer
    is kept, and the last one not from ``wanted`` (or failed) is tracked live."""

    def __init__(
        self, host: str, port: int, wanted: str, rate: float = 100, workers: int = 4
    ) -> None:
        self.host, self.port, self.wanted = host, port, wanted
        self.interval = workers / rate  # per worker
        self.workers = workers
        self.answers: list[Answer] = []
        self.last_other_sent = 0.0  # monotonic send time of the last non-wanted answer
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Load:
        for i in range(self.workers):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)

    def _run(self, index: int) -> None:
        # Spread the workers over one interval, so the sends are evenly spaced.
        self._stop.wait(self.interval * index / self.workers)
        next_at = time.monotonic()
        while not self._stop.is_set():
            sent = time.monotonic()
            version, _pod, error = one_request(self.host, self.port, "/version")
            answer = Answer(sent, time.monotonic(), version, error)
            with self._lock:
                self.answers.append(answer)
                if (error or version != self.wanted) and sent > self.last_other_sent:
                    self.last_other_sent = sent
            next_at = max(next_at + self.interval, time.monotonic())
            self._stop.wait(next_at - time.monotonic())

    def quiet_for(self) -> float:
        """Seconds since the last request that was not answered by ``wanted``."""
        with self._lock:
            return time.monotonic() - self.last_other_sent

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return sorted(self.answers, key=lambda a: a.sent)


@dataclass
class Switch:
    """What the answers sent from ``t0`` on show, in seconds from ``t0``."""

    first_wanted: float | None  # the first request answered by the wanted version
    all_wanted: float | None  # from the send of this request on, every answer is wanted
    tail_seconds: float  # how long the all-wanted stretch lasted until the load stopped
    tail_requests: int
    sent: int
    failed: int
    by_version: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


def switch(answers: list[Answer], t0: float, wanted: str) -> Switch:
    """Read the switch to ``wanted`` from ``answers`` (sorted by send time)."""
    window = [a for a in answers if a.sent >= t0]
    good = [not a.error and a.version == wanted for a in window]
    first = next((a.sent - t0 for a, ok in zip(window, good, strict=True) if ok), None)
    last_bad = max((i for i, ok in enumerate(good) if not ok), default=-1)
    tail = window[last_bad + 1 :]
    errors = Counter(a.error for a in window if a.error)
    return Switch(
        first_wanted=first,
        all_wanted=(tail[0].sent - t0) if tail else None,
        tail_seconds=(window[-1].sent - tail[0].sent) if tail else 0.0,
        tail_requests=len(tail),
        sent=len(window),
        failed=sum(errors.values()),
        by_version=dict(Counter(a.version for a in window if not a.error)),
        errors=dict(errors),
    )
