"""bench_peer's facts from the cluster (the API server's counters, a process's CPU and
RSS) and the helpers both controllers' workloads use (targets at 1.0, Lists, waits)."""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e import manifests
from tests.harness.cluster import Cluster, wait_for

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = [10, 20, 30, 40, 50, 60, 70, 80, 90]
OLD, NEW = "registry.example.com/web:1.0", "registry.example.com/web:2.0"


# ----------------------------------------------------------------------------- cluster facts


def metrics(cluster: Cluster) -> str:
    return cluster.kubectl("get", "--raw", "/metrics", timeout=60).stdout


def sum_samples(text: str, name: str, match: Callable[[dict[str, str]], bool]) -> float:
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$")
    for line in text.splitlines():
        found = pattern.match(line)
        if found is None:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', found.group(1)))
        if match(labels):
            total += float(found.group(2))
    return total


@dataclass(frozen=True)
class Counters:
    requests: float
    pods_created: float
    cpu: float

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            self.requests - other.requests,
            self.pods_created - other.pods_created,
            self.cpu - other.cpu,
        )


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def ensure(cluster: Cluster, *create: str) -> None:
    """`kubectl create *create`, or nothing if it exists (create's manifest, applied)."""
    manifest = cluster.kubectl("create", *create, "--dry-run=client", "-o", "yaml").stdout
    cluster.apply(manifest)


def parallel(calls: list[Callable[[], None]], workers: int = 8) -> None:
    """Run independent API calls (kubectl processes) a few at a time; re-raise the first
    failure."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def app_objects(name: str, replicas: int) -> list[dict[str, Any]]:
    """The target Deployment (at OLD) and its Service, as the e2e tests make them."""
    return [doc for doc in yaml.safe_load_all(manifests.app(name, replicas, OLD)) if doc]


def apply_list(
    cluster: Cluster, namespace: str, items: list[dict[str, Any]], workers: int = 1
) -> None:
    """kubectl apply, 200 objects a List. With workers > 1 the Lists go concurrently (the
    order of creation is then not the list's: only for objects whose order is moot)."""
    chunk = 200 if workers == 1 else max(1, min(200, -(-len(items) // workers)))

    def apply(part: list[dict[str, Any]]) -> None:
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": part})
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=body, timeout=600)

    parts = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    parallel([lambda part=part: apply(part) for part in parts], workers)


def wait_deployments_rolled_out(
    cluster: Cluster, namespace: str, names: list[str], timeout: float = 600
) -> None:
    """What `kubectl rollout status deployment/NAME` waits for, for all names with one
    list per round instead of one kubectl per Deployment (kubectl's rollout_status.go:
    observedGeneration caught up, all replicas updated, no old ones, all available)."""
    wanted = set(names)

    def rolled_out(d: dict[str, Any]) -> bool:
        spec, status = d.get("spec") or {}, d.get("status") or {}
        replicas = int(spec.get("replicas", 1))
        updated = int(status.get("updatedReplicas") or 0)
        return (
            int(status.get("observedGeneration") or 0) >= int(d["metadata"]["generation"])
            and updated >= replicas
            and int(status.get("replicas") or 0) <= updated
            and int(status.get("availableReplicas") or 0) >= updated
        )

    def remaining() -> set[str]:
        items = cluster.get_json("deployments", "-n", namespace, timeout=300)["items"]
        return wanted - {d["metadata"]["name"] for d in items if rolled_out(d)}

    wait_for(
        lambda: not remaining(),
        timeout=timeout,
        interval=1.0,
        message=lambda: f"Deployments rolled out in {namespace}: {sorted(remaining())[:5]}...",
    )
