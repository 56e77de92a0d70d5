"""The per-lock queue: who may try to take the lock next. Pure functions.

Order: rollouts that still owe a cleanup come first (they already touched the
target), then waiting runs in the order they arrived (FIFO): when the run's spec was
applied (a new rollout's creation, an edit's first sight by the operator), not when
the rollout was created, so an edit of an old rollout never jumps ahead of rollouts
that waited before it. Under the Supersede policy only the newest waiting run may
start; older waiting ones are superseded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from canary_operator.api.models import TERMINAL_PHASES, ConcurrencyPolicy, Phase

UNSEEN = "~"  # sorts after any RFC 3339 time: arrived now, not yet recorded


@dataclass(frozen=True)
class Candidate:
    name: str
    uid: str
    # When this run's spec was applied, to the second (RFC 3339, sorts chronologically;
    # UNSEEN for an edit the operator has not recorded yet: the latest of all).
    applied: str
    phase: Phase
    policy: ConcurrencyPolicy = ConcurrencyPolicy.QUEUE
    deleting: bool = False
    # Within one second, the order the operator queued the runs in (microseconds;
    # UNSEEN for a run not yet queued).
    queued_at: str = UNSEEN
    run: int = 1  # the run that wants (or holds) the lock
    # While a run goes on: when the spec its next run will roll out was first seen
    # (microseconds), or None.
    next_applied: str | None = None

    @property
    def arrival(self) -> tuple[str, str, str]:
        return (self.applied, self.queued_at, self.name)

    @property
    def next_arrival(self) -> tuple[str, str, str] | None:
        """The arrival of the run that follows this one, already applied: also of an
        ended rollout whose spec changed (its next reconcile starts that run)."""
        if self.next_applied is None or self.waiting:
            return None
        return (f"{self.next_applied[:19]}Z", self.next_applied, self.name)

    @property
    def owes_cleanup(self) -> bool:
        return self.phase in (Phase.PROGRESSING, Phase.PAUSED, Phase.CLEANING_UP)

    @property
    def waiting(self) -> bool:
        return self.phase in (Phase.PENDING, Phase.QUEUED)

    @property
    def active(self) -> bool:
        return self.phase not in TERMINAL_PHASES


@dataclass(frozen=True)
class QueueView:
    position: int  # 1-based position among those that do not hold the lock
    waiting: int  # how many do not hold the lock and want it
    may_acquire: bool  # this rollout is at the head and the lock can be had
    superseded_by: str | None


def order(candidates: Iterable[Candidate], holder_uid: str | None) -> list[Candidate]:
    """Everyone that wants the lock and does not hold it, in the order they get it."""
    wanting = [
        c for c in candidates if c.active and c.uid != holder_uid and not (c.waiting and c.deleting)
    ]
    return sorted(wanting, key=lambda c: (not c.owes_cleanup, *c.arrival))


def newest_waiting(candidates: Iterable[Candidate]) -> Candidate | None:
    """The rollout whose waiting run was applied last: one queued, or the next run of
    one whose current run goes on (its edit waits for that run's end)."""
    arrivals = []
    for c in candidates:
        if c.deleting:
            continue
        if c.waiting:
            arrivals.append((c.arrival, c))
        elif c.next_arrival is not None:
            arrivals.append((c.next_arrival, c))
    return max(arrivals, key=lambda pair: pair[0], default=(None, None))[1]


def view(
    me: Candidate, candidates: list[Candidate], holder_uid: str | None, lock_free: bool
) -> QueueView:
    """Where `me` stands. `lock_free` means nobody holds the lock or it may be taken over.

    Every rollout of the lock computes the same order, so at most one sees itself at
    the head: rollouts owing a cleanup, then waiting ones FIFO, except that waiting
    rollouts under Supersede that a newer waiting rollout replaces are left out (they
    end at once), which lets the newest go ahead of them.
    """
    newest = newest_waiting(candidates)

    def superseded(c: Candidate) -> bool:
        return (
            c.policy == ConcurrencyPolicy.SUPERSEDE
            and c.waiting
            and newest is not None
            and newest.uid != c.uid
        )

    everyone = order(candidates, holder_uid)
    superseded_by = newest.name if newest is not None and superseded(me) else None
    queue = everyone if superseded_by else [c for c in everyone if not superseded(c)]
    position = next((i + 1 for i, c in enumerate(queue) if c.uid == me.uid), 0)
    may_acquire = (
        lock_free
        and position == 1
        and superseded_by is None
        and (me.owes_cleanup or not me.deleting)
    )
    return QueueView(
        position=position,
        waiting=len(everyone),
        may_acquire=may_acquire,
        superseded_by=superseded_by,
    )
