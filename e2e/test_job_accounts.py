"""Jobs of a rollout run under a ServiceAccount it names only if the operator allows
it (closing the escalation path through the CR): refused before anything is created,
with a message naming the field; allowed accounts work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from e2e import manifests as m
from e2e.conftest import OperatorProcess, get_rollout, wait_phase
from tests.harness.cluster import Cluster

pytestmark = pytest.mark.cluster


def job_as(account: str) -> dict[str, Any]:
    step = m.job_test("smoke")
    step["test"]["job"]["spec"]["template"]["spec"]["serviceAccountName"] = account
    return step


def namespace_objects(cluster: Cluster, ns: str) -> list[str]:
    return sorted(
        cluster.kubectl(
            "get", "deployments,replicasets,services,jobs,pods", "-n", ns, "-o", "name"
        ).stdout.split()
    )


def test_a_job_naming_a_service_account_the_operator_does_not_allow_is_refused(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    kube_cluster.apply(m.app(replicas=2), ns)
    kube_cluster.kubectl("create", "serviceaccount", "admin", "-n", ns)
    before = namespace_objects(kube_cluster, ns)
    steps = [{"canary": {"replicas": 1}}, job_as("admin"), {"promote": {}}]
    kube_cluster.apply(m.rollout("escalate", steps), ns)
    status = wait_phase(kube_cluster, ns, "escalate", "Failed", timeout=60)["status"]
    assert status["outcome"]["result"] == "InvalidSpec", status["outcome"]
    message = status["outcome"]["message"]
    assert "spec.steps[1].test.job" in message and "'admin'" in message, message
    assert "--allow-job-service-accounts" in message
    assert status.get("startedAt") is None
    assert namespace_objects(kube_cluster, ns) == before  # nothing created or changed


def test_an_allowed_service_account_runs_the_job(
    kube_cluster: Cluster,
    namespace: str,
    operators: list[OperatorProcess],
    crd_installed: Cluster,
    tmp_path: Path,
) -> None:
    ns = namespace
    allowed = OperatorProcess(
        kube_cluster,
        ns,
        tmp_path / "operator.log",
        args=["--http-port", "0", "--allow-job-service-accounts", f"{ns}/runner"],
    ).start()
    operators.append(allowed)
    kube_cluster.apply(m.app(replicas=2), ns)
    kube_cluster.kubectl("create", "serviceaccount", "runner", "-n", ns)
    steps = [{"canary": {"replicas": 1}}, job_as("runner"), {"promote": {}}]
    kube_cluster.apply(m.rollout("allowed", steps), ns)
    body = wait_phase(kube_cluster, ns, "allowed", {"Succeeded", "Failed"}, timeout=120)
    assert body["status"]["phase"] == "Succeeded", body["status"]
    job = get_rollout(kube_cluster, ns, "allowed")["status"]["steps"][1]
    assert job["phase"] == "Succeeded" and "succeeded" in job["message"]
