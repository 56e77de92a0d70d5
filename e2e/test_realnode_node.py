"""The real node itself: traffic safety (guards, DNS) and a teardown that leaves nothing.

Skipped, loudly, where a real node cannot run (see tests/harness/realnode_fixtures.py).
"""

from __future__ import annotations

import time
from typing import Any

from e2e.realnode_manifests import dump, ready_endpoints, service_cluster_ip
from tests.harness.cluster import Cluster, wait_for
from tests.harness.realnode import (
    DEMO_IMAGE,
    NODE_IP,
    POD_PLACEMENT,
    RUNNER_IMAGE,
    RealNode,
    measure,
)


def _pod(name: str, image: str, command: list[str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image, "imagePullPolicy": "Never"}
    if command:
        container["command"] = command
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            **POD_PLACEMENT,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    }


def _pod_phase(cluster: Cluster, namespace: str, name: str) -> str:
    return str(cluster.get_json("pod", name, "-n", namespace).get("status", {}).get("phase", ""))


def _run_to_end(cluster: Cluster, namespace: str, name: str, shell: str) -> tuple[str, str]:
    cluster.apply(dump([_pod(name, RUNNER_IMAGE, ["sh", "-c", shell])]), namespace)
    phase = wait_for(
        lambda: (
            p if (p := _pod_phase(cluster, namespace, name)) in ("Succeeded", "Failed") else None
        ),
        120,
        interval=0.3,
        message=f"pod {name} to finish",
    )
    return phase, cluster.kubectl("logs", "-n", namespace, name).stdout


def test_pods_resolve_only_through_the_nodes_dns_and_cannot_leave_the_host(
    real_node: RealNode, kube_cluster: Cluster, namespace: str
) -> None:
    real_node.assert_guarded()
    drops_before = real_node.guard_drops().get("pod-to-uplink", 0)
    # 203.0.113.1 (TEST-NET-3) stands for any address off the host: without the
    # guard this SYN would follow the pod's default route to the host and its uplink.
    phase, log = _run_to_end(
        kube_cluster,
        namespace,
        "probe",
        "cat /etc/resolv.conf; "
        "nslookup kubernetes.default.svc.cluster.local; "
        "if nslookup example.com; then echo EXTERNAL-RESOLVED; fi; "
        "if timeout 3 nc 203.0.113.1 80 </dev/null; then echo OFF-HOST-REACHED; fi; "
        "echo done",
    )
    print(log)
    assert phase == "Succeeded", log
    resolvers = [line.split()[1] for line in log.splitlines() if line.startswith("nameserver")]
    assert resolvers == [NODE_IP], f"pod resolvers {resolvers}: only the node's CoreDNS"
    assert "10.96.0.1" in log, "kubernetes.default did not resolve through CoreDNS"
    assert "EXTERNAL-RESOLVED" not in log and "OFF-HOST-REACHED" not in log, log
    drops = real_node.guard_drops().get("pod-to-uplink", 0)
    assert drops > drops_before, f"the guard did not see the off-host attempt: {drops}"


def test_cluster_down_leaves_nothing_behind(
    real_node: RealNode, kube_cluster: Cluster, namespace: str
) -> None:
    """Run pods with traffic (veths, netns, overlay mounts, cgroups, rules, conntrack),
    stop the node, and check the host for every kind of leftover; then start it again
    for the tests that follow."""
    cluster = kube_cluster
    app = _pod("demo", f"{DEMO_IMAGE}:v1")
    app["spec"]["containers"][0]["ports"] = [{"containerPort": 8080, "name": "http"}]
    app["spec"]["containers"][0]["readinessProbe"] = {
        "httpGet": {"path": "/ready", "port": 8080},
        "periodSeconds": 1,
    }
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "demo"},
        "spec": {"selector": {"app": "demo"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    cluster.apply(dump([app, svc]), namespace)
    wait_for(
        lambda: ready_endpoints(cluster, namespace, "demo"), 120, interval=0.3, message="demo ready"
    )
    real_node.assert_guarded()
    ip, port = service_cluster_ip(cluster, namespace, "demo")
    m = measure(ip, port, 50)
    assert m.by_version == {"v1": 50}, m.describe()
    assert (
        _run_to_end(cluster, namespace, "client", "wget -S -O- http://demo/version")[0]
        == "Succeeded"
    )

    before = real_node.leftovers()
    assert before.processes and before.interfaces and before.mounts and before.netfilter, (
        f"the check would see nothing even while the node runs: {before}"
    )
    out = real_node.down()
    print(out)
    print(f"teardown took {real_node.down_seconds:.1f} s")
    left = real_node.leftovers()
    assert left.empty(), f"left behind after down.sh: {left}"

    t0 = time.monotonic()
    real_node.up()
    print(f"bring-up again took {time.monotonic() - t0:.1f} s")
    real_node.assert_guarded()
