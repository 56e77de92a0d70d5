"""A promotion that does not complete is undone (issue 25, item 1), end to end.

The soak's case made deterministic: the target Deployment has `minReadySeconds: 3600`,
so on kwok its pods are ready but not available for an hour, and a promotion of it stays
under way (the promote step waits for the target to be fully available). The test waits
for the promote step's start in the status and for the promotion on the target, then
deletes (or aborts) the rollout: the target ends on the template it had before, read
back, with no promotion record; the outcome says "promotion to web:2.0 undone, target
back on web:1.0". And the same with the operator SIGKILLed in the middle of the undo: an
admission webhook refuses the target's updates, so the undo is recorded in the status and
its write fails; the operator is killed there, the webhook removed, and a new operator
finishes the undo. Nothing here waits by sleeping: each wait polls for a state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from e2e import manifests as m
from e2e.conftest import (
    TERMINAL,
    OperatorProcess,
    canary_objects,
    events_of,
    get_rollout,
    lease,
)
from e2e.watch import Watch
from tests.harness.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

OLD, NEW = "registry.example.com/web:1.0", "registry.example.com/web:2.0"
UNDONE = "promotion to web:2.0 undone, target back on web:1.0"
REVISION = "deployment.kubernetes.io/revision"
PROMOTION_ANNOTATIONS = {
    "canary-operator.dev/promoted-by",
    "canary-operator.dev/promotion",
    "canary-operator.dev/pre-promotion",
}


def _target(cluster: Cluster, ns: str) -> dict[str, Any]:
    body: dict[str, Any] = cluster.get_json("deployment", "web", "-n", ns)
    return body


def _start_promoting(cluster: Cluster, ns: str) -> dict[str, Any]:
    """A target whose promotion cannot complete, and a rollout of it past the start of
    its promote step, the target carrying the new version. Returns the target's pod
    template before the promotion."""
    cluster.apply(m.app("web", image=OLD, min_ready_seconds=3600), ns)
    before: dict[str, Any] = _target(cluster, ns)["spec"]["template"]
    steps: list[dict[str, Any]] = [{"canary": {}}, {"setWeight": 25}, {"promote": {}}]
    routing = {"replicas": {"mode": "Add"}}
    cluster.apply(m.rollout("r", steps, image=NEW, trafficRouting=routing), ns)

    def promote_running() -> bool:
        status = get_rollout(cluster, ns, "r").get("status") or {}
        steps_ = status.get("steps") or []
        return status.get("currentStep") == 2 and steps_[2]["phase"] == "Running"

    wait_for(promote_running, 120, interval=0.2, message="the promote step running")
    target = _target(cluster, ns)
    annotations = target["metadata"].get("annotations") or {}
    assert set(annotations) >= PROMOTION_ANNOTATIONS, "the promotion was written with its start"
    assert target["spec"]["template"]["spec"]["containers"][0]["image"] == NEW
    return before


def _end(cluster: Cluster, ns: str, how: str) -> None:
    if how == "delete":
        cluster.kubectl("delete", "canaryrollout", "r", "-n", ns, "--wait=false")
    else:
        patch = '{"spec":{"abort":true}}'
        cluster.kubectl("patch", "canaryrollout", "r", "-n", ns, "--type=merge", "-p", patch)


def _ended(cluster: Cluster, ns: str, how: str, watch: Watch, timeout: float) -> dict[str, Any]:
    """The rollout's last status: terminal (abort), or the last one before it went
    (delete), from the watch, in the order the API server committed them."""

    def last() -> dict[str, Any]:
        seen = watch.of("r")
        if how == "delete" and not any(e.type == "DELETED" for e in seen):
            return {}
        ends = [e for e in seen if e.phase in TERMINAL]
        return ends[-1].object if ends else {}

    body: dict[str, Any] = wait_for(
        last, timeout, interval=0.2, message=lambda: f"r ended: {watch.phases('r')}"
    )
    return dict(body["status"])


def _assert_undone(
    cluster: Cluster, ns: str, before: dict[str, Any], status: dict[str, Any], result: str
) -> None:
    target = _target(cluster, ns)
    assert target["spec"]["template"] == before, "the template it had before the promotion"
    assert not PROMOTION_ANNOTATIONS & set(target["metadata"].get("annotations") or {})
    assert status["outcome"]["result"] == result
    assert status["outcome"]["message"].endswith(UNDONE), status["outcome"]
    assert status["message"].endswith(UNDONE)
    verified = next(c for c in status["conditions"] if c["type"] == "CleanupVerified")
    assert verified["status"] == "True" and verified["message"].endswith(UNDONE)
    undo = status["cleanup"]["promotionUndo"]
    assert (undo["promoted"], undo["restores"]) == ("web:2.0", "web:1.0") and undo["undoneAt"]
    assert status.get("live") is None, "status.live agrees with the target: nothing promoted"
    assert canary_objects(cluster, ns) == []
    assert not lease(cluster, ns)["spec"].get("holderIdentity")

    def rolled_back() -> bool:
        """The Deployment controller took the old template back: its current ReplicaSet
        (the Deployment's revision) is the old image's. (Its pods are never available
        here, so the new version's pods are not scaled down: minReadySeconds.)"""
        body = _target(cluster, ns)
        if body.get("status", {}).get("observedGeneration") != body["metadata"]["generation"]:
            return False
        revision = body["metadata"].get("annotations", {}).get(REVISION)
        sets = cluster.get_json("replicasets", "-n", ns, "-l", "app=web")["items"]
        current = [
            r for r in sets if r["metadata"].get("annotations", {}).get(REVISION) == revision
        ]
        images = [r["spec"]["template"]["spec"]["containers"][0]["image"] for r in current]
        return images == [OLD]

    wait_for(rolled_back, 60, interval=0.3, message="the target's ReplicaSet back on the old image")


RESULTS = {"delete": "Deleted", "abort": "Aborted"}


@pytest.mark.parametrize("how", ["delete", "abort"])
def test_a_rollout_ended_during_its_promotion_undoes_it(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, how: str
) -> None:
    ns = namespace
    with Watch(kube_cluster, ns, "canaryrollouts") as watch:
        before = _start_promoting(kube_cluster, ns)
        _end(kube_cluster, ns, how)
        status = _ended(kube_cluster, ns, how, watch, timeout=120)
    _assert_undone(kube_cluster, ns, before, status, RESULTS[how])
    if how == "abort":  # a deleted rollout's Events may go with it
        reasons = [e["reason"] for e in events_of(kube_cluster, ns, "r")]
        assert "PromotionUndoStarted" in reasons and "PromotionUndone" in reasons


@pytest.mark.parametrize("how", ["delete", "abort"])
def test_the_undo_survives_a_sigkill_in_its_middle(
    kube_cluster: Cluster,
    namespace: str,
    operators: list[OperatorProcess],
    operator: OperatorProcess,
    tmp_path: Path,
    how: str,
) -> None:
    ns = namespace
    webhook = m.refusing_target_webhook(ns)
    with Watch(kube_cluster, ns, "canaryrollouts") as watch:
        before = _start_promoting(kube_cluster, ns)
        kube_cluster.apply(webhook)
        try:
            _end(kube_cluster, ns, how)

            def undo_refused(body: dict[str, Any]) -> bool:
                cleanup = (body.get("status") or {}).get("cleanup") or {}
                return bool(cleanup.get("promotionUndo")) and bool(cleanup.get("lastError"))

            watch.wait("r", lambda e: undo_refused(e.object), timeout=60)
            # In the middle of the undo: recorded, its write refused, the target still
            # on the new version.
            image = _target(kube_cluster, ns)["spec"]["template"]["spec"]["containers"][0]
            assert image["image"] == NEW
            operator.kill()
        finally:
            kube_cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input=webhook)
        replacement = OperatorProcess(kube_cluster, ns, tmp_path / "op2.log").start()
        operators.append(replacement)
        status = _ended(kube_cluster, ns, how, watch, timeout=120)
    _assert_undone(kube_cluster, ns, before, status, RESULTS[how])
