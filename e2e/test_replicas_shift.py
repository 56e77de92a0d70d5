"""The replicas router in mode Shift end to end (issue 9, pods per rollout): the canary
scales up while the stable scales down, on a real API server with a real
kube-controller-manager (kwok nodes), so the Deployments really roll out.

Everything is read from watches of Deployments, pods and the rollout, in the order the
API server committed it (one etcd: resourceVersions of all kinds are its revisions), so
"the stable had 3 ready pods before the canary was scaled to 0" is a fact of the
commit order, not of sampling.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from canary_operator.engine.weights import plan_shift, plan_shift_canary, plan_weight
from canary_operator.kube.objects import STABLE_REPLICAS
from e2e import manifests as m
from e2e.conftest import (
    TERMINAL,
    OperatorProcess,
    canary_objects,
    stable_image,
    wait_phase,
)
from e2e.watch import Seen, Watch
from tests.harness.cluster import Cluster

pytestmark = pytest.mark.cluster

OLD, NEW = "registry.example.com/web:1.0", "registry.example.com/web:2.0"
SHIFT = {"replicas": {"mode": "Shift"}}
N = 3


def revision(event: Seen) -> int:
    return int(event.object["metadata"]["resourceVersion"])


def ready(event: Seen | None) -> int:
    if event is None or event.type == "DELETED":
        return 0
    return int((event.object.get("status") or {}).get("readyReplicas") or 0)


def replicas(event: Seen) -> int:
    return 0 if event.type == "DELETED" else int(event.object["spec"].get("replicas", 1))


def last_before(events: list[Seen], rev: int) -> Seen | None:
    before = [e for e in events if revision(e) <= rev]
    return before[-1] if before else None


def step_done_at(rollouts: Watch, name: str, index: int) -> int:
    """The revision at which step `index` of the rollout was first seen Succeeded."""
    for event in rollouts.of(name):
        steps = (event.object.get("status") or {}).get("steps") or []
        if len(steps) > index and steps[index].get("phase") == "Succeeded":
            return revision(event)
    raise AssertionError(f"step {index + 1} of {name} never succeeded")


def min_ready_total(deployments: Watch, since: int, until: int) -> int:
    """The fewest ready pods of the stable and the canary together, over every revision
    (of either Deployment) between the two."""
    stable, canary = deployments.of("web"), deployments.of("web-canary")
    revisions = sorted({revision(e) for e in stable + canary if since <= revision(e) <= until})
    return min(ready(last_before(stable, r)) + ready(last_before(canary, r)) for r in revisions)


def pods_created(pods: Watch, existing: set[str]) -> dict[str, int]:
    """Pods created during the rollout, by role (the stable's carry no role label)."""
    counts = {"stable": 0, "canary": 0}
    seen: set[str] = set()
    for event in pods.snapshot():
        meta = event.object["metadata"]
        if event.type != "ADDED" or meta["uid"] in existing or meta["uid"] in seen:
            continue
        seen.add(meta["uid"])
        labels = meta.get("labels") or {}
        role = labels.get("canary-operator.dev/role") or (
            "stable" if labels.get("app") == "web" else "other"  # e.g. a test Job's pod
        )
        counts[role] = counts.get(role, 0) + 1
    return counts


def pod_uids(cluster: Cluster, namespace: str) -> set[str]:
    return {p["metadata"]["uid"] for p in cluster.get_json("pods", "-n", namespace)["items"]}


def start_app(cluster: Cluster, namespace: str) -> None:
    cluster.apply(m.app("web", replicas=N), namespace)
    cluster.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=120s",
                    timeout=130)  # fmt: skip


def assert_stable_restored(cluster: Cluster, namespace: str) -> dict[str, Any]:
    body: dict[str, Any] = cluster.get_json("deployment", "web", "-n", namespace)
    assert body["spec"]["replicas"] == N
    assert STABLE_REPLICAS not in (body["metadata"].get("annotations") or {})
    assert canary_objects(cluster, namespace) == []
    return body


@pytest.mark.parametrize("routing", [SHIFT, None], ids=["mode-Shift", "default-settings"])
def test_shift_splits_pods_per_step_and_promotion_leaves_the_stable_at_its_replicas(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, routing: Any
) -> None:
    """Also with the default settings (no trafficRouting): a new rollout runs in mode
    Shift, and the API server keeps status.replicasMode, which says so (issue 26)."""
    start_app(kube_cluster, namespace)
    existing = pod_uids(kube_cluster, namespace)
    weights = [10, 50, 90]
    steps = [{"canary": {"replicas": 1}}, *({"setWeight": w} for w in weights), {"promote": {}}]
    with (
        Watch(kube_cluster, namespace, "deployments") as deployments,
        Watch(kube_cluster, namespace, "pods") as pods,
        Watch(kube_cluster, namespace, "canaryrollouts") as rollouts,
    ):
        fields = {"trafficRouting": routing} if routing else {}
        kube_cluster.apply(m.rollout("r", steps, **fields), namespace)
        body = wait_phase(kube_cluster, namespace, "r", TERMINAL, timeout=300)
        deployments.wait("web-canary", lambda e: e.type == "DELETED", timeout=30)
        end = revision(rollouts.wait("r", lambda e: e.phase == "Succeeded", timeout=30))
    assert body["status"]["phase"] == "Succeeded", body["status"]
    assert body["status"]["replicasMode"] == "Shift"

    # at each step: the planned split, read from both Deployments' ready pods
    stable_events, canary_events = deployments.of("web"), deployments.of("web-canary")
    planned = [plan_shift_canary(N, 1, 1), *(plan_shift(N, w, 1) for w in weights)]
    at_steps = []
    for index, plan in enumerate(planned):
        rev = step_done_at(rollouts, "r", index)
        got = (ready(last_before(canary_events, rev)), ready(last_before(stable_events, rev)))
        at_steps.append(got)
        assert got == (plan.canary_replicas, plan.stable_replicas), f"step {index + 1}"
    print(f"\nready (canary, stable) at canary 1, setWeight {weights}: {at_steps}")
    messages = [s.get("message", "") for s in body["status"]["steps"]]
    assert "weight 75% read back (3 canary pods, 1 stable)" in messages[3]

    started = revision(rollouts.of("r")[0])
    assert min_ready_total(deployments, started, end) >= N, "ready pods dipped below 3"

    created = pods_created(pods, existing)
    print(
        f"pods created per rollout (mode Shift, {'explicit' if routing else 'default'}): {created}"
    )
    # the canary's largest size; the stable: its promoted pod, then 2 more back to 3
    assert created == {"canary": 3, "stable": N}
    # mode Add would have started 27 canary pods for the 90 % step alone
    assert plan_weight("replicas", N, 90, 1).canary_replicas == 27

    stable = assert_stable_restored(kube_cluster, namespace)
    assert stable["status"]["readyReplicas"] == N
    assert stable_image(kube_cluster, namespace) == NEW
    # the stable went back to 3 ready pods before the canary was scaled to zero
    back = next(
        e for e in stable_events if replicas(e) == N and ready(e) == N and revision(e) > started
        and any(replicas(c) == 1 for c in stable_events if revision(c) < revision(e))
    )  # fmt: skip
    drained = next(e for e in canary_events if replicas(e) == 0)
    assert revision(back) < revision(drained)
    # written as updates (merge patches) by the operator's field manager, which is then
    # the field's manager (as after `kubectl scale`): a server-side apply of another
    # count meets a conflict naming it, the same count applies cleanly (docs/gitops.md)
    fields = kube_cluster.get_json("deployment", "web", "-n", namespace, "--show-managed-fields")[
        "metadata"
    ]["managedFields"]
    managers = {
        f["manager"]
        for f in fields
        if "f:replicas" in ((f.get("fieldsV1") or {}).get("f:spec") or {})
    }
    assert managers == {"canary-operator"}, fields
    applied = kube_cluster.kubectl(
        "apply", "--server-side", "--field-manager=gitops", "-n", namespace, "-f", "-",
        input=m.app("web", replicas=5, image=NEW), check=False,
    )  # fmt: skip
    assert applied.returncode != 0
    assert (
        'conflict with "canary-operator"' in applied.stderr and ".spec.replicas" in applied.stderr
    )
    same = kube_cluster.kubectl(
        "apply", "--server-side", "--field-manager=gitops", "-n", namespace, "-f", "-",
        input=m.app("web", replicas=N, image=NEW), check=False,
    )  # fmt: skip
    assert same.returncode == 0, same.stderr


@pytest.mark.parametrize("outcome", ["failure", "abort"])
def test_a_failed_or_aborted_shift_run_restores_the_stable(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, outcome: str
) -> None:
    start_app(kube_cluster, namespace)
    existing = pod_uids(kube_cluster, namespace)
    last = m.job_test("broken", fail=True) if outcome == "failure" else {"pause": {}}
    steps = [{"canary": {"replicas": 1}}, {"setWeight": 60}, last]
    with (
        Watch(kube_cluster, namespace, "deployments") as deployments,
        Watch(kube_cluster, namespace, "pods") as pods,
    ):
        kube_cluster.apply(m.rollout("r", steps, trafficRouting=SHIFT), namespace)
        shifted = plan_shift(N, 60, 1)
        scaled = deployments.wait(
            "web",
            lambda e: (
                replicas(e) == shifted.stable_replicas and ready(e) == shifted.stable_replicas
            ),
            timeout=120,
        )
        record = json.loads(scaled.object["metadata"]["annotations"][STABLE_REPLICAS])
        assert (record["original"], record["written"]) == (N, shifted.stable_replicas)
        if outcome == "abort":
            wait_phase(kube_cluster, namespace, "r", "Paused", timeout=60)
            kube_cluster.kubectl("patch", "cro", "r", "-n", namespace, "--type=merge",
                                 "-p", '{"spec":{"abort":true}}')  # fmt: skip
        body = wait_phase(kube_cluster, namespace, "r", TERMINAL, timeout=120)
        deployments.wait("web-canary", lambda e: e.type == "DELETED", timeout=30)
    assert body["status"]["phase"] == ("Failed" if outcome == "failure" else "Aborted")
    assert any(
        c["type"] == "CleanupVerified" and c["status"] == "True"
        for c in body["status"]["conditions"]
    )
    stable = assert_stable_restored(kube_cluster, namespace)
    assert stable["status"]["readyReplicas"] == N
    assert stable_image(kube_cluster, namespace) == OLD
    stable_events, canary_events = deployments.of("web"), deployments.of("web-canary")
    back = next(e for e in stable_events if revision(e) > revision(scaled) and ready(e) == N)
    drained = next(e for e in canary_events if replicas(e) == 0)
    assert revision(back) < revision(drained), "the canary lost its pods before the stable was back"
    assert min_ready_total(deployments, revision(scaled), revision(drained)) >= N
    created = pods_created(pods, existing)
    print(f"\npods created ({outcome}): {created}")
    # one canary pod, then the split of 60 %; the stable only regrows what it gave up
    assert created["canary"] == shifted.canary_replicas
    assert created["stable"] == N - shifted.stable_replicas


def test_the_record_on_the_target_survives_an_operator_kill(
    crd_installed: Cluster, namespace: str, operators: list[OperatorProcess], tmp_path: Path
) -> None:
    cluster = crd_installed
    start_app(cluster, namespace)
    first = OperatorProcess(cluster, namespace, tmp_path / "first.log").start()
    operators.append(first)
    steps = [{"canary": {"replicas": 1}}, {"setWeight": 90}, {"pause": {}}]
    cluster.apply(m.rollout("r", steps, trafficRouting=SHIFT), namespace)
    wait_phase(cluster, namespace, "r", "Paused", timeout=120)
    shifted = plan_shift(N, 90, 1)
    body = cluster.get_json("deployment", "web", "-n", namespace)
    assert body["spec"]["replicas"] == shifted.stable_replicas == 1
    first.kill()  # SIGKILL: nothing in memory survives
    cluster.kubectl("patch", "cro", "r", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"abort":true}}')  # fmt: skip
    second = OperatorProcess(cluster, namespace, tmp_path / "second.log").start()
    operators.append(second)
    end = wait_phase(cluster, namespace, "r", TERMINAL, timeout=120)
    assert end["status"]["phase"] == "Aborted"
    stable = assert_stable_restored(cluster, namespace)
    assert stable["status"]["readyReplicas"] == N
