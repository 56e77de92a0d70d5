"""Failures are read, not waited out (issue 10): a canary whose ReplicaSet cannot create
its pods (here: the namespace's pod quota is used up, a real ReplicaFailure from the
real controllers) fails its step at once with the cause, the weight shown is that of
ready pods (none), and the lock goes to the next rollout long before any deadline."""

from __future__ import annotations

from datetime import datetime

import pytest
import yaml

from e2e import manifests as m
from e2e.conftest import OperatorProcess, wait_phase
from tests.harness.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster


def quota(pods: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "pods"},
            "spec": {"hard": {"pods": str(pods)}},
        }
    )


def test_a_canary_that_cannot_create_its_pods_fails_at_once_and_frees_the_lock(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    kube_cluster.apply(m.app(replicas=2), ns)
    kube_cluster.kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=90s")
    kube_cluster.apply(quota(2), ns)  # the two stable pods use it all

    def enforced() -> bool:
        used = (kube_cluster.get_json("resourcequota", "pods", "-n", ns).get("status") or {}).get(
            "used"
        ) or {}
        return used.get("pods") == "2"

    wait_for(enforced, 60, interval=0.5, message="the quota controller to count the pods")
    steps = [{"canary": {"replicas": 1}}, {"setWeight": 25}, {"promote": {}}]
    kube_cluster.apply(m.rollout("web-v2", steps), ns)
    # Queued behind it: starts as soon as the failed one has cleaned up.
    kube_cluster.apply(
        m.rollout("web-v3", [{"pause": {"duration": "1s"}}], image="registry.example.com/web:3.0"),
        ns,
    )
    body = wait_phase(kube_cluster, ns, "web-v2", "Failed", timeout=90)
    status = body["status"]
    assert status["outcome"]["result"] == "StepFailed" and status["outcome"]["failedStep"] == 1
    message = status["outcome"]["message"]
    assert "the canary Deployment cannot run its pods" in message, message
    assert "FailedCreate" in message and "exceeded quota" in message, message
    assert status.get("weight", 0) == 0
    started = datetime.strptime(status["startedAt"], "%Y-%m-%dT%H:%M:%SZ")
    ended = datetime.strptime(status["completedAt"], "%Y-%m-%dT%H:%M:%SZ")
    assert (ended - started).total_seconds() < 60, (started, ended)  # not progressDeadline
    wait_phase(kube_cluster, ns, "web-v3", "Succeeded", timeout=90)


def test_a_canary_whose_pods_cannot_be_scheduled_fails_at_once(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    kube_cluster.apply(m.app(replicas=2), ns)
    template = {
        "metadata": {"labels": {"app": "web"}},
        "spec": {
            # No node has this label: the scheduler marks the pod Unschedulable.
            "nodeSelector": {"canary-operator.dev/no-such-node": "true"},
            "containers": [{"name": "app", "image": "registry.example.com/web:2.0"}],
        },
    }
    doc = yaml.safe_load(m.rollout("web-v2", [{"canary": {"replicas": 1}}, {"promote": {}}]))
    del doc["spec"]["images"]
    doc["spec"]["template"] = template
    kube_cluster.apply(yaml.safe_dump(doc), ns)
    status = wait_phase(kube_cluster, ns, "web-v2", "Failed", timeout=90)["status"]
    message = status["outcome"]["message"]
    assert status["outcome"]["failedStep"] == 1, status["outcome"]
    assert "cannot be scheduled" in message and "node affinity/selector" in message, message
    # The stable Deployment was never touched.
    image = kube_cluster.get_json("deployment", "web", "-n", ns)["spec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    assert image == "registry.example.com/web:1.0"
