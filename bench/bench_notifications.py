"""Benchmark: notification delivery latency to a healthy endpoint beside endpoints that
hang (accept the request, never answer; `timeoutSeconds: 30`).

For each count of hanging endpoints (default 0, 1 and 5): a fresh namespace and one
operator process (bench/harness.py: a local cluster, or $CANARY_TEST_KUBECONFIG); N
rollouts of N targets applied at once (canary, promote), each subscribed to on-started,
on-promoted and on-succeeded on a recorder and on every hanging endpoint. Prints the
recorder's delivery latency: when the recorder got the message (wall clock) minus when
the operator wrote the transition (the eventTime of the Event announcing it, in
microseconds; same machine, same clock). Figures only; it asserts nothing.

    .venv/bin/python bench/bench_notifications.py [--rollouts 20] [--hanging 0,1,5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from bench.harness import bench_cluster  # noqa: E402

from e2e import manifests as m  # noqa: E402
from e2e.chat_endpoints import ChatEndpoints  # noqa: E402
from e2e.conftest import wait_phase  # noqa: E402
from e2e.test_notification_isolation_e2e import (  # noqa: E402
    STEPS,
    SUB,
    TRANSITION_EVENT,
    complete,
    facts,
    transition_times,
)
from tests.harness.cluster import wait_for  # noqa: E402


def scenario(rollouts: int, hanging: int) -> list[float]:
    """The recorder's latencies (seconds), one per message."""
    with bench_cluster() as bench, ChatEndpoints() as chat:
        cluster, ns = bench.cluster, bench.namespace
        data = {"service.slack.rec": f"url: {chat.url(f'slack/{ns}')}\n"}
        for i in range(hanging):
            data[f"service.slack.hang{i}"] = (
                f"url: {chat.url(f'hang/{ns}/{i}')}\ntimeoutSeconds: 30\n"
            )
        cluster.apply(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "canary-operator-notifications"},
                    "data": data,
                }
            ),
            ns,
        )
        names = [f"web{i}" for i in range(rollouts)]
        cluster.apply("---\n".join(m.app(n, replicas=1) for n in names), ns)
        docs = []
        for n in names:
            doc = yaml.safe_load(m.rollout(n, STEPS, target=n, service=n))
            services = ["rec", *(f"hang{i}" for i in range(hanging))]
            doc["metadata"]["annotations"] = {
                f"{SUB}{t}.{s}": "" for t in TRANSITION_EVENT for s in services
            }
            docs.append(yaml.safe_dump(doc))
        cluster.apply("---\n".join(docs), ns)  # all at once
        for n in names:
            wait_phase(cluster, ns, n, "Succeeded", timeout=600)
        want = rollouts * len(TRANSITION_EVENT)
        wait_for(lambda: len(chat.to(f"slack/{ns}")) >= want, timeout=120)
        recorded = chat.to(f"slack/{ns}")
        held = len(chat.to(f"hang/{ns}"))
        keys = {facts(r) for r in recorded}
        # The Events are written in the background, in order: the last may come later.
        times = wait_for(lambda: complete(transition_times(cluster, ns), keys), timeout=120)
    print(
        f"  {hanging} hanging: {len(recorded)} messages recorded; "
        f"{held} requests to the hanging endpoints"
    )
    return [r.wall - times[facts(r)] for r in recorded]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, default=20)
    parser.add_argument("--hanging", default="0,1,5", help="counts of hanging endpoints")
    args = parser.parse_args()
    counts = [int(c) for c in args.hanging.split(",")]
    rows = []
    for hanging in counts:
        started = time.monotonic()
        latencies = sorted(scenario(args.rollouts, hanging))
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        rows.append((hanging, len(latencies), q[49], q[98], latencies[-1]))
        print(f"  ({time.monotonic() - started:.0f} s)")
    print(
        f"\nrecorder delivery latency, {args.rollouts} rollouts at once x "
        f"{len(TRANSITION_EVENT)} triggers (received - transition's eventTime)"
    )
    print(f"{'hanging endpoints':>17} {'messages':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for hanging, n, p50, p99, top in rows:
        print(f"{hanging:>17} {n:>9} {p50 * 1000:>8.0f} {p99 * 1000:>8.0f} {top * 1000:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
