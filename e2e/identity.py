"""Run things under another identity: a ServiceAccount's token in its own kubeconfig,
and the commands users type (`kubectl canary ...`, `canary-operator wait ...`)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.harness.cluster import Cluster

PLUGIN = [sys.executable, "-m", "canary_operator.cli.plugin"]
WAITER = [sys.executable, "-m", "canary_operator.cli.main", "wait"]


def service_account_kubeconfig(
    cluster: Cluster, namespace: str, account: str, path: Path, duration: str = "1h"
) -> Path:
    """A kubeconfig that authenticates as system:serviceaccount:NAMESPACE:ACCOUNT with a
    bound token (`kubectl create token`), pointing at the same API server."""
    token = cluster.kubectl(
        "create", "token", account, "-n", namespace, f"--duration={duration}"
    ).stdout.strip()
    admin: dict[str, Any] = yaml.safe_load(cluster.kubeconfig.read_text())
    contexts = {c["name"]: c["context"] for c in admin["contexts"]}
    current = contexts[admin["current-context"]]
    server = next(c for c in admin["clusters"] if c["name"] == current["cluster"])
    entry = dict(server["cluster"])
    if "certificate-authority" in entry:  # make a relative CA path absolute
        ca = Path(entry["certificate-authority"])
        entry["certificate-authority"] = str(
            ca if ca.is_absolute() else cluster.kubeconfig.parent / ca
        )
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "target", "cluster": entry}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [
            {
                "name": "sa",
                "context": {"cluster": "target", "user": account, "namespace": namespace},
            }
        ],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def run_cli(
    command: list[str],
    cluster: Cluster,
    *args: str,
    kubeconfig: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a command-line tool with the cluster's environment; never raises on exit codes."""
    env = cluster.env()
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run(
        [*command, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
