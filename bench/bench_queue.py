"""Benchmark: a queue of rollouts on one target, and several targets at once.

Starts a local cluster (or uses $CANARY_TEST_KUBECONFIG) and one operator process,
applies N rollouts of one target (each: canary, 25 %, a Job test) plus M rollouts of
other targets, and prints:
  - lock handoff latency (release -> next acquire, from the Lease history): p50/p95/max
  - time for the whole queue, per rollout
  - the operator's peak resident memory (VmHWM)
  - the state machine's cost per plan() call (pure, no I/O)

    .venv/bin/python bench/bench_queue.py [--queue 10] [--others 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from bench.harness import bench_cluster  # noqa: E402

from e2e import manifests as m  # noqa: E402
from tests.harness.cluster import Cluster, wait_for  # noqa: E402


def parse(ts: str) -> datetime:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def phases(cluster: Cluster, ns: str) -> dict[str, str]:
    items = cluster.get_json("cro", "-n", ns)["items"]
    return {i["metadata"]["name"]: (i.get("status") or {}).get("phase", "") for i in items}


def bench_plan(iterations: int = 2000) -> float:
    """Microseconds per plan() call on a running 6-step rollout."""
    from canary_operator.api.models import CanaryRolloutSpec, CanaryRolloutStatus
    from canary_operator.api.timestamps import iso
    from canary_operator.engine import machine
    from canary_operator.engine.types import LockView, Observed, Rollout, WorkloadView

    spec = CanaryRolloutSpec.model_validate(
        {
            "target": {"deployment": "web"},
            "images": [{"container": "a", "image": "b"}],
            "steps": [
                {"canary": {}},
                {"setWeight": 10},
                {"setWeight": 20},
                {"setWeight": 40},
                {"pause": {}},
                {"promote": {}},
            ],
        }
    )
    now = datetime.now(UTC)
    status = CanaryRolloutStatus.model_validate(
        {
            "phase": "Progressing",
            "run": 1,
            "fingerprint": spec.run_fingerprint(),
            "currentStep": 2,
            "stableReplicas": 3,
            "startedAt": iso(now),
            "deadlineAt": iso(now.replace(year=now.year + 1)),
            "steps": [
                {"name": s.kind, "kind": s.kind, "phase": "Succeeded" if i < 2 else "Pending"}
                for i, s in enumerate(spec.steps)
            ],
        }
    )
    rollout = Rollout("web-v2", "ns", "uid-1", 1, spec, status)
    workload = WorkloadView(replicas=3, ready=3, available=3, updated=3, current=True)
    obs = Observed(
        now=now,
        lock=LockView(name="cro-lock-web", held=True, token=1),
        target=workload,
        canary=workload,
    )
    start = time.perf_counter()
    for _ in range(iterations):
        machine.plan(rollout, obs)
    return (time.perf_counter() - start) / iterations * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queue", type=int, default=10, help="rollouts of one target")
    parser.add_argument("--others", type=int, default=5, help="rollouts of other targets")
    args = parser.parse_args()

    print(f"plan(): {bench_plan():.0f} us per call")
    with bench_cluster() as bench:
        cluster, ns, op = bench.cluster, bench.namespace, bench.operator
        apps = [m.app("web")] + [m.app(f"other{i}") for i in range(args.others)]
        cluster.apply("---\n".join(apps), ns)
        steps = [{"canary": {}}, {"setWeight": 25}, m.job_test("t")]
        docs = [m.rollout(f"q{i:03d}", steps, image=f"web:{i}") for i in range(args.queue)]
        docs += [
            m.rollout(f"o{i:03d}", steps, target=f"other{i}", service=f"other{i}")
            for i in range(args.others)
        ]
        t0 = time.monotonic()
        cluster.apply("---\n".join(docs), ns)
        total = args.queue + args.others
        wait_for(
            lambda: sum(p == "Succeeded" for p in phases(cluster, ns).values()) == total,
            timeout=60 + 30 * total,
            interval=0.5,
            message=lambda: f"all to succeed: {phases(cluster, ns)}",
        )
        elapsed = time.monotonic() - t0
        lease = cluster.get_json("lease", "cro-lock-web", "-n", ns)
        history = json.loads(lease["metadata"]["annotations"]["canary-operator.dev/history"])
        handoffs = [
            (parse(b["acquired"]) - parse(a["released"])).total_seconds() * 1000
            for a, b in itertools.pairwise(history)
        ]
        handoffs.sort()
        status = Path(f"/proc/{op.proc.pid}/status").read_text() if op.proc else ""
        hwm = next(
            (
                line.split(":")[1].strip()
                for line in status.splitlines()
                if line.startswith("VmHWM")
            ),
            "?",
        )
        print(
            f"{args.queue} queued rollouts of one target + {args.others} of other targets: "
            f"{elapsed:.1f} s ({elapsed / args.queue:.2f} s per queued rollout)"
        )
        if handoffs:
            p95 = handoffs[min(len(handoffs) - 1, int(0.95 * len(handoffs)))]
            print(
                f"lock handoff (release -> next acquire), n={len(handoffs)}: "
                f"p50 {statistics.median(handoffs):.0f} ms, p95 {p95:.0f} ms, "
                f"max {handoffs[-1]:.0f} ms"
            )
        print(f"operator peak RSS (VmHWM): {hwm}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
