"""A soak of the lock under stalls: issue 23, "Must show" 3.

Two standalone operator processes (no leader election) run N rollouts over two
targets (`CANARY_E2E_SOAK_ROLLOUTS`, default 12) while one of them, chosen at random,
is SIGSTOPped for 2-25 s every few seconds (then SIGCONT; never both at once). A
process stopped mid-action resumes with whatever it had decided before. From watches
started before anything (`e2e/lock_evidence.py`): every write to a target object is
made while the Lease of that target names the writer's rollout; 0 overlaps. The seed
is printed (`CANARY_E2E_SOAK_SEED` repeats a run).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from e2e import manifests as m
from e2e.conftest import OperatorProcess
from e2e.lock_evidence import Evidence, overlaps, timeline
from e2e.watch import TERMINAL, Seen, verified_end
from tests.harness.cluster import Cluster, WaitTimeout, wait_for

pytestmark = pytest.mark.cluster

OLD = "registry.example.com/web:1.0"
ROLLOUTS = int(os.environ.get("CANARY_E2E_SOAK_ROLLOUTS", "12"))
TARGETS = ["s1", "s2"]
DEADLINE = 200.0  # seconds for every rollout to end; the test stays under ~4 minutes
STEPS: list[dict[str, Any]] = [
    {"canary": {"replicas": 1}},
    m.job_test("smoke", duration="2s"),
    {"pause": {"duration": "4s"}},
    {"setWeight": 50},
    {"pause": {"duration": "4s"}},
    {"promote": {}},
]


class Staller:
    """Stops one of `operators` at random for 2-25 s, every 2-5 s, until stopped."""

    def __init__(self, operators: list[OperatorProcess], rng: random.Random) -> None:
        self.operators = operators
        self.rng = rng
        self.stalls: list[tuple[int, float]] = []  # (operator index, seconds)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="staller", daemon=True)

    def __enter__(self) -> Staller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=40)
        for op in self.operators:  # never leave one stopped
            self._signal(op, signal.SIGCONT)

    @staticmethod
    def _signal(op: OperatorProcess, sig: signal.Signals) -> None:
        if op.proc is not None and op.proc.poll() is None:
            os.killpg(op.proc.pid, sig)

    def _run(self) -> None:
        while not self._done.wait(self.rng.uniform(2, 5)):
            index = self.rng.randrange(len(self.operators))
            seconds = self.rng.uniform(2, 25)
            op = self.operators[index]
            self._signal(op, signal.SIGSTOP)
            try:
                self._done.wait(seconds)  # the fault itself: a process frozen
            finally:
                self._signal(op, signal.SIGCONT)
            self.stalls.append((index, seconds))


def test_two_operators_stalled_at_random_never_write_a_target_outside_its_lock(
    kube_cluster: Cluster,
    namespace: str,
    operators: list[OperatorProcess],
    tmp_path: Path,
) -> None:
    ns = namespace
    seed = int(os.environ.get("CANARY_E2E_SOAK_SEED") or time.time_ns() % 1_000_000)
    rng = random.Random(seed)
    print(f"\nsoak seed {seed}")
    names = [f"{TARGETS[i % 2]}-{i // 2}" for i in range(ROLLOUTS)]
    apps = [m.app(t, replicas=2, image=OLD) for t in TARGETS]
    with Evidence(kube_cluster, ns) as ev:
        ev.ready(*apps, deployments=TARGETS, services=TARGETS)
        for n in range(2):
            operators.append(
                OperatorProcess(kube_cluster, ns, tmp_path / f"operator-{n}.log").start()
            )
        began = time.monotonic()
        with Staller(operators, rng) as staller:
            for i, name in enumerate(names):
                target = TARGETS[i % 2]
                image = f"registry.example.com/{target}:{i // 2 + 2}.0"
                kube_cluster.apply(
                    m.rollout(name, STEPS, target=target, service=target, image=image), ns
                )

            def ended(e: Seen) -> bool:
                return verified_end(e) or (
                    e.phase == "Superseded" and not e.object["status"].get("startedAt")
                )

            def all_ended() -> bool:
                return all(ev.rollouts.first(n, ended) for n in names)

            try:
                wait_for(all_ended, DEADLINE, interval=0.5, message=lambda: progress(ev, names))
                stuck = ""
            except WaitTimeout as exc:
                stuck = str(exc)  # the evidence is still read and printed below
        took = time.monotonic() - began
        verdict = ev.verdict(TARGETS)
        leases = ev.lease_timeline()
        rollouts = ev.rollout_timeline()
    phases = {n: ev.rollouts.phases(n)[-1] for n in names}
    takeovers = {t: len(overlaps(leases, f"cro-lock-{t}")) for t in TARGETS}
    holders = {
        t: [rollouts.name_of(h.uid) for h in leases.holders(f"cro-lock-{t}")] for t in TARGETS
    }
    stalled = sum(s for _, s in staller.stalls)
    print(
        f"\nseed {seed}: {len(names)} rollouts over {len(TARGETS)} targets in {took:.0f}s; "
        f"{len(staller.stalls)} stalls, {stalled:.0f}s stopped in all "
        f"(longest {max((s for _, s in staller.stalls), default=0):.1f}s); {verdict.figures()}; "
        f"takeovers {takeovers}; watch streams resumed {ev.resumes()} times"
        f"\nphases {phases}\nholders {holders}"
    )
    if verdict.violations or stuck:
        for t in TARGETS:
            print(f"--- {t}\n{timeline(ev, f'cro-lock-{t}', t)}")
    assert operators[0].running() and operators[1].running()
    assert staller.stalls, "no stall happened: the soak proved nothing"
    assert not verdict.violations, "writes outside the writer's lock:\n" + "\n".join(
        verdict.violations
    )
    assert not stuck, stuck
    for t in TARGETS:
        ran = [n for n in names if n.startswith(f"{t}-") and phases[n] == "Succeeded"]
        # Each run that ran held the target's lock, one after the other.
        assert sorted(set(holders[t])) == sorted(ran), (t, holders[t], phases)
    assert all(p in TERMINAL for p in phases.values()), phases


def progress(ev: Evidence, names: list[str]) -> str:
    return "every rollout to end; " + ", ".join(
        f"{n}: {'/'.join(ev.rollouts.phases(n)[-2:])}" for n in names
    )
