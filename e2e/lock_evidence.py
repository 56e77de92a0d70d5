"""Evidence that every write to a target was made under its target's lock, from watches.

The tests watch (`e2e/raw_watch.py`: resumed from the last resourceVersion if a stream
ends) Leases, Deployments, Services, Jobs and CanaryRollouts of their
namespace from before anything is created. On an etcd-backed API server (the dev
cluster, kind) every resourceVersion is the etcd revision of that write, one counter
for all kinds, so the writes of different kinds can be put in the order the API server
committed them. "The Lease at revision r" is the state of its last write before r.

A write *to a target object* is an operator write of a canary object (a Deployment,
Service or Job labelled `canary-operator.dev/target`), or a write of the stable
Deployment that changes its spec or its `canary-operator.dev/fencing-token` annotation.
Writes of controllers (status, the Deployment's revision annotation) are not writes of
the operator and are left out. The writer's rollout is the object's
`canary-operator.dev/rollout` label (for the stable: the rollout named by its fencing
token annotation).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from e2e.raw_watch import RawWatch
from e2e.watch import TERMINAL, Seen, Watch
from tests.harness.cluster import Cluster

TARGET_LABEL = "canary-operator.dev/target"
ROLLOUT_LABEL = "canary-operator.dev/rollout"
ROLE_LABEL = "canary-operator.dev/role"
FENCING = "canary-operator.dev/fencing-token"
HOLDER_IDENTITY = "canary-operator.dev/holder-identity"
RUN_ANNOTATION = "canary-operator.dev/run"  # <uid>/<run> of the plan that made the object
CONTROLLER_PREFIXES = (
    "deployment.kubernetes.io/",
    "batch.kubernetes.io/",
    "kubectl.kubernetes.io/",
)


def lease_for_target(target: str) -> str:
    """The Lease of a target Deployment: its name with '.' made '-'."""
    return f"cro-lock-{target.replace('.', '-')}"


def rv_of(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


def parse_holder(identity: str | None) -> tuple[str | None, int | None]:
    """`<uid>/<run>` (or a bare uid) -> (uid, run)."""
    if not identity:
        return None, None
    uid, _, run = identity.partition("/")
    return uid, int(run) if run.isdigit() else None


@dataclass(frozen=True)
class Holding:
    rv: int
    lease: str
    identity: str | None  # holderIdentity as written
    uid: str | None
    run: int | None
    token: int
    exists: bool = True


class Leases:
    """Every committed state of every Lease, from a watch."""

    def __init__(self, events: Iterable[Seen]) -> None:
        self.states: dict[str, list[Holding]] = {}
        for e in events:
            spec = e.object.get("spec") or {}
            identity = spec.get("holderIdentity") or None
            uid, run = parse_holder(identity)
            holding = Holding(
                rv_of(e.object),
                e.name,
                identity,
                uid,
                run,
                int(spec.get("leaseTransitions") or 0),
                e.type != "DELETED",
            )
            self.states.setdefault(e.name, []).append(holding)
        for states in self.states.values():
            states.sort(key=lambda h: h.rv)

    def at(self, lease: str, rv: int) -> Holding | None:
        """The Lease as it stood just before revision `rv` (None: it did not exist)."""
        before = [h for h in self.states.get(lease, []) if h.rv < rv]
        if not before or not before[-1].exists:
            return None
        return before[-1]

    def holders(self, lease: str) -> list[Holding]:
        """The successive holders of `lease` (a release between two holds of the same
        holder makes two entries; no holder at all is left out)."""
        out: list[Holding] = []
        previous: str | None = None
        for h in self.states.get(lease, []):
            if h.identity != previous and h.identity:
                out.append(h)
            previous = h.identity
        return out


class Rollouts:
    """The rollouts' uids and phases, from a watch of canaryrollouts."""

    def __init__(self, events: Iterable[Seen]) -> None:
        self.events = sorted(events, key=lambda e: rv_of(e.object))
        self.uids: dict[str, str] = {}
        self.names: dict[str, str] = {}
        for e in self.events:
            uid = e.object["metadata"]["uid"]
            self.uids[e.name] = uid
            self.names[uid] = e.name

    def at(self, name: str, rv: int) -> dict[str, Any] | None:
        before = [e for e in self.events if e.name == name and rv_of(e.object) < rv]
        return before[-1].object if before else None

    def phase_at(self, name: str, rv: int) -> str:
        body = self.at(name, rv)
        return str(((body or {}).get("status") or {}).get("phase") or "")

    def name_of(self, uid: str | None) -> str:
        return self.names.get(uid or "", f"<unknown uid {uid}>")


@dataclass(frozen=True)
class Write:
    rv: int
    kind: str  # "deployment", "service", "job"
    name: str
    uid: str
    what: str  # "created", "changed", "deleting", "deleted"
    writer: str  # rollout name
    target: str
    token: int | None  # for the stable: the fencing token it carries
    owner_write: bool  # the object belongs to the writer (always, but for deletes)
    object: dict[str, Any]

    @property
    def run(self) -> int | None:
        """The writer's run, when the object names it (`canary-operator.dev/run`)."""
        return parse_holder((self.object["metadata"].get("annotations") or {}).get(RUN_ANNOTATION))[
            1
        ]

    @property
    def lease(self) -> str:
        return lease_for_target(self.target)

    def __str__(self) -> str:
        return f"rv {self.rv}: {self.what} {self.kind}/{self.name} by {self.writer or '<no token>'}"


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    annotations = obj["metadata"].get("annotations") or {}
    return {k: v for k, v in annotations.items() if not k.startswith(CONTROLLER_PREFIXES)}


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj["metadata"].get("labels") or {})


def target_writes(
    kind: str, events: Iterable[Seen], stable_targets: Iterable[str] = ()
) -> list[Write]:
    """The operator's writes of target objects among `events` (one watch of `kind`).
    `stable_targets`: the stable Deployments whose writes count (by name)."""
    stables = set(stable_targets)
    out: list[Write] = []
    previous: dict[str, dict[str, Any]] = {}
    for e in events:
        obj = e.object
        meta = obj["metadata"]
        uid = meta["uid"]
        before = previous.get(uid)
        previous[uid] = obj
        labels = _labels(obj)
        if TARGET_LABEL in labels and ROLLOUT_LABEL in labels:
            what = _what(e, before)
            if what:
                out.append(
                    Write(
                        rv_of(obj),
                        kind,
                        e.name,
                        uid,
                        what,
                        labels[ROLLOUT_LABEL],
                        labels[TARGET_LABEL],
                        None,
                        True,
                        obj,
                    )
                )
        elif (
            kind == "deployment"
            and e.name in stables
            and before is not None
            and e.type == "MODIFIED"
        ):
            spec_changed = meta.get("generation") != before["metadata"].get("generation")
            fence = _annotations(obj).get(FENCING)
            fenced = fence != _annotations(before).get(FENCING)
            if spec_changed or fenced:
                # A write that does not stamp its own token (Shift's scaling of the
                # stable) names no writer: "" (only "some run held the Lease" is checked).
                writer, _, token = (fence or "/").rpartition("/") if fenced else ("", "", "")
                out.append(
                    Write(
                        rv_of(obj),
                        kind,
                        e.name,
                        uid,
                        "changed",
                        writer,
                        e.name,
                        int(token) if token.isdigit() else None,
                        True,
                        obj,
                    )
                )
    return out


def _what(e: Seen, before: dict[str, Any] | None) -> str:
    obj = e.object
    if e.type == "ADDED":
        return "created"
    if e.type == "DELETED":
        # After a deletionTimestamp: the garbage collector finishing what that began.
        deleting = before is not None and before["metadata"].get("deletionTimestamp")
        return "" if deleting else "deleted"
    if before is None:
        return "changed"
    if obj["metadata"].get("deletionTimestamp") and not before["metadata"].get("deletionTimestamp"):
        return "deleting"
    if obj["metadata"].get("deletionTimestamp"):
        return ""  # finalizers going: the garbage collector's, not the operator's
    if obj["metadata"].get("generation") != before["metadata"].get("generation"):
        return "changed"
    if _labels(obj) != _labels(before) or _annotations(obj) != _annotations(before):
        return "changed"
    return ""


@dataclass
class Verdict:
    writes: list[Write]
    violations: list[str]
    recovery_deletes: int
    unattributed: int = 0

    def figures(self) -> str:
        by_what: dict[str, int] = {}
        for w in self.writes:
            by_what[w.what] = by_what.get(w.what, 0) + 1
        return (
            f"{len(self.writes)} target writes checked {dict(sorted(by_what.items()))}, "
            f"{self.recovery_deletes} recovery deletes, {self.unattributed} stable writes "
            f"without a token of their own (checked held), {len(self.violations)} violations"
        )


def check_writes_under_lock(writes: list[Write], leases: Leases, rollouts: Rollouts) -> Verdict:
    """Each write was made while the Lease of its target named the writer's rollout
    (and, for a stable write, the fencing token it carries). A deletion by another
    holder is allowed only of an ended rollout's objects (a recovery cleanup)."""
    violations: list[str] = []
    recovery = 0
    unattributed = 0
    for w in sorted(writes, key=lambda w: w.rv):
        held = leases.at(w.lease, w.rv)
        writer_uid = rollouts.uids.get(w.writer)
        if held is None or held.uid is None:
            violations.append(f"{w}: {w.lease} had no holder")
            continue
        if not w.writer:
            unattributed += 1  # a stable write without a token of its own: a run held it
            continue
        if held.uid == writer_uid:
            if w.token is not None and held.token != w.token:
                violations.append(f"{w}: token {w.token}, the Lease's is {held.token}")
            elif (
                w.what in {"created", "changed"}
                and None not in (w.run, held.run)
                and w.run != held.run
            ):
                violations.append(f"{w}: made by run {w.run}, the Lease names run {held.run}")
            continue
        holder = rollouts.name_of(held.uid)
        if w.what in {"deleting", "deleted"} and rollouts.phase_at(w.writer, w.rv) in TERMINAL:
            recovery += 1  # the next holder cleaning up an ended holder's objects
            continue
        violations.append(
            f"{w}: {w.lease} was held by {holder} ({held.identity}, token {held.token}), "
            f"{w.writer} is {rollouts.phase_at(w.writer, w.rv) or 'not yet seen'}"
        )
    return Verdict(writes, violations, recovery, unattributed)


def overlaps(leases: Leases, lease: str) -> list[tuple[Holding, Holding]]:
    """Pairs of successive holders where the next was written over the previous without
    a release in between (a takeover)."""
    states = leases.states.get(lease, [])
    return [
        (a, b)
        for a, b in itertools.pairwise(states)
        if a.identity and b.identity and a.identity != b.identity
    ]


SENTINEL_LEASE = """apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: watch-sentinel}
spec: {holderIdentity: nobody}
"""
SENTINEL_JOB = """apiVersion: batch/v1
kind: Job
metadata: {name: watch-sentinel}
spec:
  suspend: true
  template:
    spec:
      restartPolicy: Never
      containers: [{name: x, image: busybox:1.36}]
"""


class Evidence:
    """Watches of Leases, Deployments, Services, Jobs and CanaryRollouts of one
    namespace, started before the test creates anything. `ready()` applies the
    test's app manifests and sentinels, and returns once every watch has seen them (so
    no later change can be missed by a watch still connecting)."""

    KINDS = {
        "leases": "lease",
        "deployments": "deployment",
        "services": "service",
        "jobs": "job",
        "canaryrollouts": "rollout",
    }

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.watches = {r: RawWatch(cluster, namespace, r) for r in self.KINDS}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Evidence:
        for w in self.watches.values():
            self._stack.enter_context(w)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def rollouts(self) -> Watch:
        return self.watches["canaryrollouts"]

    @property
    def leases(self) -> Watch:
        return self.watches["leases"]

    def ready(
        self, *manifests: str, deployments: Iterable[str] = (), services: Iterable[str] = ()
    ) -> None:
        for manifest in (*manifests, SENTINEL_LEASE, SENTINEL_JOB):
            self.cluster.apply(manifest, self.namespace)
        expected = {
            "leases": ["watch-sentinel"],
            "jobs": ["watch-sentinel"],
            "deployments": list(deployments),
            "services": list(services),
        }
        for resource, names in expected.items():
            for name in names:
                self.watches[resource].wait(name, lambda e: True, 30)

    def lease_timeline(self) -> Leases:
        return Leases(self.leases.snapshot())

    def rollout_timeline(self) -> Rollouts:
        return Rollouts(self.rollouts.snapshot())

    def writes(self, stable_targets: Iterable[str] = ()) -> list[Write]:
        out: list[Write] = []
        stables = list(stable_targets)
        for resource in ("deployments", "services", "jobs"):
            events = [e for e in self.watches[resource].snapshot() if e.name != "watch-sentinel"]
            out += target_writes(
                self.KINDS[resource], events, stables if resource == "deployments" else ()
            )
        return sorted(out, key=lambda w: w.rv)

    def assert_complete(self) -> None:
        """No watch lost events (a stream that ended was resumed where it was)."""
        gaps = [f"{r}: {g}" for r, w in self.watches.items() for g in w.gaps]
        assert not gaps, "the watches missed events, the evidence is incomplete: " + "; ".join(gaps)

    def resumes(self) -> int:
        return sum(w.resumes for w in self.watches.values())

    def verdict(self, stable_targets: Iterable[str] = ()) -> Verdict:
        self.assert_complete()
        return check_writes_under_lock(
            self.writes(stable_targets), self.lease_timeline(), self.rollout_timeline()
        )

    def received(self, write: Write) -> float:
        """When (monotonic) the watch received the event of `write`."""
        resource = {"deployment": "deployments", "service": "services", "job": "jobs"}[write.kind]
        return next(
            e.at
            for e in self.watches[resource].snapshot()
            if e.name == write.name and rv_of(e.object) == write.rv
        )


def timeline(ev: Evidence, lease: str, target: str) -> str:
    """The Lease's states and the target's writes, merged in commit order (to read a
    failure)."""
    lines = [
        (h.rv, f"  lease {lease}: {h.identity or '-'} token {h.token}")
        for h in ev.lease_timeline().states.get(lease, [])
    ]
    lines += [(w.rv, f"  {w}") for w in ev.writes([target]) if w.target == target]
    return "\n".join(text for _, text in sorted(lines))
