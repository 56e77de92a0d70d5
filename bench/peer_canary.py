"""bench_peer's canary-operator: its process, and its rollouts (a CanaryRollout per
target, with or without the replicas router's mode named)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.peer_cluster import (
    NEW,
    WEIGHTS,
    app_objects,
    apply_list,
    wait_deployments_rolled_out,
)
from bench.peer_controller import Controller

from e2e.watch import Seen
from tests.harness.cluster import Cluster

#: canary-operator's replicas router modes that bench_peer measures: default names no
#: trafficRouting in the rollout (the default settings: mode Shift for a new rollout), Add
#: (the stable keeps its pods, the canary is added beside it), Shift (the stable scales
#: down as the canary scales up, as Argo Rollouts' basic canary does).
MODES = ("default", "shift", "add")


class CanaryOperator(Controller):
    resource = "canaryrollouts.canary-operator.dev"
    bulk_args = ("--workers", "32")
    # The replicas router's mode (Shift: the stable scales down); None: no trafficRouting
    # in the rollout, the default settings.
    replicas_mode: str | None = None

    ready_path = "/readyz"  # the work queue runs: caches synced

    def command(self) -> list[str]:
        return [sys.executable, "-m", "canary_operator.cli.main", "run", "-n", self.namespace,
                "--http-port", str(self.port)]  # fmt: skip

    def create_version_one(self, names: list[str], replicas: int, steps: bool = True) -> None:
        objects = [o for n in names for o in app_objects(n, replicas)]
        apply_list(self.cluster, self.namespace, objects, workers=4 if len(names) > 50 else 1)
        wait_deployments_rolled_out(
            self.cluster, self.namespace, names, timeout=300 + 0.5 * len(names)
        )

    def rollout_body(self, name: str, steps: bool) -> dict[str, Any]:
        weights: list[dict[str, Any]] = [{"setWeight": w} for w in WEIGHTS] if steps else []
        head: list[dict[str, Any]] = [{"canary": {"replicas": 1}}] if steps else []
        spec: dict[str, Any] = {
            "target": {"deployment": name, "service": name},
            "images": [{"container": "app", "image": NEW}],
            "steps": [*head, *weights, {"promote": {}}],
        }
        if self.replicas_mode is not None:
            spec["trafficRouting"] = {"replicas": {"mode": self.replicas_mode}}
        return {
            "apiVersion": "canary-operator.dev/v1alpha1",
            "kind": "CanaryRollout",
            "metadata": {"name": name},
            "spec": spec,
        }

    def roll(self, name: str, steps: bool) -> None:
        self.cluster.apply(json.dumps(self.rollout_body(name, steps)), self.namespace)

    def roll_many(self, names: list[str], steps: bool) -> None:
        # Hundreds (the idle workload) go in concurrent Lists: their order is moot there.
        bodies = [self.rollout_body(n, steps) for n in names]
        apply_list(self.cluster, self.namespace, bodies, workers=4 if len(names) > 50 else 1)

    def done(self, seen: Seen) -> bool:
        return seen.phase == "Succeeded"


def canary_operator(mode: str, cluster: Cluster, workdir: Path) -> CanaryOperator:
    """canary-operator with the replicas router's `mode` (one of MODES), in a namespace and
    as a ServiceAccount of its own, so that each mode's requests are counted apart."""
    ctl = CanaryOperator(f"canary-{mode}", cluster, f"peer-canary-{mode}", workdir)
    ctl.replicas_mode = None if mode == "default" else mode.title()
    return ctl
