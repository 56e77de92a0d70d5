"""The Spinnaker surfaces end to end: the waiter (`canary-operator wait`, as a Run Job
stage runs it) and the operator's read-only status endpoint (for a Webhook stage)."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import manifests as m
from e2e.conftest import REPO, OperatorProcess, get_rollout, stable_image, wait_phase
from e2e.identity import WAITER, free_port, run_cli
from tests.harness.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

NEW = "registry.example.com/web:2.0"
CANARY = {"name": "start canary", "canary": {"replicas": 1}}
HOLD = {"name": "hold", "pause": {}}
PROMOTE = {"promote": {}}


def properties(stdout: str) -> dict[str, str]:
    """SPINNAKER_PROPERTY_KEY=value lines, as Spinnaker reads them from the log."""
    found = {}
    for line in stdout.splitlines():
        if line.startswith("SPINNAKER_PROPERTY_"):
            key, _, value = line.removeprefix("SPINNAKER_PROPERTY_").partition("=")
            found[key] = value
    return found


def waiter(cluster: Cluster, namespace: str, *args: str) -> subprocess.Popen[str]:
    """Start the waiter now (it must wait for what happens next)."""
    return subprocess.Popen(
        [*WAITER, "-n", namespace, *args],
        env=cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 150) -> tuple[int, dict[str, str], str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, properties(out), err


def test_waiter_succeeds_when_the_rollout_succeeds(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.app(), namespace)
    kube_cluster.apply(m.rollout("web-v001", [CANARY, m.job_test("smoke"), PROMOTE]), namespace)
    # Spinnaker names deployed manifests "kind name"; the waiter accepts that form.
    code, props, err = finish(waiter(kube_cluster, namespace, "canaryRollout web-v001"))
    assert code == 0, err
    assert props == {
        "PHASE": "Succeeded",
        "REASON": "Succeeded",
        "FAILED_STEP": "",
        "FAILED_STEP_NAME": "",
        "MESSAGE": "all steps passed",
        "RUN": "1",
    }
    progress = [line for line in err.splitlines() if "web-v001: phase=" in line]
    assert progress and "phase=Succeeded" in progress[-1], err  # it followed the run
    assert stable_image(kube_cluster, namespace) == NEW


def test_waiter_fails_naming_the_failed_step(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.app(), namespace)
    steps = [CANARY, m.job_test("smoke", fail=True), PROMOTE]
    kube_cluster.apply(m.rollout("web-v001", steps), namespace)
    code, props, err = finish(waiter(kube_cluster, namespace, "web-v001", "--timeout", "2m"))
    assert code == 1, err
    assert props["PHASE"] == "Failed"
    assert props["REASON"] == "StepFailed"
    assert props["FAILED_STEP"] == "2"
    assert props["FAILED_STEP_NAME"] == "smoke"


def test_waiter_times_out_with_exit_2(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.app(), namespace)
    kube_cluster.apply(m.rollout("web-v001", [CANARY, HOLD, PROMOTE]), namespace)
    wait_phase(kube_cluster, namespace, "web-v001", "Paused")
    code, props, err = finish(waiter(kube_cluster, namespace, "web-v001", "--timeout", "2s"))
    assert code == 2
    assert props["PHASE"] == "Paused"
    assert props["REASON"] == "Timeout"
    assert "did not finish within 2s" in err


def test_waiter_errors_exit_2(
    kube_cluster: Cluster, namespace: str, crd_installed: Cluster
) -> None:
    result = run_cli(WAITER, kube_cluster, "-n", namespace, "ghost", "--timeout", "10s")
    assert result.returncode == 2
    props = properties(result.stdout)
    assert props["PHASE"] == "Unknown" and props["REASON"] == "Error"
    assert result.stderr.strip() == (
        f'error: canaryrollout "ghost" not found in namespace "{namespace}"'
    )


def test_waiter_is_generation_aware(
    kube_cluster: Cluster, namespace: str, operators: list[OperatorProcess], tmp_path: Path
) -> None:
    """A finished rollout whose spec changed is not done: the waiter waits for the
    new generation's run, however the previous one ended."""
    kube_cluster.apply(m.app(), namespace)
    first = OperatorProcess(kube_cluster, namespace, tmp_path / "op1.log").start()
    operators.append(first)
    kube_cluster.apply(m.rollout("web", [CANARY, PROMOTE]), namespace)
    wait_phase(kube_cluster, namespace, "web", "Succeeded")
    first.stop()
    kube_cluster.apply(
        m.rollout("web", [CANARY, PROMOTE], image="registry.example.com/web:3.0"), namespace
    )
    body = get_rollout(kube_cluster, namespace, "web")
    assert body["status"]["phase"] == "Succeeded"  # the old run's status is still there
    code, props, _ = finish(waiter(kube_cluster, namespace, "web", "--timeout", "2s"))
    assert code == 2 and props["PHASE"] == "Pending", props

    proc = waiter(kube_cluster, namespace, "web", "--timeout", "2m")
    operators.append(OperatorProcess(kube_cluster, namespace, tmp_path / "op2.log").start())
    code, props, err = finish(proc)
    assert code == 0, err
    assert props["PHASE"] == "Succeeded" and props["RUN"] == "2"
    assert stable_image(kube_cluster, namespace) == "registry.example.com/web:3.0"


def test_waiter_reports_a_replaced_spec(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """Without Spinnaker's versioned mode each deploy changes the same resource: the
    older pipeline's waiter must not report the newer version's result as its own."""
    kube_cluster.apply(m.app(), namespace)
    kube_cluster.apply(m.rollout("web", [CANARY, HOLD, PROMOTE]), namespace)
    wait_phase(kube_cluster, namespace, "web", "Paused")
    proc = waiter(kube_cluster, namespace, "web", "--timeout", "2m")
    # The waiter prints its first progress line once it follows the rollout.
    assert proc.stderr is not None
    first_line = proc.stderr.readline()
    assert "phase=Paused" in first_line
    kube_cluster.apply(
        m.rollout("web", [CANARY, PROMOTE], image="registry.example.com/web:3.0"), namespace
    )
    code, props, err = finish(proc)
    assert code == 1, err
    assert props["PHASE"] == "Superseded" and props["REASON"] == "SpecChanged"


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
            code = response.status
    except urllib.error.HTTPError as exc:
        body, code = exc.read().decode(), exc.code
    try:
        return code, json.loads(body)
    except ValueError:
        return code, body


def test_status_endpoint_metrics_and_probes(
    kube_cluster: Cluster, namespace: str, operators: list[OperatorProcess], tmp_path: Path
) -> None:
    port = free_port()
    op = OperatorProcess(
        kube_cluster,
        namespace,
        tmp_path / "op.log",
        args=["--http-port", str(port), "--http-host", "127.0.0.1"],
    ).start()
    operators.append(op)
    base = f"http://127.0.0.1:{port}"
    wait_for(
        lambda: _get(f"{base}/readyz")[0] == 200,
        30,
        ignore=(OSError,),
        message="the operator to be ready",
    )
    assert _get(f"{base}/healthz")[0] == 200

    kube_cluster.apply(m.app(), namespace)
    kube_cluster.apply(m.rollout("web-v001", [CANARY, HOLD, PROMOTE]), namespace)
    url = f"{base}/status/{namespace}/web-v001"
    wait_for(lambda: _get(url)[1].get("phase") == "Paused", 60, message="phase Paused")
    kube_cluster.kubectl(
        "annotate", "cro", "web-v001", "-n", namespace, "canary-operator.dev/resume=2"
    )
    code, document = wait_for(
        lambda: (r := _get(url))[1].get("phase") == "Succeeded" and r, 60, message="Succeeded"
    )
    assert code == 200
    assert document["done"] is True and document["reason"] == "Succeeded"
    assert _get(f"{base}/status/{namespace}/nope") == (
        404,
        {"phase": "NotFound", "name": "nope", "namespace": namespace},
    )
    code, text = _get(f"{base}/metrics")
    assert code == 200
    assert f'canary_operator_rollouts{{namespace="{namespace}",phase="Succeeded"}} 1' in text
    assert 'canary_operator_step_duration_seconds_count{kind="pause",result="Succeeded"} 1' in text
    assert f'canary_operator_lock_wait_seconds_count{{namespace="{namespace}"}} 1' in text
    assert "canary_operator_leader 1" in text


def test_log_format_json(
    kube_cluster: Cluster, namespace: str, operators: list[OperatorProcess], tmp_path: Path
) -> None:
    op = OperatorProcess(
        kube_cluster,
        namespace,
        tmp_path / "op.log",
        args=["--log-format", "json", "--http-port", "0"],
    ).start()
    operators.append(op)
    kube_cluster.apply(m.app(), namespace)
    kube_cluster.apply(m.rollout("web-v001", [CANARY, PROMOTE]), namespace)
    wait_phase(kube_cluster, namespace, "web-v001", "Succeeded")
    lines = [line for line in op.log().splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any("LockAcquired" in str(r.get("message")) for r in records)


def test_spinnaker_job_manifest_is_valid(
    kube_cluster: Cluster, namespace: str, crd_installed: Cluster
) -> None:
    """The shipped Run Job manifest and its RBAC pass the API server's validation."""
    spinnaker = REPO / "manifests" / "spinnaker"
    for name in ("waiter-rbac.yaml", "waiter-job.yaml"):
        docs = [d for d in yaml.safe_load_all((spinnaker / name).read_text()) if d]
        for doc in docs:
            doc["metadata"]["namespace"] = namespace
            for subject in doc.get("subjects") or []:
                subject["namespace"] = namespace
        kube_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs))
    pipeline = json.loads((spinnaker / "example-pipeline.json").read_text())
    types = [s["type"] for s in pipeline["stages"]]
    assert types == ["deployManifest", "runJobManifest"]
    job = pipeline["stages"][1]["manifest"]
    assert (
        job["spec"]["template"]["spec"]["containers"][0]["name"]
        == pipeline["stages"][1]["propertyFile"]
    )
