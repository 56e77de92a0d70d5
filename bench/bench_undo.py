"""Benchmark: `kubectl canary undo` on the real node, measured by the requests it serves.

On the local control plane with one real node (kubelet, containerd, runc, CNI:
docs/realnode.md) and one operator process, each repetition:

  1. deploys the demo app 1.0 (registry.local/canary-demo:v1, 3 replicas) and its
     Service;
  2. promotes 2.0 (:v2) through a CanaryRollout (canary 1 pod -> promote), and waits
     until every request through the Service is answered by 2.0;
  3. starts `kubectl canary undo <target>` as users run it (kubectl finding the
     kubectl-canary plugin on PATH) while requests go continuously through the
     Service's ClusterIP (100 a second, a fresh connection each), each recorded with
     the version that answered it (the app's X-App-Version header).

From the moment the command starts it prints:

  undo created  the undo rollout first seen by a watch (the plugin's start, its reads
                and its create)
  first 1.0     the first request answered by 1.0
  100 % 1.0     the send of the first request from which on every answer, until the
                load stops (at least --hold seconds later), came from 1.0
  plugin exit   `kubectl canary undo` returned (it waits for the undo's run)
  undo done     the undo rollout seen (a watch) Succeeded with CleanupVerified=True
  failed        requests sent from the start that failed (no answer, or an HTTP error)

in two configurations of the target's rolling update: `default` (no strategy:
maxSurge 25 %, maxUnavailable 25 %, so 1 new pod at a time with 3 replicas) and `fast`
(maxSurge 100 %, maxUnavailable 0: all of 1.0's pods start at once). Repetitions
alternate the order. Figures are medians (min-max) over --reps; printed, never
asserted: the machine's load decides the seconds.

    flock /tmp/canary-bench.lock .venv/bin/python bench/bench_undo.py [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from bench.harness import bench_cluster  # noqa: E402
from bench.undo_load import Load, Switch, switch  # noqa: E402

from e2e.conftest import wait_phase  # noqa: E402
from e2e.realnode_manifests import (  # noqa: E402
    dump,
    real_example,
    service_cluster_ip,
    wait_serving,
)
from e2e.watch import Seen, Watch  # noqa: E402
from tests.harness.cluster import Cluster, wait_for  # noqa: E402
from tests.harness.realnode import OWNER_FILE, RealNode, measure, unavailable_reason  # noqa: E402

OLD, NEW = "v1", "v2"  # the demo app's versions 1.0 and 2.0 (X-App-Version)
STEPS: list[dict[str, Any]] = [
    {"name": "start canary", "canary": {"replicas": 1}},
    {"name": "promote", "promote": {}},
]
STRATEGIES: dict[str, dict[str, Any] | None] = {
    "default": None,
    "fast": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "100%", "maxUnavailable": 0}},
}


def app_docs(name: str, replicas: int, strategy: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The seed example's Deployment, Service and rollout on the real node (demo app
    :v1, canary :v2), renamed to `name`, with STEPS and no cleanup Job."""
    docs = real_example("seed-pipeline.yaml", OLD, NEW, replicas=replicas, steps=STEPS)
    deployment, service, rollout = docs
    deployment["metadata"].update(name=name, labels={"app": name})
    deployment["spec"]["selector"] = {"matchLabels": {"app": name}}
    deployment["spec"]["template"]["metadata"]["labels"] = {"app": name}
    if strategy is not None:
        deployment["spec"]["strategy"] = strategy
    service["metadata"]["name"] = name
    service["spec"]["selector"] = {"app": name}
    rollout["metadata"]["name"] = f"{name}-v2"
    rollout["spec"]["target"] = {"deployment": name, "service": name}
    rollout["spec"].pop("cleanup", None)
    return docs


def settled(seen: Seen) -> bool:
    """The undo rollout Succeeded, its cleanup verified."""
    status = seen.object.get("status") or {}
    verified = any(
        c.get("type") == "CleanupVerified" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return status.get("phase") == "Succeeded" and verified


@dataclass
class Rep:
    config: str
    rep: int
    switch: Switch
    created: float | None
    plugin_exit: float | None
    plugin_rc: int | None
    undo_done: float | None
    image_after: str
    plugin_out: str


def plugin_env(cluster: Cluster) -> dict[str, str]:
    """kubectl and kubectl-canary on PATH, KUBECONFIG set: a user's shell."""
    env = cluster.env()
    env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    return env


def run_rep(cluster: Cluster, node: RealNode, ns: str, config: str, rep: int, args: Any) -> Rep:
    name = f"web-{config}-{rep}"
    try:
        return undo_once(cluster, node, ns, name, config, rep, args)
    finally:
        cluster.kubectl("delete", "cro", "-n", ns, "--all", "--wait=false", check=False)
        cluster.kubectl("delete", "deployment,service", name, "-n", ns, "--wait=false", check=False)


def undo_once(
    cluster: Cluster, node: RealNode, ns: str, name: str, config: str, rep: int, args: Any
) -> Rep:
    docs = app_docs(name, args.replicas, STRATEGIES[config])
    cluster.apply(dump(docs[:2]), ns)
    wait_serving(cluster, ns, args.replicas, name)
    cluster.apply(dump(docs[2:]), ns)
    wait_phase(cluster, ns, f"{name}-v2", "Succeeded", timeout=600)
    ip, port = service_cluster_ip(cluster, ns, name)
    node.assert_guarded()
    wait_for(
        lambda: measure(ip, port, 40).by_version == {NEW: 40},
        180,
        interval=0.5,
        message=f"every request through {name} answered by {NEW}",
    )
    out = Path(tempfile.mkstemp(prefix="bench-undo-", suffix=".out")[1])
    command = [cluster.kubectl_path, "canary", "-n", ns, "undo", name, "--timeout", "10m"]
    exit_at: float | None = None
    created: Seen | None = None
    done: Seen | None = None
    with Watch(cluster, ns, "canaryrollouts") as watch, Load(ip, port, OLD, args.rate) as load:
        time.sleep(1)  # the load steady before the command
        with out.open("w") as sink:
            t0 = time.monotonic()
            proc = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, env=plugin_env(cluster)
            )
            deadline = t0 + args.timeout
            while time.monotonic() < deadline:
                if exit_at is None and proc.poll() is not None:
                    exit_at = time.monotonic()
                if done is None:
                    seen = [e for e in watch.snapshot() if e.name.startswith(f"undo-{name}-")]
                    created = seen[0] if seen else None
                    done = next((e for e in seen if settled(e)), None)
                if exit_at is not None and done is not None and load.quiet_for() >= args.hold:
                    break
                time.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    answers = load.snapshot()
    target = cluster.get_json("deployment", name, "-n", ns)
    image = target["spec"]["template"]["spec"]["containers"][0]["image"]
    printed = out.read_text()
    out.unlink()
    return Rep(
        config,
        rep,
        switch(answers, t0, OLD),
        None if created is None else created.at - t0,
        None if exit_at is None else exit_at - t0,
        proc.returncode,
        None if done is None else done.at - t0,
        image.rsplit(":", 1)[-1],
        printed,
    )


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def describe(r: Rep) -> str:
    s = r.switch
    return (
        f"rep {r.rep} {r.config:<7} first 1.0 {seconds(s.first_wanted)}, 100 % 1.0 "
        f"{seconds(s.all_wanted)} (then {s.tail_seconds:.1f} s, {s.tail_requests} requests "
        f"all 1.0), undo created {seconds(r.created)}, plugin exit {seconds(r.plugin_exit)} "
        f"(rc {r.plugin_rc}), undo done {seconds(r.undo_done)}, "
        f"failed {s.failed} of {s.sent} {s.errors or ''}; "
        f"answers {s.by_version}; target on :{r.image_after}"
    )


def spread(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "-"
    missing = f", {len(values) - len(got)} missing" if len(got) < len(values) else ""
    return f"{statistics.median(got):.2f} s ({min(got):.2f}-{max(got):.2f}){missing}"


def report(reps: list[Rep], configs: list[str]) -> None:
    rows: list[tuple[str, Any]] = [
        ("undo rollout created (seen by a watch)", lambda r: r.created),
        ("first 1.0 answer", lambda r: r.switch.first_wanted),
        ("100 % on 1.0", lambda r: r.switch.all_wanted),
        ("plugin exit", lambda r: r.plugin_exit),
        ("undo Succeeded + CleanupVerified", lambda r: r.undo_done),
    ]
    print("\n| from `kubectl canary undo` start | " + " | ".join(configs) + " |")
    print("|---|" + "---|" * len(configs))
    for label, get in rows:
        cells = [spread([get(r) for r in reps if r.config == c]) for c in configs]
        print(f"| {label} | " + " | ".join(cells) + " |")
    failed = []
    for c in configs:
        mine = [r.switch for r in reps if r.config == c]
        failed.append(
            f"{sum(s.failed for s in mine)} of {sum(s.sent for s in mine)} ({len(mine)} reps)"
        )
    print("| requests failed (in all) | " + " | ".join(failed) + " |")


def uptime(label: str) -> None:
    out = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    print(f"uptime ({label}): {out}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--rate", type=float, default=100, help="requests a second, in all")
    p.add_argument("--hold", type=float, default=5, help="seconds all 1.0 before stopping")
    p.add_argument("--timeout", type=float, default=300, help="per undo")
    p.add_argument("--configs", default="default,fast")
    args = p.parse_args()
    configs = args.configs.split(",")
    uptime("start")
    reason = unavailable_reason()
    if reason is None and os.environ.get("CANARY_TEST_KUBECONFIG"):
        reason = "CANARY_TEST_KUBECONFIG names an external cluster; the real node joins only ours"
    if reason is not None:
        print(f"no real node here: {reason}")
        sys.exit(1)
    if OWNER_FILE.exists():
        print(f"waiting for another session's real node to stop ({OWNER_FILE})", flush=True)
        wait_for(lambda: not OWNER_FILE.exists(), 1800, interval=2, message="the node to stop")
    results: list[Rep] = []
    with bench_cluster() as bench:
        cluster = bench.cluster
        node = RealNode(
            cluster.kubeconfig.parent, [cluster.kubectl_path, f"--kubeconfig={cluster.kubeconfig}"]
        )
        try:
            node.up()
            print(f"real node up in {node.up_seconds:.1f} s", flush=True)
            for rep in range(1, args.reps + 1):
                for config in configs if rep % 2 else configs[::-1]:
                    try:
                        r = run_rep(cluster, node, bench.namespace, config, rep, args)
                    except Exception as exc:  # one failed repetition: say so, go on
                        print(f"rep {rep} {config}: failed: {exc}", flush=True)
                        continue
                    results.append(r)
                    print(describe(r), flush=True)
                    if r.plugin_rc != 0:
                        print(f"  plugin output:\n{r.plugin_out}", flush=True)
        finally:
            node.down()
            left = node.leftovers()
            found = "none" if left.empty() else str(left)
            print(f"real node down in {node.down_seconds:.1f} s; leftovers: {found}", flush=True)
    report(results, configs)
    print(
        "\ndefault: the target names no strategy (maxSurge 25 %, maxUnavailable 25 %: one "
        "1.0 pod at a time of 3); fast: maxSurge 100 %, maxUnavailable 0"
    )
    uptime("end")


if __name__ == "__main__":
    main()
