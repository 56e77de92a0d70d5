"""HTTP endpoints the operator process calls during end-to-end tests, slow on
purpose: ``/hang/...`` accepts the request and never answers (until the server
closes), ``/delay/SECONDS/...`` answers 200 after that long, ``/metric/SECONDS/VALUE/...``
answers ``{"value": VALUE}`` after that long (a webhook metric provider),
``/status/CODE/...`` answers CODE at once (a chat endpoint refusing a body). Anything
after those segments is free for the test to tell calls apart. Loopback only."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from types import TracebackType

from e2e.local_http import LocalEndpoints


@dataclass(frozen=True)
class Call:
    path: str
    at: float  # monotonic
    body: bytes = b""


class SlowEndpoints(LocalEndpoints):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self._release = threading.Event()

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        with self._lock:
            self.calls.append(Call(request.path, time.monotonic(), body))
        parts = request.path.strip("/").split("/")
        if parts[0] == "hang":
            self._release.wait()
            return  # closing without an answer
        if parts[0] == "delay":
            if self._release.wait(float(parts[1])):
                return
            self._json(request, 200, {"ok": True})
            return
        if parts[0] == "status":
            self._json(request, int(parts[1]), {"error": "invalid_payload"})
            return
        if parts[0] == "metric":
            if self._release.wait(float(parts[1])):
                return
            self._json(request, 200, {"value": float(parts[2])})
            return
        self._json(request, 200, {"ok": True})

    def _json(self, request: BaseHTTPRequestHandler, status: int, body: object) -> None:
        self.answer(request, status, json.dumps(body).encode(), "application/json")

    def calls_to(self, prefix: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.path.lstrip("/").startswith(prefix)]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release.set()  # hanging handlers return, so the server can shut down
        super().__exit__(exc_type, exc, tb)
