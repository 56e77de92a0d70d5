"""bench_peer's workloads for either controller: rollouts at once (single, concurrent),
the wait until a controller is quiet, and the restart over idle rollouts."""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.peer_cluster import Counters, peak_rss_mib
from bench.peer_controller import Controller

from e2e.watch import Watch
from tests.harness.cluster import wait_for


@dataclass
class Sample:
    seconds: float
    per_rollout: Counters  # until the controller went quiet: all it did for the rollouts
    per_rollout_to_done: Counters  # until the last rollout was done


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
        done = ctl.counters()
    # A controller's work for a rollout does not all happen before the rollout reads
    # done: Argo Rollouts' Events go out through client-go's event broadcaster, one at a
    # time behind the controller's work, and in an audit log of `--concurrent 20` (Shift)
    # a third of them were written after the last rollout was done. Counting up to
    # "done" alone would leave those out, so requests and CPU are counted until the
    # controller has been quiet for QUIET_SECONDS (up to its last request).
    quiet = settle(ctl, quiet=QUIET_SECONDS, at_last_change=True)
    n = len(names)

    def per_rollout(after: Counters) -> Counters:
        delta = after - before
        return Counters(delta.requests / n, delta.pods_created / n, delta.cpu / n)

    return Sample(max(ends) - started, per_rollout(quiet), per_rollout(done))


# Seconds without a request after which a controller counts as done with its work.
QUIET_SECONDS = 5.0


def settle(
    ctl: Controller, quiet: float = 5.0, timeout: float = 300, at_last_change: bool = False
) -> Counters:
    """Counters once the controller's request count has not moved for `quiet` seconds:
    as they are then, or (`at_last_change`) as they were at the sample that saw its
    last request, so that the quiet seconds' idle CPU is not counted."""
    last = ctl.counters()
    since = time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(1.0)  # a sampling period of the benchmark, not synchronisation
        now = ctl.counters()
        if now.requests != last.requests:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return last if at_last_change else now
    return last


@dataclass
class Idle:
    requests: float  # API requests of the restarted controller until it settles
    cpu: float  # its CPU seconds until then
    rss_mib: float  # its peak RSS (VmHWM)
    prepare_seconds: float  # creating and finishing the rollouts (not a measurement)


# Rollouts started at once while preparing the idle ones: waves keep the number of
# rollouts in flight (and of Leases held and renewed) bounded. On this 2-core machine
# 1,000 took 455 s (canary-operator) and 411 s (Argo Rollouts) in 2026-12.
IDLE_WAVE = 60


def prepare_idle(ctl: Controller, count: int) -> float:
    """`count` finished rollouts: targets at 0 replicas (no pods to wait for), each rolled
    once to NEW without steps, so each is terminal (canary-operator: Succeeded after its
    promote and cleanup; Argo: Healthy at NEW), started in waves, with the controller's
    bulk flags (the restart that is measured runs with its defaults). Returns the seconds
    it took."""
    names = [f"idle-{i}" for i in range(count)]
    started = time.monotonic()
    with ctl.running(ctl.bulk_args if count > 50 else ()):
        ctl.create_version_one(names, replicas=0, steps=False)
        for start in range(0, count, IDLE_WAVE):
            wave = names[start : start + IDLE_WAVE]
            ctl.roll_many(wave, steps=False)
            ctl.wait_all_done(wave, timeout=600 + 6 * len(wave))
    return time.monotonic() - started


def restart_idle(ctl: Controller, count: int, prepared: float, tidy: bool) -> Idle:
    """Restart the controller over its finished rollouts: what it costs to come back."""
    before = ctl.counters()
    with ctl.running():
        wait_for(lambda: ctl.counters().requests > before.requests, timeout=60,
                 message=f"{ctl.name} started talking to the API server")  # fmt: skip
        after = settle(ctl, timeout=300 + count)
        assert ctl.proc is not None
        rss = peak_rss_mib(ctl.proc.pid)
        cpu = after.cpu  # the process is new: all of its CPU is the restart's
        if tidy:  # a cluster that outlives the benchmark; a local one is simply stopped
            ctl.delete_all(timeout=300 + count)
    return Idle(after.requests - before.requests, cpu, rss, prepared)
