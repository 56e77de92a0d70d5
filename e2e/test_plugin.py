"""`kubectl canary`, end to end: every command against the local cluster with the
operator running, as a user types it (a separate process, the cluster's kubeconfig)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from e2e import manifests as m
from e2e.conftest import (
    OperatorProcess,
    canary_objects,
    get_rollout,
    lease,
    stable_image,
    wait_phase,
)
from e2e.identity import PLUGIN, run_cli, service_account_kubeconfig
from tests.harness.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

OLD, NEW = "registry.example.com/web:1.0", "registry.example.com/web:2.0"
CANARY = {"name": "start canary", "canary": {"replicas": 1}}
HOLD = {"name": "hold", "pause": {}}  # waits until resumed
PROMOTE = {"promote": {}}
Plugin = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def plugin(kube_cluster: Cluster, namespace: str) -> Plugin:
    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_cli(PLUGIN, kube_cluster, "-n", namespace, *args, timeout=timeout)

    return run


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stdout}{result.stderr}"
    return result.stdout


def status_of(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return dict(get_rollout(cluster, ns, name).get("status") or {})


def wait_at_step(cluster: Cluster, ns: str, name: str, step: int, phase: str = "Paused") -> None:
    """Until the rollout is in `phase` at 0-based step `step`."""

    def there() -> bool:
        status = status_of(cluster, ns, name)
        return status.get("phase") == phase and status.get("currentStep") == step

    wait_for(
        there,
        90,
        interval=0.3,
        message=lambda: f"{name} at step {step}: {status_of(cluster, ns, name)}",
    )


def test_list_status_and_lock_show_steps_queue_and_holder(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, plugin: Plugin
) -> None:
    kube_cluster.apply(m.app(), namespace)
    parallel = {"name": "checks", "parallel": [m.job_test("smoke"), m.job_test("api")]}
    kube_cluster.apply(m.rollout("first", [CANARY, parallel, HOLD, PROMOTE]), namespace)
    wait_at_step(kube_cluster, namespace, "first", 2)
    kube_cluster.apply(m.rollout("second", [CANARY, PROMOTE]), namespace)
    wait_phase(kube_cluster, namespace, "second", "Queued")
    wait_for(
        lambda: (
            (status_of(kube_cluster, namespace, "second").get("queue") or {}).get("holder")
            == "first"
        ),
        30,
        message="second to see first as holder",
    )

    listing = ok(plugin("list")).splitlines()
    assert listing[0].split() == [
        "NAME",
        "TARGET",
        "PHASE",
        "STEP",
        "WEIGHT",
        "QUEUE",
        "LIVE",
        "AGE",
    ]
    rows = {line.split()[0]: line for line in listing[1:]}
    assert set(rows) == {"first", "second"}
    assert "Paused" in rows["first"] and "3/4 hold" in rows["first"]
    assert "Queued" in rows["second"] and "#1 behind first" in rows["second"]

    status = ok(plugin("status", "first"))
    assert "Phase:       Paused  run 1" in status
    assert "Queue:       holding cro-lock-web (1 waiting)" in status
    lines = status.splitlines()
    assert any(line.strip().startswith("[x]  1. start canary") for line in lines), status
    assert any(line.strip().startswith("[x]  2. checks") for line in lines), status
    assert any(line.strip().startswith("[x] smoke") for line in lines), status  # parallel child
    assert any(line.strip().startswith("[x] api") for line in lines), status
    assert any(line.strip().startswith("[>]  3. hold") for line in lines), status
    assert any(line.strip().startswith("[ ]  4. promote") for line in lines), status
    assert "LockAcquired" in status  # last events
    assert "pause (until resumed)" in status

    waiting = ok(plugin("status", "second"))
    assert "position 1 of 1 for cro-lock-web, held by first (Paused)" in waiting
    assert "[ ]  1. start canary" in waiting

    lock = ok(plugin("lock", "web"))
    assert "Holder:     first (Paused)  token 1" in lock
    assert "Waiting:    1" in lock
    assert "1. second" in lock

    ok(plugin("resume", "first"))
    wait_phase(kube_cluster, namespace, "second", "Succeeded", timeout=120)
    assert status_of(kube_cluster, namespace, "first")["phase"] == "Succeeded"
    after = ok(plugin("lock", "web"))
    assert "Holder:     none (free; 2 acquisitions so far)" in after
    assert "Waiting:    none" in after
    history = [line for line in after.splitlines() if line.strip().startswith("token")]
    assert [h.split()[2] for h in history] == ["first", "second"]
    assert all("released 20" in h for h in history)


def test_watch_follows_to_the_end_and_exits_by_outcome(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, plugin: Plugin
) -> None:
    kube_cluster.apply(m.app(), namespace)
    kube_cluster.apply(m.rollout("good", [CANARY, m.job_test("smoke"), PROMOTE]), namespace)
    good = plugin("watch", "good", "--timeout", "2m")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "good finished: Succeeded" in good.stdout
    assert "step 3 promote: Succeeded" in good.stdout  # step transitions are printed

    kube_cluster.apply(
        m.rollout("bad", [CANARY, m.job_test("smoke", fail=True), PROMOTE]), namespace
    )
    bad = plugin("watch", "bad", "--timeout", "2m")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "bad finished: Failed (StepFailed" in bad.stdout
    assert "step 2 smoke: Failed" in bad.stdout


def test_pause_and_resume(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, plugin: Plugin
) -> None:
    kube_cluster.apply(m.app(), namespace)
    kube_cluster.apply(m.rollout("web-v1", [CANARY, HOLD, PROMOTE]), namespace)
    wait_at_step(kube_cluster, namespace, "web-v1", 1)

    assert "paused (spec.paused=true)" in ok(plugin("pause", "web-v1"))
    assert get_rollout(kube_cluster, namespace, "web-v1")["spec"]["paused"] is True

    def user_paused() -> bool:
        conditions = status_of(kube_cluster, namespace, "web-v1").get("conditions") or []
        return any(c["type"] == "Paused" and c["reason"] == "UserPaused" for c in conditions)

    wait_for(user_paused, 30, message="the Paused condition to say UserPaused")
    assert "Paused:      yes (spec.paused)" in ok(plugin("status", "web-v1"))

    resumed = ok(plugin("resume", "web-v1"))
    assert "spec.paused=false" in resumed and "pause step 2 released" in resumed
    body = get_rollout(kube_cluster, namespace, "web-v1")
    assert body["spec"]["paused"] is False
    assert body["metadata"]["annotations"]["canary-operator.dev/resume"] == "2@1"
    wait_phase(kube_cluster, namespace, "web-v1", "Succeeded")
    assert stable_image(kube_cluster, namespace) == NEW

    refused = plugin("pause", "web-v1")  # nothing to pause any more
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "error: canaryrollout/web-v1 is Succeeded; there is nothing to pause"
    )


def test_abort_cleans_up_and_keeps_stable(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, plugin: Plugin
) -> None:
    kube_cluster.apply(m.app(), namespace)
    kube_cluster.apply(m.rollout("web-v1", [CANARY, {"setWeight": 25}, HOLD, PROMOTE]), namespace)
    wait_at_step(kube_cluster, namespace, "web-v1", 2)
    assert canary_objects(kube_cluster, namespace)  # something to clean up

    assert "abort requested" in ok(plugin("abort", "web-v1"))
    body = wait_phase(kube_cluster, namespace, "web-v1", "Aborted")
    assert body["status"]["outcome"]["result"] == "Aborted"
    assert canary_objects(kube_cluster, namespace) == []
    assert stable_image(kube_cluster, namespace) == OLD
    assert "already finished (Aborted)" in ok(plugin("abort", "web-v1"))


def test_promote_skips_to_promotion(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, plugin: Plugin
) -> None:
    kube_cluster.apply(m.app(), namespace)
    # Step names are unique (the CRD refuses two alike): the second hold named apart.
    steps = [CANARY, HOLD, {"setWeight": 50}, {**HOLD, "name": "hold-again"}, PROMOTE]
    kube_cluster.apply(m.rollout("web-v1", steps), namespace)
    wait_at_step(kube_cluster, namespace, "web-v1", 1)

    promoted = ok(plugin("promote", "web-v1"))
    assert "run 1: skipping the remaining steps to promotion" in promoted
    annotations = get_rollout(kube_cluster, namespace, "web-v1")["metadata"]["annotations"]
    assert annotations["canary-operator.dev/promote"] == "1"
    body = wait_phase(kube_cluster, namespace, "web-v1", {"Succeeded", "Failed", "Aborted"})
    assert body["status"]["phase"] == "Succeeded", body["status"]
    assert stable_image(kube_cluster, namespace) == NEW
    assert canary_objects(kube_cluster, namespace) == []

    again = plugin("promote", "web-v1")
    assert again.returncode == 1
    assert "only a running rollout is promoted" in again.stderr


def test_retry_starts_a_new_run(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, plugin: Plugin
) -> None:
    kube_cluster.apply(m.app(), namespace)
    kube_cluster.apply(
        m.rollout("web-v1", [CANARY, HOLD, m.job_test("smoke", fail=True), PROMOTE]), namespace
    )
    wait_at_step(kube_cluster, namespace, "web-v1", 1)
    early = plugin("retry", "web-v1")  # only a finished rollout can be retried
    assert early.returncode == 1
    assert "retry starts a new run of a finished one" in early.stderr

    ok(plugin("resume", "web-v1"))
    wait_phase(kube_cluster, namespace, "web-v1", "Failed")
    assert "run 2 starts" in ok(plugin("retry", "web-v1"))
    # The new run stops at the pause step again: it really ran from the start.
    wait_for(
        lambda: (
            status_of(kube_cluster, namespace, "web-v1").get("run") == 2
            and status_of(kube_cluster, namespace, "web-v1").get("phase") == "Paused"
        ),
        60,
        message=lambda: f"run 2 paused: {status_of(kube_cluster, namespace, 'web-v1')}",
    )
    assert "Phase:       Paused  run 2" in ok(plugin("status", "web-v1"))
    ok(plugin("resume", "web-v1"))
    wait = run_cli(PLUGIN, kube_cluster, "-n", namespace, "wait", "web-v1", "--timeout", "2m")
    assert wait.returncode == 1, wait.stdout + wait.stderr
    assert "SPINNAKER_PROPERTY_RUN=2" in wait.stdout
    assert "SPINNAKER_PROPERTY_FAILED_STEP=3" in wait.stdout


def test_reset_cleans_a_target_left_inconsistent(
    kube_cluster: Cluster,
    namespace: str,
    operators: list[OperatorProcess],
    plugin: Plugin,
    tmp_path: Path,
) -> None:
    """A rollout that shifted traffic is force-deleted while no operator runs (its
    finalizer removed by hand): the HTTPRoute still sends half the traffic to a canary
    that is gone, and the lock names a holder that no longer exists. `reset` takes
    the lock over and puts the target back."""
    kube_cluster.apply(m.app() + "---\n" + m.http_route(), namespace)
    first = OperatorProcess(kube_cluster, namespace, tmp_path / "op1.log").start()
    operators.append(first)
    kube_cluster.apply(
        m.rollout("web-v1", [CANARY, {"setWeight": 50}, HOLD, PROMOTE], gateway_route="web"),
        namespace,
    )
    wait_at_step(kube_cluster, namespace, "web-v1", 2)
    first.kill()
    kube_cluster.kubectl(
        "patch",
        "cro",
        "web-v1",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"metadata": {"finalizers": None}}),
    )
    kube_cluster.kubectl("delete", "cro", "web-v1", "-n", namespace, "--wait=true")
    assert _canary_weight(kube_cluster, namespace) == 50  # traffic to a canary that is gone
    assert lease(kube_cluster, namespace)["spec"]["holderIdentity"]

    operators.append(OperatorProcess(kube_cluster, namespace, tmp_path / "op2.log").start())
    result = plugin("reset", "web", "--http-route", "web", "--service", "web", "--timeout", "2m")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reset of web: Succeeded; took the lock over from web-v1" in result.stdout
    assert "cleanup verified: True" in result.stdout
    assert _canary_weight(kube_cluster, namespace) == 0
    assert [r["name"] for r in _route_refs(kube_cluster, namespace)] == ["web"]
    assert canary_objects(kube_cluster, namespace) == []
    assert not lease(kube_cluster, namespace)["spec"].get("holderIdentity")
    resets = kube_cluster.get_json("cro", "-n", namespace, "-l", "canary-operator.dev/reset=true")[
        "items"
    ]
    assert len(resets) == 1
    spec = resets[0]["spec"]
    assert spec["trafficRouting"] == {"gatewayAPI": {"httpRoute": "web"}}
    assert spec["images"] == [{"container": "app", "image": OLD}]  # the stable's own image
    assert [s.get("promote") for s in spec["steps"]] == [None]
    assert stable_image(kube_cluster, namespace) == OLD


def _route_refs(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    route = cluster.get_json("httproute", "web", "-n", ns)
    return list(route["spec"]["rules"][0]["backendRefs"])


def _canary_weight(cluster: Cluster, ns: str) -> int:
    refs = _route_refs(cluster, ns)
    canary = sum(int(r.get("weight", 1)) for r in refs if r["name"] == "web-canary")
    total = sum(int(r.get("weight", 1)) for r in refs)
    return round(100 * canary / total) if total else 0


def test_clear_one_line_errors(
    kube_cluster: Cluster,
    namespace: str,
    operator: OperatorProcess,
    plugin: Plugin,
    tmp_path: Path,
) -> None:
    missing = plugin("status", "nope")
    assert missing.returncode == 1
    assert missing.stderr == f'error: canaryrollout "nope" not found in namespace "{namespace}"\n'
    assert plugin("abort", "nope").returncode == 1
    assert 'deployment "ghost" not found' in plugin("reset", "ghost").stderr

    nowhere = tmp_path / "nowhere.kubeconfig"
    nowhere.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "x",
                "clusters": [
                    {
                        "name": "x",
                        "cluster": {
                            "server": "https://127.0.0.1:1",
                            "insecure-skip-tls-verify": True,
                        },
                    }
                ],
                "users": [{"name": "x", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
            }
        )
    )
    unreachable = run_cli(PLUGIN, kube_cluster, "list", kubeconfig=nowhere, timeout=60)
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith(
        "error: cannot reach the Kubernetes API at https://127.0.0.1:1"
    )
    assert unreachable.stderr.count("\n") == 1

    kube_cluster.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    nobody = service_account_kubeconfig(
        kube_cluster, namespace, "nobody", tmp_path / "nobody.kubeconfig"
    )
    denied = run_cli(PLUGIN, kube_cluster, "list", kubeconfig=nobody)
    assert denied.returncode == 1
    assert denied.stderr.startswith("error: permission denied: ")
    assert 'cannot list resource "canaryrollouts"' in denied.stderr
    assert denied.stderr.count("\n") == 1
    denied_patch = run_cli(PLUGIN, kube_cluster, "abort", "x", kubeconfig=nobody)
    assert denied_patch.returncode == 1 and "permission denied" in denied_patch.stderr


def test_kubectl_finds_the_plugin(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """Installed as `kubectl-canary` on PATH, it is `kubectl canary`."""
    env = kube_cluster.env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    kube_cluster.apply(m.app(), namespace)
    kube_cluster.apply(m.rollout("web-v1", [CANARY, PROMOTE]), namespace)
    wait_phase(kube_cluster, namespace, "web-v1", "Succeeded")
    result = subprocess.run(
        [kube_cluster.kubectl_path, "canary", "list", "-n", namespace],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[:3] == ["web-v1", "web", "Succeeded"]
