"""The Spinnaker surfaces end to end: the waiter (`canary-operator wait`, as a Run Job
stage runs it) and the operator's read-only status endpoint (for a Webhook stage).

The waiter's output is read the way Spinnaker reads it: clouddriver's PropertyParser
rule (tests/harness/spinnaker.py) over the container log, stdout and stderr together.
Run Job manifests are deployed by clouddriver's rule (deploy_run_job)."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from canary_operator.api.models import parse_duration
from e2e import manifests as m
from e2e.conftest import (
    REPO,
    OperatorProcess,
    canary_objects,
    get_rollout,
    stable_image,
    wait_phase,
)
from e2e.identity import WAITER, free_port, run_cli, service_account_kubeconfig
from tests.harness.cluster import Cluster, wait_for
from tests.harness.spinnaker import extract_properties_from_log

pytestmark = pytest.mark.cluster

NEW = "registry.example.com/web:2.0"
CANARY = {"name": "start canary", "canary": {"replicas": 1}}
HOLD = {"name": "hold", "pause": {}}
PROMOTE = {"promote": {}}
# orca WaitOnJobCompletion's own timeout, used unless the stage sets stageTimeoutMs.
ORCA_RUN_JOB_TIMEOUT = 120 * 60


SPINNAKER = REPO / "manifests" / "spinnaker"
KEYS = ("phase", "reason", "failed_step", "failed_step_name", "message", "run")
# What the run deployed (m.rollout's container is `app`), and what is live after a success.
DEPLOYED = ("version", "version_label", "fingerprint", "image_app")
LIVE = ("live_version", "live_label", "live_rollout", "live_run")
NO_LIVE = dict.fromkeys(LIVE, "")


def properties(stdout: str, stderr: str = "") -> dict[str, str]:
    """The stage outputs Spinnaker gets from the waiter's container log (`kubectl logs`
    has both streams; the stderr progress lines come first here, they are older)."""
    found = extract_properties_from_log(stderr + stdout)
    return {key: found[key] for key in (*KEYS, *DEPLOYED, *LIVE) if key in found}


def deployed(props: dict[str, str]) -> dict[str, str]:
    return {key: props[key] for key in (*DEPLOYED, *LIVE)}


def fingerprint(cluster: Cluster, namespace: str, name: str) -> str:
    """The spec's fingerprint as the operator records it."""
    return str(get_rollout(cluster, namespace, name)["status"]["fingerprint"])


def waiter(
    cluster: Cluster,
    namespace: str,
    *args: str,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start the waiter now (it must wait for what happens next)."""
    return subprocess.Popen(
        [*WAITER, "-n", namespace, *args],
        env={**cluster.env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 150) -> tuple[int, dict[str, str], str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, properties(out, err), err


def test_waiter_succeeds_when_the_rollout_succeeds(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.app(), namespace)
    kube_cluster.apply(m.rollout("web-v001", [CANARY, m.job_test("smoke"), PROMOTE]), namespace)
    # Spinnaker names deployed manifests "kind name"; the waiter accepts that form.
    proc = waiter(kube_cluster, namespace, "canaryRollout web-v001")
    out, err = proc.communicate(timeout=150)
    assert proc.returncode == 0, err
    props = properties(out, err)
    assert props == {
        "phase": "Succeeded",
        "reason": "Succeeded",
        "failed_step": "",
        "failed_step_name": "",
        "message": "all steps passed",
        "run": "1",
        # what it deployed, and what the target runs now (status.live)
        "version": f"app={NEW}",
        "version_label": "web:2.0",
        "fingerprint": fingerprint(kube_cluster, namespace, "web-v001"),
        "image_app": NEW,
        "live_version": f"app={NEW}",
        "live_label": "web:2.0",
        "live_rollout": "web-v001",
        "live_run": "1",
    }
    # The image is a property line as well; `app=...` only fits the JSON line.
    assert f"SPINNAKER_PROPERTY_IMAGE_APP={NEW}\n" in out
    assert "SPINNAKER_PROPERTY_LIVE_LABEL=web:2.0\n" in out
    assert "SPINNAKER_PROPERTY_VERSION=" not in out
    assert "SPINNAKER_PROPERTY_LIVE_VERSION=" not in out
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
    assert props["phase"] == "Failed"
    assert props["reason"] == "StepFailed"
    assert props["failed_step"] == "2"
    assert props["failed_step_name"] == "smoke"
    assert props["image_app"] == NEW and props["version"] == f"app={NEW}"
    assert {key: props[key] for key in LIVE} == NO_LIVE  # nothing of it went live


def test_waiter_times_out_with_exit_2(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.app(), namespace)
    kube_cluster.apply(m.rollout("web-v001", [CANARY, HOLD, PROMOTE]), namespace)
    wait_phase(kube_cluster, namespace, "web-v001", "Paused")
    code, props, err = finish(waiter(kube_cluster, namespace, "web-v001", "--timeout", "2s"))
    assert code == 2
    assert props["phase"] == "Paused"
    assert props["reason"] == "Timeout"
    assert props["message"] == "not finished within 2s"
    assert "did not finish within 2s" in err
    assert props["image_app"] == NEW and props["live_version"] == ""


def test_waiter_errors_exit_2(
    kube_cluster: Cluster, namespace: str, crd_installed: Cluster
) -> None:
    result = run_cli(WAITER, kube_cluster, "-n", namespace, "ghost", "--timeout", "10s")
    assert result.returncode == 2
    props = properties(result.stdout, result.stderr)
    assert props["phase"] == "Unknown" and props["reason"] == "Error"
    # No rollout, no version: every key empty, and no container's image.
    assert "image_app" not in props
    assert {key: props[key] for key in (*DEPLOYED[:3], *LIVE)} == dict.fromkeys(
        (*DEPLOYED[:3], *LIVE), ""
    )
    # a message with quotes and no `=`: in the property line and the JSON document
    assert props["message"] == f'canaryrollout "ghost" not found in namespace "{namespace}"'
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
    assert body["status"]["live"]["version"] == f"app={NEW}"  # run 1's promotion
    code, props, _ = finish(waiter(kube_cluster, namespace, "web", "--timeout", "2s"))
    assert code == 2 and props["phase"] == "Pending", props
    # The version waited for is the new spec's; run 1's live version is not reported.
    assert props["image_app"] == "registry.example.com/web:3.0"
    assert {key: props[key] for key in LIVE} == NO_LIVE

    proc = waiter(kube_cluster, namespace, "web", "--timeout", "2m")
    operators.append(OperatorProcess(kube_cluster, namespace, tmp_path / "op2.log").start())
    code, props, err = finish(proc)
    assert code == 0, err
    assert props["phase"] == "Succeeded" and props["run"] == "2"
    assert stable_image(kube_cluster, namespace) == "registry.example.com/web:3.0"
    assert deployed(props) == {
        "version": "app=registry.example.com/web:3.0",
        "version_label": "web:3.0",
        "fingerprint": fingerprint(kube_cluster, namespace, "web"),
        "image_app": "registry.example.com/web:3.0",
        "live_version": "app=registry.example.com/web:3.0",
        "live_label": "web:3.0",
        "live_rollout": "web",
        "live_run": "2",
    }


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
    assert props["phase"] == "Superseded" and props["reason"] == "SpecChanged"
    assert props["message"] == "the spec was replaced by a newer version (generation 2)"
    # The version this pipeline deployed and waited for, not the one that replaced it.
    assert (props["image_app"], props["version_label"]) == (NEW, "web:2.0")
    assert {key: props[key] for key in LIVE} == NO_LIVE


def test_a_message_with_equals_signs_reaches_the_stage_outputs(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """`not finished within progressDeadlineSeconds=10`, and no failed step: both
    property lines would be dropped by clouddriver's parser (a value with `=`, an
    empty value); the JSON line carries them."""
    kube_cluster.apply(m.app(), namespace)
    steps = [CANARY, m.job_test("slow", duration="60s"), PROMOTE]
    kube_cluster.apply(m.rollout("web-v001", steps, progressDeadlineSeconds=10), namespace)
    proc = waiter(kube_cluster, namespace, "web-v001", "--timeout", "2m")
    out, err = proc.communicate(timeout=150)
    assert proc.returncode == 1, err
    for key in ("MESSAGE", "FAILED_STEP", "FAILED_STEP_NAME"):
        assert f"SPINNAKER_PROPERTY_{key}=" not in out  # would not survive the parser
    props = properties(out, err)
    assert props["reason"] == "ProgressDeadlineExceeded"
    assert props["message"] == "not finished within progressDeadlineSeconds=10"
    assert props["failed_step"] == "" and props["failed_step_name"] == ""


# ---------------------------------------------- Run Job manifests, as clouddriver


def deploy_run_job(cluster: Cluster, namespace: str, job: dict[str, Any]) -> str:
    """Deploy a Run Job (Manifest) stage's Job the way clouddriver does; its name.

    clouddriver's KubernetesRunJobOperation forces the recreate strategy on a Job
    without metadata.generateName; CanDeploy.deploy then creates a manifest that
    has generateName (`kubectl create`), and for recreate deletes the Job of that
    name (errors ignored) before applying it. (clouddriver-kubernetes
    .../op/job/KubernetesRunJobOperation.java, .../op/handler/CanDeploy.java)"""
    job = json.loads(json.dumps(job))
    job["metadata"]["namespace"] = namespace
    if job["metadata"].get("generateName"):
        created = cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(job))
        return str(json.loads(created.stdout)["metadata"]["name"])
    name = job["metadata"]["name"]
    cluster.kubectl("delete", "job", name, "-n", namespace, "--ignore-not-found", "--wait=true")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(job))
    return str(name)


def job_for(version: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """The stage's Job for one pipeline execution: its rollout version in the env."""
    job = json.loads(json.dumps(manifest))
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    env["CANARY_ROLLOUT"]["value"] = version
    return job


def rollout_of_job(cluster: Cluster, namespace: str, job_name: str) -> str:
    """What the Job Orca follows for an execution is waiting for (its env)."""
    job = cluster.get_json("job", job_name, "-n", namespace)
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    return str(next(e["value"] for e in env if e["name"] == "CANARY_ROLLOUT"))


def test_two_pipelines_wait_for_their_own_versions(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    """Two executions of the example pipeline, started together for two versions of
    one target: with the shipped Job (generateName) each gets its own Job, and each
    waiter exits with its own version's result."""
    pipeline = json.loads((SPINNAKER / "example-pipeline.json").read_text())
    manifest = pipeline["stages"][1]["manifest"]
    assert "name" not in manifest["metadata"] and manifest["metadata"]["generateName"]
    apply_waiter_rbac(kube_cluster, namespace, "waiter-rbac.yaml")
    kubeconfig = service_account_kubeconfig(
        kube_cluster, namespace, "canary-rollout-waiter", tmp_path / "waiter.kubeconfig"
    )
    kube_cluster.apply(m.app(), namespace)
    failing = [CANARY, m.job_test("smoke", fail=True), PROMOTE]
    kube_cluster.apply(m.rollout("web-v001", failing), namespace)
    newer = "registry.example.com/web:3.0"
    passing = [CANARY, m.job_test("smoke"), PROMOTE]
    kube_cluster.apply(m.rollout("web-v002", passing, image=newer), namespace)
    jobs = {
        v: deploy_run_job(kube_cluster, namespace, job_for(v, manifest))
        for v in ("web-v001", "web-v002")
    }
    assert jobs["web-v001"] != jobs["web-v002"]
    # Each waiter runs as its Job's container would: that Job's env, the waiter's identity.
    procs = {
        version: waiter(
            kube_cluster,
            namespace,
            "--timeout",
            "3m",
            env={
                "CANARY_ROLLOUT": rollout_of_job(kube_cluster, namespace, job),
                "KUBECONFIG": str(kubeconfig),
            },
        )
        for version, job in jobs.items()
    }
    results = {version: finish(proc, timeout=240) for version, proc in procs.items()}
    code, props, err = results["web-v001"]
    assert code == 1, err
    assert (props["phase"], props["reason"], props["failed_step_name"]) == (
        "Failed",
        "StepFailed",
        "smoke",
    )
    # Each reports the version it deployed; only the one that succeeded a live one.
    assert (props["image_app"], props["live_version"]) == (NEW, "")
    code, props, err = results["web-v002"]
    assert code == 0, err
    assert (props["phase"], props["reason"]) == ("Succeeded", "Succeeded")
    assert (props["image_app"], props["version_label"]) == (newer, "web:3.0")
    assert (props["live_version"], props["live_rollout"]) == (f"app={newer}", "web-v002")
    # Orca follows each execution's Job by name: each still names its own version.
    assert {v: rollout_of_job(kube_cluster, namespace, j) for v, j in jobs.items()} == {
        "web-v001": "web-v001",
        "web-v002": "web-v002",
    }


def test_a_fixed_job_name_makes_pipelines_share_one_job(
    kube_cluster: Cluster, namespace: str, crd_installed: Cluster
) -> None:
    """The control: the previous manifests named the Job. clouddriver's recreate rule
    then deletes the first execution's Job and creates the second's under the same
    name, so the first execution's Orca follows the second's Job."""
    pipeline = json.loads((SPINNAKER / "example-pipeline.json").read_text())
    manifest = json.loads(json.dumps(pipeline["stages"][1]["manifest"]))
    del manifest["metadata"]["generateName"]
    manifest["metadata"]["name"] = "wait-canary-rollout"
    first = deploy_run_job(kube_cluster, namespace, job_for("web-v001", manifest))
    first_uid = kube_cluster.get_json("job", first, "-n", namespace)["metadata"]["uid"]
    second = deploy_run_job(kube_cluster, namespace, job_for("web-v002", manifest))
    assert first == second == "wait-canary-rollout"
    job = kube_cluster.get_json("job", first, "-n", namespace)
    assert job["metadata"]["uid"] != first_uid  # execution A's Job is gone
    assert rollout_of_job(kube_cluster, namespace, first) == "web-v002"


def apply_waiter_rbac(cluster: Cluster, namespace: str, file: str) -> None:
    docs = [d for d in yaml.safe_load_all((SPINNAKER / file).read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects") or []:
            subject["namespace"] = namespace
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def test_sigterm_with_abort_on_term_aborts_the_rollout(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    """The Run Job cancel path: the waiter's Job deleted means SIGTERM to its pod; with
    --abort-on-term (and the waiter-abort identity) the rollout is aborted and
    cleaned up. The read-only waiter identity cannot do it."""
    apply_waiter_rbac(kube_cluster, namespace, "waiter-abort-rbac.yaml")
    kubeconfig = service_account_kubeconfig(
        kube_cluster, namespace, "canary-rollout-waiter-abort", tmp_path / "abort.kubeconfig"
    )
    kube_cluster.apply(m.app(), namespace)
    kube_cluster.apply(m.rollout("web-v001", [CANARY, HOLD, PROMOTE]), namespace)
    wait_phase(kube_cluster, namespace, "web-v001", "Paused")
    env = {"KUBECONFIG": str(kubeconfig), "CANARY_ABORT_ON_TERM": "true"}
    proc = waiter(kube_cluster, namespace, "web-v001", "--timeout", "2m", env=env)
    assert proc.stderr is not None
    assert "phase=Paused" in proc.stderr.readline()  # it is following the rollout
    proc.send_signal(signal.SIGTERM)
    code, props, err = finish(proc, timeout=30)
    assert code == 143, err
    assert (props["phase"], props["reason"]) == ("Paused", "Terminated")
    assert props["message"] == "the waiter was stopped (SIGTERM); abort requested (spec.abort=true)"
    assert props["image_app"] == NEW and props["live_version"] == ""
    body = wait_phase(kube_cluster, namespace, "web-v001", "Aborted")
    assert body["spec"]["abort"] is True
    verified = next(c for c in body["status"]["conditions"] if c["type"] == "CleanupVerified")
    assert verified["status"] == "True"
    assert canary_objects(kube_cluster, namespace) == []
    assert stable_image(kube_cluster, namespace) == "registry.example.com/web:1.0"


def test_sigterm_without_the_flag_leaves_the_rollout_alone(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.app(), namespace)
    kube_cluster.apply(m.rollout("web-v001", [CANARY, HOLD, PROMOTE]), namespace)
    wait_phase(kube_cluster, namespace, "web-v001", "Paused")
    proc = waiter(kube_cluster, namespace, "web-v001", "--timeout", "2m")
    assert proc.stderr is not None
    assert "phase=Paused" in proc.stderr.readline()
    before = get_rollout(kube_cluster, namespace, "web-v001")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    after = get_rollout(kube_cluster, namespace, "web-v001")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert "abort" not in after["spec"]


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


def test_spinnaker_manifests_are_valid_and_their_timeouts_nest(
    kube_cluster: Cluster, namespace: str, crd_installed: Cluster
) -> None:
    """The shipped Run Job manifests and RBAC pass the API server's validation (the
    Jobs as clouddriver sends them: `create`, they have generateName), and the
    timeouts nest: waiter < activeDeadlineSeconds < the stage's timeout."""
    for name in ("waiter-rbac.yaml", "waiter-abort-rbac.yaml"):
        docs = [d for d in yaml.safe_load_all((SPINNAKER / name).read_text()) if d]
        for doc in docs:
            doc["metadata"]["namespace"] = namespace
            for subject in doc.get("subjects") or []:
                subject["namespace"] = namespace
        kube_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs))
    pipeline = json.loads((SPINNAKER / "example-pipeline.json").read_text())
    stage = pipeline["stages"][1]
    preconfigured = yaml.safe_load((SPINNAKER / "preconfigured-job.yml").read_text())
    [custom] = preconfigured["job"]["preconfigured"]["kubernetes"]
    jobs = {
        "waiter-job.yaml": (
            yaml.safe_load((SPINNAKER / "waiter-job.yaml").read_text()),
            stage["stageTimeoutMs"],  # its comment: the stage sets it, as the example
        ),
        "example-pipeline.json": (stage["manifest"], stage["stageTimeoutMs"]),
        # A preconfigured job cannot set stageTimeoutMs: Orca's 120 min applies.
        "preconfigured-job.yml": (custom["manifest"], None),
    }
    assert [s["type"] for s in pipeline["stages"]] == ["deployManifest", "runJobManifest"]
    for source, (job, stage_timeout_ms) in jobs.items():
        assert "name" not in job["metadata"] and job["metadata"]["generateName"], source
        job = json.loads(json.dumps(job))
        job["metadata"]["namespace"] = namespace
        kube_cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(job))
        container = job["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"]}
        waiter_timeout = parse_duration(env["CANARY_WAIT_TIMEOUT"]).total_seconds()
        deadline = job["spec"]["activeDeadlineSeconds"]
        # Orca reads stageTimeoutMs only as a number (StageExecution.getTimeout).
        assert stage_timeout_ms is None or isinstance(stage_timeout_ms, int), source
        orca_timeout = stage_timeout_ms / 1000 if stage_timeout_ms else ORCA_RUN_JOB_TIMEOUT
        assert waiter_timeout < deadline < orca_timeout, source
        assert job["spec"]["backoffLimit"] == 0, source
    assert container["name"] == stage["propertyFile"] == custom["propertyFile"]
