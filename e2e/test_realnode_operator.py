"""The operator as shipped: its own image (hack/image/build.sh), the namespaced
install manifests, two replicas with leader election, on the real node; it runs the
seed example, and killing the leader pod mid-rollout hands over to the other replica,
which finishes the rollout.

Skipped, loudly, where a real node cannot run (see tests/harness/realnode_fixtures.py).
"""

from __future__ import annotations

import copy
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from e2e.conftest import REPO, get_rollout, wait_phase
from e2e.realnode_manifests import JobLogs, dump, real_example
from e2e.test_realnode_seed import _assert_all_stable, _resume, _wait_serving
from tests.harness.cluster import Cluster, unique_namespace_name, wait_for
from tests.harness.realnode import POD_PLACEMENT, RealNode

pytestmark = pytest.mark.needs_build("image")  # and the real node's, by its fixture
CRD = REPO / "crds" / "canaryrollouts.yaml"
BASE_NAME = "docker.io/library/canary-operator"
LEASE = "canary-operator-leader"


def _operator_image() -> tuple[str, str]:
    """(tag, archive) of the project's image; built once, cached by its inputs."""
    venv_python = REPO / ".venv" / "bin" / "python"
    env = dict(os.environ, PYTHON=str(venv_python if venv_python.exists() else "python3"))
    out = subprocess.run(
        [str(REPO / "hack" / "image" / "build.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )
    assert out.returncode == 0, f"hack/image/build.sh failed:\n{out.stderr[-4000:]}"
    fields = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    return fields["tag"], fields["archive"]


def _install_manifests(cluster: Cluster, system_ns: str, watched: str, image: str) -> str:
    rendered = cluster.kubectl("kustomize", str(REPO / "manifests" / "namespaced")).stdout
    rendered = rendered.replace("canary-operator-system", system_ns).replace("my-app", watched)
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for doc in docs:
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            pod.update(copy.deepcopy(POD_PLACEMENT))
            container = pod["containers"][0]
            container["image"] = image
            container["imagePullPolicy"] = "Never"
    return dump(docs)


@pytest.fixture
def system_namespace(crd_installed: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = unique_namespace_name(request.node.name, prefix="sys")
    yield name
    crd_installed.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _operator_pods(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = cluster.get_json(
        "pods", "-n", ns, "-l", "app.kubernetes.io/name=canary-operator"
    )["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _leader(cluster: Cluster, ns: str) -> str | None:
    lease = cluster.kubectl("get", "lease", LEASE, "-n", ns, "-o", "json", check=False)
    if lease.returncode != 0:
        return None
    holder = yaml.safe_load(lease.stdout).get("spec", {}).get("holderIdentity")
    return str(holder) if holder else None


def test_in_cluster_operator_runs_the_seed_and_hands_over_on_leader_kill(
    real_node: RealNode, crd_installed: Cluster, namespace: str, system_namespace: str
) -> None:
    cluster = crd_installed
    tag, archive = _operator_image()
    names = real_node.import_image(archive, BASE_NAME)
    assert f"{BASE_NAME}:{tag}" in names, names
    cluster.apply(
        _install_manifests(cluster, system_namespace, namespace, f"canary-operator:{tag}")
    )

    # Both replicas Ready: their probes (/healthz, /readyz) pass in the pod.
    wait_for(
        lambda: (
            len(pods := _operator_pods(cluster, system_namespace)) == 2 and all(map(_ready, pods))
        ),
        300,
        interval=1,
        message="two operator pods Ready",
    )
    first_leader = wait_for(lambda: _leader(cluster, system_namespace), 120, message="a leader")
    print(f"leader: {first_leader}")

    steps_with_hold: list[dict[str, Any]] | None = None
    docs = real_example("seed-pipeline.yaml", "v1", "v2")
    steps = docs[2]["spec"]["steps"]
    hold_index = 3  # after "canary tests", "setWeight 10": a pause to kill the leader in
    steps_with_hold = [*steps[:3], {"name": "hold", "pause": {}}, *steps[3:]]
    docs[2]["spec"]["steps"] = steps_with_hold
    cluster.apply(dump(docs[:2]), namespace)
    _wait_serving(cluster, namespace, 3)
    with JobLogs(cluster, namespace) as logs:
        cluster.apply(dump(docs[2:]), namespace)
        body = wait_for(
            lambda: (
                b
                if ((b := get_rollout(cluster, namespace, "web-seed")).get("status") or {}).get(
                    "currentStep"
                )
                == hold_index
                else None
            ),
            600,
            interval=0.5,
            message="the rollout to reach the hold step",
        )
        leader = _leader(cluster, system_namespace)
        assert leader, "no leader while a rollout runs"
        # The holder identity is "<pod name>_<random suffix>".
        leader_pod = leader.rsplit("_", 1)[0]
        assert any(
            p["metadata"]["name"] == leader_pod for p in _operator_pods(cluster, system_namespace)
        )
        cluster.kubectl(
            "delete", "pod", leader_pod, "-n", system_namespace, "--grace-period=0", "--force"
        )
        new_leader = wait_for(
            lambda: h if (h := _leader(cluster, system_namespace)) not in (None, leader) else None,
            120,
            interval=0.5,
            message=f"another replica to take the lead from {leader}",
        )
        print(f"leader {leader} killed; {new_leader} leads")
        assert not str(new_leader).startswith(leader_pod + "_")
        _resume(cluster, namespace, "web-seed", body)
        body = wait_phase(cluster, namespace, "web-seed", {"Succeeded", "Failed"}, 600)
        wait_for(lambda: len(logs.logs) >= 6, 30, message="the six test Jobs' logs")
    assert body["status"]["phase"] == "Succeeded", body["status"]
    for pod, log in logs.logs.items():
        assert logs.phases[pod] == "Succeeded" and "X-App-Version: v2" in log, log
    _assert_all_stable(real_node, cluster, namespace, "v2", "after the in-cluster rollout")


def test_spinnaker_waiter_job_runs_as_shipped(
    real_node: RealNode, crd_installed: Cluster, namespace: str, operator: Any
) -> None:
    """manifests/spinnaker/waiter-job.yaml with its read-only RBAC, from the project's
    image on the real node, waits for the seed rollout; its outputs are read from the
    pod log, as clouddriver reads them ("Capture output from: logs")."""
    cluster = crd_installed
    tag, archive = _operator_image()
    real_node.import_image(archive, BASE_NAME)
    spinnaker = REPO / "manifests" / "spinnaker"
    rbac = (spinnaker / "waiter-rbac.yaml").read_text().replace("my-app", namespace)
    cluster.apply(rbac, namespace)
    job = yaml.safe_load((spinnaker / "waiter-job.yaml").read_text())
    job["metadata"]["namespace"] = namespace
    pod = job["spec"]["template"]["spec"]
    pod.update(copy.deepcopy(POD_PLACEMENT))
    waiter = pod["containers"][0]
    waiter["image"] = f"canary-operator:{tag}"
    waiter["imagePullPolicy"] = "Never"
    for env in waiter["env"]:
        if env["name"] == "CANARY_ROLLOUT":
            env["value"] = "web-seed"
    docs = real_example("seed-pipeline.yaml", "v1", "v2")
    cluster.apply(dump(docs), namespace)
    created = cluster.kubectl("create", "-n", namespace, "-f", "-", "-o", "name", input=dump([job]))
    job_name = created.stdout.strip().split("/")[-1]

    def finished() -> str | None:
        status = cluster.get_json("job", job_name, "-n", namespace).get("status", {})
        for c in status.get("conditions") or []:
            if c["type"] in ("Complete", "Failed") and c["status"] == "True":
                return str(c["type"])
        return None

    result = wait_for(finished, 600, interval=1, message=f"the waiter Job {job_name} to finish")
    log = cluster.kubectl("logs", "-n", namespace, f"job/{job_name}").stdout
    print(log)
    assert result == "Complete", log
    assert get_rollout(cluster, namespace, "web-seed")["status"]["phase"] == "Succeeded"
    properties = dict(
        line.removeprefix("SPINNAKER_PROPERTY_").split("=", 1)
        for line in log.splitlines()
        if line.startswith("SPINNAKER_PROPERTY_")
    )
    assert properties.get("PHASE") == "Succeeded", properties
    config = next(
        line.removeprefix("SPINNAKER_CONFIG_JSON=")
        for line in log.splitlines()
        if line.startswith("SPINNAKER_CONFIG_JSON=")
    )
    assert yaml.safe_load(config)["phase"] == "Succeeded", config
