"""The real-node analysis queries against the demo app's own /metrics, without a node.

The demo app (hack/realnode/images/demo_app.py) runs here as host processes on
127.0.0.1, the session's real Prometheus scrapes them through its file_sd job with
the labels tests/harness/realnode_metrics.py gives pods, and the operator's own
PrometheusProvider reads the queries e2e/test_realnode_analysis.py judges with: a
canary answering only 500s has an error rate of 1, a healthy one 0 (a value, not no
data), and one that answered nothing has no data.
"""

from __future__ import annotations

import http.client
import math
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from canary_operator.analysis.providers import PrometheusProvider
from canary_operator.analysis.queries import render_query
from tests.harness.cluster import wait_for, wait_for_async
from tests.harness.prometheus import PrometheusServer, free_port
from tests.harness.realnode_metrics import ERROR_RATE_QUERY, LATENCY_P99_QUERY

APP = Path(__file__).resolve().parents[2] / "hack" / "realnode" / "images" / "demo_app.py"
NAMESPACE = "demo-app-metrics"  # the label the file_sd groups carry; no cluster here
SCRAPE_WAIT = 30.0


class DemoApp:
    def __init__(self, version: str, error_rate: float) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "APP_VERSION": version,
            "ERROR_RATE": str(error_rate),
            "PORT": str(self.port),
            "LISTEN": "127.0.0.1",
        }
        command = [sys.executable, str(APP)]
        setpriv = shutil.which("setpriv")
        if setpriv is not None:  # gone with the test process, even a SIGKILLed one
            command = [setpriv, "--pdeathsig", "TERM", "--", *command]
        self.proc = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(self._answers, 20, ignore=(OSError,), message=f"demo app {version} to listen")

    def _answers(self) -> bool:
        return self.get("/ready") == 200

    def get(self, path: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def apps(prometheus: PrometheusServer) -> Iterator[dict[str, DemoApp]]:
    started: dict[str, DemoApp] = {}
    try:
        started["canary"] = DemoApp("bad", 1.0)
        started["stable"] = DemoApp("v1", 0.0)
        started["idle"] = DemoApp("v2", 0.0)
        prometheus.set_file_targets(
            [
                {
                    "targets": [f"127.0.0.1:{app.port}"],
                    "labels": {"namespace": NAMESPACE, "role": role, "pod": f"{role}-0"},
                }
                for role, app in started.items()
            ]
        )
        yield started
    finally:
        prometheus.set_file_targets([])
        for app in started.values():
            app.stop()


@pytest.fixture
def load(apps: dict[str, DemoApp]) -> Iterator[dict[str, list[int]]]:
    """Requests to the canary and the stable app (not the idle one) until the test ends."""
    codes: dict[str, list[int]] = {"canary": [], "stable": []}
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.05):  # pacing: about 20 requests a second per app
            for role in codes:
                codes[role].append(apps[role].get("/version"))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield codes
    stop.set()
    thread.join(timeout=10)


async def _value(prometheus: PrometheusServer, template: str, role: str) -> float | None:
    query = render_query(template, {"namespace": NAMESPACE, "role": role})
    return await PrometheusProvider(prometheus.address, timeout=5).query(query, {})


async def test_error_rate_and_latency_of_the_demo_apps(
    prometheus: PrometheusServer, load: dict[str, list[int]]
) -> None:
    wait_for(
        lambda: (
            {t["labels"]["role"]: t["health"] for t in prometheus.active_targets()}
            == {"canary": "up", "stable": "up", "idle": "up"}
        ),
        SCRAPE_WAIT,
        ignore=(OSError,),
        message="the three apps scraped (file_sd targets up)",
    )

    async def error_rates_measured() -> bool:
        canary = await _value(prometheus, ERROR_RATE_QUERY, "canary")
        stable = await _value(prometheus, ERROR_RATE_QUERY, "stable")
        return canary == 1.0 and stable == 0.0

    await wait_for_async(
        error_rates_measured,  # type: ignore[arg-type]
        SCRAPE_WAIT,
        message="error rate 1 for the canary, 0 for stable",
    )
    assert set(load["canary"]) == {500} and set(load["stable"]) == {200}
    # The idle app is scraped but answered nothing: no data, never a 0 % pass. (Its
    # p99 is NaN, 0/0 over empty buckets: the operator records a non-finite value as
    # no data too.)
    assert await _value(prometheus, ERROR_RATE_QUERY, "idle") is None
    idle_p99 = await _value(prometheus, LATENCY_P99_QUERY, "idle")
    assert idle_p99 is None or math.isnan(idle_p99), idle_p99
    for role in ("canary", "stable"):
        p99 = await _value(prometheus, LATENCY_P99_QUERY, role)
        assert p99 is not None and math.isfinite(p99) and 0 < p99 <= 2.5, (role, p99)
