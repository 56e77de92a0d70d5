"""A cleanup waiting for the canary's objects to go, and one that waits in vain.

Cleanup asks for the canary's objects to be deleted, then waits until they are gone
(the pods of the canary are gone before the lock is released). An object whose
deletion is long overdue (a finalizer nobody removes; a pod on a node that went away,
whose kubelet can never confirm it stopped) blocks the cleanup: the rollout says so
(condition CleanupVerified=False, reason CleanupBlocked, naming the objects, why they
stay, and the way out; `status.cleanup.blockedBy`; one Warning Event per blocked
episode), keeps its lock, and checks again with a growing delay rather than every
second. The way out is a human's: the operator never forces a deletion, since a pod
force-deleted while it still runs keeps serving the canary's version outside anything's
control, and a finalizer removed early skips whatever its owner still had to do.

Stateless: how long an object has been overdue is read from its deletionTimestamp, so
the verdict and the next check survive restarts and repeat exactly when replayed.
"""

from __future__ import annotations

import json
from datetime import datetime

from canary_operator.api.models import CleanupStatus
from canary_operator.api.timestamps import iso
from canary_operator.engine.context import Context
from canary_operator.engine.types import Lingering, Observed

# An object this long past its deletionTimestamp will not go by itself (for a pod the
# timestamp already includes its grace period; a kubelet confirms a stopped pod within
# seconds, a garbage collector deletes dependents as fast).
BLOCKED_AFTER = 20.0
# Checks while waiting: each one half as far again from the deletion as the last
# (every second at first, then 1.5x further apart), never more than this apart.
RECHECK_MIN = 1.0
RECHECK_MAX = 30.0
# How many objects a message names (status.cleanup.blockedBy lists up to BLOCKED_LISTED).
NAMED = 3
BLOCKED_LISTED = 20
DOCS = "docs/troubleshooting.md#a-cleanup-blocked-by-objects-that-will-not-go"
# Finalizers the API server's garbage collector sets (foreground or orphan deletion):
# they go by themselves once the dependents have.
GC_FINALIZERS = frozenset({"foregroundDeletion", "orphan"})


def await_deletions(ctx: Context, waiting: str) -> None:
    """Cleanup waits for the canary's objects to go (`waiting`: what the status says
    meanwhile). Blocked once one is overdue; the next check is planned with backoff
    (an object going also wakes the rollout: its Deployment's, or its pod's, watch)."""
    overdue = [o for o in ctx.obs.lingering if overdue_for(o, ctx.now) >= BLOCKED_AFTER]
    if overdue:
        _blocked(ctx, overdue)
    else:
        unblocked(ctx)
        ctx.status.message = waiting
    ctx.plan.requeue(recheck_after(ctx.obs))


def overdue_for(obj: Lingering, now: datetime) -> float:
    """Seconds since `obj`'s deletion was due (negative during a pod's grace period)."""
    return (now - obj.due).total_seconds()


def recheck_after(obs: Observed) -> float:
    """When to look again at objects that are going: every second at first, then
    further apart as the oldest deletion grows overdue (half its age: 1.5x apart each
    time), capped at RECHECK_MAX; never past the moment it counts as blocked."""
    if not obs.lingering:
        return RECHECK_MIN  # just deleted: their deletion shows on the next look
    waited = max(overdue_for(o, obs.now) for o in obs.lingering)
    if waited < 0:  # the oldest is still in its grace period
        return min(RECHECK_MAX, max(RECHECK_MIN, -waited))
    delay = min(RECHECK_MAX, max(RECHECK_MIN, waited / 2))
    if waited < BLOCKED_AFTER:
        delay = min(delay, max(RECHECK_MIN, BLOCKED_AFTER - waited))
    return delay


def unblocked(ctx: Context) -> None:
    """The objects that would not go are gone: the episode is over, cleanup goes on."""
    cleanup = ctx.status.cleanup
    if cleanup is None or not cleanup.blocked_by:
        return
    gone = ", ".join(_names(cleanup))
    cleanup.blocked_by = None
    cleanup.last_error = None
    ctx.set_condition(
        "CleanupVerified", False, "CleanupRunning", f"cleanup in progress; gone now: {gone}"
    )
    ctx.event("CleanupUnblocked", f"the objects that would not go are gone ({gone})")


def _blocked(ctx: Context, overdue: list[Lingering]) -> None:
    """Say which objects will not go, why, and the way out; the lock is kept."""
    cleanup = ctx.status.cleanup
    assert cleanup is not None
    ns = ctx.rollout.namespace
    ordered = sorted(overdue, key=lambda o: (o.kind != "pod", o.kind, o.name))
    described = [describe(o) for o in ordered]
    first = not cleanup.blocked_by
    cleanup.blocked_by = described[:BLOCKED_LISTED]
    more = f"; and {len(described) - NAMED} more" if len(described) > NAMED else ""
    summary = "; ".join(described[:NAMED]) + more
    count = f"{len(ordered)} object{'s' if len(ordered) > 1 else ''} will not go"
    cleanup.last_error = f"{count}: {summary}"
    lock = ctx.obs.lock.name
    names = ", ".join(_names(cleanup)[:NAMED]) + (", ..." if len(described) > NAMED else "")
    ctx.status.message = f"cleanup blocked: {count} ({names}); lock kept"
    condition = (
        f"{count}: {summary}. The lock {lock} is kept until they are gone; the operator "
        f"never forces a deletion. Way out: {way_out(ordered, ns)} See {DOCS}."
    )
    ctx.set_condition("CleanupVerified", False, "CleanupBlocked", condition)
    if first:
        ctx.event(
            "CleanupBlocked",
            f"cleanup blocked, lock {lock} kept: {count}: {summary}. "
            "The condition CleanupVerified says how to let them go.",
            warning=True,
        )


def describe(obj: Lingering) -> str:
    """kind/name: since when it should be gone, and why it is not (if known)."""
    why = [f"deletion due {iso(obj.due)}"]
    foreign = [f for f in obj.finalizers if f not in GC_FINALIZERS]
    if foreign:
        why.append(f"held by finalizer{'s' if len(foreign) > 1 else ''} {', '.join(foreign)}")
    if "foregroundDeletion" in obj.finalizers:
        why.append("waiting for its dependents (foreground deletion)")
    if obj.node_problem:
        why.append(obj.node_problem)
    elif obj.kind == "pod" and not foreign and obj.node:
        why.append(f"node {obj.node} has not confirmed it stopped (unreachable or gone?)")
    return f"{obj.kind}/{obj.name}: {', '.join(why)}"


def way_out(overdue: list[Lingering], ns: str) -> str:
    """What a human can do that keeps the target safe, as commands for the first
    object that needs each (a Deployment in foreground deletion goes once its pods
    have, so it needs none)."""
    steps = []
    held = next((o for o in overdue if _foreign(o)), None)
    if held is not None:
        i, finalizer = _foreign(held)[0]
        patch = json.dumps(
            [
                {"op": "test", "path": f"/metadata/finalizers/{i}", "value": finalizer},
                {"op": "remove", "path": f"/metadata/finalizers/{i}"},
            ],
            separators=(",", ":"),
        )
        steps.append(
            f"a finalizer is its owner's: let the controller that set {finalizer} finish; "
            f"only if that controller is gone, remove it: kubectl patch {held.kind} "
            f"{held.name} -n {ns} --type=json -p '{patch}'."
        )
    stranded = next((o for o in overdue if o.kind == "pod" and not _foreign(o)), None)
    if stranded is not None:
        node = stranded.node or "NODE"
        steps.append(
            f"for a pod whose node is gone: first confirm the node is gone or the pod "
            f"stopped (kubectl get node {node}), then kubectl delete pod {stranded.name} "
            f"-n {ns} --grace-period=0 --force."
        )
    if not steps:
        steps.append("find what holds them (kubectl get KIND NAME -o yaml).")
    return " ".join(steps)


def _foreign(obj: Lingering) -> list[tuple[int, str]]:
    return [(i, f) for i, f in enumerate(obj.finalizers) if f not in GC_FINALIZERS]


def _names(cleanup: CleanupStatus) -> list[str]:
    return [entry.split(":", 1)[0] for entry in cleanup.blocked_by or []]
