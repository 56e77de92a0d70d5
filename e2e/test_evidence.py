"""The evidence of a failed test survives cleanup (issue 10, must-show 3): the tail of
the failing Job's pod log is in the step's status and in a Warning Event after the
Job is deleted, `kubectl canary logs` prints it, and with keepFailedJobs the Job is
still there (its logs readable with kubectl) until the rollout is deleted.

The logs are real reads through the API server (pods/log): on the local cluster kwok
serves them as the kubelet (tests/harness/cluster.py simulate_pod_logs); on a real
cluster the Job's container prints the same lines itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e import manifests as m
from e2e.conftest import OperatorProcess, events_of, wait_phase
from e2e.identity import PLUGIN, run_cli
from tests.harness.cluster import (
    Cluster,
    delete_simulated_pod_logs,
    simulate_pod_logs,
    wait_for,
)

pytestmark = pytest.mark.cluster

LINES = ["running smoke test against $CANARY_URL", "GET / -> HTTP 500", "smoke test FAILED: 1 of 3"]


@pytest.fixture
def pod_logs(kube_cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[bool]:
    simulated = simulate_pod_logs(kube_cluster, namespace, LINES, tmp_path / "pod-logs")
    yield simulated
    delete_simulated_pod_logs(kube_cluster, namespace)


def failing_smoke_test() -> dict[str, Any]:
    step = m.job_test("smoke", fail=True)
    script = "; ".join(f"echo '{line}'" for line in LINES) + "; exit 1"
    container = step["test"]["job"]["spec"]["template"]["spec"]["containers"][0]
    container["command"] = ["sh", "-c", script]
    return step


def plugin(cluster: Cluster, ns: str, *args: str) -> str:
    result = run_cli(PLUGIN, cluster, "-n", ns, *args)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stdout}{result.stderr}"
    return result.stdout


def test_failed_jobs_log_tail_is_kept_in_status_and_an_event_after_cleanup(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, pod_logs: bool
) -> None:
    ns = namespace
    kube_cluster.apply(m.app(replicas=2), ns)
    steps = [{"canary": {"replicas": 1}}, failing_smoke_test(), {"promote": {}}]
    kube_cluster.apply(m.rollout("web-v2", steps), ns)
    status = wait_phase(kube_cluster, ns, "web-v2", "Failed", timeout=120)["status"]
    assert status["outcome"]["failedStep"] == 2, status["outcome"]
    step = status["steps"][1]
    job = step["job"]
    # Cleanup deleted the Job: without the status, its logs would be lost.
    assert kube_cluster.kubectl("get", "job", job, "-n", ns, check=False).returncode != 0
    assert status["cleanup"]["stage"] == "Done"
    tails = step["logs"]
    assert len(tails) == 1 and tails[0]["container"] == "t" and not tails[0].get("error"), tails
    for line in LINES:
        assert line in tails[0]["tail"], tails
    assert tails[0]["pod"].startswith(job + "-")

    warnings = [e for e in events_of(kube_cluster, ns, "web-v2") if e["reason"] == "TestLogs"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning", warnings
    assert LINES[-1] in warnings[0]["message"] and job in warnings[0]["message"]

    out = plugin(kube_cluster, ns, "logs", "web-v2")
    assert f"step 2 (smoke) Failed: Job {job} failed" in out, out
    assert all(line in out for line in LINES), out
    assert plugin(kube_cluster, ns, "logs", "web-v2", "smoke") == out
    assert "no log tails recorded" in plugin(kube_cluster, ns, "logs", "web-v2", "1")
    missing = run_cli(PLUGIN, kube_cluster, "-n", ns, "logs", "web-v2", "9")
    assert missing.returncode != 0 and "no step '9'" in missing.stderr


def test_keep_failed_jobs_keeps_the_job_until_the_rollout_is_deleted(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, pod_logs: bool
) -> None:
    ns = namespace
    kube_cluster.apply(m.app(replicas=2), ns)
    steps = [{"canary": {"replicas": 1}}, failing_smoke_test(), {"promote": {}}]
    kube_cluster.apply(m.rollout("web-v2", steps, cleanupPolicy={"keepFailedJobs": True}), ns)
    body = wait_phase(kube_cluster, ns, "web-v2", "Failed", timeout=120)
    status = body["status"]
    verified = next(c for c in status["conditions"] if c["type"] == "CleanupVerified")
    assert verified["status"] == "True", verified
    job = status["steps"][1]["job"]
    kept = kube_cluster.get_json("job", job, "-n", ns)
    labels = kept["metadata"]["labels"]
    assert labels["canary-operator.dev/purpose"] == "evidence", labels
    owners = kept["metadata"]["ownerReferences"]
    assert [o["uid"] for o in owners] == [body["metadata"]["uid"]], owners
    # The user's own tool reads the kept Job's logs.
    logs = kube_cluster.kubectl("logs", f"job/{job}", "-n", ns).stdout
    assert all(line in logs for line in LINES), logs
    # No canary workload is left, the kept Job aside.
    left = kube_cluster.kubectl(
        "get", "deployments,services,pods", "-n", ns, "-l", "canary-operator.dev/role", "-o", "name"
    ).stdout.split()
    assert left == []
    out = plugin(kube_cluster, ns, "logs", "web-v2")
    assert f"kept Job {job} (step 2)" in out and out.count(LINES[-1]) == 2, out

    # A later rollout of the same target runs its cleanup: the evidence stays.
    quick = [{"canary": {"replicas": 1}}, {"promote": {}}]
    kube_cluster.apply(m.rollout("web-v3", quick, image="registry.example.com/web:3.0"), ns)
    wait_phase(kube_cluster, ns, "web-v3", "Succeeded", timeout=180)
    assert kube_cluster.kubectl("get", "job", job, "-n", ns, check=False).returncode == 0

    kube_cluster.kubectl("delete", "cro", "web-v2", "-n", ns, "--wait=true", timeout=90)

    def job_gone() -> bool:
        return kube_cluster.kubectl("get", "job", job, "-n", ns, check=False).returncode != 0

    wait_for(job_gone, 90, interval=0.5, message=f"the kept Job {job} to go with its rollout")
