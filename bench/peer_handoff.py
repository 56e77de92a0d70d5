"""bench_peer's lock handoff (canary-operator only: Argo Rollouts has no lock): a queue
of rollouts on one target, each handoff timed from the operator's Events, the Lease's
history and a watch."""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench.peer_canary import CanaryOperator
from bench.peer_cluster import NEW, apply_list
from bench.peer_workloads import settle

from canary_operator.lock.lease import HISTORY_ANNOTATION, lease_name
from e2e.watch import Seen, Watch

# Short rollouts on one replica: the canary (a setWeight needs one before it), one weight
# step, the promotion.
HANDOFF_STEPS: list[dict[str, Any]] = [
    {"canary": {"replicas": 1}},
    {"setWeight": 50},
    {"promote": {}},
]


def micro(ts: str) -> datetime:
    """A MicroTime (the Lease's, an Event's eventTime)."""
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


@dataclass
class Handoff:
    queued: int
    seconds: float  # apply of the whole queue -> the last one Succeeded
    requests: float  # canary-operator's API requests for the whole queue
    # Per handoff (the previous holder -> the next), in milliseconds, three ways:
    events_ms: list[float]  # its CleanupFinished Event -> the next one's Progressing Event
    lease_ms: list[float]  # Lease history: released -> acquired (the lock alone)
    watched_ms: list[float]  # seen by this benchmark's watch: CleanupVerified=True ->
    #                          the next one's status.steps[0].startedAt
    # Where the Events' figure goes, on the operator's clock: before the release (its
    # CleanupFinished -> its Lease release), and after the acquire (the next one's Lease
    # acquire -> its Progressing); the Lease's figure is the part in between.
    to_release_ms: list[float] = field(default_factory=list)
    from_acquire_ms: list[float] = field(default_factory=list)

    @property
    def handoffs(self) -> int:
        return self.queued - 1

    @property
    def requests_per_handoff(self) -> float:
        return self.requests / self.handoffs if self.handoffs else float("nan")


def _cleanup_verified(seen: Seen) -> bool:
    conditions = (seen.object.get("status") or {}).get("conditions") or []
    return any(c["type"] == "CleanupVerified" and c["status"] == "True" for c in conditions)


def _first_step_started(seen: Seen) -> bool:
    steps = (seen.object.get("status") or {}).get("steps") or []
    return bool(steps) and bool(steps[0].get("startedAt"))


def run_queue(ctl: CanaryOperator, target: str, count: int) -> Handoff:
    """`count` rollouts of `target`, created in one List (so queued in that order: FIFO
    by creation), each to its own image; measured until all succeeded and the operator
    went quiet (its last release and Events included)."""
    names = [f"{target}-{i:03d}" for i in range(count)]
    bodies = []
    for i, name in enumerate(names):
        body = ctl.rollout_body(name, steps=False)
        body["spec"]["target"] = {"deployment": target, "service": target}
        body["spec"]["images"] = [{"container": "app", "image": f"{NEW}.{i}"}]
        body["spec"]["steps"] = HANDOFF_STEPS
        bodies.append(body)
    with Watch(ctl.cluster, ctl.namespace, ctl.resource) as watch:
        before = ctl.counters()
        started = time.monotonic()
        apply_list(ctl.cluster, ctl.namespace, bodies)
        for name in names:
            watch.wait(name, ctl.done, timeout=120 + 60 * count)
        seconds = time.monotonic() - started
        after = settle(ctl, quiet=3.0, timeout=60)
        seen = {name: watch.of(name) for name in names}

    # The order in which they held the lock: by their first step's start.
    def first(name: str, predicate: Callable[[Seen], bool]) -> float:
        found = next((e for e in seen[name] if predicate(e)), None)
        return found.at if found is not None else math.nan

    order = sorted(names, key=lambda n: first(n, _first_step_started))
    watched = [
        (first(b, _first_step_started) - first(a, _cleanup_verified)) * 1000
        for a, b in itertools.pairwise(order)
    ]

    # The operator's own Events (eventTime in microseconds, its clock; written right
    # after the status write they announce: both ends are the same kind of moment).
    events = ctl.cluster.get_json(
        "events", "-n", ctl.namespace, "--field-selector", "involvedObject.kind=CanaryRollout"
    )["items"]
    cleanup_finished: dict[str, datetime] = {}
    step_one: dict[str, datetime] = {}
    for event in events:
        who, at = event["involvedObject"]["name"], event.get("eventTime")
        if who not in seen or not at:
            continue
        if event["reason"] == "CleanupFinished":
            cleanup_finished[who] = micro(at)
        elif event["reason"] == "Progressing":
            # The run's start: the plan that enters Progressing starts step 1 (a canary
            # step, which records its end only).
            step_one[who] = micro(at)
    by_event = sorted(step_one, key=step_one.__getitem__)
    events_ms = [
        (step_one[b] - cleanup_finished[a]).total_seconds() * 1000
        for a, b in itertools.pairwise(by_event)
        if a in cleanup_finished
    ]

    # The Lease's history annotation: acquired/released in microseconds (written by the
    # operator into the Lease it replaces: the lock's part of the handoff alone).
    lease = ctl.cluster.get_json("lease", lease_name(target), "-n", ctl.namespace)
    history = json.loads(lease["metadata"]["annotations"].get(HISTORY_ANNOTATION) or "[]")
    ours = [h for h in history if h.get("holder") in seen]
    lease_ms = [
        (micro(b["acquired"]) - micro(a["released"])).total_seconds() * 1000
        for a, b in itertools.pairwise(ours)
        if a.get("released") and b.get("acquired")
    ]
    held = {h["holder"]: h for h in ours}
    to_release, from_acquire = [], []
    for a, b in itertools.pairwise(by_event):
        released, acquired = held.get(a, {}).get("released"), held.get(b, {}).get("acquired")
        if a in cleanup_finished and released:
            to_release.append((micro(released) - cleanup_finished[a]).total_seconds() * 1000)
        if acquired:
            from_acquire.append((step_one[b] - micro(acquired)).total_seconds() * 1000)
    return Handoff(
        count, seconds, (after - before).requests, events_ms, lease_ms,
        [w for w in watched if not math.isnan(w)], to_release, from_acquire,
    )  # fmt: skip


def lock_handoffs(ctl: CanaryOperator, sizes: list[int]) -> tuple[Handoff, list[Handoff]]:
    """One rollout alone (what a rollout costs without a queue), then a queue of each
    size, each on its own target (a fresh Lease and history)."""
    targets = ["handoff-solo", *(f"handoff-{n}" for n in sizes)]
    with ctl.running():
        ctl.create_version_one(targets, replicas=1)
        solo = run_queue(ctl, targets[0], 1)
        print(f"  handoff: one rollout alone: {solo.seconds:.1f} s, "
              f"{solo.requests:.0f} requests", flush=True)  # fmt: skip
        queues = []
        for target, size in zip(targets[1:], sizes, strict=True):
            queue = run_queue(ctl, target, size)
            queues.append(queue)
            print(f"  handoff: {size} queued: {queue.seconds:.1f} s, {queue.requests:.0f} "
                  f"requests, {len(queue.events_ms)} handoffs", flush=True)  # fmt: skip
        ctl.delete_all()
    return solo, queues
