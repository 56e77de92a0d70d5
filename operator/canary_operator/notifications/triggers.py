"""Which lifecycle triggers a status transition fires (pure: no I/O).

A trigger fires on the transition that the reconciler has just written (old status ->
new status), so each is derived once from a durable change. `on-lock-waiting` is the
exception: it fires when a run has waited for its lock longer than a threshold, which
no write marks; the notifier times it (see notifier.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from canary_operator.api.models import CanaryRolloutStatus, Phase, Result, StepPhase

STARTED = "on-started"
STEP_FAILED = "on-step-failed"
PAUSED = "on-paused"
PROMOTED = "on-promoted"
SUCCEEDED = "on-succeeded"
FAILED = "on-failed"
ABORTED = "on-aborted"
CLEANUP_BLOCKED = "on-cleanup-blocked"
LOCK_WAITING = "on-lock-waiting"

TRIGGERS = (
    STARTED,
    STEP_FAILED,
    PAUSED,
    PROMOTED,
    SUCCEEDED,
    FAILED,
    ABORTED,
    CLEANUP_BLOCKED,
    LOCK_WAITING,
)


@dataclass(frozen=True)
class Fired:
    """One trigger of one run. `occurrence` tells apart repeats within a run that are
    distinct events (a second pause step); the dedupe key is built from both."""

    trigger: str
    run: int
    occurrence: str = ""

    @property
    def key(self) -> str:
        return f"{self.run}/{self.trigger}" + (f"/{self.occurrence}" if self.occurrence else "")


def fired(old: CanaryRolloutStatus | None, new: CanaryRolloutStatus) -> list[Fired]:
    """The triggers the transition old -> new fires (old None: the first write)."""
    before = old if old is not None and old.run == new.run else CanaryRolloutStatus()
    run = new.run
    found: list[Fired] = []

    def entered(phase: Phase) -> bool:
        return new.phase == phase and before.phase != phase

    if new.started_at and new.started_at != before.started_at:
        found.append(Fired(STARTED, run))
    if entered(Phase.PAUSED):
        step = "" if new.current_step is None else str(new.current_step + 1)
        found.append(Fired(PAUSED, run, f"step-{step}" if step else ""))
    outcome = new.outcome
    if (
        outcome is not None
        and outcome.result == Result.STEP_FAILED
        and (before.outcome is None or before.outcome.decided_at != outcome.decided_at)
    ):
        found.append(Fired(STEP_FAILED, run))
    if _promoted(new) and not _promoted(before):
        found.append(Fired(PROMOTED, run))
    if entered(Phase.SUCCEEDED):
        found.append(Fired(SUCCEEDED, run))
    if entered(Phase.FAILED):
        found.append(Fired(FAILED, run))
    if entered(Phase.ABORTED):
        found.append(Fired(ABORTED, run))
    blocked = new.cleanup is not None and bool(new.cleanup.last_error)
    was_blocked = before.cleanup is not None and bool(before.cleanup.last_error)
    if blocked and not was_blocked and new.phase == Phase.CLEANING_UP:
        found.append(Fired(CLEANUP_BLOCKED, run))
    return found


def _promoted(status: CanaryRolloutStatus) -> bool:
    return any(s.kind == "promote" and s.phase == StepPhase.SUCCEEDED for s in status.steps or [])
