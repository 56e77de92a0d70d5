"""The test cluster is a real one: nodes, controllers, scheduler, endpoints, CRDs.

Runs against the local control plane (hack/cluster/up.sh) or any cluster named
by CANARY_TEST_KUBECONFIG.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cluster import (
    CLUSTER_SCRIPTS,
    COMPONENTS,
    Cluster,
    _cmdline,
    pid_running,
    processes_referencing,
    wait_for,
)

pytestmark = pytest.mark.cluster

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
# Exits 0 at once on a real kubelet; kwok completes Job pods by itself.
BUSYBOX_IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.36.1-1"


def condition(obj: dict[str, Any], type_: str) -> str | None:
    for c in obj.get("status", {}).get("conditions") or []:
        if c.get("type") == type_:
            return str(c.get("status"))
    return None


def deployment(name: str, replicas: int, labels: dict[str, str]) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {"name": "app", "image": PAUSE_IMAGE, "ports": [{"containerPort": 80}]}
                        ]
                    },
                },
            },
        }
    )


def ready_pod_ips(cluster: Cluster, namespace: str, selector: str) -> set[str]:
    pods = cluster.get_json("pods", "-n", namespace, "-l", selector)["items"]
    return {
        p["status"]["podIP"]
        for p in pods
        if condition(p, "Ready") == "True"
        and p["status"].get("podIP")
        and not p["metadata"].get("deletionTimestamp")
    }


def test_at_least_three_nodes_ready(kube_cluster: Cluster) -> None:
    nodes = kube_cluster.get_json("nodes")["items"]
    ready = [n["metadata"]["name"] for n in nodes if condition(n, "Ready") == "True"]
    assert len(ready) >= 3, f"Ready nodes: {ready} of {[n['metadata']['name'] for n in nodes]}"


def test_deployment_becomes_available_with_ready_pods(
    kube_cluster: Cluster, namespace: str
) -> None:
    kube_cluster.apply(deployment("web", 3, {"app": "web"}), namespace)

    def available() -> dict[str, Any] | None:
        d = kube_cluster.get_json("deployment", "web", "-n", namespace)
        s = d.get("status", {})
        ok = (
            condition(d, "Available") == "True"
            and s.get("readyReplicas") == 3
            and s.get("availableReplicas") == 3
            and s.get("observedGeneration") == d["metadata"]["generation"]
        )
        return d if ok else None

    wait_for(available, timeout=60, message="deployment web to be Available with 3 ready pods")
    pods = kube_cluster.get_json("pods", "-n", namespace, "-l", "app=web")["items"]
    assert len(pods) == 3
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert condition(pod, "Ready") == "True"
        assert pod["spec"].get("nodeName"), "pod was not scheduled"
        assert pod["status"].get("podIP")


def test_job_completes(kube_cluster: Cluster, namespace: str) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "run", "image": BUSYBOX_IMAGE, "command": ["true"]}],
                }
            },
        },
    }
    kube_cluster.apply(json.dumps(job), namespace)

    def finished() -> dict[str, Any] | None:
        j = kube_cluster.get_json("job", "once", "-n", namespace)
        return j if "True" in (condition(j, "Complete"), condition(j, "Failed")) else None

    done = wait_for(finished, timeout=60, message="job once to finish")
    assert done is not None
    assert condition(done, "Complete") == "True", done.get("status")
    assert done["status"].get("succeeded") == 1


def test_service_endpointslice_lists_pod_ips(kube_cluster: Cluster, namespace: str) -> None:
    kube_cluster.apply(deployment("api", 2, {"app": "api"}), namespace)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "api"},
        "spec": {"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": 80}]},
    }
    kube_cluster.apply(json.dumps(service), namespace)

    def slice_ips_match_pods() -> bool:
        pods = ready_pod_ips(kube_cluster, namespace, "app=api")
        slices = kube_cluster.get_json(
            "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=api"
        )["items"]
        ips = {
            addr
            for s in slices
            for ep in s.get("endpoints") or []
            if (ep.get("conditions") or {}).get("ready")
            for addr in ep["addresses"]
        }
        return len(pods) == 2 and ips == pods

    wait_for(slice_ips_match_pods, timeout=60, message="EndpointSlice of api to list the 2 pod IPs")
    svc = kube_cluster.get_json("service", "api", "-n", namespace)
    assert svc["spec"]["clusterIP"] not in ("", "None")


def test_gateway_api_crds_installed(kube_cluster: Cluster) -> None:
    kube_cluster.kubectl("get", "crd", "httproutes.gateway.networking.k8s.io")
    crd = kube_cluster.get_json("crd", "httproutes.gateway.networking.k8s.io")
    assert condition(crd, "Established") == "True"
    served = {v["name"] for v in crd["spec"]["versions"] if v.get("served")}
    assert "v1" in served


# --------------------------------------------------------------------------- up.sh / down.sh


def _up(state: Path, bin_dir: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CLUSTER_OWNER_PID"}
    env.update(CLUSTER_BIN_DIR=str(bin_dir), CLUSTER_NODES="1", **extra_env)
    return subprocess.run(
        [str(CLUSTER_SCRIPTS / "up.sh"), str(state)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _down(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLUSTER_SCRIPTS / "down.sh"), str(state)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _recorded_pids(state: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text().strip()) for p in (state / "pids").glob("*.pid")}


@pytest.fixture
def owner_process() -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in for a test session that owns a cluster (CLUSTER_OWNER_PID)."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait(timeout=10)


def test_down_stops_every_process_of_a_second_cluster(
    cluster_bin_dir: Path, tmp_path: Path, owner_process: subprocess.Popen[bytes]
) -> None:
    state = tmp_path / "second"
    try:
        up = _up(state, cluster_bin_dir, CLUSTER_OWNER_PID=str(owner_process.pid))
        assert up.returncode == 0, up.stderr
        pids = _recorded_pids(state)
        assert set(COMPONENTS) | {"watchdog"} <= set(pids), pids
        assert all(pid_running(p) for p in pids.values()), pids

        second = Cluster(state / "kubeconfig", cluster_bin_dir, str(cluster_bin_dir / "kubectl"))
        nodes = second.get_json("nodes")["items"]
        assert [condition(n, "Ready") for n in nodes] == ["True"]

        again = _up(state, cluster_bin_dir)
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stdout
        assert _recorded_pids(state) == pids

        down = _down(state)
        assert down.returncode == 0, down.stderr
        assert not state.exists()
        # down.sh returns only once its processes are gone: no waiting here.
        survivors = {n: p for n, p in pids.items() if pid_running(p)}
        assert survivors == {}, {n: _cmdline(p) for n, p in survivors.items()}
        assert processes_referencing(state) == []
    finally:
        if state.exists():
            _down(state)


def test_watchdog_stops_cluster_when_owner_dies(
    cluster_bin_dir: Path, tmp_path: Path, owner_process: subprocess.Popen[bytes]
) -> None:
    state = tmp_path / "owned"
    try:
        up = _up(state, cluster_bin_dir, CLUSTER_OWNER_PID=str(owner_process.pid))
        assert up.returncode == 0, up.stderr
        pids = _recorded_pids(state)

        owner_process.kill()
        owner_process.wait(timeout=10)
        wait_for(
            lambda: not state.exists() and not any(pid_running(p) for p in pids.values()),
            timeout=60,
            message=f"the watchdog to stop {sorted(pids)} and remove {state}",
        )
        assert processes_referencing(state) == []
    finally:
        if state.exists():
            _down(state)
