"""A real Prometheus server for tests, scraping a tiny exporter the test controls.

* :class:`MetricsExporter` serves ``/metrics`` (Prometheus text format) from values
  the test sets, e.g. ``exporter.set("app_request_error_ratio", {"role": "canary"},
  0.01)``, on 127.0.0.1 from a background thread (usable from sync and async tests).
* :class:`PrometheusServer` runs the Debian ``prometheus`` binary with a generated
  config scraping the exporter every second, storage in a temporary directory and the
  API on 127.0.0.1; :meth:`PrometheusServer.start` returns once the server is ready
  and the exporter target is up; :meth:`PrometheusServer.stop` kills it and waits.
* Its second scrape job, ``files``, scrapes whatever targets the test writes with
  :meth:`PrometheusServer.set_file_targets` (``file_sd``: Debian's build has no
  Kubernetes discovery, so a test that scrapes pods lists their IPs itself); none at
  start.

The server gets SIGTERM if the test process dies (``setpriv --pdeathsig``), so even a
SIGKILLed pytest leaves no Prometheus behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.harness.cluster import WaitTimeout, wait_for

PROMETHEUS_BINARY = "prometheus"
SCRAPE_JOB = "exporter"
FILE_SD_JOB = "files"
STARTUP_TIMEOUT = 60.0

Labels = Mapping[str, str]
# One file_sd group: {"targets": ["host:port", ...], "labels": {...}}.
TargetGroup = Mapping[str, Any]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Service:
    """``with`` support for things that ``start()`` and ``stop()``."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- exporter


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class MetricsExporter(_Service):
    """Serves gauges set by the test at ``http://127.0.0.1:<port>/metrics``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.scrapes = 0

    # values ---------------------------------------------------------------------

    def set(self, name: str, labels: Labels | None, value: float) -> None:
        """Expose ``name{labels} value`` (replacing the series' previous value)."""
        key = tuple(sorted((labels or {}).items()))
        with self._lock:
            self._series.setdefault(name, {})[key] = float(value)

    def remove(self, name: str, labels: Labels | None = None) -> None:
        """Stop exposing one series of ``name`` (all of them without ``labels``)."""
        with self._lock:
            if labels is None:
                self._series.pop(name, None)
            else:
                self._series.get(name, {}).pop(tuple(sorted(labels.items())), None)

    def clear(self) -> None:
        with self._lock:
            self._series.clear()

    def render(self) -> str:
        """The exposition text (format 0.0.4)."""
        lines: list[str] = []
        with self._lock:
            for name in sorted(self._series):
                lines.append(f"# TYPE {name} gauge")
                for key, value in sorted(self._series[name].items()):
                    labels = ",".join(f'{k}="{_escape(v)}"' for k, v in key)
                    series = f"{name}{{{labels}}}" if labels else name
                    lines.append(f"{series} {_format_value(value)}")
        return "\n".join(lines) + "\n"

    # server ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the exporter is not running")
        return int(self._server.server_address[1])

    @property
    def target(self) -> str:
        """``host:port``, as a Prometheus scrape target."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.target}/metrics"

    def start(self) -> Self:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404)
                    return
                body = exporter.render().encode()
                with exporter._lock:
                    exporter.scrapes += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-exporter", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=10)


# ------------------------------------------------------------------------- prometheus


class PrometheusError(RuntimeError):
    """The Prometheus server could not be started or answered an error."""


class PrometheusServer(_Service):
    """A ``prometheus`` process scraping ``exporter`` every second."""

    def __init__(
        self,
        exporter: MetricsExporter,
        binary: str = PROMETHEUS_BINARY,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        self.exporter = exporter
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.workdir: Path | None = None
        self.startup_seconds = 0.0

    @property
    def address(self) -> str:
        """Base URL of the HTTP API, e.g. ``http://127.0.0.1:40123``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("the server was never started")
        return self.workdir / "prometheus.log"

    @property
    def file_sd_path(self) -> Path:
        """The file_sd file of the ``files`` job (see :meth:`set_file_targets`)."""
        if self.workdir is None:
            raise RuntimeError("the server was never started")
        return self.workdir / "file_sd" / "targets.json"

    def config(self) -> str:
        return (
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            f"  - job_name: {SCRAPE_JOB}\n"
            "    metrics_path: /metrics\n"
            "    static_configs:\n"
            f"      - targets: ['{self.exporter.target}']\n"
            f"  - job_name: {FILE_SD_JOB}\n"
            "    metrics_path: /metrics\n"
            "    file_sd_configs:\n"
            f"      - files: ['{self.file_sd_path}']\n"
            # Prometheus watches the file too (inotify); the refresh is the backstop.
            "        refresh_interval: 1s\n"
        )

    def set_file_targets(self, groups: Sequence[TargetGroup]) -> None:
        """Replace the ``files`` job's targets (atomically: Prometheus never reads a
        half-written file), e.g. ``[{"targets": ["10.0.0.5:8080"], "labels":
        {"role": "canary"}}]``."""
        path = self.file_sd_path
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(list(groups), indent=1, sort_keys=True))
        os.replace(partial, path)

    def active_targets(self, job: str = FILE_SD_JOB) -> list[dict[str, Any]]:
        """The job's active targets as ``/api/v1/targets`` reports them (``labels``,
        ``health`` up/down/unknown, ``scrapeUrl``, ``lastError``, ...)."""
        url = f"{self.address}/api/v1/targets?state=active"
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.loads(response.read())
        return [t for t in answer["data"]["activeTargets"] if t.get("scrapePool") == job]

    def start(self) -> Self:
        path = shutil.which(self.binary)
        if path is None:
            raise PrometheusError(
                f"`{self.binary}` is not on PATH; install the Debian package: hack/ensure-deps.sh"
            )
        self.workdir = Path(tempfile.mkdtemp(prefix="canary-prometheus-"))
        self.set_file_targets([])
        (self.workdir / "prometheus.yml").write_text(self.config())
        started = time.monotonic()
        try:
            for attempt in range(3):  # the free port may be taken before Prometheus binds it
                self._spawn(path)
                try:
                    self._wait_ready()
                    break
                except PrometheusError:
                    still_running = self.process is not None and self.process.poll() is None
                    if still_running or attempt == 2:
                        raise
                    self._kill()
            self.wait_for_value(
                f'up{{job="{SCRAPE_JOB}"}}',
                lambda v: v == 1.0,
                timeout=self.startup_timeout,
                what=f"the exporter target {self.exporter.target} to be up",
            )
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _spawn(self, path: str) -> None:
        assert self.workdir is not None
        self.port = free_port()
        command = [
            path,
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            "--storage.tsdb.retention.time=1h",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            command = [setpriv, "--pdeathsig", "TERM", "--", *command]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )

    def _wait_ready(self) -> None:
        def ready() -> bool:
            if self.process is None or self.process.poll() is not None:
                code = self.process.returncode if self.process else None
                raise PrometheusError(f"prometheus exited with {code}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.address}/-/ready", timeout=2) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        try:
            wait_for(ready, self.startup_timeout, interval=0.1, message="prometheus /-/ready")
        except WaitTimeout as exc:
            raise PrometheusError(f"{exc}; log: {self.log_tail()}") from None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, RuntimeError):
            return "(no log)"

    def stop(self) -> None:
        """Kill the server, wait for it, and remove its storage (idempotent)."""
        self._kill()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _kill(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)

    # queries ----------------------------------------------------------------------

    def query(self, expression: str) -> dict[str, Any]:
        """The ``data`` of an instant query (raises :class:`PrometheusError` on errors)."""
        url = f"{self.address}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise PrometheusError(
                f"query {expression!r}: HTTP {exc.code}: {exc.read()!r}"
            ) from None
        if answer.get("status") != "success":
            raise PrometheusError(f"query {expression!r}: {answer}")
        data: dict[str, Any] = answer["data"]
        return data

    def value(self, expression: str) -> float | None:
        """The value of a one-sample (or scalar) query; ``None`` for an empty result."""
        data = self.query(expression)
        result = data["result"]
        if data["resultType"] == "scalar":
            return float(result[1])
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"query {expression!r} returned {len(result)} series")
        return float(result[0]["value"][1])

    def wait_for_value(
        self,
        expression: str,
        predicate: Callable[[float | None], bool],
        timeout: float,
        what: str | None = None,
    ) -> float | None:
        """Poll ``expression`` until ``predicate(value)`` holds and return that value;
        :class:`~tests.harness.cluster.WaitTimeout` after ``timeout`` seconds."""
        seen: list[float | None] = []

        def check() -> bool:
            value = self.value(expression)
            seen[:] = [value]
            return predicate(value)

        try:
            wait_for(
                check,
                timeout,
                interval=0.2,
                message=what or f"{expression!r} to match",
                ignore=(urllib.error.URLError, ConnectionError, TimeoutError),
            )
        except WaitTimeout:
            last = f"{seen[0]!r}" if seen else "no answer"
            raise WaitTimeout(
                f"timed out after {timeout:g}s waiting for {what or repr(expression)} "
                f"(last value: {last}); prometheus log: {self.log_tail(5)}"
            ) from None
        return seen[0]


def start_prometheus(binary: str = PROMETHEUS_BINARY) -> PrometheusServer:
    """An exporter and a Prometheus server scraping it, both started."""
    exporter = MetricsExporter().start()
    try:
        return PrometheusServer(exporter, binary=binary).start()
    except BaseException:
        exporter.stop()
        raise
