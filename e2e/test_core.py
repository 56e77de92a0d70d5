"""The core guarantees, end to end: a real API server, the operator as a separate
process, Job pods completed (or failed) by kwok.

Each test has its own namespace and its own operator watching only it.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from datetime import datetime
from typing import Any

import pytest

from e2e import manifests as m
from e2e.conftest import (
    EXAMPLES,
    TERMINAL,
    OperatorProcess,
    canary_objects,
    events_of,
    get_rollout,
    lease,
    phase_of,
    stable_image,
    wait_phase,
)
from tests.harness.cluster import Cluster, KubectlError, wait_for

pytestmark = pytest.mark.cluster

OLD, NEW = "registry.example.com/web:1.0", "registry.example.com/web:2.0"


def condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (body.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    raise AssertionError(f"no condition {type_} in {body.get('status')}")


def assert_clean(cluster: Cluster, ns: str, key: str = "web") -> None:
    """Invariant 3 (100 % stable, no canary left) and the lock released."""
    assert canary_objects(cluster, ns) == []
    assert not lease(cluster, ns, key)["spec"].get("holderIdentity")


def lease_history(cluster: Cluster, ns: str, key: str = "web") -> list[dict[str, Any]]:
    raw = lease(cluster, ns, key)["metadata"]["annotations"]["canary-operator.dev/history"]
    return list(json.loads(raw))


def handoff_seconds(before: dict[str, Any], after: dict[str, Any]) -> float:
    def parse(text: str) -> datetime:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")

    return (parse(after["acquired"]) - parse(before["released"])).total_seconds()


def assert_no_overlap(history: list[dict[str, Any]]) -> None:
    """Each holder released the lock before the next one acquired it."""
    ordered = sorted(history, key=lambda h: h["acquired"])
    for before, after in itertools.pairwise(ordered):
        assert "released" in before, f"{before['holder']} never released: {history}"
        assert before["released"] <= after["acquired"], f"overlap: {before} / {after}"


# ------------------------------------------------------------------- examples


def test_seed_example_succeeds(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "seed-pipeline.yaml"))
    # kubectl wait --for=condition=Completed is how users block on a rollout.
    kube_cluster.kubectl(
        "wait",
        "-n",
        namespace,
        "--for=condition=Completed",
        "cro/web-seed",
        "--timeout=120s",
        timeout=130,
    )
    body = get_rollout(kube_cluster, namespace, "web-seed")
    status = body["status"]
    assert status["phase"] == "Succeeded"
    assert condition(body, "Completed")["status"] == "True"
    assert condition(body, "Failed")["status"] == "False"
    assert condition(body, "CleanupVerified")["status"] == "True"
    assert condition(body, "Completed")["observedGeneration"] == body["metadata"]["generation"]
    assert [s["phase"] for s in status["steps"]] == ["Succeeded"] * 6
    assert stable_image(kube_cluster, namespace) == NEW
    assert status["weight"] == 0
    assert_clean(kube_cluster, namespace)
    reasons = [e["reason"] for e in events_of(kube_cluster, namespace, "web-seed")]
    # It took the free lock at once: no Queued Event says it waited (queuedAt keeps the
    # moment it asked).
    assert "Queued" not in reasons and status.get("queuedAt")
    for expected in (
        "LockAcquired",
        "Progressing",
        "StepSucceeded",
        "CleanupStarted",
        "CleanupFinished",
        "LockReleased",
        "Succeeded",
    ):
        assert expected in reasons, f"missing event {expected}: {reasons}"
    table = kube_cluster.kubectl("get", "cro", "-n", namespace).stdout
    assert table.split("\n")[0].split() == [
        "NAME",
        "TARGET",
        "PHASE",
        "STEP",
        "WEIGHT",
        "QUEUE",
        "LIVE",
        "AGE",
    ]
    assert "web-seed" in table and "Succeeded" in table and "6/6" in table


def test_failing_example_fails_and_cleans_up(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "failing-test.yaml"))
    body = wait_phase(kube_cluster, namespace, "web-failing", TERMINAL)
    status = body["status"]
    assert status["phase"] == "Failed"
    assert status["outcome"]["result"] == "StepFailed"
    assert status["outcome"]["failedStep"] == 4
    assert "step 4" in status["outcome"]["message"] and "ui" in status["outcome"]["message"]
    failed = condition(body, "Failed")
    assert failed["status"] == "True" and "step 4" in failed["message"]
    assert condition(body, "Completed")["status"] == "False"
    assert condition(body, "CleanupVerified")["status"] == "True"
    assert stable_image(kube_cluster, namespace) == OLD
    assert_clean(kube_cluster, namespace)
    # the user's cleanup Job ran even though a step failed (the finally)
    cleanup_jobs = kube_cluster.get_json(
        "jobs", "-n", namespace, "-l", "canary-operator.dev/purpose=cleanup"
    )["items"]
    assert len(cleanup_jobs) == 1
    assert cleanup_jobs[0]["status"].get("succeeded") == 1


# ----------------------------------------------------------------- exclusion


def test_next_rollout_waits_for_previous_cleanup(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.app("web") + "---\n" + m.app("other"), namespace)
    kube_cluster.apply(
        m.rollout(
            "a",
            [{"canary": {}}, m.job_test("broken", fail=True)],
            cleanup=[m.cleanup_job("slow-cleanup", duration="10s")],
        ),
        namespace,
    )
    wait_phase(kube_cluster, namespace, "a", "CleaningUp", timeout=60)
    kube_cluster.apply(m.rollout("b", [{"canary": {}}, m.job_test("ok")]), namespace)
    kube_cluster.apply(
        m.rollout("c", [{"canary": {}}, m.job_test("ok")], target="other", service="other"),
        namespace,
    )

    def b_queued_behind_a() -> dict[str, Any] | None:
        status = get_rollout(kube_cluster, namespace, "b").get("status") or {}
        queue = status.get("queue") or {}
        return status if status.get("phase") == "Queued" and queue.get("holder") == "a" else None

    b_status = wait_for(b_queued_behind_a, 30, message="b Queued behind a")
    assert b_status["queue"]["position"] == 1
    assert b_status["queueLabel"] == "#1 behind a"
    # Another target is not blocked by a's cleanup.
    c_done = wait_phase(kube_cluster, namespace, "c", "Succeeded", timeout=60)
    assert c_done["status"]["phase"] == "Succeeded"
    assert phase_of(kube_cluster, namespace, "a") == "CleaningUp", "a's cleanup is ~10 s long"

    a = wait_phase(kube_cluster, namespace, "a", "Failed", timeout=60)["status"]
    b = wait_phase(kube_cluster, namespace, "b", "Succeeded", timeout=60)["status"]
    assert b["startedAt"] >= a["completedAt"]
    assert b["steps"][0]["startedAt"] >= a["completedAt"]
    history = lease_history(kube_cluster, namespace)
    assert [h["holder"] for h in history] == ["a", "b"]
    assert_no_overlap(history)
    # Handoff is event-driven: b takes the lock within a second of a's release.
    assert handoff_seconds(history[0], history[1]) < 1.0, history
    assert_clean(kube_cluster, namespace)


def test_deleting_a_rollout_cleans_up_first(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.app("web"), namespace)
    kube_cluster.apply(
        m.rollout(
            "a",
            [{"canary": {}}, {"setWeight": 50}, {"pause": {}}],
            cleanup=[m.cleanup_job("slow-cleanup", duration="3s")],
        ),
        namespace,
    )
    body = wait_phase(kube_cluster, namespace, "a", "Paused", timeout=60)
    assert body["status"]["weight"] == 50
    assert len(canary_objects(kube_cluster, namespace)) > 0
    kube_cluster.apply(m.rollout("b", [{"canary": {}}]), namespace)
    wait_phase(kube_cluster, namespace, "b", "Queued", timeout=30)

    kube_cluster.kubectl("delete", "cro", "a", "-n", namespace, "--wait=false")
    # The finalizer keeps the object while its cleanup runs.
    deleting = wait_phase(kube_cluster, namespace, "a", "CleaningUp", timeout=30)
    assert deleting["metadata"].get("deletionTimestamp")
    assert deleting["status"]["outcome"]["result"] == "Deleted"
    kube_cluster.kubectl(
        "wait", "-n", namespace, "--for=delete", "cro/a", "--timeout=60s", timeout=70
    )
    history = lease_history(kube_cluster, namespace)
    assert history[0]["holder"] == "a" and "released" in history[0]
    wait_phase(kube_cluster, namespace, "b", "Succeeded", timeout=60)
    assert_no_overlap(lease_history(kube_cluster, namespace))
    assert_clean(kube_cluster, namespace)


def test_abort_through_spec(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.app("web"), namespace)
    kube_cluster.apply(
        m.rollout("a", [{"canary": {}}, {"setWeight": 30}, {"pause": {}}]), namespace
    )
    wait_phase(kube_cluster, namespace, "a", "Paused", timeout=60)
    kube_cluster.kubectl(
        "patch", "cro", "a", "-n", namespace, "--type=merge", "-p", '{"spec": {"abort": true}}'
    )
    body = wait_phase(kube_cluster, namespace, "a", TERMINAL, timeout=60)
    assert body["status"]["phase"] == "Aborted"
    assert body["status"]["outcome"]["result"] == "Aborted"
    assert condition(body, "CleanupVerified")["status"] == "True"
    assert condition(body, "Failed")["status"] == "True"
    assert stable_image(kube_cluster, namespace) == OLD
    assert_clean(kube_cluster, namespace)


def test_supersede_runs_only_the_newest(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.app("web"), namespace)
    kube_cluster.apply(
        m.rollout("running", [{"canary": {}}, {"pause": {}}], policy="Supersede"), namespace
    )
    wait_phase(kube_cluster, namespace, "running", "Paused", timeout=60)
    waiting = ["v1", "v2", "v3", "v4"]
    for name in waiting:
        kube_cluster.apply(
            m.rollout(
                name, [{"canary": {}}, m.job_test("ok")], policy="Supersede", image=f"web:{name}"
            ),
            namespace,
        )
    for name in waiting[:-1]:
        body = wait_phase(kube_cluster, namespace, name, "Superseded", timeout=30)
        # each is replaced by a newer one as soon as that one waits too
        assert "superseded by newer rollout v" in body["status"]["outcome"]["message"]
        assert "startedAt" not in body["status"]
    assert phase_of(kube_cluster, namespace, "v4") == "Queued"
    kube_cluster.kubectl(
        "annotate", "cro", "running", "-n", namespace, "canary-operator.dev/resume=2"
    )
    wait_phase(kube_cluster, namespace, "running", "Succeeded", timeout=60)
    wait_phase(kube_cluster, namespace, "v4", "Succeeded", timeout=60)
    assert [h["holder"] for h in lease_history(kube_cluster, namespace)] == ["running", "v4"]
    assert_clean(kube_cluster, namespace)


def test_reject_policy_fails_at_once(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.app("web"), namespace)
    kube_cluster.apply(m.rollout("holder", [{"canary": {}}, {"pause": {}}]), namespace)
    wait_phase(kube_cluster, namespace, "holder", "Paused", timeout=60)
    kube_cluster.apply(m.rollout("eager", [{"canary": {}}], policy="Reject"), namespace)
    body = wait_phase(kube_cluster, namespace, "eager", TERMINAL, timeout=30)
    assert body["status"]["phase"] == "Failed"
    assert body["status"]["outcome"]["result"] == "LockBusy"
    assert "holder" in body["status"]["outcome"]["message"]
    assert phase_of(kube_cluster, namespace, "holder") == "Paused"


def test_blocked_cleanup_keeps_the_lock_until_force_released(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.app("web"), namespace)
    kube_cluster.apply(
        m.rollout(
            "stuck",
            [{"canary": {}}, m.job_test("broken", fail=True)],
            cleanup=[m.cleanup_job("never-works", fail=True)],
            cleanupPolicy={"retryBackoffSeconds": 1, "maxBackoffSeconds": 2},
        ),
        namespace,
    )
    wait_phase(kube_cluster, namespace, "stuck", {"Progressing", "CleaningUp"}, timeout=30)
    kube_cluster.apply(m.rollout("next", [{"canary": {}}]), namespace)

    def blocked() -> dict[str, Any] | None:
        body = get_rollout(kube_cluster, namespace, "stuck")
        attempts = ((body.get("status") or {}).get("cleanup") or {}).get("attempts", 0)
        return body if attempts >= 2 else None

    body = wait_for(blocked, 60, message="the cleanup to fail twice")
    verified = condition(body, "CleanupVerified")
    assert (verified["status"], verified["reason"]) == ("False", "CleanupBlocked")
    assert "never-works" in verified["message"]
    warnings = [
        e for e in events_of(kube_cluster, namespace, "stuck") if e["reason"] == "CleanupBlocked"
    ]
    assert warnings and warnings[0]["type"] == "Warning"
    # The target is in an unknown state: nothing else may start.
    holder = f"{body['metadata']['uid']}/{body['status']['run']}"  # the run holds it
    assert lease(kube_cluster, namespace)["spec"]["holderIdentity"] == holder
    assert phase_of(kube_cluster, namespace, "next") == "Queued"

    kube_cluster.kubectl(
        "annotate", "cro", "stuck", "-n", namespace, "canary-operator.dev/force-release=true"
    )
    ended = wait_phase(kube_cluster, namespace, "stuck", TERMINAL, timeout=30)
    assert ended["status"]["phase"] == "Failed"
    assert condition(ended, "CleanupVerified")["reason"] == "ForceReleased"
    # The next holder cleans the target before its own first step.
    wait_phase(kube_cluster, namespace, "next", "Succeeded", timeout=60)
    assert_clean(kube_cluster, namespace)


def test_a_run_whose_lock_is_taken_does_nothing_more_to_the_target(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """A foreign writer takes the Lease from a paused run (a human's edit, another
    controller): the run ends LockLost, writes nothing more to the target, and its
    cleanup waits for the lock; given the lock back, it cleans up."""
    kube_cluster.apply(m.app("web"), namespace)
    kube_cluster.apply(
        m.rollout("robbed", [{"canary": {"replicas": 1}}, {"pause": {}}, {"setWeight": 90}]),
        namespace,
    )
    wait_phase(kube_cluster, namespace, "robbed", "Paused", timeout=60)
    held = lease(kube_cluster, namespace)
    held["spec"]["holderIdentity"] = "someone-else"
    held["spec"]["leaseTransitions"] = int(held["spec"].get("leaseTransitions") or 0) + 1
    kube_cluster.kubectl("replace", "-f", "-", input=json.dumps(held))  # conditional (its RV)

    def lost() -> dict[str, Any] | None:
        body = get_rollout(kube_cluster, namespace, "robbed")
        outcome = (body.get("status") or {}).get("outcome") or {}
        return body if outcome.get("result") == "LockLost" else None

    body = wait_for(lost, 30, message="the run to end LockLost")
    assert body["status"]["phase"] == "CleaningUp"
    wait_for(
        lambda: (
            "cleanup waiting for lock"
            in (get_rollout(kube_cluster, namespace, "robbed")["status"].get("message") or "")
        ),
        30,
        message="the cleanup to wait for the lock",
    )
    # Nothing more was done to the target: the canary is as the run left it (its
    # cleanup may not touch it either), the stable as it was.
    canary = kube_cluster.get_json("deployment", "web-canary", "-n", namespace)
    assert canary["spec"]["replicas"] == 1
    assert "deletionTimestamp" not in canary["metadata"]
    stable = kube_cluster.get_json("deployment", "web", "-n", namespace)
    assert stable["spec"]["replicas"] == 3
    assert lease(kube_cluster, namespace)["spec"]["holderIdentity"] == "someone-else"

    taken = lease(kube_cluster, namespace)
    taken["spec"]["holderIdentity"] = None  # the foreign holder lets go
    kube_cluster.kubectl("replace", "-f", "-", input=json.dumps(taken))
    ended = wait_phase(kube_cluster, namespace, "robbed", TERMINAL, timeout=60)
    assert ended["status"]["phase"] == "Failed"
    assert ended["status"]["outcome"]["result"] == "LockLost"
    assert_clean(kube_cluster, namespace)


# -------------------------------------------------------------- crash safety


def test_operator_killed_mid_step_and_mid_cleanup(
    kube_cluster: Cluster,
    namespace: str,
    operators: list[OperatorProcess],
    operator: OperatorProcess,
    tmp_path: Any,
) -> None:
    kube_cluster.apply(m.app("web"), namespace)
    kube_cluster.apply(
        m.rollout(
            "a",
            [{"canary": {}}, {"setWeight": 25}, m.job_test("slow", duration="6s"), {"promote": {}}],
            cleanup=[m.cleanup_job("slow-cleanup", duration="6s")],
        ),
        namespace,
    )

    def running_step(index: int) -> bool:
        status = get_rollout(kube_cluster, namespace, "a").get("status") or {}
        return status.get("currentStep") == index and status["steps"][index]["phase"] == "Running"

    wait_for(lambda: running_step(2), 60, message="the slow test step running")
    step_started = get_rollout(kube_cluster, namespace, "a")["status"]["steps"][2]["startedAt"]
    operator.kill()
    replacement = OperatorProcess(kube_cluster, namespace, tmp_path / "op2.log").start()
    operators.append(replacement)
    wait_phase(kube_cluster, namespace, "a", "CleaningUp", timeout=60)
    replacement.kill()
    assert phase_of(kube_cluster, namespace, "a") == "CleaningUp"
    third = OperatorProcess(kube_cluster, namespace, tmp_path / "op3.log").start()
    operators.append(third)
    body = wait_phase(kube_cluster, namespace, "a", TERMINAL, timeout=90)
    assert body["status"]["phase"] == "Succeeded"
    assert condition(body, "CleanupVerified")["status"] == "True"
    assert stable_image(kube_cluster, namespace) == NEW
    # The step that was running when the operator died ran once, not twice: it was
    # never started anew (its start time is the one recorded before the kill), and it
    # was announced at most once (an Event follows the status write that records the
    # transition, so a kill right after that write may lose it, never double it).
    assert body["status"]["steps"][2]["startedAt"] == step_started
    assert body["status"]["steps"][2]["phase"] == "Succeeded"
    started_events = [
        e
        for e in events_of(kube_cluster, namespace, "a")
        if e["reason"] == "StepStarted" and "step 3/" in e["message"]
    ]
    assert len(started_events) <= 1
    assert_no_overlap(lease_history(kube_cluster, namespace))
    assert_clean(kube_cluster, namespace)


def test_two_operators_never_overlap_rollouts(
    kube_cluster: Cluster,
    namespace: str,
    operators: list[OperatorProcess],
    operator: OperatorProcess,
    tmp_path: Any,
) -> None:
    operators.append(OperatorProcess(kube_cluster, namespace, tmp_path / "op2.log").start())
    kube_cluster.apply(m.app("web"), namespace)
    names = ["r1", "r2", "r3"]
    for name in names:
        kube_cluster.apply(
            m.rollout(
                name, [{"canary": {}}, {"setWeight": 25}, m.job_test("t")], image=f"web:{name}"
            ),
            namespace,
        )
    bodies = [wait_phase(kube_cluster, namespace, n, "Succeeded", timeout=120) for n in names]
    spans = sorted((b["status"]["startedAt"], b["status"]["completedAt"]) for b in bodies)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, f"rollouts overlapped: {spans}"
    history = lease_history(kube_cluster, namespace)
    assert sorted(h["holder"] for h in history) == names
    assert_no_overlap(history)
    assert_clean(kube_cluster, namespace)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (
            {"images": [{"container": "app", "image": "x"}], "steps": [{"canary": {}}]},
            "spec.target",
        ),
        (
            {
                "target": {"deployment": "web"},
                "images": [{"container": "app", "image": "x"}],
                "steps": [{"setWeight": 150}],
            },
            "spec.steps[0].setWeight",
        ),
        (
            {"target": {"deployment": "web"}, "images": [{"container": "app", "image": "x"}]},
            "spec.steps",
        ),
        (
            {
                "target": {"deployment": "web"},
                "images": [{"container": "app", "image": "x"}],
                "steps": [],
            },
            "spec.steps",
        ),
        (
            {
                "target": {"deployment": "web"},
                "images": [{"container": "app", "image": "x"}],
                "steps": [{"teleport": {}}],
            },
            "spec.steps[0].teleport",
        ),
        (
            {
                "target": {"deployment": "web"},
                "images": [{"container": "app", "image": "x"}],
                "steps": [{"parallel": [{"parallel": [{"pause": {}}]}]}],
            },
            "spec.steps[0].parallel[0].parallel",
        ),
    ],
    ids=["no-target", "weight-150", "no-steps", "empty-steps", "unknown-kind", "nested-parallel"],
)
def test_invalid_specs_are_rejected_at_apply(
    crd_installed: Cluster, namespace: str, spec: dict[str, Any], field: str
) -> None:
    body = {
        "apiVersion": "canary-operator.dev/v1alpha1",
        "kind": "CanaryRollout",
        "metadata": {"name": "bad"},
        "spec": spec,
    }
    with pytest.raises(KubectlError) as err:
        crd_installed.apply(json.dumps(body), namespace)
    assert field in str(err.value)
    listed = crd_installed.kubectl("get", "cro", "-n", namespace, "-o", "name").stdout
    assert listed.strip() == ""


def test_missing_target_fails_cleanly(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.rollout("ghost", [{"canary": {}}], target="nope", service=None), namespace)
    body = wait_phase(kube_cluster, namespace, "ghost", TERMINAL, timeout=30)
    assert body["status"]["phase"] == "Failed"
    failed = condition(body, "Failed")
    assert failed["reason"] == "TargetNotFound" and "'nope'" in failed["message"]
    created = kube_cluster.kubectl(
        "get", "deployments,services,jobs,leases", "-n", namespace, "-o", "name"
    ).stdout.split()
    assert created == []
    assert not body["metadata"].get("finalizers")


# ------------------------------------------------------------- gateway API


def test_gateway_api_weights_and_reset(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.app("web") + "---\n" + m.http_route("web"), namespace)
    kube_cluster.apply(
        m.rollout(
            "gw",
            [{"canary": {}}, {"setWeight": 30}, {"pause": {}}, {"promote": {}}],
            gateway_route="web",
        ),
        namespace,
    )
    wait_phase(kube_cluster, namespace, "gw", "Paused", timeout=60)
    refs = kube_cluster.get_json("httproute", "web", "-n", namespace)["spec"]["rules"][0][
        "backendRefs"
    ]
    assert {(r["name"], r["weight"]) for r in refs} == {("web", 70), ("web-canary", 30)}
    # the stable Service must not reach canary pods under a real router
    endpoints = kube_cluster.get_json(
        "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=web"
    )["items"]
    canary_ips = {
        p["status"]["podIP"]
        for p in kube_cluster.get_json(
            "pods", "-n", namespace, "-l", "canary-operator.dev/role=canary"
        )["items"]
    }
    stable_ips = {a for s in endpoints for e in s.get("endpoints") or [] for a in e["addresses"]}
    assert canary_ips and not canary_ips & stable_ips

    kube_cluster.kubectl("annotate", "cro", "gw", "-n", namespace, "canary-operator.dev/resume=3")
    wait_phase(kube_cluster, namespace, "gw", "Succeeded", timeout=60)
    route = kube_cluster.get_json("httproute", "web", "-n", namespace)
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"group": "", "kind": "Service", "name": "web", "port": 80, "weight": 1}
    ]
    assert stable_image(kube_cluster, namespace) == NEW
    assert_clean(kube_cluster, namespace)


def test_kubectl_explain_documents_the_api(crd_installed: Cluster) -> None:
    out = crd_installed.kubectl("explain", "canaryrollout.spec.concurrency.policy").stdout
    assert "Supersede" in out
    with pytest.raises(subprocess.CalledProcessError):
        crd_installed.kubectl("explain", "canaryrollout.spec.nonsense")
