"""canary-demo: the small HTTP app the real-node tests roll out (the project's rollouts-demo).

Runs inside the demo image with Debian's python3 and the standard library only.
Its behaviour comes from the environment (each image tag sets its own defaults):

  APP_VERSION   the version it reports (in every body and the X-App-Version header)
  ERROR_RATE    fraction 0..1 of requests answered 500 (not /metrics, not /ready:
                the kubelet must still see it ready, as a real broken build often is)
  LATENCY_MS    added delay before each answer
  PORT          listen port (default 8080)
  LISTEN        listen address (default 0.0.0.0, the pod's every address)

Routes: / (HTML), /healthz, /api/v1/status (JSON), /version, /ready, /metrics
(Prometheus text format: requests by code and a latency histogram).
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("APP_VERSION", "unknown")
POD = socket.gethostname()  # the pod's name: which pod answered
ERROR_RATE = float(os.environ.get("ERROR_RATE", "0"))
LATENCY_S = float(os.environ.get("LATENCY_MS", "0")) / 1000
PORT = int(os.environ.get("PORT", "8080"))
LISTEN = os.environ.get("LISTEN", "0.0.0.0")  # tests run it on the host at 127.0.0.1
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

_lock = threading.Lock()
_requests: dict[tuple[str, int], int] = {}
_bucket_counts = [0] * len(BUCKETS)
_duration_sum = 0.0
_duration_count = 0


def _record(path: str, code: int, seconds: float) -> None:
    global _duration_sum, _duration_count
    with _lock:
        _requests[(path, code)] = _requests.get((path, code), 0) + 1
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                _bucket_counts[i] += 1
        _duration_sum += seconds
        _duration_count += 1


def _metrics() -> str:
    lines = [
        "# HELP demo_http_requests_total Requests answered, by route and status code.",
        "# TYPE demo_http_requests_total counter",
    ]
    with _lock:
        for (path, code), n in sorted(_requests.items()):
            lines.append(
                f'demo_http_requests_total{{path="{path}",code="{code}",version="{VERSION}"}} {n}'
            )
        lines += [
            "# HELP demo_http_request_duration_seconds Time to answer a request.",
            "# TYPE demo_http_request_duration_seconds histogram",
        ]
        for bound, n in zip(BUCKETS, _bucket_counts, strict=True):
            lines.append(f'demo_http_request_duration_seconds_bucket{{le="{bound}"}} {n}')
        lines.append(f'demo_http_request_duration_seconds_bucket{{le="+Inf"}} {_duration_count}')
        lines.append(f"demo_http_request_duration_seconds_sum {_duration_sum}")
        lines.append(f"demo_http_request_duration_seconds_count {_duration_count}")
    lines.append(f'demo_build_info{{version="{VERSION}"}} 1')
    return "\n".join(lines) + "\n"


ROUTES = {"/", "/healthz", "/api/v1/status", "/version"}


class Handler(BaseHTTPRequestHandler):
    server_version = "canary-demo"
    protocol_version = "HTTP/1.0"  # one request per connection: kube-proxy balances per connection

    def _send(self, code: int, body: str, content_type: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-App-Version", VERSION)
        self.send_header("X-Pod-Name", POD)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        start = time.monotonic()
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, _metrics(), "text/plain; version=0.0.4")
            return
        if path == "/ready":
            self._send(200, f"ready {VERSION}\n")
            return
        if path not in ROUTES:
            self._send(404, f"not found {VERSION}\n")
            _record("other", 404, time.monotonic() - start)
            return
        if LATENCY_S:
            time.sleep(LATENCY_S)
        if ERROR_RATE and random.random() < ERROR_RATE:
            code, body, ctype = 500, f"error {VERSION}\n", "text/plain"
        elif path == "/":
            code, ctype = 200, "text/html"
            body = f"<html><body><h1>canary-demo</h1><p>version {VERSION}</p></body></html>\n"
        elif path == "/api/v1/status":
            code, body, ctype = (
                200,
                json.dumps({"status": "ok", "version": VERSION}) + "\n",
                "application/json",
            )
        elif path == "/version":
            code, body, ctype = 200, VERSION + "\n", "text/plain"
        else:
            code, body, ctype = 200, f"ok {VERSION}\n", "text/plain"
        self._send(code, body, ctype)
        _record(path, code, time.monotonic() - start)

    def log_message(self, format: str, *args: object) -> None:
        # Probes and scrapes would drown the log; the requests that matter are kept.
        if self.path not in ("/ready", "/metrics"):
            sys.stdout.write(f"{self.address_string()} {format % args} version={VERSION}\n")
            sys.stdout.flush()


def main() -> None:
    server = ThreadingHTTPServer((LISTEN, PORT), Handler)
    server.daemon_threads = True
    print(
        f"canary-demo {VERSION} on :{PORT} error_rate={ERROR_RATE} latency={LATENCY_S}s", flush=True
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
