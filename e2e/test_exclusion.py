"""The lock never leaves a live holder: exclusion under slow checks, failing writes,
a stalled API server and two operator processes at once.

Real control plane, the operator as a separate process, webhook endpoints on
loopback that hang or answer late. Order is asserted from a watch (commit order)
and from the Lease's own history, never from sleeps.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from e2e import manifests as m
from e2e.conftest import (
    OperatorProcess,
    canary_objects,
    events_of,
    get_rollout,
    lease,
    phase_of,
    stable_image,
    wait_phase,
)
from e2e.slow_http import SlowEndpoints
from e2e.watch import RUNNING, Watch, assert_waited_for, verified_end
from tests.harness.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

OLD = "registry.example.com/web:1.0"
A_IMAGE, B_IMAGE = "registry.example.com/web:2.0", "registry.example.com/web:3.0"
LEASE_SECONDS = 30


def parse_micro(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")


def lease_span(cluster: Cluster, ns: str, key: str) -> float:
    """Seconds from the current holder's acquisition to its last renewal."""
    spec = lease(cluster, ns, key)["spec"]
    if not spec.get("holderIdentity"):
        return 0.0
    return (parse_micro(spec["renewTime"]) - parse_micro(spec["acquireTime"])).total_seconds()


def history(cluster: Cluster, ns: str, key: str) -> list[dict[str, Any]]:
    raw = lease(cluster, ns, key)["metadata"]["annotations"]["canary-operator.dev/history"]
    return list(json.loads(raw))


def assert_handed_over_in_order(cluster: Cluster, ns: str, key: str, holders: list[str]) -> None:
    """The lock went to `holders` in this order, each releasing it before the next took
    it, and nobody was ever taken over."""
    entries = history(cluster, ns, key)
    assert [h["holder"] for h in entries] == holders, entries
    assert all("takenOverBy" not in h for h in entries), f"a takeover: {entries}"
    for before, after in itertools.pairwise(entries):
        assert "released" in before and before["released"] <= after["acquired"], entries


def step(name: str, **kind: Any) -> dict[str, Any]:
    return {"name": name, **kind}


def hook(url: str, **fields: Any) -> dict[str, Any]:
    return {"test": {"webhook": {"url": url, **fields}}}


def at_step(watch: Watch, name: str, number: int, timeout: float = 60) -> None:
    """Wait until `name` runs its step `number` (1-based)."""

    def running(e: Any) -> bool:
        steps = (e.object.get("status") or {}).get("steps") or []
        return len(steps) >= number and steps[number - 1].get("phase") == "Running"

    watch.wait(name, running, timeout)


def cleanup_started(cluster: Cluster, ns: str, name: str) -> list[str]:
    return [e["message"] for e in events_of(cluster, ns, name) if e["reason"] == "CleanupStarted"]


def abort(cluster: Cluster, ns: str, name: str) -> None:
    cluster.kubectl("patch", "cro", name, "-n", ns, "--type=merge", "-p", '{"spec":{"abort":true}}')


# ---------------------------------------------------------------- slow checks


def test_slow_checks_never_hand_the_lock_to_the_next_rollout(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    with SlowEndpoints() as http, Watch(kube_cluster, ns, "canaryrollouts") as watch:
        checks = {
            # accepts and never answers, default timeout (10 s) and retries (2)
            "hang": hook(http.url("hang/default")),
            # never answers, a 5-minute timeout: only an abort ends it
            "hang5m": hook(http.url("hang/5m"), timeout="5m"),
            # answers 200 after 45 s, within its 60 s timeout
            "slow200": hook(http.url("delay/45/ok"), timeout="60s"),
            # a metric webhook answering after 45 s, within its 60 s timeout
            "slowmetric": {
                "analysis": {
                    "provider": {
                        "webhook": {"url": http.url("metric/45/0.25/err"), "timeout": "60s"}
                    },
                    "interval": "10s",
                    "count": 1,
                    "metrics": [{"name": "err", "query": "x", "successCondition": "result < 1"}],
                }
            },
        }
        for target, check in checks.items():
            kube_cluster.apply(m.app(target, replicas=2, image=OLD), ns)
            steps = [{"canary": {"replicas": 1}}, step("slow", **check), {"promote": {}}]
            kube_cluster.apply(
                m.rollout(f"{target}-a", steps, target=target, service=target, image=A_IMAGE), ns
            )
        for target in checks:
            at_step(watch, f"{target}-a", 2)
        for target in checks:
            fast = [{"canary": {"replicas": 1}}, {"promote": {}}]
            kube_cluster.apply(
                m.rollout(f"{target}-b", fast, target=target, service=target, image=B_IMAGE), ns
            )
        for target in checks:
            behind = f"#1 behind {target}-a"
            watch.wait(
                f"{target}-b",
                lambda e, b=behind: (
                    e.phase == "Queued"  # type: ignore[misc]
                    and e.object["status"].get("queueLabel") == b
                ),
                30,
            )

        # The hanging test with default settings fails on its own verdict (3 attempts).
        failed = wait_phase(kube_cluster, ns, "hang-a", "Failed", timeout=120)["status"]
        assert failed["outcome"]["result"] == "StepFailed", failed["outcome"]
        assert "timed out after 10s (3 attempts)" in failed["outcome"]["message"]

        # The 5-minute one: its lease outlives its duration many times over, renewed
        # while the holder waits, and the next rollout stays queued.
        wait_for(
            lambda: lease_span(kube_cluster, ns, "hang5m") > 1.5 * LEASE_SECONDS,
            120,
            message="hang5m's lease to be renewed past 1.5 durations",
        )
        assert phase_of(kube_cluster, ns, "hang5m-a") == "Progressing"
        assert phase_of(kube_cluster, ns, "hang5m-b") == "Queued"
        asked = time.monotonic()
        abort(kube_cluster, ns, "hang5m-a")
        aborted = wait_phase(kube_cluster, ns, "hang5m-a", "Aborted", timeout=5)
        print(f"\nabort -> Aborted (cleanup verified): {time.monotonic() - asked:.2f}s")
        assert verified_end(watch.wait("hang5m-a", verified_end, 5))
        assert aborted["status"]["outcome"]["result"] == "Aborted"
        started = cleanup_started(kube_cluster, ns, "hang5m-a")
        assert len(started) == 1 and "outcome Aborted" in started[0], started

        for target in checks:
            wait_phase(kube_cluster, ns, f"{target}-b", "Succeeded", timeout=180)
        slow = get_rollout(kube_cluster, ns, "slow200-a")["status"]
        assert slow["phase"] == "Succeeded", slow
        assert "HTTP 200" in slow["steps"][1]["message"]
        # The step took as long as its answer: no instant "finished" while in flight.
        took = parse_micro_s(slow["steps"][1]["finishedAt"]) - parse_micro_s(
            slow["steps"][1]["startedAt"]
        )
        assert took >= 44, slow["steps"][1]
        metric = get_rollout(kube_cluster, ns, "slowmetric-a")["status"]
        assert metric["phase"] == "Succeeded", metric
        measurements = metric["steps"][1]["analysis"]["measurements"]
        assert [x["values"]["err"]["canary"] for x in measurements] == [0.25]
        # One call each: a slow answer is neither repeated nor counted twice.
        assert len(http.calls_to("delay/")) == 1 and len(http.calls_to("metric/")) == 1

    for target in checks:
        assert_waited_for(watch, f"{target}-a", f"{target}-b")
        assert_handed_over_in_order(kube_cluster, ns, target, [f"{target}-a", f"{target}-b"])
        # The last to run put its version in; an older run never promoted over it.
        assert stable_image(kube_cluster, ns, target) == B_IMAGE
    assert canary_objects(kube_cluster, ns) == []


def parse_micro_s(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").timestamp()


def test_eight_hanging_checks_hold_up_no_other_rollout_and_every_lease_stays_renewed(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    hanging = [f"h{i}" for i in range(8)]
    with (
        SlowEndpoints() as http,
        Watch(kube_cluster, ns, "canaryrollouts") as watch,
        Watch(kube_cluster, ns, "leases") as leases,
    ):
        for target in [*hanging, "quick"]:
            kube_cluster.apply(m.app(target, replicas=2, image=OLD), ns)
        for target in hanging:
            steps = [
                {"canary": {"replicas": 1}},
                step("probe", **hook(http.url(f"hang/{target}"), timeout="5m")),
                {"promote": {}},
            ]
            kube_cluster.apply(m.rollout(f"{target}-a", steps, target=target, service=target), ns)
        for target in hanging:
            at_step(watch, f"{target}-a", 2, timeout=90)
        wait_for(lambda: len(http.calls_to("hang/")) == 8, 30, message="8 calls in flight")

        applied = time.monotonic()
        quick = [{"canary": {"replicas": 1}}, {"setWeight": 50}, {"promote": {}}]
        kube_cluster.apply(m.rollout("quick-a", quick, target="quick", service="quick"), ns)
        done = watch.wait("quick-a", lambda e: e.phase == "Succeeded", 90)
        print(f"\nquick rollout with 8 hanging checks in flight: {done.at - applied:.2f}s")
        # When it ended, every hanging rollout was still in its check: nothing waited
        # on them, no worker was held by them.
        for target in hanging:
            before = [e for e in watch.of(f"{target}-a") if e.index < done.index]
            assert before and before[-1].phase == "Progressing", before[-1:]

        wait_for(
            lambda: all(
                lease_span(kube_cluster, ns, target) > LEASE_SECONDS + 5 for target in hanging
            ),
            90,
            message="every hanging rollout's lease to outlive its duration",
        )
        for target in hanging:
            abort(kube_cluster, ns, f"{target}-a")
        for target in hanging:
            wait_phase(kube_cluster, ns, f"{target}-a", "Aborted", timeout=60)

    # renewTime never lagged a third of the lease duration while the holder ran.
    for target in hanging:
        times = [
            parse_micro(e.object["spec"]["renewTime"])
            for e in leases.of(f"cro-lock-{target}")
            if e.object["spec"].get("holderIdentity")
        ]
        times = sorted(set(times))
        assert len(times) >= 6, f"{target}: {len(times)} renewals seen"
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        print(f"{target}: {len(times)} renewals, longest gap {max(gaps):.1f}s")
        assert max(gaps) <= LEASE_SECONDS / 3, f"{target}: renewal gaps {gaps}"
        assert_handed_over_in_order(kube_cluster, ns, target, [f"{target}-a"])
    assert canary_objects(kube_cluster, ns) == []


# ------------------------------------------------------------- failing writes


def test_a_holder_whose_writes_keep_failing_keeps_its_lock_and_says_why(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    kube_cluster.apply(m.app(replicas=2, image=OLD), ns)
    webhook = m.refusing_canary_webhook(ns, dry_runs_too=False)
    kube_cluster.apply(webhook)
    try:
        with Watch(kube_cluster, ns, "canaryrollouts") as watch:
            steps = [{"canary": {"replicas": 1}}, {"promote": {}}]
            kube_cluster.apply(m.rollout("a", steps, image=A_IMAGE), ns)

            def says_why() -> dict[str, Any] | None:
                status = get_rollout(kube_cluster, ns, "a").get("status") or {}
                for c in status.get("conditions") or []:
                    if c["type"] == "ReconcileError" and c["status"] == "True":
                        return status
                return None

            status = wait_for(says_why, 60, message="a to report its failing write")
            condition = next(c for c in status["conditions"] if c["type"] == "ReconcileError")
            assert "500" in condition["message"] and "webhook" in condition["message"]
            assert status["phase"] == "Progressing"
            kube_cluster.apply(m.rollout("b", steps, image=B_IMAGE), ns)
            wait_for(
                lambda: lease_span(kube_cluster, ns, "web") > 1.5 * LEASE_SECONDS,
                120,
                message="a's lease to be renewed past 1.5 durations while it fails",
            )
            assert phase_of(kube_cluster, ns, "a") == "Progressing"
            assert phase_of(kube_cluster, ns, "b") == "Queued"
            warnings = [
                e for e in events_of(kube_cluster, ns, "a") if e["reason"] == "RetryingAfterError"
            ]
            assert len(warnings) == 1, warnings  # said once, not once per retry
            kube_cluster.kubectl("delete", "validatingwebhookconfiguration", f"refuse-canary-{ns}")
            webhook = ""
            wait_phase(kube_cluster, ns, "a", "Succeeded", timeout=90)
            wait_phase(kube_cluster, ns, "b", "Succeeded", timeout=90)
        assert_waited_for(watch, "a", "b")
        assert_handed_over_in_order(kube_cluster, ns, "web", ["a", "b"])
        healed = next(
            c
            for c in get_rollout(kube_cluster, ns, "a")["status"]["conditions"]
            if c["type"] == "ReconcileError"
        )
        assert healed["status"] == "False" and healed["reason"] == "Recovered"
        assert stable_image(kube_cluster, ns) == B_IMAGE
    finally:
        if webhook:
            kube_cluster.kubectl(
                "delete", "validatingwebhookconfiguration", f"refuse-canary-{ns}", check=False
            )


# ---------------------------------------------------------- stalled API server


def etcd_pid(cluster: Cluster) -> int | None:
    pid_file = Path(cluster.kubeconfig).parent / "pids" / "etcd.pid"
    return int(pid_file.read_text().strip()) if pid_file.exists() else None


def test_a_stalled_api_server_delays_rollouts_and_breaks_no_invariant(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    pid = etcd_pid(kube_cluster)
    if pid is None:
        pytest.skip(
            "SKIPPED LOUDLY: stalling etcd needs the project's own local control plane "
            "(an external cluster's etcd is not ours to SIGSTOP)"
        )
    ns = namespace
    targets = ["t1", "t2", "t3"]
    steps = [
        {"canary": {"replicas": 1}},
        m.job_test("smoke", duration="3s"),
        {"setWeight": 50},
        {"promote": {}},
    ]
    for target in targets:
        kube_cluster.apply(m.app(target, replicas=2, image=OLD), ns)
        for name, image in (("a", A_IMAGE), ("b", B_IMAGE)):
            kube_cluster.apply(
                m.rollout(f"{target}-{name}", steps, target=target, service=target, image=image),
                ns,
            )
    images = {"a": A_IMAGE, "b": B_IMAGE}
    wait_for(
        lambda: all(
            any(phase_of(kube_cluster, ns, f"{t}-{n}") in RUNNING for n in images) for t in targets
        ),
        60,
        message="a rollout of every target to run",
    )
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(20)  # the fault itself: etcd frozen for 20 s, nothing to wait on
    finally:
        os.kill(pid, signal.SIGCONT)
    for target in targets:
        for name in images:
            status = wait_phase(kube_cluster, ns, f"{target}-{name}", "Succeeded", timeout=240)
            verified = [c for c in status["status"]["conditions"] if c["type"] == "CleanupVerified"]
            assert verified and verified[0]["status"] == "True", status["status"]
        # Created in the same second, they queue in the order the operator saw them.
        order = [h["holder"] for h in history(kube_cluster, ns, target)]
        assert sorted(order) == [f"{target}-a", f"{target}-b"], order
        assert_handed_over_in_order(kube_cluster, ns, target, order)
        assert stable_image(kube_cluster, ns, target) == images[order[-1][-1]]
    assert canary_objects(kube_cluster, ns) == []


# ------------------------------------------------------- two operator processes


def test_two_operator_processes_without_leader_election_never_overlap(
    kube_cluster: Cluster,
    namespace: str,
    operator: OperatorProcess,
    operators: list[OperatorProcess],
    tmp_path: Path,
) -> None:
    ns = namespace
    second = OperatorProcess(kube_cluster, ns, tmp_path / "operator-2.log").start()
    operators.append(second)
    hanging = ["h0", "h1", "h2"]
    with SlowEndpoints() as http, Watch(kube_cluster, ns, "canaryrollouts") as watch:
        for target in ["hang", *hanging, "quick"]:
            kube_cluster.apply(m.app(target, replicas=2, image=OLD), ns)
        hang_steps = [
            {"canary": {"replicas": 1}},
            step("probe", **hook(http.url("hang/default"))),
            {"promote": {}},
        ]
        kube_cluster.apply(
            m.rollout("hang-a", hang_steps, target="hang", service="hang", image=A_IMAGE), ns
        )
        for target in hanging:
            steps = [
                {"canary": {"replicas": 1}},
                step("probe", **hook(http.url(f"hang/{target}"), timeout="5m")),
            ]
            kube_cluster.apply(m.rollout(f"{target}-a", steps, target=target, service=target), ns)
        at_step(watch, "hang-a", 2)
        fast = [{"canary": {"replicas": 1}}, {"promote": {}}]
        kube_cluster.apply(
            m.rollout("hang-b", fast, target="hang", service="hang", image=B_IMAGE), ns
        )
        for n in range(3):  # three rollouts of one target, queued behind each other
            kube_cluster.apply(
                m.rollout(f"quick-{n}", fast, target="quick", service="quick", image=B_IMAGE), ns
            )
        for n in range(3):
            wait_phase(kube_cluster, ns, f"quick-{n}", "Succeeded", timeout=120)
        for target in hanging:  # still in their checks, holding their locks
            assert phase_of(kube_cluster, ns, f"{target}-a") == "Progressing"
        failed = wait_phase(kube_cluster, ns, "hang-a", "Failed", timeout=120)["status"]
        assert failed["outcome"]["result"] == "StepFailed", failed["outcome"]
        wait_phase(kube_cluster, ns, "hang-b", "Succeeded", timeout=120)
        for target in hanging:
            abort(kube_cluster, ns, f"{target}-a")
        for target in hanging:
            wait_phase(kube_cluster, ns, f"{target}-a", "Aborted", timeout=60)
    assert operator.running() and second.running()
    assert_waited_for(watch, "hang-a", "hang-b")
    # Created within a second or so, by two processes: whichever order they queued in,
    # each ran alone, after the one before had ended.
    order = [h["holder"] for h in history(kube_cluster, ns, "quick")]
    assert sorted(order) == [f"quick-{n}" for n in range(3)], order
    for earlier, later in itertools.pairwise(order):
        assert_waited_for(watch, earlier, later)
    assert_handed_over_in_order(kube_cluster, ns, "hang", ["hang-a", "hang-b"])
    assert_handed_over_in_order(kube_cluster, ns, "quick", order)
    for target in hanging:
        assert_handed_over_in_order(kube_cluster, ns, target, [f"{target}-a"])
    assert canary_objects(kube_cluster, ns) == []
