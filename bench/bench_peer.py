"""Side by side with Argo Rollouts on the same cluster, in one run.

Builds (once, cached: hack/peer/argo-rollouts.sh) Argo Rollouts' controller from its Go
module, starts a local cluster (or uses $CANARY_TEST_KUBECONFIG), and runs the same
workloads under each controller, one controller at a time, alternating which goes first:

  single      one rollout, setWeight 10..90 then promotion, 3 replicas, no traffic router:
              apply (canary-operator) / image patch (Argo) -> done
  concurrent  N rollouts of N targets at once: wall time
  handoff     canary-operator only (Argo Rollouts has no lock): N rollouts queued on ONE
              target (e.g. 5 and 20, to show what the queue's length costs); per handoff
              the latency from the holder's cleanup verified to the next rollout's first
              step, and the API requests per handoff
  idle        M finished rollouts (up to 1,000 and more: created concurrently, both
              controllers finishing theirs at once); each controller restarted alone: API
              requests until it settles, its CPU and its peak RSS

For each it prints medians and min-max, and the ratio canary-operator / Argo
(below 1.0 means canary-operator is faster or cheaper). Per rollout it also counts:
  - API requests: each controller runs as its own ServiceAccount, matched by its own
    FlowSchema, so the API server's apiserver_flowcontrol_dispatched_requests_total
    counts exactly that controller's requests, until it has been quiet for 5 s after
    the last rollout was done (its Events may trail its rollouts: Argo's do), with the
    count until done printed beside;
  - controller CPU (utime+stime of its process), over the same span;
  - pods created (POSTs of pods, any client: the ReplicaSet controller creates them).

The step lists differ in form, not in work: canary-operator's rollout starts with an
explicit `canary` step (Argo creates the canary ReplicaSet implicitly at the first
setWeight) and ends with `promote` (Argo promotes after its last step).

The targets table names issue 26's target for each figure (wall time, pods and requests
per rollout; CPU per rollout: issue 9's) and, per mode, whether this run met it; the
handoff and idle lines name issue 9's. It only reports, it asserts nothing.

Run by hand (`make bench-peer`); the machine is shared, so read ratios, not seconds.

    .venv/bin/python bench/bench_peer.py [--reps 3] [--concurrent 50] [--handoff 5,20]
        [--idle 1000] [--skip single|concurrent|handoff|idle ...]
        [--replicas-modes default,shift,add]

`--replicas-modes` lists canary-operator's replicas router modes to measure, all three by
default: default (the rollout names no `trafficRouting`: the default settings, mode Shift
for a new rollout), shift (the stable scales down as the canary scales up, as Argo's basic
canary does) or add (the stable keeps its 3 pods and the canary is added beside it, 27
canary pods at 90 %). Each mode is a controller of its own (its own namespace and
ServiceAccount); per repetition Argo Rollouts runs once and each mode once, in one order
on even repetitions and the reverse on odd ones. Single and concurrent print one table
each: a column per mode, Argo's, and each mode's ratio to Argo's. The handoff and the idle
restart measure the first mode listed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from bench.peer_argo import ArgoRollouts, argo_binary  # noqa: E402
from bench.peer_canary import MODES, CanaryOperator, canary_operator  # noqa: E402
from bench.peer_cluster import parallel  # noqa: E402
from bench.peer_controller import Controller  # noqa: E402
from bench.peer_handoff import Handoff, lock_handoffs  # noqa: E402
from bench.peer_report import (  # noqa: E402
    SideBySide,
    handoff_lines,
    idle_lines,
    ours_header,
    scenario_table,
    targets_table,
)
from bench.peer_workloads import Idle, Sample, prepare_idle, restart_idle, run_rollouts  # noqa: E402

from e2e.conftest import CRD  # noqa: E402
from tests.harness.cluster import LocalCluster, build_binaries, external_cluster  # noqa: E402


def replicas_modes(text: str) -> list[str]:
    """`default,shift,add` -> the modes, in that order, each once."""
    modes = list(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of {', '.join(MODES)}")
    return modes


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument(
        "--handoff",
        default="5,20",
        help="queue lengths on one target, comma-separated (canary-operator only)",
    )
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--skip", action="append", default=[],
                        choices=["single", "concurrent", "handoff", "idle"])  # fmt: skip
    parser.add_argument(
        "--replicas-modes",
        "--replicas-mode",
        dest="modes",
        type=replicas_modes,
        default=list(MODES),
        help="canary-operator's replicas router modes to measure, comma-separated: default "
        "(no trafficRouting in the rollout: the default settings), shift (the stable scales "
        "down as the canary scales up, as Argo Rollouts' basic canary does), add (the stable "
        "keeps its pods, the canary is added beside it); all three unless told",
    )
    args = parser.parse_args()
    modes: list[str] = args.modes
    handoff_sizes = [int(n) for n in args.handoff.split(",") if n.strip()]
    if any(n < 2 for n in handoff_sizes):
        parser.error("--handoff: a queue needs at least 2 rollouts for one handoff")

    binary = argo_binary()
    print(f"start: {load()}", flush=True)
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
        ours: dict[str, CanaryOperator] = {m: canary_operator(m, cluster, workdir) for m in modes}
        for mine in ours.values():
            shown = mine.replicas_mode or "none named (no trafficRouting)"
            print(f"{mine.name}: replicas router mode {shown}", flush=True)
        first = ours[modes[0]]  # the handoff's and the idle restart's
        argo = ArgoRollouts("argo-rollouts", cluster, "peer-argo", workdir)
        argo.binary = binary
        controllers += [*ours.values(), argo]
        for ctl in controllers:
            ctl.setup_identity()
        column = {mine.name: mode for mode, mine in ours.items()} | {argo.name: argo.name}
        samples: dict[str, dict[str, list[Sample]]] = {}

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
                    samples.setdefault(workload, {}).setdefault(column[ctl.name], []).append(sample)
                    print(
                        f"  {workload} rep {rep} {ctl.name}: {sample.seconds:.2f} s, "
                        f"{sample.per_rollout.requests:.0f} requests "
                        f"({sample.per_rollout_to_done.requests:.0f} until done), "
                        f"{sample.per_rollout.cpu:.2f} s CPU, "
                        f"{sample.per_rollout.pods_created:.0f} pods per rollout",
                        flush=True,
                    )
        handoff: tuple[Handoff, list[Handoff]] | None = None
        if "handoff" not in args.skip and handoff_sizes:
            handoff = lock_handoffs(first, handoff_sizes)
        idle: dict[str, Idle] = {}
        if "idle" not in args.skip:
            # Preparing is not measured: both controllers finish theirs at once.
            prepared: dict[str, float] = {}
            pair: list[Controller] = [first, argo]

            def prepare(ctl: Controller) -> None:
                prepared[ctl.name] = prepare_idle(ctl, args.idle)
                print(f"  idle {ctl.name}: {args.idle} finished in "
                      f"{prepared[ctl.name]:.0f} s (not measured)", flush=True)  # fmt: skip

            parallel([lambda ctl=ctl: prepare(ctl) for ctl in pair], len(pair))
            for ctl in pair:  # measured one at a time
                idle[ctl.name] = restart_idle(
                    ctl, args.idle, prepared[ctl.name], tidy=local is None
                )
                got = idle[ctl.name]
                print(
                    f"  idle {ctl.name} restarted: {got.requests:.0f} requests, "
                    f"{got.cpu:.2f} s CPU, peak RSS {got.rss_mib:.1f} MiB",
                    flush=True,
                )
        print(f"end: {load()}", flush=True)

        result = SideBySide(modes, argo.name, samples)
        order = ", ".join([*(ours[m].name for m in modes), argo.name])
        reps = f"{args.reps} repetition" + ("" if args.reps == 1 else "s")
        how = (f"{reps}, each {order} and back on the next "
               "(median (min-max)); ratio = canary-operator's mode / argo-rollouts")  # fmt: skip
        scenario_table(result, "single", f"one 10-step rollout, 3 replicas: {how}",
                       "wall: apply -> done (s)")  # fmt: skip
        scenario_table(result, "concurrent", f"{args.concurrent} rollouts at once: {how}",
                       "wall: all applied -> all done (s)", "{:.1f}")  # fmt: skip
        targets_table(result, args.concurrent)
        if handoff is not None:
            ours_header(f"lock handoff ({first.name}; target: issue 9)")
            handoff_lines(*handoff)
        if idle:
            ours_header(f"restart over idle rollouts ({first.name}; target: issue 9)")
            idle_lines(idle[first.name], idle[argo.name], args.idle)
        return 0
    finally:
        for started in controllers:
            started.stop()
        if local:
            local.stop()


if __name__ == "__main__":
    sys.exit(main())
