"""Automated canary analysis on a real node: real metrics, scraped by a real Prometheus
from the demo app's pods, judge the canary.

The app's pods run in containerd on the real node (tests/harness/realnode.py) and
count their answers by status code (``demo_http_requests_total``, a histogram of
their durations too). The session's Prometheus (Debian's binary,
tests/harness/prometheus.py) scrapes every pod by its IP on the node's bridge, each
labelled ``role`` = canary / stable (tests/harness/realnode_metrics.py writes them as
file_sd targets). Steady requests go through the stable Service's ClusterIP (the
replicas router: the canary's pods are behind it too) while the analysis measures
``{{role}}``'s error rate and p99 latency with the operator's Prometheus provider.

The rollout holds at a pause until Prometheus has the canary's first rates, then the
test resumes it: the first measurement then has data, without guessing an
initialDelay on a loaded machine. Skipped, loudly, where a real node cannot run.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from canary_operator.analysis.queries import render_query
from e2e.conftest import OperatorProcess, canary_objects, get_rollout, wait_phase
from e2e.realnode_manifests import (
    assert_all_stable,
    dump,
    pods_by_role,
    real_example,
    service_cluster_ip,
    wait_serving,
)
from tests.harness.cluster import Cluster, wait_for
from tests.harness.prometheus import PrometheusError, PrometheusServer
from tests.harness.realnode import RealNode
from tests.harness.realnode_metrics import (
    ERROR_RATE_QUERY,
    LATENCY_P99_QUERY,
    Load,
    PodScrapeTargets,
    describe_targets,
    targets_up,
)

NAME = "web-analysis"
REQUESTS = 500  # the final check: every one of them must reach stable
ROLLOUT_TIMEOUT = 600
STABLE_REPLICAS = 3  # setWeight 25 under the replicas router: 1 canary pod of 4
ERROR_THRESHOLD = 0.05
LATENCY_THRESHOLD = 0.5  # seconds; the app answers in milliseconds, the slow tag in 300 ms
PAUSE_STEP, ANALYSIS_STEP = 2, 3  # indexes into the steps below
COUNT = 5


def _docs(canary_tag: str, prometheus: PrometheusServer) -> list[dict[str, Any]]:
    analysis: dict[str, Any] = {
        "provider": {"prometheus": {"address": prometheus.address, "timeout": "5s"}},
        "interval": "2s",
        "count": COUNT,
        "metrics": [
            {
                "name": "error-rate",
                "query": ERROR_RATE_QUERY,
                "successCondition": f"result < {ERROR_THRESHOLD}",
                "failureLimit": 1,
            },
            {
                "name": "latency-p99",
                "query": LATENCY_P99_QUERY,
                "successCondition": f"result < {LATENCY_THRESHOLD}",
                "failureLimit": 1,
            },
        ],
    }
    steps: list[dict[str, Any]] = [
        {"name": "start canary", "canary": {"replicas": 1}},
        {"setWeight": 25},
        {"name": "metrics warm-up", "pause": {}},
        {"name": "analysis at 25%", "analysis": analysis},
        {"promote": {}},
    ]
    docs = real_example("seed-pipeline.yaml", "v1", canary_tag, STABLE_REPLICAS, steps)
    rollout = docs[2]
    rollout["metadata"]["name"] = NAME
    rollout["spec"].pop("cleanup", None)
    return docs


def _rate(prometheus: PrometheusServer, template: str, namespace: str, role: str) -> float | None:
    query = render_query(template, {"namespace": namespace, "role": role})
    value = prometheus.value(query)
    return None if value is None or not math.isfinite(value) else value


def _resume(cluster: Cluster, namespace: str, body: dict[str, Any]) -> None:
    step = body["status"]["currentStep"]
    run = body["status"].get("run") or 1
    cluster.kubectl(
        "annotate",
        "cro",
        NAME,
        "-n",
        namespace,
        "--overwrite",
        f"canary-operator.dev/resume={step + 1}@{run}",
    )


def _run_rollout(
    real_node: RealNode,
    cluster: Cluster,
    namespace: str,
    prometheus: PrometheusServer,
    canary_tag: str,
) -> tuple[dict[str, Any], Load, dict[str, float], PodScrapeTargets]:
    """The rollout under steady load, resumed into its analysis once Prometheus has
    the canary's rates; returns its terminal body, the load's tallies, the rates the
    test read at the pause, and the scrape targets seen."""
    docs = _docs(canary_tag, prometheus)
    cluster.apply(dump(docs[:2]), namespace)
    wait_serving(cluster, namespace, STABLE_REPLICAS)
    with PodScrapeTargets(prometheus, cluster, namespace) as targets:
        cluster.apply(dump(docs[2:]), namespace)

        def at_pause() -> dict[str, Any] | None:
            body = get_rollout(cluster, namespace, NAME)
            status = body.get("status") or {}
            return body if status.get("currentStep") == PAUSE_STEP else None

        held = wait_for(at_pause, ROLLOUT_TIMEOUT, interval=0.5, message="the warm-up pause")
        assert held is not None  # (wait_for returns the truthy answer)
        wait_serving(cluster, namespace, STABLE_REPLICAS + 1)
        ip, port = service_cluster_ip(cluster, namespace, "web")
        with Load(real_node, ip, port) as load:
            wait_for(
                lambda: targets_up(prometheus, targets.pods("canary") | targets.pods("stable")),
                60,
                interval=0.5,
                ignore=(OSError,),
                message=lambda: (
                    f"Prometheus scraping the canary and stable pods {targets.groups}: "
                    f"{describe_targets(prometheus)}"
                ),
            )
            assert targets.pods("canary"), targets.groups
            at_warm_up: dict[str, float] = {}

            def rates_measured() -> bool:
                for role in ("canary", "stable"):
                    value = _rate(prometheus, ERROR_RATE_QUERY, namespace, role)
                    if value is None:
                        return False
                    at_warm_up[role] = value
                return True

            wait_for(
                rates_measured,
                90,
                interval=0.5,
                ignore=(PrometheusError, OSError),
                message=lambda: f"the canary's and stable's error rates; load: {load.describe()}",
            )
            print(f"error rates at the warm-up pause: {at_warm_up}; load: {load.describe()}")
            _resume(cluster, namespace, held)
            body = wait_phase(
                cluster, namespace, NAME, {"Succeeded", "Failed", "Aborted"}, ROLLOUT_TIMEOUT
            )
    print(f"load during the rollout: {load.describe()}; canary pods scraped: {targets.seen}")
    return body, load, at_warm_up, targets


def _analysis(status: dict[str, Any]) -> dict[str, Any]:
    step = status["steps"][ANALYSIS_STEP]
    assert step["kind"] == "analysis", step
    result: dict[str, Any] = step["analysis"]
    for m in result["measurements"]:
        print(f"measurement at {m['at']}: {m.get('values')} {m.get('error') or ''}")
    return result


def _series(result: dict[str, Any], metric: str) -> list[float | None]:
    return [(m.get("values") or {}).get(metric, {}).get("canary") for m in result["measurements"]]


def _assert_cleaned_up(cluster: Cluster, namespace: str, status: dict[str, Any]) -> None:
    verified = next(c for c in status["conditions"] if c["type"] == "CleanupVerified")
    assert verified["status"] == "True", verified
    assert status.get("weight") == 0, status
    assert canary_objects(cluster, namespace) == []
    assert not pods_by_role(cluster, namespace)["canary"]


@pytest.fixture(autouse=True)
def _show_guard_drops(real_node: RealNode) -> Any:
    yield
    print(f"guard drops so far: {real_node.guard_drops()}")


def test_bad_canary_fails_the_analysis_on_scraped_metrics(
    real_node: RealNode,
    crd_installed: Cluster,
    namespace: str,
    operator: OperatorProcess,
    prometheus: PrometheusServer,
) -> None:
    """The canary image answers 500 to every request: the error rate Prometheus
    scraped from its pod is 1, the analysis fails on those measurements, cleanup runs,
    and every one of 500 requests reaches stable afterwards."""
    cluster = crd_installed
    body, load, at_warm_up, _targets = _run_rollout(
        real_node, cluster, namespace, prometheus, "bad"
    )
    # The test's own reading before the analysis: the canary's pod errs, stable's do not.
    assert at_warm_up == {"canary": 1.0, "stable": 0.0}, at_warm_up
    # The load reached the canary, which answered 500, and stable, which answered 200.
    answers = dict(load.answers)
    assert answers.get(("bad", "HTTP 500"), 0) > 0, load.describe()
    assert not [k for k in answers if k[0] == "bad" and k[1] != "HTTP 500"], load.describe()
    assert answers.get(("v1", "ok"), 0) > 0, load.describe()
    assert not [k for k in answers if k[0] == "v1" and k[1] != "ok"], load.describe()

    status = body["status"]
    assert status["phase"] == "Failed", status
    outcome = status["outcome"]
    assert outcome["failedStep"] == ANALYSIS_STEP + 1, outcome
    assert "error-rate" in outcome["message"], outcome
    result = _analysis(status)
    assert result["phase"] == "Failed", result
    errors = _series(result, "error-rate")
    # Real values, every one above the threshold (no data would be None): failureLimit
    # 1 ends the analysis at the second failed measurement.
    assert len(errors) >= 2 and all(v is not None and v > ERROR_THRESHOLD for v in errors), errors
    assert errors == [1.0] * len(errors), errors
    verdicts = {v["name"]: v for v in result["metrics"]}
    assert verdicts["error-rate"]["verdict"] == "Failed", verdicts
    assert verdicts["error-rate"]["failed"] == 2 and verdicts["error-rate"]["lastValue"] == 1.0
    # Latency was measured too, and was fine: the error rate alone failed the canary.
    latencies = _series(result, "latency-p99")
    assert all(v is not None and 0 < v < LATENCY_THRESHOLD for v in latencies), latencies
    assert verdicts["latency-p99"]["verdict"] != "Failed", verdicts
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and "error-rate" in failed["message"], failed

    _assert_cleaned_up(cluster, namespace, status)
    image = cluster.get_json("deployment", "web", "-n", namespace)["spec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    assert image.endswith(":v1"), image
    assert_all_stable(real_node, cluster, namespace, "v1", "after the failed analysis", REQUESTS)


def test_good_canary_passes_the_same_analysis(
    real_node: RealNode,
    crd_installed: Cluster,
    namespace: str,
    operator: OperatorProcess,
    prometheus: PrometheusServer,
) -> None:
    """The same analysis with a healthy canary image: every measurement is a real 0 %
    error rate (a value: no data would fail it), so the rollout promotes."""
    cluster = crd_installed
    body, load, at_warm_up, _targets = _run_rollout(real_node, cluster, namespace, prometheus, "v2")
    assert at_warm_up == {"canary": 0.0, "stable": 0.0}, at_warm_up
    assert load.answers.get(("v2", "ok"), 0) > 0, load.describe()
    status = body["status"]
    assert status["phase"] == "Succeeded", status
    result = _analysis(status)
    assert result["phase"] == "Successful", result
    assert _series(result, "error-rate") == [0.0] * COUNT, result["measurements"]
    latencies = _series(result, "latency-p99")
    assert len(latencies) == COUNT, latencies
    assert all(v is not None and 0 < v < LATENCY_THRESHOLD for v in latencies), latencies
    verdicts = {v["name"]: v for v in result["metrics"]}
    assert verdicts["error-rate"]["verdict"] == "Successful", verdicts
    assert verdicts["error-rate"]["successful"] == COUNT, verdicts
    _assert_cleaned_up(cluster, namespace, status)
    assert_all_stable(real_node, cluster, namespace, "v2", "after success (promoted)", REQUESTS)
