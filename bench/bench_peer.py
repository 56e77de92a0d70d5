"""Side by side with Argo Rollouts on the same cluster, in one run.

Builds (once, cached: hack/peer/argo-rollouts.sh) Argo Rollouts' controller from its Go
module, starts a local cluster (or uses $CANARY_TEST_KUBECONFIG), and runs the same
workloads under each controller, one controller at a time, alternating which goes first:

  single      one rollout, setWeight 10..90 then promotion, 3 replicas, no traffic router:
              apply (canary-operator) / image patch (Argo) -> done
  concurrent  N rollouts of N targets at once: wall time
  idle        M finished rollouts; the controller restarted: API requests until it
              settles, and its peak RSS

For each it prints medians and min-max, and the ratio canary-operator / Argo
(below 1.0 means canary-operator is faster or cheaper). Per rollout it also counts:
  - API requests: each controller runs as its own ServiceAccount, matched by its own
    FlowSchema, so the API server's apiserver_flowcontrol_dispatched_requests_total
    counts exactly that controller's requests;
  - controller CPU (utime+stime of its process);
  - pods created (POSTs of pods, any client: the ReplicaSet controller creates them).

`--replicas-mode add|shift|both` picks canary-operator's replicas router mode (Add, the
default: the stable keeps its 3 pods and the canary is added beside it, 27 canary pods
at 90 %; Shift: the stable scales down as the canary scales up, as Argo's basic canary
does); `both` runs each mode as its own controller and prints a row per mode.

The step lists differ in form, not in work: canary-operator's rollout starts with an
explicit `canary` step (Argo creates the canary ReplicaSet implicitly at the first
setWeight) and ends with `promote` (Argo promotes after its last step).

Run by hand (`make bench-peer`); the machine is shared, so read ratios, not seconds.

    .venv/bin/python bench/bench_peer.py [--reps 3] [--concurrent 50] [--idle 1000]
        [--replicas-mode add|shift|both]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from e2e import manifests  # noqa: E402
from e2e.conftest import CRD  # noqa: E402
from e2e.identity import service_account_kubeconfig  # noqa: E402
from e2e.watch import Seen, Watch  # noqa: E402
from tests.harness.cluster import (  # noqa: E402
    Cluster,
    LocalCluster,
    build_binaries,
    external_cluster,
    wait_for,
)

WEIGHTS = [10, 20, 30, 40, 50, 60, 70, 80, 90]
OLD, NEW = "registry.example.com/web:1.0", "registry.example.com/web:2.0"


# ----------------------------------------------------------------------------- cluster facts


def _metrics(cluster: Cluster) -> str:
    return cluster.kubectl("get", "--raw", "/metrics", timeout=60).stdout


def _sum_samples(text: str, name: str, match: Callable[[dict[str, str]], bool]) -> float:
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------- controllers


@dataclass
class Controller:
    """One controller under test: its identity, its process, its workloads."""

    name: str
    cluster: Cluster
    namespace: str
    workdir: Path
    kubeconfig: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def account(self) -> str:
        return f"bench-{self.name}"

    def setup_identity(self) -> None:
        """A ServiceAccount with cluster-admin, its kubeconfig, and a FlowSchema
        matching only it (so the API server counts its requests apart)."""
        c, ns, sa = self.cluster, self.namespace, self.account
        c.kubectl("create", "namespace", ns)
        c.kubectl("create", "serviceaccount", sa, "-n", ns)
        c.kubectl(
            "create",
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
        text = _metrics(self.cluster)
        requests = _sum_samples(
            text,
            "apiserver_flowcontrol_dispatched_requests_total",
            lambda labels: labels.get("flow_schema") == self.account,
        )
        pods = _sum_samples(
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

    def start(self) -> None:
        log = (self.workdir / f"{self.name}.log").open("ab")
        env = dict(
            self.cluster.env(), KUBECONFIG=str(self.kubeconfig), POD_NAMESPACE=self.namespace
        )
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        log.close()

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
    def running(self) -> Iterator[None]:
        self.start()
        try:
            yield
        finally:
            self.stop()

    # -- workloads

    resource = ""

    def create_version_one(self, names: list[str], replicas: int) -> None:
        """Everything a rollout of NEW needs, settled at OLD."""
        raise NotImplementedError

    def roll(self, name: str, steps: bool) -> None:
        """Start the rollout of NEW on target `name` (with the weight steps, or none)."""
        raise NotImplementedError

    def roll_many(self, names: list[str], steps: bool) -> None:
        for name in names:
            self.roll(name, steps)

    def done(self, seen: Seen) -> bool:
        raise NotImplementedError

    def delete_all(self) -> None:
        self.cluster.kubectl(
            "delete", self.resource, "--all", "-n", self.namespace, "--timeout=300s", timeout=320
        )
        self.cluster.kubectl(
            "delete",
            "deployments,services",
            "--all",
            "-n",
            self.namespace,
            "--timeout=300s",
            timeout=320,
        )


def app_objects(name: str, replicas: int) -> list[dict[str, Any]]:
    """The target Deployment (at OLD) and its Service, as the e2e tests make them."""
    return [doc for doc in yaml.safe_load_all(manifests.app(name, replicas, OLD)) if doc]


def apply_list(cluster: Cluster, namespace: str, items: list[dict[str, Any]]) -> None:
    for start in range(0, len(items), 200):
        body = {"apiVersion": "v1", "kind": "List", "items": items[start : start + 200]}
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body), timeout=300)


class CanaryOperator(Controller):
    resource = "canaryrollouts.canary-operator.dev"
    replicas_mode = "Add"  # the replicas router's mode (Shift: the stable scales down)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "canary_operator.cli.main", "run", "-n", self.namespace,
                "--http-port", "0"]  # fmt: skip

    def create_version_one(self, names: list[str], replicas: int) -> None:
        apply_list(
            self.cluster, self.namespace, [o for n in names for o in app_objects(n, replicas)]
        )
        for name in names:
            self.cluster.kubectl(
                "rollout",
                "status",
                f"deployment/{name}",
                "-n",
                self.namespace,
                "--timeout=300s",
                timeout=320,
            )

    def rollout_body(self, name: str, steps: bool) -> dict[str, Any]:
        weights: list[dict[str, Any]] = [{"setWeight": w} for w in WEIGHTS] if steps else []
        head: list[dict[str, Any]] = [{"canary": {"replicas": 1}}] if steps else []
        return {
            "apiVersion": "canary-operator.dev/v1alpha1",
            "kind": "CanaryRollout",
            "metadata": {"name": name},
            "spec": {
                "target": {"deployment": name, "service": name},
                "images": [{"container": "app", "image": NEW}],
                "steps": [*head, *weights, {"promote": {}}],
                "trafficRouting": {"replicas": {"mode": self.replicas_mode}},
            },
        }

    def roll(self, name: str, steps: bool) -> None:
        self.cluster.apply(json.dumps(self.rollout_body(name, steps)), self.namespace)

    def roll_many(self, names: list[str], steps: bool) -> None:
        apply_list(self.cluster, self.namespace, [self.rollout_body(n, steps) for n in names])

    def done(self, seen: Seen) -> bool:
        return seen.phase == "Succeeded"


class ArgoRollouts(Controller):
    resource = "rollouts.argoproj.io"
    binary: Path

    def command(self) -> list[str]:
        return [str(self.binary), "--namespaced", "--leader-elect=false", "--loglevel", "warn",
                "--metricsPort", str(free_port()), "--healthzPort", str(free_port())]  # fmt: skip

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

    def create_version_one(self, names: list[str], replicas: int) -> None:
        apply_list(
            self.cluster,
            self.namespace,
            [self.rollout_body(n, replicas, OLD, steps=True) for n in names],
        )

        def healthy() -> bool:
            items = self.cluster.get_json(self.resource, "-n", self.namespace)["items"]
            ready = {i["metadata"]["name"] for i in items if self._settled(i)}
            return set(names) <= ready

        wait_for(healthy, timeout=600, interval=0.5, message="Argo rollouts healthy at 1.0")

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

    def done(self, seen: Seen) -> bool:
        containers = seen.object["spec"]["template"]["spec"]["containers"]
        return containers[0]["image"] == NEW and self._settled(seen.object)


# ----------------------------------------------------------------------------- workloads


@dataclass
class Sample:
    seconds: float
    per_rollout: Counters


def run_rollouts(ctl: Controller, names: list[str], replicas: int, steps: bool) -> Sample:
    """Targets at 1.0 first (not measured), then all rollouts to 2.0 at once (measured)."""
    ctl.create_version_one(names, replicas)
    with Watch(ctl.cluster, ctl.namespace, ctl.resource) as watch:
        # No wait for the watch to connect: it lists before it watches, so a change made
        # before it connected still arrives (as its current state).
        before = ctl.counters()
        started = time.monotonic()
        if len(names) == 1:
            ctl.roll(names[0], steps)
        else:
            ctl.roll_many(names, steps)
        ends = [
            watch.wait(name, lambda e: e.at >= started and ctl.done(e), timeout=1800).at
            for name in names
        ]
        after = ctl.counters()
    delta = after - before
    n = len(names)
    return Sample(
        max(ends) - started,
        Counters(delta.requests / n, delta.pods_created / n, delta.cpu / n),
    )


def settle(ctl: Controller, quiet: float = 5.0, timeout: float = 300) -> Counters:
    """Counters once the controller's request count has not moved for `quiet` seconds."""
    last = ctl.counters()
    since = time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(1.0)  # a sampling period of the benchmark, not synchronisation
        now = ctl.counters()
        if now.requests != last.requests:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    return last


def idle_restart(ctl: Controller, count: int) -> tuple[float, float]:
    """`count` finished rollouts (targets at 0 replicas, no steps); restart the
    controller; return (API requests until it settles, its peak RSS in MiB)."""
    names = [f"idle-{i}" for i in range(count)]
    with ctl.running():
        ctl.create_version_one(names, replicas=0)
        with Watch(ctl.cluster, ctl.namespace, ctl.resource) as watch:
            ctl.roll_many(names, steps=False)
            for name in names:
                watch.wait(name, ctl.done, timeout=3600)
    before = ctl.counters()
    with ctl.running():
        wait_for(lambda: ctl.counters().requests > before.requests, timeout=60,
                 message=f"{ctl.name} started talking to the API server")  # fmt: skip
        after = settle(ctl)
        assert ctl.proc is not None
        rss = peak_rss_mib(ctl.proc.pid)
        ctl.delete_all()
    return after.requests - before.requests, rss


# ----------------------------------------------------------------------------- report


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return (
        f"{fmt.format(statistics.median(values))} "
        f"({fmt.format(min(values))}-{fmt.format(max(values))})"
    )


def ratio(ours: list[float], theirs: list[float]) -> str:
    mine, peer = statistics.median(ours), statistics.median(theirs)
    return f"{mine / peer:.2f}x" if peer else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--skip", action="append", default=[],
                        choices=["single", "concurrent", "idle"])  # fmt: skip
    parser.add_argument(
        "--replicas-mode",
        choices=["add", "shift", "both"],
        default="add",
        help="canary-operator's replicas router mode: Add (the stable keeps its pods, the "
        "canary is added), Shift (the stable scales down as the canary scales up), or both, "
        "each run as its own controller beside Argo Rollouts",
    )
    args = parser.parse_args()
    modes = ["Add", "Shift"] if args.replicas_mode == "both" else [args.replicas_mode.title()]

    binary = Path(
        subprocess.run(
            [str(REPO / "hack/peer/argo-rollouts.sh")], capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    workdir = Path(tempfile.mkdtemp(prefix="canary-peer-"))
    local: LocalCluster | None = None
    external = os.environ.get("CANARY_TEST_KUBECONFIG")
    if external:
        cluster = external_cluster(Path(external))
    else:
        local = LocalCluster(workdir / "cluster", build_binaries())
        cluster = local.start()
    controllers: list[Controller] = []
    try:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        for crd in sorted(binary.parent.glob("*-crd.yaml")):
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        ours: list[CanaryOperator] = []
        for mode in modes:
            suffix = "" if mode == "Add" else f"-{mode.lower()}"
            variant = CanaryOperator(
                f"canary-operator{suffix}", cluster, f"peer-canary{suffix}", workdir
            )
            variant.replicas_mode = mode
            ours.append(variant)
        argo = ArgoRollouts("argo-rollouts", cluster, "peer-argo", workdir)
        argo.binary = binary
        controllers += [*ours, argo]
        for ctl in controllers:
            ctl.setup_identity()
        results: dict[str, dict[str, list[Sample]]] = {"single": {}, "concurrent": {}}

        def alternate(rep: int) -> list[Controller]:
            return controllers if rep % 2 == 0 else controllers[::-1]

        for workload, size in (("single", 1), ("concurrent", args.concurrent)):
            if workload in args.skip:
                continue
            for rep in range(args.reps):
                for ctl in alternate(rep):
                    names = [f"{workload[0]}{rep}-{i}" for i in range(size)]
                    with ctl.running():
                        sample = run_rollouts(ctl, names, replicas=3, steps=True)
                        ctl.delete_all()
                    results[workload].setdefault(ctl.name, []).append(sample)
                    print(
                        f"  {workload} rep {rep} {ctl.name}: {sample.seconds:.2f} s, "
                        f"{sample.per_rollout.requests:.0f} requests, "
                        f"{sample.per_rollout.cpu:.2f} s CPU, "
                        f"{sample.per_rollout.pods_created:.0f} pods per rollout",
                        flush=True,
                    )
        idle: dict[str, tuple[float, float]] = {}
        if "idle" not in args.skip:
            for ctl in (ours[0], argo):  # the replicas mode plays no part when idle
                idle[ctl.name] = idle_restart(ctl, args.idle)
                print(f"  idle {ctl.name}: {idle[ctl.name]}", flush=True)

        print(f"\nside by side, {args.reps} repetitions alternating A/B (median (min-max))")
        for variant in ours:
            print(f"  {variant.name}: replicas router mode {variant.replicas_mode}")
        print(f"{'workload':52} {'canary-operator':>20} {'argo-rollouts':>20} {'ratio':>7}")

        def row(label: str, pick: Callable[[Sample], float], workload: str, fmt: str) -> None:
            if workload not in results or not results[workload]:
                return
            b = [pick(s) for s in results[workload][argo.name]]
            for variant in ours:
                a = [pick(s) for s in results[workload][variant.name]]
                shown = label if len(ours) == 1 else f"{label} [{variant.replicas_mode}]"
                print(f"{shown:52} {spread(a, fmt):>20} {spread(b, fmt):>20} {ratio(a, b):>7}")

        row("single 10-step rollout: apply -> done (s)", lambda s: s.seconds, "single", "{:.2f}")
        row("  API requests per rollout", lambda s: s.per_rollout.requests, "single", "{:.0f}")
        row("  controller CPU per rollout (s)", lambda s: s.per_rollout.cpu, "single", "{:.2f}")
        row("  pods created per rollout", lambda s: s.per_rollout.pods_created, "single", "{:.0f}")
        row(
            f"{args.concurrent} rollouts at once: wall (s)",
            lambda s: s.seconds,
            "concurrent",
            "{:.1f}",
        )
        row("  API requests per rollout", lambda s: s.per_rollout.requests, "concurrent", "{:.0f}")
        row("  controller CPU per rollout (s)", lambda s: s.per_rollout.cpu, "concurrent", "{:.2f}")
        if idle:
            a, b = idle[ours[0].name], idle[argo.name]
            for label, i, fmt in (("API requests", 0, "{:.0f}"), ("peak RSS (MiB)", 1, "{:.1f}")):
                print(
                    f"{f'restart with {args.idle} idle: {label}':52} {fmt.format(a[i]):>20} "
                    f"{fmt.format(b[i]):>20} {a[i] / b[i]:>6.2f}x"
                )
        return 0
    finally:
        for started in controllers:
            started.stop()
        if local:
            local.stop()


if __name__ == "__main__":
    sys.exit(main())
