"""bench_peer's Argo Rollouts: its controller (built once from its Go module, cached, by
hack/peer/argo-rollouts.sh), its process, and its Rollouts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from bench.peer_cluster import NEW, OLD, REPO, WEIGHTS, apply_list, free_port, parallel
from bench.peer_controller import Controller

from e2e.watch import Seen
from tests.harness.cluster import wait_for


def argo_binary() -> Path:
    """The rollouts-controller binary, built on first use (cached); its CRDs beside it."""
    built = subprocess.run(
        [str(REPO / "hack/peer/argo-rollouts.sh")], capture_output=True, text=True, check=True
    )
    return Path(built.stdout.strip().splitlines()[-1])


class ArgoRollouts(Controller):
    resource = "rollouts.argoproj.io"
    binary: Path

    # Served from the start (controller/healthz.go); its informers sync right after, in
    # well under a second here.
    ready_path = "/healthz"

    def command(self) -> list[str]:
        return [str(self.binary), "--namespaced", "--leader-elect=false", "--loglevel", "warn",
                "--metricsPort", str(free_port()), "--healthzPort", str(self.port)]  # fmt: skip

    def rollout_body(self, name: str, replicas: int, image: str, steps: bool) -> dict[str, Any]:
        labels = {"app": name}
        return {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "app", "image": image}]},
                },
                "strategy": {
                    "canary": {"steps": [{"setWeight": w} for w in WEIGHTS] if steps else []}
                },
            },
        }

    def create_version_one(self, names: list[str], replicas: int, steps: bool = True) -> None:
        apply_list(
            self.cluster,
            self.namespace,
            [self.rollout_body(n, replicas, OLD, steps) for n in names],
            workers=4 if len(names) > 50 else 1,
        )

        def healthy() -> bool:
            items = self.cluster.get_json(self.resource, "-n", self.namespace)["items"]
            ready = {i["metadata"]["name"] for i in items if self._settled(i)}
            return set(names) <= ready

        wait_for(
            healthy,
            timeout=600 + len(names),
            interval=0.5 if len(names) <= 50 else 3.0,
            message="Argo rollouts healthy at 1.0",
        )

    @staticmethod
    def _settled(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        return (
            status.get("phase") == "Healthy"
            and str(status.get("observedGeneration")) == str(obj["metadata"].get("generation"))
            and bool(status.get("stableRS"))
            and status.get("stableRS") == status.get("currentPodHash")
        )

    def roll(self, name: str, steps: bool) -> None:
        patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": NEW}]
        self.cluster.kubectl(
            "patch", self.resource, name, "-n", self.namespace, "--type=json",
            "-p", json.dumps(patch),
        )  # fmt: skip

    def roll_many(self, names: list[str], steps: bool) -> None:
        # One patch per rollout (the update is the image): concurrently, so that "at
        # once" is not one kubectl after the other.
        parallel([lambda n=name: self.roll(n, steps) for name in names])

    def done(self, seen: Seen) -> bool:
        containers = seen.object["spec"]["template"]["spec"]["containers"]
        return containers[0]["image"] == NEW and self._settled(seen.object)
