"""The Argo CD health check and resource actions against a real operator: each
action runs in Argo CD's Lua sandbox (tests/harness/argocd_lua.py) on the live
object read from the API server, its merge patch is applied as Argo CD applies it
(a JSON merge patch), and the operator must act on it; the health check is run on
the live object at each point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from e2e import manifests as m
from e2e.conftest import OperatorProcess, get_rollout, stable_image, wait_phase
from tests.harness import argocd_lua
from tests.harness.cluster import Cluster

pytestmark = pytest.mark.cluster

SOURCES = (
    Path(__file__).resolve().parents[1] / "manifests" / "argocd" / "canary-operator.dev"
) / "CanaryRollout"
HEALTH = (SOURCES / "health.lua").read_text()
DISCOVERY = (SOURCES / "actions" / "discovery.lua").read_text()
CANARY = {"name": "start canary", "canary": {"replicas": 1}}
HOLD = {"name": "hold", "pause": {}}
PROMOTE = {"promote": {}}


def health(cluster: Cluster, namespace: str, name: str) -> str:
    return str(argocd_lua.run(HEALTH, get_rollout(cluster, namespace, name))["status"])


def run_action(cluster: Cluster, namespace: str, name: str, action: str) -> dict[str, Any]:
    """What Argo CD does for `argocd app actions run ... <action>`: check discovery,
    run the action on the live object, send the merge patch. The patch sent."""
    live = get_rollout(cluster, namespace, name)
    offered = argocd_lua.run(DISCOVERY, live)
    assert offered[action].get("disabled") is False, offered
    script = (SOURCES / "actions" / action / "action.lua").read_text()
    patch = argocd_lua.action_patch(script, live)
    cluster.kubectl(
        "patch", "canaryrollout", name, "-n", namespace, "--type=merge", "-p", json.dumps(patch)
    )
    return patch


def test_resume_releases_the_pause_and_the_run_succeeds(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.app(), namespace)
    kube_cluster.apply(m.rollout("web-v001", [CANARY, HOLD, PROMOTE]), namespace)
    wait_phase(kube_cluster, namespace, "web-v001", "Paused")
    assert health(kube_cluster, namespace, "web-v001") == "Suspended"
    patch = run_action(kube_cluster, namespace, "web-v001", "resume")
    assert patch == {"metadata": {"annotations": {"canary-operator.dev/resume": "2@1"}}}
    wait_phase(kube_cluster, namespace, "web-v001", "Succeeded")
    assert health(kube_cluster, namespace, "web-v001") == "Healthy"
    assert stable_image(kube_cluster, namespace) == "registry.example.com/web:2.0"


def test_promote_skips_to_promotion(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.app(), namespace)
    steps = [CANARY, HOLD, {"setWeight": 50}, {"name": "hold again", "pause": {}}, PROMOTE]
    kube_cluster.apply(m.rollout("web-v001", steps), namespace)
    wait_phase(kube_cluster, namespace, "web-v001", "Paused")
    run_action(kube_cluster, namespace, "web-v001", "promote")
    body = wait_phase(kube_cluster, namespace, "web-v001", "Succeeded")
    skipped = [s["phase"] for s in body["status"]["steps"][1:4]]
    assert skipped == ["Cancelled", "Cancelled", "Cancelled"], body["status"]["steps"]
    assert stable_image(kube_cluster, namespace) == "registry.example.com/web:2.0"


def test_abort_then_retry(
    kube_cluster: Cluster, namespace: str, operators: list[OperatorProcess], tmp_path: Path
) -> None:
    first = OperatorProcess(kube_cluster, namespace, tmp_path / "op1.log").start()
    operators.append(first)
    kube_cluster.apply(m.app(), namespace)
    kube_cluster.apply(m.rollout("web-v001", [CANARY, HOLD, PROMOTE]), namespace)
    wait_phase(kube_cluster, namespace, "web-v001", "Paused")
    assert run_action(kube_cluster, namespace, "web-v001", "abort") == {"spec": {"abort": True}}
    wait_phase(kube_cluster, namespace, "web-v001", "Aborted")
    assert health(kube_cluster, namespace, "web-v001") == "Degraded"
    assert stable_image(kube_cluster, namespace) == "registry.example.com/web:1.0"

    # With no operator running, the retry request is all there is: until run 2
    # starts, the previous result must not read as current.
    first.stop()
    patch = run_action(kube_cluster, namespace, "web-v001", "retry")
    assert patch == {
        "metadata": {"annotations": {"canary-operator.dev/retry": "2"}},
        "spec": {"abort": False},
    }
    assert health(kube_cluster, namespace, "web-v001") == "Progressing"
    operators.append(OperatorProcess(kube_cluster, namespace, tmp_path / "op2.log").start())
    body = wait_phase(kube_cluster, namespace, "web-v001", "Paused")
    assert body["status"]["run"] == 2
    assert health(kube_cluster, namespace, "web-v001") == "Suspended"
    assert run_action(kube_cluster, namespace, "web-v001", "resume") == {
        "metadata": {"annotations": {"canary-operator.dev/resume": "2@2"}}
    }
    wait_phase(kube_cluster, namespace, "web-v001", "Succeeded")
    assert health(kube_cluster, namespace, "web-v001") == "Healthy"
