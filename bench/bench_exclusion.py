"""Benchmark: reconcile latency and abort responsiveness, with and without hanging
checks in flight.

Starts a local cluster (or uses $CANARY_TEST_KUBECONFIG) and one operator process,
then twice (with 0, then with N webhook tests that never answer in flight):
  - brings M rollouts of M targets to a `pause` step, then aborts them one by one;
  - prints the time from `spec.abort: true` to the phase CleaningUp and to Aborted
    (from a watch, in commit order), p50/max;
  - prints reconcile durations over that window (the operator's own histogram
    canary_operator_reconcile_duration_seconds: bucket upper bounds), p50/p99.
With hanging checks it also aborts the hanging rollouts and prints the same figures
for them (an abort of a rollout whose check hangs).

    .venv/bin/python bench/bench_exclusion.py [--paused 5] [--hanging 8]

Figures are printed, not asserted: the machine's load decides the seconds.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from bench.harness import bench_cluster  # noqa: E402

from e2e import manifests as m  # noqa: E402
from e2e.slow_http import SlowEndpoints  # noqa: E402
from e2e.watch import Watch  # noqa: E402
from tests.harness.cluster import Cluster, wait_for  # noqa: E402

HISTOGRAM = "canary_operator_reconcile_duration_seconds_bucket"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def buckets(port: int) -> dict[float, int]:
    """Cumulative reconcile counts by bucket upper bound (successful reconciles)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[float, int] = {}
    for line in text.splitlines():
        if line.startswith(HISTOGRAM) and 'result="ok"' in line:
            le = line.split('le="')[1].split('"')[0]
            out[float("inf") if le == "+Inf" else float(le)] = int(float(line.split()[-1]))
    return out


def quantile(before: dict[float, int], after: dict[float, int], q: float) -> tuple[float, int]:
    """The bucket bound under which a fraction q of the reconciles in the window fell."""
    delta = {le: after.get(le, 0) - before.get(le, 0) for le in sorted(after)}
    total = delta.get(float("inf"), 0)
    if total == 0:
        return float("nan"), 0
    for le, count in delta.items():
        if count >= q * total:
            return le, total
    return float("inf"), total


def phases(cluster: Cluster, ns: str) -> dict[str, str]:
    items = cluster.get_json("cro", "-n", ns)["items"]
    return {i["metadata"]["name"]: (i.get("status") or {}).get("phase", "") for i in items}


def abort_one_by_one(cluster: Cluster, ns: str, watch: Watch, names: list[str]) -> list[float]:
    """Seconds from the abort patch to CleaningUp, per rollout (and waits for Aborted)."""
    to_cleanup = []
    for name in names:
        asked = time.monotonic()
        cluster.kubectl(
            "patch", "cro", name, "-n", ns, "--type=merge", "-p", '{"spec":{"abort":true}}'
        )
        cleaning = watch.wait(name, lambda e: e.phase == "CleaningUp", 60)
        to_cleanup.append(cleaning.at - asked)
    for name in names:
        watch.wait(name, lambda e: e.phase == "Aborted", 120)
    return to_cleanup


def scenario(
    cluster: Cluster, ns: str, port: int, http: SlowEndpoints, paused: int, hanging: int
) -> None:
    label = f"{hanging} hanging checks in flight"
    with Watch(cluster, ns, "canaryrollouts") as watch:
        docs, hang_names = [], []
        for i in range(hanging):
            target = f"h{hanging}-{i}"
            docs.append(m.app(target, replicas=2))
            steps = [
                {"canary": {"replicas": 1}},
                {"test": {"webhook": {"url": http.url(f"hang/{target}"), "timeout": "10m"}}},
            ]
            docs.append(m.rollout(target, steps, target=target, service=target))
            hang_names.append(target)
        pause_names = []
        for i in range(paused):
            target = f"p{hanging}-{i}"
            docs.append(m.app(target, replicas=2))
            steps = [{"canary": {"replicas": 1}}, {"pause": {}}]
            docs.append(m.rollout(target, steps, target=target, service=target))
            pause_names.append(target)
        cluster.apply("---\n".join(docs), ns)
        wait_for(
            lambda: (
                all(phases(cluster, ns).get(n) == "Paused" for n in pause_names)
                and len(http.calls_to(f"hang/h{hanging}-")) >= hanging
            ),
            240,
            interval=0.5,
            message=lambda: f"rollouts paused and checks in flight: {phases(cluster, ns)}",
        )
        before = buckets(port)
        paused_abort = abort_one_by_one(cluster, ns, watch, pause_names)
        hang_abort = abort_one_by_one(cluster, ns, watch, hang_names) if hang_names else []
        after = buckets(port)
    p50, n = quantile(before, after, 0.5)
    p99, _ = quantile(before, after, 0.99)
    print(f"\n== {label}")
    print(
        f"reconcile duration over the window (n={n}): p50 <= {p50 * 1000:.0f} ms, "
        f"p99 <= {p99 * 1000:.0f} ms (histogram bucket bounds)"
    )
    for what, values in (
        ("paused rollout", paused_abort),
        ("rollout with a hanging check", hang_abort),
    ):
        if values:
            print(
                f"spec.abort -> CleaningUp, {what} (n={len(values)}): "
                f"p50 {statistics.median(values):.2f} s, max {max(values):.2f} s"
            )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--paused", type=int, default=5, help="rollouts aborted at a pause")
    parser.add_argument("--hanging", type=int, default=8, help="hanging checks in flight")
    args = parser.parse_args()

    port = free_port()
    args_ = ["--http-port", str(port), "--http-host", "127.0.0.1"]
    with bench_cluster(args_) as bench, SlowEndpoints() as http:
        wait_for(lambda: buckets(port) is not None, 60, ignore=(OSError,))
        scenario(bench.cluster, bench.namespace, port, http, args.paused, 0)
        scenario(bench.cluster, bench.namespace, port, http, args.paused, args.hanging)
    return 0


if __name__ == "__main__":
    sys.exit(main())
