"""How a run ends: its outcome decided (then cleanup, the "finally"), its terminal
phase and conditions; and what a failed or retried action makes of a plan."""

from __future__ import annotations

from datetime import datetime

from canary_operator.api.models import (
    TERMINAL_PHASES,
    CanaryRolloutStatus,
    CleanupStatus,
    Outcome,
    Phase,
    Result,
    StepPhase,
)
from canary_operator.api.timestamps import iso
from canary_operator.engine.cleanup_failures import block_cleanup
from canary_operator.engine.conditions import set_condition
from canary_operator.engine.context import Context
from canary_operator.engine.labels import step_label
from canary_operator.engine.types import Observed, Plan, ReleaseLock, Rollout


def decide(ctx: Context, result: Result, message: str) -> None:
    """Record why the run ends, then hand over to cleanup (the finally)."""
    status = ctx.status
    status.outcome = Outcome(result=result, message=message, decided_at=iso(ctx.now))
    status.cleanup = CleanupStatus(started_at=iso(ctx.now))
    status.paused_at = None
    # Announced by CleanupStarted below (a Warning unless the run succeeded), not also
    # by an Event named after the phase.
    ctx.enter(Phase.CLEANING_UP, f"{result.value}: {message}; cleaning up", announce=False)
    ctx.set_condition("Paused", False, "CleaningUp", "")
    ctx.set_condition("Progressing", True, "CleaningUp", message)
    ctx.set_condition("CleanupVerified", False, "CleanupRunning", "cleanup in progress")
    ctx.event(
        "CleanupStarted",
        f"outcome {result.value} ({message}); cleanup started",
        warning=result != Result.SUCCEEDED,
    )
    ctx.plan.requeue(0)


def end_without_run(ctx: Context, result: Result, message: str, holding: bool = False) -> None:
    """End a rollout that never touched the target: nothing to clean up."""
    status = ctx.status
    status.outcome = Outcome(result=result, message=message, decided_at=iso(ctx.now))
    if holding:  # lock acquired in this very round, before any step: give it back
        ctx.act(ReleaseLock())
    finish(ctx, status.outcome)


def finish(ctx: Context, outcome: Outcome) -> None:
    status = ctx.status
    final = outcome.result.final_phase
    status.completed_at = iso(ctx.now)
    status.queue_label = None
    status.queue = None
    ctx.enter(final, f"{outcome.result.value}: {outcome.message}")
    ctx.set_condition("Progressing", False, outcome.result.value, outcome.message)
    ctx.set_condition("Paused", False, outcome.result.value, "")
    succeeded = final == Phase.SUCCEEDED
    ctx.set_condition("Completed", succeeded, outcome.result.value, outcome.message)
    ctx.set_condition("Failed", not succeeded, outcome.result.value, outcome.message)


def retrying(rollout: Rollout, obs: Observed, status: CanaryRolloutStatus, error: str) -> Plan:
    """An API call of the planned actions failed in a way a retry may cure (a 5xx, a
    timeout, a refused connection): keep the planned status and the lock, and say what
    fails, once, rather than let the run look stuck for no reason."""
    ctx = Context(rollout.__class__(**{**rollout.__dict__, "status": status}), obs)
    previous = ctx.status.condition("ReconcileError")
    said = previous is not None and previous.status == "True" and previous.message == error
    ctx.set_condition("ReconcileError", True, "Retrying", error)
    ctx.status.message = f"retrying: {error}"
    if not said:
        ctx.event("RetryingAfterError", f"{error}; retrying with backoff, lock kept", warning=True)
    return ctx.plan


def recovered(status: CanaryRolloutStatus, now: datetime, generation: int) -> None:
    """The actions of a reconcile went through: an earlier ReconcileError is over."""
    previous = status.condition("ReconcileError")
    if previous is None or previous.status != "True":
        return
    message = f"recovered from: {previous.message}"[:1000]
    set_condition(status, "ReconcileError", False, "Recovered", message, now, generation)


def action_failed(rollout: Rollout, obs: Observed, status: CanaryRolloutStatus, error: str) -> Plan:
    """An action failed for good (bad input, a missing object): end the step or retry
    the cleanup. `status` is the planned status the failed action belonged to."""
    ctx = Context(rollout.__class__(**{**rollout.__dict__, "status": status}), obs)
    phase = ctx.status.phase
    if phase in (Phase.PROGRESSING, Phase.PAUSED):
        index = ctx.status.current_step or 0
        steps = ctx.status.steps or []
        if index > 0 and (index >= len(steps) or steps[index].phase == StepPhase.PENDING):
            index -= 1  # that step finished in the very plan whose action failed
        if index < len(steps):
            step = steps[index]
            step.phase = StepPhase.FAILED
            step.finished_at = iso(ctx.now)
            step.message = error
        decide(ctx, Result.STEP_FAILED, f"step {index + 1} failed: {error}")
        assert ctx.status.outcome is not None
        ctx.status.outcome.failed_step = index + 1
    elif phase == Phase.CLEANING_UP:
        block_cleanup(ctx, error)
    elif phase not in TERMINAL_PHASES:
        end_without_run(ctx, Result.INVALID, error, obs.lock.held)
    ctx.status.step_label = step_label(rollout.spec, ctx.status.current_step)
    return ctx.plan
