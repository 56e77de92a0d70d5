"""Automated canary analysis end to end: a real Prometheus server scraping an exporter
whose canary/baseline numbers the test sets, and webhook steps against a local server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

from e2e import manifests as m
from e2e.conftest import (
    EXAMPLES,
    TERMINAL,
    OperatorProcess,
    canary_objects,
    get_rollout,
    lease,
    stable_image,
    wait_phase,
)
from tests.harness.cluster import Cluster, wait_for
from tests.harness.prometheus import PrometheusError

pytestmark = pytest.mark.cluster

ERRORS = "app_request_error_ratio"
LATENCY = "app_latency_seconds"


def set_health(prometheus: Any, canary_errors: float, canary_latency: float) -> None:
    exporter = prometheus.exporter
    exporter.clear()  # the server is shared by the session: drop other tests' series
    for role, errors, latency in (
        ("canary", canary_errors, canary_latency),
        ("baseline", 0.01, 0.100),
        ("stable", 0.01, 0.100),
    ):
        exporter.set(ERRORS, {"role": role}, errors)
        exporter.set(LATENCY, {"role": role}, latency)
    # Prometheus must have scraped exactly these numbers before an analysis reads them
    # (until the next scrape marks the old series stale, a query sees several).
    query = f'{ERRORS}{{role="canary"}}'
    wait_for(
        lambda: prometheus.value(query) == canary_errors,
        30,
        ignore=(PrometheusError,),
        message=f"{query} == {canary_errors}",
    )


def aca_example(address: str) -> str:
    """The shipped example with the test's Prometheus and short intervals."""
    docs = list(yaml.safe_load_all((EXAMPLES / "seed-pipeline-aca.yaml").read_text()))
    for doc in docs:
        if doc["kind"] != "CanaryRollout":
            continue
        for step in doc["spec"]["steps"]:
            if "analysis" in step:
                step["analysis"]["provider"]["prometheus"]["address"] = address
                step["analysis"]["interval"] = "1s"
                step["analysis"]["count"] = 3
    return yaml.safe_dump_all(docs)


def test_healthy_canary_passes_both_analyses(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, prometheus: Any
) -> None:
    set_health(prometheus, canary_errors=0.01, canary_latency=0.105)
    kube_cluster.apply(aca_example(prometheus.address), namespace)
    body = wait_phase(kube_cluster, namespace, "web-aca", TERMINAL, timeout=180)
    status = body["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    analyses = [s for s in status["steps"] if s["kind"] == "analysis"]
    assert len(analyses) == 2
    for step in analyses:
        assert step["analysis"]["phase"] == "Successful"
        assert len(step["analysis"]["measurements"]) == 3
        verdicts = {v["name"]: v for v in step["analysis"]["metrics"]}
        assert verdicts["error-rate"]["verdict"] == "Successful"
        assert verdicts["error-rate"]["lastValue"] == pytest.approx(0.01)
    assert stable_image(kube_cluster, namespace) == "registry.example.com/web:2.0"
    assert canary_objects(kube_cluster, namespace) == []


def test_degraded_canary_fails_first_analysis(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, prometheus: Any
) -> None:
    set_health(prometheus, canary_errors=0.20, canary_latency=0.105)
    kube_cluster.apply(aca_example(prometheus.address), namespace)
    body = wait_phase(kube_cluster, namespace, "web-aca", TERMINAL, timeout=180)
    status = body["status"]
    assert status["phase"] == "Failed"
    first_analysis = next(i for i, s in enumerate(status["steps"]) if s["kind"] == "analysis")
    assert status["outcome"]["failedStep"] == first_analysis + 1
    assert "error-rate" in status["outcome"]["message"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and "error-rate" in failed["message"]
    assert stable_image(kube_cluster, namespace) == "registry.example.com/web:1.0"
    baseline_events = kube_cluster.get_json(
        "events", "-n", namespace, "--field-selector", "involvedObject.name=web-baseline"
    )["items"]
    assert baseline_events, "the example runs a baseline beside the canary"
    assert canary_objects(kube_cluster, namespace) == []  # canary and baseline gone
    assert not lease(kube_cluster, namespace)["spec"].get("holderIdentity")


def test_statistical_judge_against_baseline(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, prometheus: Any
) -> None:
    set_health(prometheus, canary_errors=0.01, canary_latency=0.400)
    kube_cluster.apply(m.app("web"), namespace)
    analysis = {
        "provider": {"prometheus": {"address": prometheus.address}},
        "judge": "kayenta",
        "interval": "1s",
        "count": 4,
        "metrics": [
            {
                "name": "latency",
                "query": f'{LATENCY}{{role="{{{{role}}}}"}}',
                "direction": "increase",
                "critical": True,
            },
            {
                "name": "errors",
                "query": f'{ERRORS}{{role="{{{{role}}}}"}}',
                "direction": "increase",
            },
        ],
    }
    kube_cluster.apply(
        m.rollout("stat", [{"canary": {}}, {"analysis": analysis}], baseline=True), namespace
    )
    body = wait_phase(kube_cluster, namespace, "stat", TERMINAL, timeout=120)
    status = body["status"]
    assert status["phase"] == "Failed"
    result = status["steps"][1]["analysis"]
    assert result["classification"] == "Fail"
    verdicts = {v["name"]: v for v in result["metrics"]}
    assert verdicts["latency"]["verdict"] == "High"
    assert verdicts["errors"]["verdict"] == "Pass"
    assert "latency" in status["outcome"]["message"]
    assert "baseline" in result["message"]
    assert (
        kube_cluster.get_json("pods", "-n", namespace, "-l", "canary-operator.dev/role=baseline")[
            "items"
        ]
        == []
    )
    assert canary_objects(kube_cluster, namespace) == []


def test_unreachable_prometheus_fails_clearly_and_cleans_up(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.app("web"), namespace)
    analysis = {
        "provider": {"prometheus": {"address": "http://127.0.0.1:9", "timeout": "2s"}},
        "interval": "1s",
        "count": 2,
        "metrics": [{"name": "error-rate", "query": "up", "successCondition": "result < 0.05"}],
    }
    kube_cluster.apply(
        m.rollout("blind", [{"canary": {}}, {"setWeight": 25}, {"analysis": analysis}]), namespace
    )
    body = wait_phase(kube_cluster, namespace, "blind", TERMINAL, timeout=90)
    status = body["status"]
    assert status["phase"] == "Failed"
    assert "inconclusive" in status["outcome"]["message"]
    assert "127.0.0.1:9" in status["outcome"]["message"]
    assert (
        next(c for c in status["conditions"] if c["type"] == "CleanupVerified")["status"] == "True"
    )
    assert canary_objects(kube_cluster, namespace) == []


# ---------------------------------------------------------------------- webhooks


@dataclass
class Endpoint:
    """A local HTTP endpoint standing in for a test service or a chat hook."""

    status: int = 200
    delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    state = Endpoint()
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            state.requests.append(
                {
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": json.loads(self.rfile.read(length) or b"{}"),
                }
            )
            if state.delay:
                release.wait(state.delay)  # simulates a hung service; ends at teardown
            self.send_response(state.status)
            self.end_headers()
            self.wfile.write(b'{"ok": true}')

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    release.set()
    server.shutdown()
    server.server_close()


def test_webhook_test_and_cleanup_steps(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, endpoint: Endpoint
) -> None:
    kube_cluster.apply(m.app("web"), namespace)
    kube_cluster.kubectl(
        "create", "secret", "generic", "hook-token", "-n", namespace, "--from-literal=token=s3cret"
    )
    hook = {
        "url": f"{endpoint.url}/check",
        "timeout": "2s",
        "headers": [
            {
                "name": "Authorization",
                "valueFrom": {"secretKeyRef": {"name": "hook-token", "key": "token"}},
            }
        ],
    }
    kube_cluster.apply(
        m.rollout(
            "hooked",
            [
                {"canary": {}},
                {"parallel": [{"name": "hook", "test": {"webhook": hook}}, m.job_test("job")]},
            ],
            cleanup=[{"name": "notify", "webhook": {"url": f"{endpoint.url}/cleanup"}}],
        ),
        namespace,
    )
    body = wait_phase(kube_cluster, namespace, "hooked", TERMINAL, timeout=60)
    assert body["status"]["phase"] == "Succeeded"
    check = next(r for r in endpoint.requests if r["path"] == "/check")
    assert check["headers"]["Authorization"] == "s3cret"
    assert check["body"]["rollout"] == "hooked"
    assert check["body"]["canaryService"] == f"web-canary.{namespace}.svc"
    assert check["body"]["step"].startswith("step 2")
    assert [r["path"] for r in endpoint.requests].count("/cleanup") == 1


def test_webhook_timeout_fails_step_and_cleanup_runs(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, endpoint: Endpoint
) -> None:
    endpoint.delay = 30
    kube_cluster.apply(m.app("web"), namespace)
    hook = {"url": f"{endpoint.url}/slow", "timeout": "1s", "retries": 1}
    kube_cluster.apply(
        m.rollout("slowhook", [{"canary": {}}, {"test": {"webhook": hook}}]), namespace
    )
    body = wait_phase(kube_cluster, namespace, "slowhook", TERMINAL, timeout=60)
    status = body["status"]
    assert status["phase"] == "Failed" and status["outcome"]["failedStep"] == 2
    assert "timed out" in status["outcome"]["message"]
    assert len(endpoint.requests) == 2  # the first call and one retry, no more
    assert (
        next(c for c in status["conditions"] if c["type"] == "CleanupVerified")["status"] == "True"
    )
    assert canary_objects(kube_cluster, namespace) == []
    assert get_rollout(kube_cluster, namespace, "slowhook")["status"]["weight"] == 0
