"""What every benchmark needs: a cluster (local, or $CANARY_TEST_KUBECONFIG), the CRD,
a fresh namespace and one operator process watching it; all gone afterwards."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from e2e.conftest import CRD, OperatorProcess  # noqa: E402
from tests.harness.cluster import (  # noqa: E402
    Cluster,
    LocalCluster,
    build_binaries,
    external_cluster,
)


@dataclass
class Bench:
    cluster: Cluster
    namespace: str
    operator: OperatorProcess


@contextmanager
def bench_cluster(operator_args: list[str] | None = None) -> Iterator[Bench]:
    local: LocalCluster | None = None
    external = os.environ.get("CANARY_TEST_KUBECONFIG")
    if external:
        cluster = external_cluster(Path(external))
    else:
        local = LocalCluster(Path(tempfile.mkdtemp(prefix="canary-bench-")) / "c", build_binaries())
        cluster = local.start()
    op: OperatorProcess | None = None
    ns = f"bench-{int(time.time())}"
    try:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        cluster.kubectl(
            "wait",
            "--for=condition=Established",
            "crd/canaryrollouts.canary-operator.dev",
            "--timeout=60s",
        )
        cluster.kubectl("create", "namespace", ns)
        op = OperatorProcess(
            cluster, ns, Path(tempfile.mkdtemp()) / "operator.log", args=operator_args
        ).start()
        yield Bench(cluster, ns, op)
    finally:
        if op:
            cluster.kubectl("delete", "cro", "--all", "-n", ns, "--wait=false", check=False)
            op.stop()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        if local:
            local.stop()
