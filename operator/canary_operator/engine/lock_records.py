"""What the status records of the lock: the queue as observed, and the lock a run holds."""

from __future__ import annotations

from canary_operator.api.models import LockStatus, QueueStatus
from canary_operator.api.timestamps import iso
from canary_operator.engine.context import Context


def record_queue(ctx: Context) -> None:
    lock = ctx.obs.lock
    ctx.status.queue = QueueStatus(
        lock=lock.name,
        holder=lock.holder,
        holder_phase=lock.holder_phase,
        position=0 if lock.held else lock.position,
        waiting=lock.waiting,
    )
    if lock.held:
        ctx.status.queue_label = "holding" + (f" (+{lock.waiting} waiting)" if lock.waiting else "")
    elif lock.holder:
        ctx.status.queue_label = f"#{lock.position} behind {lock.holder}"
    else:
        ctx.status.queue_label = f"#{lock.position}"


def record_lock(ctx: Context, purpose: str = "") -> None:
    """Record the lock held now, unless the status records it already (same token): a
    run's first holding, or a cleanup's after the run lost it. `purpose`: said in the
    Event (" for cleanup")."""
    lock = ctx.obs.lock
    if ctx.status.lock is not None and ctx.status.lock.token == lock.token:
        return
    ctx.status.lock = LockStatus(
        name=lock.name,
        token=lock.token or 0,
        acquired_at=iso(ctx.now),
        recovered_from=lock.recovered_from,
    )
    ctx.event("LockAcquired", f"acquired lock {lock.name}{purpose} (token {lock.token})")
