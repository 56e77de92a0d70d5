"""The seed pipeline on a real node: real containers, real test Jobs, real traffic.

Every pod here runs in containerd on the real node (tests/harness/realnode.py);
the traffic is measured by real HTTP requests to the stable Service's ClusterIP,
through kube-proxy (nftables mode), with the guard rules checked first. The app is
the demo app (hack/realnode/images/demo_app.py): each answer names the version and
the pod that served it.

Skipped, loudly, where a real node cannot run (see tests/harness/realnode_fixtures.py).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from e2e.conftest import OperatorProcess, get_rollout, wait_phase
from e2e.realnode_manifests import (
    JobLogs,
    assert_all_stable,
    dump,
    measure_service,
    real_example,
    wait_routed,
    wait_serving,
)
from tests.harness.cluster import Cluster, wait_for
from tests.harness.realnode import Measurement, RealNode, binomial_tolerance

REQUESTS = 2000
ROLLOUT_TIMEOUT = 600


def _measure_service(
    real_node: RealNode, cluster: Cluster, namespace: str, label: str
) -> Measurement:
    return measure_service(real_node, cluster, namespace, label, REQUESTS)


def _assert_all_stable(
    real_node: RealNode, cluster: Cluster, namespace: str, version: str, label: str
) -> None:
    assert_all_stable(real_node, cluster, namespace, version, label, REQUESTS)


def _exchanges(logs: JobLogs) -> list[str]:
    return [f"--- {logs.jobs[p]} ({p}, {logs.phases[p]}) ---\n{logs.logs[p]}" for p in logs.logs]


def _wait_serving(cluster: Cluster, namespace: str, replicas: int) -> None:
    wait_serving(cluster, namespace, replicas)


def test_seed_pipeline_on_real_node(
    real_node: RealNode, crd_installed: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    cluster = crd_installed
    docs = real_example("seed-pipeline.yaml", "v1", "v2")
    cluster.apply(dump(docs[:2]), namespace)  # the target first: it really serves
    _wait_serving(cluster, namespace, 3)
    before = _measure_service(real_node, cluster, namespace, "before the rollout")
    assert before.by_version == {"v1": REQUESTS} and not before.errors, before.describe()

    with JobLogs(cluster, namespace) as logs:
        cluster.apply(dump(docs[2:]), namespace)
        body = wait_phase(cluster, namespace, "web-seed", {"Succeeded", "Failed"}, ROLLOUT_TIMEOUT)
        wait_for(
            lambda: len(logs.logs) >= 6,
            30,
            message=lambda: (
                f"the six test Jobs' logs: {sorted(logs.jobs.values())}, "
                f"collector errors: {logs.errors[-3:]}"
            ),
        )
    print("\n".join(_exchanges(logs)))
    assert body["status"]["phase"] == "Succeeded", body["status"]

    # Six test Jobs (three in parallel, twice), each a real HTTP exchange with the
    # canary's pods (version v2) through the canary Service's name.
    assert len(logs.logs) == 6, sorted(logs.jobs.values())
    for pod, log in logs.logs.items():
        assert logs.phases[pod] == "Succeeded", log
        assert re.search(r"Connecting to web-canary\.[a-z0-9-]+\.svc", log), log
        assert "HTTP/1.0 200 OK" in log, log
        assert "X-App-Version: v2" in log, log
    # The three routes answered (the bodies go to grep, the headers to the log):
    # /healthz plain text, /api/v1/status JSON, / HTML.
    for content_type in ("text/plain", "application/json", "text/html"):
        assert any(f"Content-Type: {content_type}" in log for log in logs.logs.values())

    _assert_all_stable(real_node, cluster, namespace, "v2", "after success (promoted)")


def test_failing_canary_on_real_node(
    real_node: RealNode, crd_installed: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """The canary image answers 500 to everything: the test Jobs fail on that real
    error, cleanup runs, and every request reaches the stable version afterwards."""
    cluster = crd_installed
    docs = real_example("failing-test.yaml", "v1", "bad")
    cluster.apply(dump(docs[:2]), namespace)
    _wait_serving(cluster, namespace, 3)
    with JobLogs(cluster, namespace) as logs:
        cluster.apply(dump(docs[2:]), namespace)
        body = wait_phase(
            cluster, namespace, "web-failing", {"Succeeded", "Failed"}, ROLLOUT_TIMEOUT
        )

        # The failed pod's log, as this test's poll caught it or, when cleanup deleted
        # the Job between two polls, as the operator kept it in the status before that.
        def failed_logs() -> dict[str, str]:
            caught = {p: logs.logs[p] for p, phase in logs.phases.items() if phase == "Failed"}
            kept = _evidence(get_rollout(cluster, namespace, "web-failing"))
            return caught or kept

        failed = wait_for(failed_logs, 30, message="a failed test pod's log")
    print("\n".join(_exchanges(logs)))
    status = body["status"]
    assert status["phase"] == "Failed", status
    assert (status.get("outcome") or {}).get("failedStep") == 2, status  # "canary tests"
    assert failed, "no test pod failed"
    for pod, log in failed.items():
        assert "500 Internal Server Error" in log, (pod, log)
    assert cluster.get_json("deployment", "web", "-n", namespace)["spec"]["template"]["spec"][
        "containers"
    ][0]["image"].endswith(":v1")
    _assert_all_stable(real_node, cluster, namespace, "v1", "after the failed test")


def _evidence(body: dict[str, Any]) -> dict[str, str]:
    """Log tails of failed test pods kept in the status (steps and their children)."""
    found: dict[str, str] = {}

    def visit(steps: list[dict[str, Any]]) -> None:
        for step in steps:
            for tail in step.get("logs") or []:
                if tail.get("tail"):
                    found[f"{tail['pod']}/{tail['container']}"] = tail["tail"]
            visit(step.get("children") or [])

    visit((body.get("status") or {}).get("steps") or [])
    return found


def _resume(cluster: Cluster, namespace: str, name: str, body: dict[str, Any]) -> None:
    step = body["status"]["currentStep"]
    run = body["status"].get("run") or 1
    cluster.kubectl(
        "annotate",
        "cro",
        name,
        "-n",
        namespace,
        "--overwrite",
        f"canary-operator.dev/resume={step + 1}@{run}",
    )


def test_replicas_router_split_measured_by_requests(
    real_node: RealNode, crd_installed: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """At each setWeight step, 2,000 requests through the stable Service's ClusterIP.

    The replicas router carries the weight as the canary's share of ready pods: with
    9 stable pods, 10 % is 1 canary pod and 50 % is 9. kube-proxy picks an endpoint
    at random for each connection (and the app closes every connection), so each
    request reaches a canary pod with probability p = canary pods / all pods and the
    canary's share of n requests is binomial. Tolerance: 4.5 standard deviations of
    that share (binomial_tolerance), +/-3.0 points at 10 % and +/-5.0 at 50 % for
    n = 2,000; a correct split falls outside with probability below 1e-5. At 10 % the
    band excludes one canary pod more (18.2 %) or none (0 %); at 50 % it tells the set
    weight from 40 % or 60 %, not from one pod more or less (47.4 % / 52.6 %).
    """
    cluster = crd_installed
    steps = [
        {"name": "start canary", "canary": {"replicas": 1}},
        {"setWeight": 10},
        {"name": "hold at 10", "pause": {}},
        {"setWeight": 50},
        {"name": "hold at 50", "pause": {}},
        {"promote": {}},
    ]
    docs = real_example("seed-pipeline.yaml", "v1", "v2", replicas=9, steps=steps)
    docs[2]["spec"].pop("cleanup", None)
    # The split measured here is mode Add's (canary pods beside the 9 stable ones);
    # e2e/test_replicas_shift.py measures Shift, the default of a new rollout.
    docs[2]["spec"]["trafficRouting"] = {"replicas": {"mode": "Add"}}
    cluster.apply(dump(docs[:2]), namespace)
    _wait_serving(cluster, namespace, 9)
    results: list[tuple[int, int, Measurement, float]] = []
    for weight, canary_pods, pause_index in ((10, 1, 2), (50, 9, 4)):
        if not results:
            cluster.apply(dump(docs[2:]), namespace)

        def at_pause(index: int = pause_index) -> dict[str, Any] | None:
            body = get_rollout(cluster, namespace, "web-seed")
            return body if (body.get("status") or {}).get("currentStep") == index else None

        body = wait_for(
            at_pause, ROLLOUT_TIMEOUT, interval=0.5, message=f"the pause after {weight} %"
        )
        _wait_serving(cluster, namespace, 9 + canary_pods)
        wait_routed(real_node, cluster, namespace, 9 + canary_pods)
        p = canary_pods / (9 + canary_pods)
        m = _measure_service(real_node, cluster, namespace, f"setWeight {weight}")
        tol = binomial_tolerance(p, REQUESTS)
        share = m.share("v2")
        print(
            f"setWeight {weight} %: canary share {100 * share:.1f} % "
            f"({canary_pods} of {9 + canary_pods} pods, expected {100 * p:.1f} %, "
            f"tolerance +/-{100 * tol:.1f} points); status weight {body['status'].get('weight')}"
        )
        results.append((weight, canary_pods, m, tol))
        assert not m.errors, m.describe()
        assert abs(share - weight / 100) <= tol, (
            f"setWeight {weight}: measured {100 * share:.1f} %, "
            f"outside {weight} +/- {100 * tol:.1f}"
        )
        _resume(cluster, namespace, "web-seed", body)
    body = wait_phase(cluster, namespace, "web-seed", {"Succeeded", "Failed"}, ROLLOUT_TIMEOUT)
    assert body["status"]["phase"] == "Succeeded", body["status"]
    _assert_all_stable(real_node, cluster, namespace, "v2", "after success (promoted)")


@pytest.fixture(autouse=True)
def _show_guard_drops(real_node: RealNode) -> Any:
    yield
    # Visible in the output: how many packets the guards stopped during the test.
    print(f"guard drops so far: {real_node.guard_drops()}")


@pytest.mark.parametrize("ending", ["abort", "delete"])
def test_abort_and_deletion_leave_all_traffic_on_stable(
    real_node: RealNode,
    crd_installed: Cluster,
    namespace: str,
    operator: OperatorProcess,
    ending: str,
) -> None:
    """Held at 50 % (canary pods really serving), the rollout is aborted or deleted:
    cleanup runs and every request reaches the stable version again."""
    cluster = crd_installed
    steps = [
        {"name": "start canary", "canary": {"replicas": 1}},
        {"setWeight": 50},
        {"name": "hold", "pause": {}},
        {"promote": {}},
    ]
    docs = real_example("seed-pipeline.yaml", "v1", "v2", steps=steps)
    docs[2]["spec"].pop("cleanup", None)
    docs[2]["spec"]["trafficRouting"] = {"replicas": {"mode": "Add"}}  # pods counted as Add's
    cluster.apply(dump(docs[:2]), namespace)
    _wait_serving(cluster, namespace, 3)
    cluster.apply(dump(docs[2:]), namespace)
    wait_for(
        lambda: (
            (get_rollout(cluster, namespace, "web-seed").get("status") or {}).get("currentStep")
            == 2
        ),
        ROLLOUT_TIMEOUT,
        interval=0.5,
        message="the hold at 50 %",
    )
    _wait_serving(cluster, namespace, 6)
    held = _measure_service(real_node, cluster, namespace, "held at 50 %")
    assert 0 < held.share("v2") < 1, held.describe()  # the canary really serves
    if ending == "abort":
        cluster.kubectl(
            "patch",
            "cro",
            "web-seed",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"spec":{"abort":true}}',
        )
        body = wait_phase(cluster, namespace, "web-seed", {"Aborted", "Failed"}, ROLLOUT_TIMEOUT)
        assert body["status"]["phase"] == "Aborted", body["status"]
    else:
        cluster.kubectl("delete", "cro", "web-seed", "-n", namespace, "--wait=false")
        wait_for(
            lambda: (
                not cluster.kubectl(
                    "get", "cro", "-n", namespace, "-o", "name", check=False
                ).stdout.strip()
            ),
            ROLLOUT_TIMEOUT,
            interval=0.5,
            message="the deleted rollout to finish its cleanup and go",
        )
    _assert_all_stable(real_node, cluster, namespace, "v1", f"after {ending}")
