"""bench_peer's controller under test: its identity (a ServiceAccount matched by its own
FlowSchema, so the API server counts its requests apart), its process, its workloads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.peer_cluster import (
    REPO,
    Counters,
    ensure,
    free_port,
    metrics,
    process_cpu,
    sum_samples,
)

from e2e.identity import service_account_kubeconfig
from e2e.watch import Seen
from tests.harness.cluster import Cluster, wait_for


@dataclass
class Controller:
    """One controller under test: its identity, its process, its workloads."""

    name: str
    cluster: Cluster
    namespace: str
    workdir: Path
    kubeconfig: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0  # of its ready endpoint, chosen at each start

    @property
    def account(self) -> str:
        return f"bench-{self.name}"

    def setup_identity(self) -> None:
        """A ServiceAccount with cluster-admin, its kubeconfig, and a FlowSchema
        matching only it (so the API server counts its requests apart)."""
        c, ns, sa = self.cluster, self.namespace, self.account
        # Created or left as they are: a rerun against $CANARY_TEST_KUBECONFIG finds them.
        ensure(c, "namespace", ns)
        ensure(c, "serviceaccount", sa, "-n", ns)
        ensure(
            c,
            "clusterrolebinding",
            sa,
            "--clusterrole=cluster-admin",
            f"--serviceaccount={ns}:{sa}",
        )
        flow_schema = {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "FlowSchema",
            "metadata": {"name": sa},
            "spec": {
                "matchingPrecedence": 100,
                "priorityLevelConfiguration": {"name": "workload-high"},
                "distinguisherMethod": {"type": "ByUser"},
                "rules": [
                    {
                        "subjects": [
                            {
                                "kind": "ServiceAccount",
                                "serviceAccount": {"name": sa, "namespace": ns},
                            }
                        ],
                        "resourceRules": [
                            {
                                "verbs": ["*"],
                                "apiGroups": ["*"],
                                "resources": ["*"],
                                "clusterScope": True,
                                "namespaces": ["*"],
                            }
                        ],
                        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                    }
                ],
            },
        }
        c.apply(json.dumps(flow_schema))
        self.kubeconfig = service_account_kubeconfig(
            c, ns, sa, self.workdir / f"{sa}.kubeconfig", duration="12h"
        )
        # Its context namespace is the SA's namespace, where the workloads run.

    def counters(self) -> Counters:
        text = metrics(self.cluster)
        requests = sum_samples(
            text,
            "apiserver_flowcontrol_dispatched_requests_total",
            lambda labels: labels.get("flow_schema") == self.account,
        )
        pods = sum_samples(
            text,
            "apiserver_request_total",
            lambda labels: (
                labels.get("verb") == "POST"
                and labels.get("resource") == "pods"
                and labels.get("subresource", "") == ""
                and labels.get("code") == "201"
            ),
        )
        cpu = process_cpu(self.proc.pid) if self.proc and self.proc.poll() is None else 0.0
        return Counters(requests, pods, cpu)

    # -- process

    def command(self) -> list[str]:
        raise NotImplementedError

    #: Extra flags for preparing hundreds of rollouts (not measured): more at once.
    bulk_args: tuple[str, ...] = ()

    #: The path of the endpoint that answers 200 once the controller is ready to work.
    ready_path = "/"

    def start(self, extra: tuple[str, ...] = ()) -> None:
        """Start the controller and wait until its own endpoint says it is ready, so no
        measurement counts its start (the Python process's imports and cache sync take
        seconds, the Go binary's a moment: measuring from the spawn would add the
        difference to whichever rollout came first)."""
        log = (self.workdir / f"{self.name}.log").open("ab")
        env = dict(
            self.cluster.env(), KUBECONFIG=str(self.kubeconfig), POD_NAMESPACE=self.namespace
        )
        self.port = free_port()
        self.proc = subprocess.Popen(
            [*self.command(), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        log.close()
        url = f"http://127.0.0.1:{self.port}{self.ready_path}"

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.workdir / self.name}.log")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        wait_for(ready, timeout=120, interval=0.1, message=f"{self.name} ready at {url}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    @contextmanager
    def running(self, extra: tuple[str, ...] = ()) -> Iterator[None]:
        self.start(extra)
        try:
            yield
        finally:
            self.stop()

    # -- workloads

    resource = ""

    def create_version_one(self, names: list[str], replicas: int, steps: bool = True) -> None:
        """Everything a rollout of NEW needs, settled at OLD (and, where the rollout's
        steps live in the object, with or without the weight steps)."""
        raise NotImplementedError

    def roll(self, name: str, steps: bool) -> None:
        """Start the rollout of NEW on target `name` (with the weight steps, or none)."""
        raise NotImplementedError

    def roll_many(self, names: list[str], steps: bool) -> None:
        for name in names:
            self.roll(name, steps)

    def done(self, seen: Seen) -> bool:
        raise NotImplementedError

    def delete_all(self, timeout: int = 300) -> None:
        self.cluster.kubectl(
            "delete",
            self.resource,
            "--all",
            "-n",
            self.namespace,
            f"--timeout={timeout}s",
            timeout=timeout + 20,
        )
        self.cluster.kubectl(
            "delete",
            "deployments,services",
            "--all",
            "-n",
            self.namespace,
            f"--timeout={timeout}s",
            timeout=timeout + 20,
        )

    def list_objects(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.cluster.get_json(
            self.resource, "-n", self.namespace, timeout=300
        )["items"]
        return items

    def wait_all_done(self, names: list[str], timeout: float) -> None:
        """Polls the list (one request per round, whatever the count): for hundreds of
        rollouts, cheaper than a watch scanned per name."""
        wanted = set(names)

        def remaining() -> set[str]:
            now = time.monotonic()
            done = {
                o["metadata"]["name"]
                for o in self.list_objects()
                if self.done(Seen(0, now, "LISTED", o))
            }
            return wanted - done

        wait_for(
            lambda: not remaining(),
            timeout=timeout,
            interval=3.0,
            message=lambda: f"{self.name}: {len(remaining())} of {len(wanted)} not done",
        )
