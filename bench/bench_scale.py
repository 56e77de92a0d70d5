"""Scale: one controller over 1,000 and 10,000 rollouts (issue 26), beside Argo Rollouts.

On a local cluster started by the benchmark (kwok nodes; or $CANARY_TEST_KUBECONFIG),
for each scale N rollouts over T target Deployments (default 1,000 over 100 and 10,000
over 1,000: 10 per target), each controller in its own namespace, as its own
ServiceAccount matched by its own FlowSchema (bench_peer.py: the API server counts its
requests apart):

  history   N - T/2 ended rollouts, then a wave of T/2 active at once (one per target,
            on targets that have their history): made as bench/scale_seed.py says
            (a real sample run for real, the rest created with an ended status written
            through the status subresource, built with the product's own model and
            fingerprint; then one pass of the operator over them, not measured);
  measured  bench/scale_run.py: restart -> ready and -> the first step of a rollout that
            waited while the controller was down; requests and CPU until quiet; the
            wave (and, canary-operator only, a queue of --handoff rollouts on one more
            target: lock handoff p50/p99 under that load); requests and CPU per
            rollout; peak RSS.

Argo Rollouts keeps one Rollout per target, so the mapping is: T Rollouts, each with
N/T revisions (ReplicaSets: N/T - 1 made by the benchmark, the current one by Argo;
its revisionHistoryLimit is 10), and the wave is an image patch of T/2 of them. Argo
has no lock: no handoff figure. Its /healthz answers before its informers sync, so its
"ready" is not comparable; the first step of the waiting Rollout is.

The targets printed beside (issue 26) are reported, never asserted. Run by hand, alone
on the machine (`make bench-scale`, which holds /tmp/canary-bench.lock):

    flock /tmp/canary-bench.lock .venv/bin/python bench/bench_scale.py
        [--scales 1000:100,10000:1000] [--sample 60] [--handoff 11] [--skip-argo]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from bench.peer_argo import ArgoRollouts, argo_binary  # noqa: E402
from bench.peer_canary import CanaryOperator  # noqa: E402
from bench.peer_controller import Controller  # noqa: E402
from bench.peer_report import percentile  # noqa: E402
from bench.scale_run import Measured, measure  # noqa: E402
from bench.scale_seed import Seeded, seed_argo, seed_ours  # noqa: E402

from e2e.conftest import CRD  # noqa: E402
from tests.harness.cluster import LocalCluster, build_binaries, external_cluster  # noqa: E402

TARGET_RSS_MB = 400.0  # issue 26, at 10,000 rollouts
TARGET_READY_S = 30.0  # restart -> ready
TARGET_HANDOFF_P50_MS = 150.0  # under that load


def row(label: str, *cells: str) -> None:
    print(f"{label:46}" + "".join(f"{c:>15}" for c in cells), flush=True)


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q):.0f}" if values else "n/a"


def judged(value: float, target: float) -> str:
    return "n/a" if math.isnan(value) else ("met" if value <= target else "NOT met")


def report(scales: list[tuple[int, int]], results: dict[tuple[str, int], Measured],
           seeded: dict[tuple[str, int], Seeded], argo: bool) -> None:  # fmt: skip
    cols = [(who, n) for n, _ in scales for who in (("ours", "argo") if argo else ("ours",))]
    print("\nscale (canary-operator = ours; Argo Rollouts v1.9.1 = argo)")
    row("", *(f"{who} {n:,}" for who, n in cols))
    got = [results.get(c) for c in cols]

    def cell(pick: str, fmt: str = "{:.1f}") -> list[str]:
        return [fmt.format(getattr(m, pick)) if m else "-" for m in got]

    row("targets (argo: Rollouts)", *(f"{t:,}" for n, t in scales for _ in
                                      (("ours", "argo") if argo else ("ours",))))  # fmt: skip
    made = [seeded.get(c) for c in cols]
    row(
        "ended history made: real / written", *(f"{s.real}/{s.written}" if s else "-" for s in made)
    )
    row(
        "argo: ReplicaSets per Rollout",
        *(str(s.revisions) if s and s.revisions else "" for s in made),
    )
    row("restart -> ready (s)", *cell("ready_s", "{:.2f}"))
    row("restart -> first step of a waiting one (s)", *cell("first_step_s", "{:.2f}"))
    row("restart: API requests until quiet", *cell("restart_requests", "{:.0f}"))
    row("restart: CPU until quiet (s)", *cell("restart_cpu", "{:.2f}"))
    row("wave: rollouts at once", *cell("wave", "{:.0f}"))
    row("wave: applied -> all done (s)", *cell("wave_seconds"))
    row("API requests per rollout (wave)", *cell("requests_per_rollout", "{:.1f}"))
    row("CPU per rollout (s)", *cell("cpu_per_rollout", "{:.3f}"))
    row("CPU, restart to quiet after the wave (s)", *cell("cpu_total"))
    row("peak RSS (MiB)", *cell("rss_mib"))
    row("peak RSS (MB)", *[f"{m.rss_mib * 1.048576:.0f}" if m else "-" for m in got])
    hand = [m.handoff if m else None for m in got]
    row("handoffs timed (queue on one target)", *[str(h.handoffs) if h else "" for h in hand])
    row("lock handoff p50 (ms)", *[ms(h.events_ms, 50) if h else "" for h in hand])
    row("lock handoff p99 (ms)", *[ms(h.events_ms, 99) if h else "" for h in hand])
    print("\ntargets (issue 26; reported, not asserted), canary-operator at the largest scale:")
    n = scales[-1][0]
    m = results.get(("ours", n))
    if m is None:
        return
    h = m.handoff
    p50 = percentile(h.events_ms, 50) if h and h.events_ms else math.nan
    mb = m.rss_mib * 1.048576
    print(f"  peak RSS <= {TARGET_RSS_MB:.0f} MB: {mb:.0f} MB, {judged(mb, TARGET_RSS_MB)}")
    print(f"  restart -> ready <= {TARGET_READY_S:.0f} s: {m.ready_s:.2f} s, "
          f"{judged(m.ready_s, TARGET_READY_S)}")  # fmt: skip
    print(f"  handoff p50 <= {TARGET_HANDOFF_P50_MS:.0f} ms: {p50:.0f} ms, "
          f"{judged(p50, TARGET_HANDOFF_P50_MS)}")  # fmt: skip
    print(
        "  Argo Rollouts users report 16 GiB at 10k rollouts (argo-rollouts#3112) and "
        "11-14 GB at 11-13k (argo-rollouts#2855)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1000:100,10000:1000",
                        help="ROLLOUTS:TARGETS,... (a wave of TARGETS/2)")  # fmt: skip
    parser.add_argument(
        "--sample", type=int, default=60, help="ended rollouts run for real per scale"
    )
    parser.add_argument("--handoff", type=int, default=11, help="rollouts queued on one target")
    parser.add_argument("--skip-argo", action="store_true")
    args = parser.parse_args()
    scales = [(int(s.split(":")[0]), int(s.split(":")[1])) for s in args.scales.split(",")]
    for n, t in scales:
        if n % t or n // t < 2:
            parser.error(f"--scales {n}:{t}: ROLLOUTS must be a multiple (>= 2) of TARGETS")
    binary: Path | None = None
    if not args.skip_argo:
        binary = argo_binary()
    workdir = Path(tempfile.mkdtemp(prefix="canary-scale-"))
    print(f"workdir {workdir} (controller logs)", flush=True)
    local: LocalCluster | None = None
    external = os.environ.get("CANARY_TEST_KUBECONFIG")
    if external:
        cluster = external_cluster(Path(external))
    else:
        local = LocalCluster(workdir / "cluster", build_binaries())
        cluster = local.start()
    results: dict[tuple[str, int], Measured] = {}
    seeded: dict[tuple[str, int], Seeded] = {}
    controllers: list[Controller] = []
    try:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        if binary is not None:
            for crd in sorted(binary.parent.glob("*-crd.yaml")):
                cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        # canary-operator at every scale first, then Argo Rollouts: each controller's
        # figures complete on their own, whatever comes after.
        plan: list[tuple[Controller, int, int]] = []
        for n, t in scales:
            plan.append(
                (CanaryOperator(f"canary-operator-{n}", cluster, f"scale-{n}-ours", workdir), n, t)
            )
        for n, t in scales if binary is not None else []:
            argo = ArgoRollouts(f"argo-rollouts-{n}", cluster, f"scale-{n}-argo", workdir)
            argo.binary = binary
            plan.append((argo, n, t))
        for ctl, n, t in plan:
            controllers.append(ctl)
            targets = [f"t{i:04d}" for i in range(t)]
            wave, per = t // 2, n // t
            ctl.setup_identity()
            ours = isinstance(ctl, CanaryOperator)
            who = "ours" if ours else "argo"
            began = time.monotonic()
            if isinstance(ctl, CanaryOperator):
                s = seed_ours(ctl, targets, per, wave, min(args.sample, t))
            else:
                assert isinstance(ctl, ArgoRollouts)
                s = seed_argo(ctl, targets, per, wave)
            seeded[(who, n)] = s
            print(f"  {n:,} {ctl.name}: history made in {s.seconds:.0f} s (not measured): "
                  f"{s.real} run for real, {s.written} written"
                  + (f", {s.revisions} ReplicaSets per Rollout" if s.revisions else "")
                  + f"; the controller's first pass over it: {s.first_pass_requests:.0f} "
                  "requests", flush=True)  # fmt: skip
            m = measure(ctl, targets, wave, args.handoff if ours else 0)
            results[(who, n)] = m
            h = m.handoff
            handoffs = (f"; {h.handoffs} lock handoffs p50 {ms(h.events_ms, 50)} ms, p99 "
                        f"{ms(h.events_ms, 99)} ms" if h else "")  # fmt: skip
            print(f"  {n:,} {ctl.name}: ready {m.ready_s:.2f} s, first step "
                  f"{m.first_step_s:.2f} s, {m.restart_requests:.0f} requests and "
                  f"{m.restart_cpu:.2f} s CPU on restart; wave of {m.wave}: "
                  f"{m.wave_seconds:.1f} s, {m.requests_per_rollout:.1f} requests and "
                  f"{m.cpu_per_rollout:.3f} s CPU per rollout{handoffs}; CPU in all "
                  f"{m.cpu_total:.1f} s; peak RSS {m.rss_mib:.1f} MiB; measured in "
                  f"{time.monotonic() - began:.0f} s with the seeding", flush=True)  # fmt: skip
        report(scales, results, seeded, binary is not None)
        print("\nhistory: canary-operator's ended rollouts: a real sample, the rest created "
              "with an ended status written through the status subresource (bench/"
              "scale_seed.py); Argo's: Rollouts with revisions as ReplicaSets made by the "
              "benchmark (ROLLOUTS/TARGETS per Rollout, revisionHistoryLimit 10)")  # fmt: skip
        return 0
    finally:
        for started in controllers:
            started.stop()
        if local:
            local.stop()


if __name__ == "__main__":
    sys.exit(main())
