"""HTTP endpoints the operator process calls during end-to-end tests, slow on
purpose: ``/hang/...`` accepts the request and never answers (until the server
closes), ``/delay/SECONDS/...`` answers 200 after that long, ``/metric/SECONDS/VALUE/...``
answers ``{"value": VALUE}`` after that long (a webhook metric provider),
``/status/CODE/...`` answers CODE at once (a chat endpoint refusing a body). Anything
after those segments is free for the test to tell calls apart. Loopback only."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


@dataclass(frozen=True)
class Call:
    path: str
    at: float  # monotonic
    body: bytes = b""


class SlowEndpoints:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._release = threading.Event()
        self._lock = threading.Lock()
        endpoints = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with endpoints._lock:
                    endpoints.calls.append(Call(self.path, time.monotonic(), body))
                parts = self.path.strip("/").split("/")
                if parts[0] == "hang":
                    endpoints._release.wait()
                    return  # closing without an answer
                if parts[0] == "delay":
                    if endpoints._release.wait(float(parts[1])):
                        return
                    self._answer(200, {"ok": True})
                    return
                if parts[0] == "status":
                    self._answer(int(parts[1]), {"error": "invalid_payload"})
                    return
                if parts[0] == "metric":
                    if endpoints._release.wait(float(parts[1])):
                        return
                    self._answer(200, {"value": float(parts[2])})
                    return
                self._answer(200, {"ok": True})

            def _answer(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the caller gave up (timeout, cancelled)
                    self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/{path.lstrip('/')}"

    def calls_to(self, prefix: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.path.lstrip("/").startswith(prefix)]

    def __enter__(self) -> SlowEndpoints:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
