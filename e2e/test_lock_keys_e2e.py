"""One target, one lock, whatever the lock keys: issue 23, "Must show" 1, 4 and 6.

Real control plane, the operator as a separate process. Leases, Deployments,
Services, Jobs and CanaryRollouts are watched from before anything is created;
every write to a target object is related to the Lease of its target by revision
(`e2e/lock_evidence.py`): it must have been made while that Lease named the writer's
rollout. Order comes from the watches, never from sleeps.

* Two rollouts of one Deployment, one naming `spec.lockGroup`, the other not (both
  orders), and two targets whose canary objects share a name (`web.v1`, `web-v1`):
  the second waits, and every write of the shared canary objects is its writer's.
* The edit scenario (a running, b waiting, then a's image edited), repeated
  `CANARY_E2E_EDIT_REPEAT` times per policy (default 5; the issue asks 20): under
  Queue b runs before a's run 2, under Supersede a's run 2 (the version applied last)
  runs and b never does; the target ends on a's new image every time.
* A Lease written by a foreign holder (`leaseDurationSeconds: 3600`), with and without
  the operator's holder annotation: nothing writes the target for 60 s by the watch's
  own clock, and the rollout says what it waits for.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import yaml

from e2e import manifests as m
from e2e.conftest import OperatorProcess, get_rollout, lease, stable_image
from e2e.lock_evidence import Evidence, Leases, Rollouts, Write, lease_for_target
from e2e.watch import RUNNING, TERMINAL, Seen, Watch, assert_waited_for, verified_end
from tests.harness.cluster import Cluster

pytestmark = pytest.mark.cluster

T = TypeVar("T")

OLD = "registry.example.com/web:1.0"
V2, V3, V4 = (f"registry.example.com/web:{v}" for v in ("2.0", "3.0", "4.0"))
LONG: list[dict[str, Any]] = [
    {"canary": {"replicas": 1}},
    {"pause": {"duration": "4s"}},
    {"promote": {}},
]
SHORT: list[dict[str, Any]] = [{"canary": {"replicas": 1}}, {"promote": {}}]
EDIT_REPEAT = int(os.environ.get("CANARY_E2E_EDIT_REPEAT", "5"))
EDIT_BATCH = 5
FOREIGN_WINDOW = 60.0


def run_of(event: Seen) -> int:
    return int((event.object.get("status") or {}).get("run") or 0)


def first_seen(watch: Watch, name: str, predicate: Callable[[Seen], bool], timeout: float) -> Seen:
    return watch.wait(name, predicate, timeout)


def absent_for(found: Callable[[], T | None], seconds: float) -> T | None:
    """Poll `found` for `seconds`; the first thing it finds, or None if nothing came.
    A wait for absence: the window is the assertion, nothing synchronises on it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.2)
    return found() or None


def holder_names(leases: Leases, rollouts: Rollouts, lease_name: str) -> list[str]:
    return [rollouts.name_of(h.uid) for h in leases.holders(lease_name)]


def assert_all_writes_under_lock(
    ev: Evidence, stables: list[str], at_least: dict[str, int]
) -> None:
    verdict = ev.verdict(stables)
    print(f"\n{verdict.figures()}")
    assert not verdict.violations, "writes outside the writer's lock:\n" + "\n".join(
        verdict.violations
    )
    for writer, count in at_least.items():
        mine = [w for w in verdict.writes if w.writer == writer]
        assert len(mine) >= count, f"{writer}: only {[str(w) for w in mine]}"


# ------------------------------------------------------------------ 1. lock keys


@pytest.mark.parametrize("group_first", [True, False], ids=["group-first", "plain-first"])
def test_a_group_lock_and_a_target_lock_of_one_deployment_never_run_at_once(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, group_first: bool
) -> None:
    ns = namespace
    grouped = m.rollout("a", LONG if group_first else SHORT, image=V2, lockGroup="frontend")
    plain = m.rollout("b", SHORT if group_first else LONG, image=V3)
    first, second = ("a", "b") if group_first else ("b", "a")
    with Evidence(kube_cluster, ns) as ev:
        ev.ready(m.app("web", replicas=2, image=OLD), deployments=["web"], services=["web"])
        kube_cluster.apply(grouped if group_first else plain, ns)
        # The first holds its locks and has written its canary: it pauses 4 s.
        ev.watches["deployments"].wait("web-canary", lambda e: e.type == "ADDED", 60)
        first_seen(ev.rollouts, first, lambda e: e.phase in RUNNING, 30)
        kube_cluster.apply(plain if group_first else grouped, ns)
        came = first_seen(
            ev.rollouts, second, lambda e: e.phase in {"Queued", *RUNNING, *TERMINAL}, 30
        )
        assert came.phase not in TERMINAL, f"{second} refused: {came.object['status']}"
        for name in (first, second):
            first_seen(ev.rollouts, name, verified_end, 120)
        leases, rollouts = ev.lease_timeline(), ev.rollout_timeline()
        assert_all_writes_under_lock(ev, ["web"], {first: 2, second: 2})
    assert came.phase == "Queued", f"{second} did not wait: {ev.rollouts.phases(second)}"
    assert_waited_for(ev.rollouts, first, second)
    # Each took the target's own Lease, in turn; the grouped one its group's too.
    assert holder_names(leases, rollouts, "cro-lock-web") == [first, second]
    assert holder_names(leases, rollouts, "cro-lock-frontend") == ["a"]
    for name in (first, second):
        assert get_rollout(kube_cluster, ns, name)["status"]["phase"] == "Succeeded"
    assert stable_image(kube_cluster, ns) == (V3 if group_first else V2)


def dotted_app(name: str, service: str) -> str:
    """A Deployment whose name has a dot, and a Service (whose name cannot) for it."""
    docs = list(yaml.safe_load_all(m.app(name, replicas=2, image=OLD)))
    docs[1]["metadata"]["name"] = service
    return yaml.safe_dump_all(docs)


def test_targets_whose_canary_objects_share_a_name_never_run_at_once(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """`web.v1` and `web-v1` both name their canary objects `web-v1-canary`."""
    ns = namespace
    with Evidence(kube_cluster, ns) as ev:
        ev.ready(
            dotted_app("web.v1", "webdot"),
            m.app("web-v1", replicas=2, image=OLD),
            deployments=["web.v1", "web-v1"],
            services=["webdot", "web-v1"],
        )
        kube_cluster.apply(m.rollout("dot", LONG, target="web.v1", service="webdot", image=V2), ns)
        ev.watches["deployments"].wait("web-v1-canary", lambda e: e.type == "ADDED", 60)
        first_seen(ev.rollouts, "dot", lambda e: e.phase in RUNNING, 30)
        kube_cluster.apply(
            m.rollout("dash", SHORT, target="web-v1", service="web-v1", image=V3), ns
        )
        came = first_seen(
            ev.rollouts, "dash", lambda e: e.phase in {"Queued", *RUNNING, *TERMINAL}, 30
        )
        assert came.phase not in TERMINAL, f"dash refused: {came.object['status']}"
        for name in ("dot", "dash"):
            first_seen(ev.rollouts, name, verified_end, 120)
        leases, rollouts = ev.lease_timeline(), ev.rollout_timeline()
        assert_all_writes_under_lock(ev, ["web.v1", "web-v1"], {"dot": 2, "dash": 2})
    assert came.phase == "Queued", f"dash did not wait: {ev.rollouts.phases('dash')}"
    assert_waited_for(ev.rollouts, "dot", "dash")
    assert lease_for_target("web.v1") == "cro-lock-web-v1"
    assert holder_names(leases, rollouts, "cro-lock-web-v1") == ["dot", "dash"]
    assert stable_image(kube_cluster, ns, "web.v1") == V2
    assert stable_image(kube_cluster, ns, "web-v1") == V3


# --------------------------------------------------------- 4. an edit and the queue


def edit_image(cluster: Cluster, ns: str, name: str, image: str) -> None:
    patch = {"spec": {"images": [{"container": "app", "image": image}]}}
    cluster.kubectl("patch", "cro", name, "-n", ns, "--type=merge", "-p", json.dumps(patch))


def edit_scenario_batch(
    cluster: Cluster, ns: str, ev: Evidence, policy: str, targets: list[str], first: int
) -> list[dict[str, Any]]:
    """Run the scenario on `targets` at once, the edits at staggered moments; returns
    one record per target (what happened, in commit order)."""
    for t in targets:
        cluster.apply(m.rollout(f"{t}-a", LONG, target=t, service=t, image=V2, policy=policy), ns)
    for t in targets:
        first_seen(ev.rollouts, f"{t}-a", lambda e: e.phase in RUNNING, 60)
    for t in targets:
        cluster.apply(m.rollout(f"{t}-b", SHORT, target=t, service=t, image=V3, policy=policy), ns)
    for t in targets:
        first_seen(ev.rollouts, f"{t}-b", lambda e: e.phase == "Queued", 30)
    # The edits land at varied moments of a's run 1 (canary ready, early or late in
    # its 4 s pause): a fault injected on a schedule, not a wait for anything.
    offsets = [((first + i) * 0.45) % 2.5 for i in range(len(targets))]
    began = time.monotonic()
    for t, offset in sorted(zip(targets, offsets, strict=True), key=lambda p: p[1]):
        time.sleep(max(0.0, began + offset - time.monotonic()))
        edit_image(cluster, ns, f"{t}-a", V4)
    records = []
    for t, offset in zip(targets, offsets, strict=True):
        a_done = first_seen(
            ev.rollouts, f"{t}-a", lambda e: run_of(e) >= 2 and e.phase in TERMINAL, 180
        )
        b_done = first_seen(ev.rollouts, f"{t}-b", lambda e: e.phase in TERMINAL, 180)
        records.append({"target": t, "offset": offset, "a": a_done, "b": b_done})
    return records


@pytest.mark.parametrize("policy", ["Queue", "Supersede"])
def test_an_edit_never_jumps_the_queue_and_the_last_applied_version_ends_on_the_target(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, policy: str
) -> None:
    ns = namespace
    targets = [f"w{i}" for i in range(EDIT_REPEAT)]
    apps = [m.app(t, replicas=2, image=OLD) for t in targets]
    with Evidence(kube_cluster, ns) as ev:
        ev.ready(*apps, deployments=targets, services=targets)
        records: list[dict[str, Any]] = []
        for start in range(0, len(targets), EDIT_BATCH):
            batch = targets[start : start + EDIT_BATCH]
            records += edit_scenario_batch(kube_cluster, ns, ev, policy, batch, start)
        leases, rollouts = ev.lease_timeline(), ev.rollout_timeline()
        verdict = ev.verdict(targets)
    print(f"\n{policy}, {len(targets)} repetitions: {verdict.figures()}")
    failures: list[str] = []
    for r in records:
        t = r["target"]
        a_events = ev.rollouts.of(f"{t}-a")
        edited = next(e for e in a_events if e.object["metadata"].get("generation", 1) >= 2)
        run1_end = next((e for e in a_events if run_of(e) == 1 and e.phase in TERMINAL), None)
        holders = [
            f"{rollouts.name_of(h.uid).rsplit('-', 1)[1]}{h.run or ''}"
            for h in leases.holders(f"cro-lock-{t}")
        ]
        run1 = (run1_end.object["status"].get("outcome") or {}) if run1_end else {}
        line = (
            f"{t}: edit at +{r['offset']:.2f}s, a run 1 {run1.get('result', '?')}, "
            f"lock holders {holders}, "
            f"a run {run_of(r['a'])} {r['a'].phase}, b {r['b'].phase}, "
            f"stable {stable_image(kube_cluster, ns, t).rsplit(':', 1)[1]}"
        )
        print(line)
        if run1_end is not None and run1_end.index < edited.index:
            failures.append(f"{line}: the edit came after a's run 1 ended (not the scenario)")
            continue
        names = [h.rstrip("0123456789") for h in holders]
        expected = ["a", "b", "a"] if policy == "Queue" else ["a", "a"]
        ok = (
            names == expected
            and r["a"].phase == "Succeeded"
            and r["b"].phase == ("Succeeded" if policy == "Queue" else "Superseded")
            and stable_image(kube_cluster, ns, t) == V4
        )
        if not ok:
            failures.append(f"{line}: expected holders {expected}, a's run 2 Succeeded, V4")
    assert not verdict.violations, "\n".join(verdict.violations)
    assert not failures, "\n".join(failures)


# ----------------------------------------------------------- 6. a foreign holder


def foreign_lease(ns: str, with_holder_annotation: bool) -> str:
    annotations = {"canary-operator.dev/holder": "earlier"} if with_holder_annotation else {}
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    return yaml.safe_dump(
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": "cro-lock-web",
                "namespace": ns,
                "labels": {"canary-operator.dev/lock": "true"},
                "annotations": annotations,
            },
            "spec": {
                "holderIdentity": "someone-else",
                "leaseDurationSeconds": 3600,
                "acquireTime": now,
                "renewTime": now,
            },
        }
    )


@pytest.mark.parametrize(
    "with_holder_annotation", [False, True], ids=["no-annotation", "holder-annotation"]
)
def test_a_foreign_holder_is_respected_for_its_lease_duration(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, with_holder_annotation: bool
) -> None:
    ns = namespace
    with Evidence(kube_cluster, ns) as ev:
        ev.ready(
            m.app("web", replicas=2, image=OLD),
            foreign_lease(ns, with_holder_annotation),
            deployments=["web"],
            services=["web"],
        )
        ev.leases.wait("cro-lock-web", lambda e: True, 30)
        kube_cluster.apply(m.rollout("a", SHORT, image=V2), ns)
        applied = first_seen(ev.rollouts, "a", lambda e: True, 30)

        def a_write() -> Write | None:
            return next(iter(ev.writes(["web"])), None)

        early = absent_for(a_write, FOREIGN_WINDOW + 1)
        body = get_rollout(kube_cluster, ns, "a")
        status = body.get("status") or {}
        held = lease(kube_cluster, ns)["spec"]
        # The foreign holder lets go; the rollout runs, seen by the same watches.
        free = lease(kube_cluster, ns)
        free["spec"]["holderIdentity"] = None
        kube_cluster.kubectl("replace", "-f", "-", input=json.dumps(free))
        first_seen(ev.rollouts, "a", verified_end, 90)
        writes = ev.writes(["web"])
        verdict = ev.verdict(["web"])
    assert early is None, f"the target was written {early} while someone-else held its Lease"
    assert held["holderIdentity"] == "someone-else", f"the foreign holder lost its Lease: {held}"
    says = " ".join(str(status.get(k) or "") for k in ("message", "queueLabel"))
    assert "someone-else" in says, f"the rollout does not say what it waits for: {status}"
    assert status.get("phase") in {"Pending", "Queued"}, status
    assert writes, "no write after the foreign holder let go: the watches saw nothing"
    # Measured by the watch's own clock: from the rollout's first event to the first
    # write of the target.
    waited = ev.received(writes[0]) - applied.at
    print(f"\nfirst target write {waited:.1f}s after the rollout was seen; {verdict.figures()}")
    assert waited >= FOREIGN_WINDOW, waited
    assert not verdict.violations, "\n".join(verdict.violations)
    assert get_rollout(kube_cluster, ns, "a")["status"]["phase"] == "Succeeded"
