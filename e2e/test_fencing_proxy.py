"""Fencing every write, with two standalone operator processes, one behind a proxy
(`e2e/api_proxy.py`) that freezes it at a chosen request: issue 23, "Must show" 2
and 5.

* (a) The proxy holds the answer of operator A's first DELETE of a canary object (the
  DELETE itself is committed; A is frozen between that write and its next one) while
  operator B finishes the run's cleanup, releases the lock, and the next rollout takes
  it and creates its canary. Released, A must neither delete nor overwrite anything of
  the next run.
* (b) The proxy delays A's server-side dry-runs (`dryRun=All`) by 15 s while B runs the
  rollout to its end and the next one starts: A writes nothing to the target after the
  run it was working for lost the lock.
* (5) A's release of an edited rollout's old run is held (the request itself, a release
  that arrives late) while B starts the new run; when it arrives, the new run keeps
  its lock.

Operator A is started first and alone, so it is the one that reaches the held request;
B is started once A is frozen. Evidence comes from watches started before anything
(commit order, `e2e/lock_evidence.py`) and from the proxy's log of what A sent.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e import manifests as m
from e2e.api_proxy import ApiProxy, Exchange, deletes, is_dry_run, releases_lease
from e2e.conftest import OperatorProcess, get_rollout, stable_image
from e2e.lock_evidence import Evidence, rv_of, timeline
from e2e.test_lock_keys_e2e import absent_for, run_of
from e2e.watch import RUNNING, TERMINAL, Seen, verified_end
from tests.harness.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

OLD = "registry.example.com/web:1.0"
V2, V3, V4 = (f"registry.example.com/web:{v}" for v in ("2.0", "3.0", "4.0"))
HELD: list[dict[str, Any]] = [{"canary": {"replicas": 1}}, {"pause": {}}]
AFTERMATH = 15.0  # how long A is watched once it runs again
TARGET_KINDS = ("/deployments", "/services", "/jobs")


@pytest.fixture
def proxy(kube_cluster: Cluster, tmp_path: Path) -> Iterator[ApiProxy]:
    """Requested before `operators`, so it outlives the operators' teardown."""
    with ApiProxy(kube_cluster, tmp_path / "proxy") as p:
        yield p


def start(
    cluster: Cluster,
    ns: str,
    operators: list[OperatorProcess],
    log: Path,
    proxy: ApiProxy | None = None,
    extra: list[str] | None = None,
) -> OperatorProcess:
    args = ["--http-port", "0", *(extra or [])]
    if proxy is not None:
        args += ["--kubeconfig", str(proxy.kubeconfig)]
    op = OperatorProcess(cluster, ns, log, args=args).start()
    operators.append(op)
    return op


def abort(cluster: Cluster, ns: str, name: str) -> None:
    cluster.kubectl("patch", "cro", name, "-n", ns, "--type=merge", "-p", '{"spec":{"abort":true}}')


def target_writes_of(proxy: ApiProxy, ns: str, since: float) -> list[Exchange]:
    """What A wrote to target objects (accepted, not dry-runs) from `since` on."""
    return [
        e
        for e in proxy.writes()
        if e.started >= since
        and f"/namespaces/{ns}/" in e.request.path
        and any(kind in e.request.path for kind in TARGET_KINDS)
    ]


def a_wrote(proxy: ApiProxy, ns: str) -> str:
    """A's target writes: the revision the API server answered, and whose object."""

    def owner(e: Exchange) -> str:
        labels = (e.answer.get("metadata") or {}).get("labels") or {}
        return str(labels.get("canary-operator.dev/rollout"))

    return "\n".join(
        f"  rv {e.resource_version}: {e.request.method} {e.request.path.rsplit('/', 2)[-2:]} "
        f"-> {e.status} ({owner(e)})"
        for e in target_writes_of(proxy, ns, 0.0)
    )


def describe(exchanges: list[Exchange]) -> list[str]:
    return [f"{e.request.method} {e.request.path} -> {e.status}" for e in exchanges]


def untouched_until(ev: Evidence, owner: str, asked: Seen) -> list[str]:
    """Writes to `owner`'s canary objects after their creation and before `asked`, the
    event of the test's request that `owner` end (by revision; the time the watch
    received each is given too), and any write of them by another rollout."""
    writes = ev.writes()
    mine = {w.uid for w in writes if w.writer == owner and w.what == "created"}
    until = rv_of(asked.object)
    return [
        f"{w} (object of {owner}), before rv {until} (received "
        f"{ev.received(w) - asked.at:+.2f}s from the abort's event)"
        for w in writes
        if w.uid in mine and w.what != "created" and w.rv < until
    ] + [
        f"{w}: {owner}'s canary object rewritten by {w.writer}"
        for w in writes
        if w.uid in mine and w.writer != owner
    ]


def abort_event(ev: Evidence, name: str) -> Seen:
    return ev.rollouts.wait(name, lambda e: bool(e.object["spec"].get("abort")), 30)


def assert_verdict(ev: Evidence) -> None:
    verdict = ev.verdict(["web"])
    print(f"\n{verdict.figures()}")
    assert not verdict.violations, "\n".join(verdict.violations)


# ------------------------------------------------------------------ (a) a held DELETE


def test_a_process_frozen_after_its_first_delete_touches_nothing_of_the_next_run(
    proxy: ApiProxy,
    kube_cluster: Cluster,
    namespace: str,
    operators: list[OperatorProcess],
    tmp_path: Path,
) -> None:
    ns = namespace
    held = proxy.hold_response("A's first canary DELETE", deletes(ns, "web-canary"))
    with Evidence(kube_cluster, ns) as ev:
        ev.ready(m.app("web", replicas=2, image=OLD), deployments=["web"], services=["web"])
        start(kube_cluster, ns, operators, tmp_path / "operator-a.log", proxy)
        kube_cluster.apply(m.rollout("r1", HELD, image=V2), ns)
        ev.rollouts.wait("r1", lambda e: e.phase == "Paused", 60)
        kube_cluster.apply(m.rollout("r2", HELD, image=V3), ns)
        ev.rollouts.wait("r2", lambda e: e.phase == "Queued", 30)
        abort(kube_cluster, ns, "r1")
        frozen = held.wait_engaged(60)
        print(f"\nA frozen after {frozen.request.method} {frozen.request.path} -> {frozen.status}")
        start(kube_cluster, ns, operators, tmp_path / "operator-b.log")
        ev.rollouts.wait("r1", verified_end, 60)
        ev.rollouts.wait("r2", lambda e: e.phase == "Paused", 60)
        # r2's canary Deployment and Service exist: there is something of it to break.
        for resource in ("deployments", "services"):
            ev.watches[resource].wait(
                "web-canary",
                lambda e: (
                    (e.object["metadata"].get("labels") or {}).get("canary-operator.dev/rollout")
                    == "r2"
                ),
                30,
            )
        released_at = time.monotonic()
        held.release()
        held.wait_answered(10)
        late = absent_for(lambda: target_writes_of(proxy, ns, released_at), AFTERMATH)
        abort(kube_cluster, ns, "r2")
        asked = abort_event(ev, "r2")
        ev.rollouts.wait("r2", verified_end, 60)
        broken = untouched_until(ev, "r2", asked)
        if broken:
            print(f"--- web\n{timeline(ev, 'cro-lock-web', 'web')}")
            print(f"--- what A wrote (answer rv)\n{a_wrote(proxy, ns)}")
        assert_verdict(ev)
    assert frozen.ok, f"the held DELETE failed: {frozen.status}"
    assert not late, f"A wrote after it was let go: {describe(late or [])}"
    assert not broken, "\n".join(broken)
    r2 = get_rollout(kube_cluster, ns, "r2")["status"]
    assert r2["phase"] == "Aborted" and r2["outcome"]["result"] == "Aborted", r2["outcome"]


# -------------------------------------------------------------- (b) slow dry-runs


def test_a_process_whose_dry_runs_take_15s_writes_nothing_after_its_run_lost_the_lock(
    proxy: ApiProxy,
    kube_cluster: Cluster,
    namespace: str,
    operators: list[OperatorProcess],
    tmp_path: Path,
) -> None:
    """r0 holds the lock, r1 and r2 wait. A (alone) ends r0 and hands the lock to r1;
    from then on A's dry-runs (the checks of a run before its first step) take 15 s.
    B, started once A waits on one (or r1 runs), runs r1 to its end; r2 takes the lock
    and pauses with its canary. A must write nothing after r1 ended."""
    ns = namespace
    with Evidence(kube_cluster, ns) as ev:
        ev.ready(m.app("web", replicas=2, image=OLD), deployments=["web"], services=["web"])
        start(kube_cluster, ns, operators, tmp_path / "operator-a.log", proxy)
        kube_cluster.apply(m.rollout("r0", HELD, image=V2), ns)
        ev.rollouts.wait("r0", lambda e: e.phase == "Paused", 60)
        short: list[dict[str, Any]] = [{"canary": {"replicas": 1}}, {"promote": {}}]
        kube_cluster.apply(m.rollout("r1", short, image=V3), ns)
        ev.rollouts.wait("r1", lambda e: e.phase == "Queued", 30)
        kube_cluster.apply(m.rollout("r2", HELD, image=V4), ns)
        ev.rollouts.wait("r2", lambda e: e.phase == "Queued", 30)
        slow = proxy.delay("A's dry-runs", is_dry_run, seconds=15)
        abort(kube_cluster, ns, "r0")
        wait_for(
            lambda: slow.engaged.is_set() or ev.rollouts.first("r1", lambda e: e.phase in RUNNING),
            60,
            message="A to take r1's lock or to wait on a dry-run",
        )
        a_froze = time.monotonic()
        start(kube_cluster, ns, operators, tmp_path / "operator-b.log")
        ended = ev.rollouts.wait("r1", verified_end, 60)
        ev.rollouts.wait("r2", lambda e: e.phase == "Paused", 60)
        # Every dry-run A sent so far has been answered; then A is watched a while.
        sent = list(slow.exchanges)
        for e in sent:
            wait_answered(e, 40)
        late = absent_for(lambda: target_writes_of(proxy, ns, ended.at), AFTERMATH)
        abort(kube_cluster, ns, "r2")
        asked = abort_event(ev, "r2")
        ev.rollouts.wait("r2", verified_end, 60)
        broken = untouched_until(ev, "r2", asked)
        a_writes = target_writes_of(proxy, ns, a_froze)
        if broken:
            print(f"--- web\n{timeline(ev, 'cro-lock-web', 'web')}")
            print(f"--- what A wrote (answer rv)\n{a_wrote(proxy, ns)}")
        assert_verdict(ev)
    print(f"A's dry-runs delayed: {len(sent)}; A's target writes after: {describe(a_writes)}")
    assert sent, "A sent no dry-run after r0 ended: nothing was delayed"
    # A wrote nothing after r1 ended until r2 was asked to end; nothing of r2 touched.
    assert not late, f"A wrote after r1 had ended: {describe(late or [])}"
    assert not broken, "\n".join(broken)
    assert get_rollout(kube_cluster, ns, "r1")["status"]["phase"] == "Succeeded"
    assert stable_image(kube_cluster, ns) == V3


def wait_answered(exchange: Exchange, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not exchange.answered:
        assert time.monotonic() < deadline, f"{exchange.request.path} never answered"
        time.sleep(0.1)


# ------------------------------------- (a) again, with leader election and SIGSTOP


def test_a_leader_stopped_20s_after_its_first_delete_touches_nothing_of_the_next_run(
    proxy: ApiProxy,
    kube_cluster: Cluster,
    namespace: str,
    operators: list[OperatorProcess],
    tmp_path: Path,
) -> None:
    """Two replicas with leader election. The leader (A, behind the proxy) is stopped
    (SIGSTOP) right after its first canary DELETE of r1's cleanup was committed, and
    stays stopped at least 20 s: until its leader Lease has gone to B and B has ended
    r1 and started r2. Then SIGCONT: A resumes mid-action, before its elector can tell
    it lost the lead."""
    ns = namespace
    held = proxy.hold_response("the leader's first canary DELETE", deletes(ns, "web-canary"))
    elect = ["--leader-elect", "--leader-election-namespace", ns, "--leader-election-id", "leader"]
    with Evidence(kube_cluster, ns) as ev:
        ev.ready(m.app("web", replicas=2, image=OLD), deployments=["web"], services=["web"])
        a = start(kube_cluster, ns, operators, tmp_path / "operator-a.log", proxy, elect)
        kube_cluster.apply(m.rollout("r1", HELD, image=V2), ns)
        ev.rollouts.wait("r1", lambda e: e.phase == "Paused", 60)
        start(kube_cluster, ns, operators, tmp_path / "operator-b.log", None, elect)
        kube_cluster.apply(m.rollout("r2", HELD, image=V3), ns)
        ev.rollouts.wait("r2", lambda e: e.phase == "Queued", 30)
        abort(kube_cluster, ns, "r1")
        frozen = held.wait_engaged(60)
        assert a.proc is not None
        os.killpg(a.proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            held.release()  # the answer waits in the socket for a process that is stopped
            ev.rollouts.wait("r1", verified_end, 90)
            ev.rollouts.wait("r2", lambda e: e.phase == "Paused", 60)
            time.sleep(max(0.0, stopped + 20 - time.monotonic()))  # the fault: 20 s at least
        finally:
            os.killpg(a.proc.pid, signal.SIGCONT)
        resumed = time.monotonic()
        leader = kube_cluster.get_json("lease", "leader", "-n", ns)["spec"]["holderIdentity"]
        late = absent_for(lambda: target_writes_of(proxy, ns, resumed), AFTERMATH)
        abort(kube_cluster, ns, "r2")
        asked = abort_event(ev, "r2")
        ev.rollouts.wait("r2", verified_end, 60)
        broken = untouched_until(ev, "r2", asked)
        assert_verdict(ev)
    print(
        f"A stopped {resumed - stopped:.1f}s after {frozen.request.method} "
        f"{frozen.request.path}; leader while A was stopped: {leader}"
    )
    # A ran again (it asked the API server something) before it stepped down: a
    # process that loses the lead exits, as client-go's leader election has it.
    after = [e for e in proxy.exchanges() if e.started >= resumed and not e.request.watch]
    print(f"A after SIGCONT: {describe(after)[:8]}; still running: {a.running()}")
    assert after, "A sent nothing after SIGCONT: it never resumed mid-action"
    assert not late, f"A wrote after it resumed: {describe(late or [])}"
    assert not broken, "\n".join(broken)
    r2 = get_rollout(kube_cluster, ns, "r2")["status"]
    assert r2["phase"] == "Aborted" and r2["outcome"]["result"] == "Aborted", r2["outcome"]


# ------------------------------------------------- (5) an old run's late release


def test_an_old_runs_late_release_leaves_the_new_run_its_lock(
    proxy: ApiProxy,
    kube_cluster: Cluster,
    namespace: str,
    operators: list[OperatorProcess],
    tmp_path: Path,
) -> None:
    ns = namespace
    late_release = proxy.hold_request("A's release of run 1", releases_lease(ns, "cro-lock-web"))
    steps: list[dict[str, Any]] = [{"canary": {"replicas": 1}}, {"pause": {}}, {"promote": {}}]
    with Evidence(kube_cluster, ns) as ev:
        ev.ready(m.app("web", replicas=2, image=OLD), deployments=["web"], services=["web"])
        start(kube_cluster, ns, operators, tmp_path / "operator-a.log", proxy)
        kube_cluster.apply(m.rollout("a", steps, image=V2), ns)
        ev.rollouts.wait("a", lambda e: e.phase == "Paused" and run_of(e) == 1, 60)
        edit = {"spec": {"images": [{"container": "app", "image": V4}]}}
        kube_cluster.kubectl("patch", "cro", "a", "-n", ns, "--type=merge", "-p", json.dumps(edit))
        late_release.wait_engaged(60)
        start(kube_cluster, ns, operators, tmp_path / "operator-b.log")
        paused2 = ev.rollouts.wait("a", lambda e: e.phase == "Paused" and run_of(e) >= 2, 90)
        holding = ev.lease_timeline().at("cro-lock-web", rv_of(paused2.object) + 1)
        assert holding is not None and holding.identity, f"run 2 paused without a lock: {holding}"
        late_release.release()
        answer = late_release.wait_answered(30)

        def lost() -> list[str]:
            return [
                f"rv {h.rv}: holder {h.identity!r}"
                for h in ev.lease_timeline().states.get("cro-lock-web", [])
                if h.rv > holding.rv and h.identity != holding.identity
            ]

        taken = absent_for(lost, AFTERMATH)
        kube_cluster.kubectl("annotate", "cro", "a", "-n", ns, "canary-operator.dev/promote=2")
        done = ev.rollouts.wait("a", lambda e: run_of(e) >= 2 and e.phase in TERMINAL, 90)
        ev.rollouts.wait("a", lambda e: run_of(e) >= 2 and verified_end(e), 60)
        assert_verdict(ev)
    print(
        f"\nrun 2 held {holding.identity} (token {holding.token}); "
        f"the late release answered {answer.status}"
    )
    assert not taken, f"run 2 lost its lock to the old run's late release: {taken}"
    assert done.phase == "Succeeded", done.object["status"].get("outcome")
    assert stable_image(kube_cluster, ns) == V4
    assert all(e.phase != "Failed" for e in ev.rollouts.of("a") if run_of(e) >= 2)
