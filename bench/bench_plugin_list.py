"""Benchmark: `kubectl canary list` against `kubectl get cro`.

Starts a local cluster (or uses $CANARY_TEST_KUBECONFIG), applies N rollouts (they
wait in one target's queue, so the table has every column filled) and times, R times
each, alternating: `kubectl get cro`, the plugin as installed (`kubectl-canary list`:
the standard-library fast path) and the full plugin (`python -m
canary_operator.cli.kubectl_canary list`: the kubernetes client, aiohttp, pydantic).
Prints min/median/max wall time and the ratio of the medians to kubectl's.

    .venv/bin/python bench/bench_plugin_list.py [--rollouts 20] [--runs 9]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from bench.harness import bench_cluster  # noqa: E402

from e2e import manifests as m  # noqa: E402


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rollouts", type=int, default=20)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    venv_bin = Path(sys.executable).parent
    with bench_cluster() as bench:
        cluster, ns = bench.cluster, bench.namespace
        cluster.apply(m.app("web"), ns)
        cluster.apply(
            "---\n".join(
                m.rollout(f"web-{i:02d}", [{"canary": {"replicas": 1}}, {"pause": {}}])
                for i in range(args.rollouts)
            ),
            ns,
        )
        env = cluster.env()
        commands = {
            "kubectl get cro": ["kubectl", "get", "cro", "-n", ns],
            "kubectl-canary list": [str(venv_bin / "kubectl-canary"), "list", "-n", ns],
            "full plugin list": [
                sys.executable,
                "-m",
                "canary_operator.cli.kubectl_canary",
                "list",
                "-n",
                ns,
            ],
        }
        for cmd in commands.values():  # warm the page cache once
            timed(cmd, env)
        times: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.runs):
            for name, cmd in commands.items():
                times[name].append(timed(cmd, env))
    base = statistics.median(times["kubectl get cro"])
    print(f"{args.rollouts} rollouts, {args.runs} runs each (seconds):")
    for name, values in times.items():
        med = statistics.median(values)
        print(
            f"  {name:<22} min {min(values):.3f}  median {med:.3f}  max {max(values):.3f}"
            f"  ratio {med / base:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
