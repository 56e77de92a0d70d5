"""The rollout state machine: (rollout, observations) -> (next status, actions).

Pure: no I/O, no clock (time comes in `Observed.now`). Level-triggered: every call
recomputes what must happen from the status and what is observed, so calling it again
after a crash, a lost write or a duplicate event converges on the same result.

Lifecycle: Pending -> Queued -> Progressing <-> Paused -> CleaningUp -> terminal.
The outcome of a run is recorded *before* CleaningUp starts; cleanup always follows
once the lock was taken (the "finally"), and the lock is released only after the
cleanup has been verified.

This module is the entry point (`plan`) and the bookkeeping every plan ends with; each
phase has its module: start.py (Pending, Queued), steps.py and traffic_steps.py
(Progressing, Paused), cleanup.py (CleaningUp), outcomes.py (how a run ends)."""

from __future__ import annotations

from canary_operator.api.models import TERMINAL_PHASES, CanaryRolloutStatus, Phase
from canary_operator.engine.cleanup import cleaning_up
from canary_operator.engine.context import Context

# The engine as the reconcile uses it: plan() and these.
from canary_operator.engine.evidence import jobs_wanting_logs as jobs_wanting_logs
from canary_operator.engine.evidence import record_evidence
from canary_operator.engine.labels import step_label
from canary_operator.engine.needs import need_after_planning, need_before_planning
from canary_operator.engine.needs import takes_lock as takes_lock
from canary_operator.engine.outcomes import action_failed as action_failed
from canary_operator.engine.outcomes import recovered as recovered
from canary_operator.engine.outcomes import retrying as retrying
from canary_operator.engine.start import pending, queued, terminal
from canary_operator.engine.steps import progressing
from canary_operator.engine.types import (
    Action,
    AddFinalizer,
    Observed,
    Plan,
    RemoveFinalizer,
    Rollout,
)
from canary_operator.engine.versions import note_next_version, record_live


def plan(rollout: Rollout, obs: Observed, last_step: int | None = None) -> Plan:
    """Decide the next status and actions for one rollout, or ask for an observation
    first: a plan with `observe_next` set is provisional (see Plan), carrying the input
    status unchanged. `last_step`: steps that finish here are followed by the next one
    only up to this step (index)."""
    need = need_before_planning(rollout, obs)
    if need is None:
        planned = _decided(rollout, obs, last_step)
        need = need_after_planning(rollout, obs, planned)
        if need is None:
            return planned
    return Plan(status=rollout.status, observe_next=need)


def _decided(rollout: Rollout, obs: Observed, last_step: int | None = None) -> Plan:
    """The plan from this observation as it is (no need asked)."""
    ctx = Context(rollout, obs, last_step)
    phase = ctx.status.phase
    if phase in TERMINAL_PHASES:
        terminal(ctx)
    elif phase == Phase.PENDING:
        pending(ctx, holding=obs.lock.held)
    elif phase == Phase.QUEUED:
        queued(ctx)
    elif phase in (Phase.PROGRESSING, Phase.PAUSED):
        progressing(ctx)
    elif phase == Phase.CLEANING_UP:
        cleaning_up(ctx)
    _bookkeeping(ctx)
    return ctx.plan


def _bookkeeping(ctx: Context) -> None:
    """What every plan records after its phase's logic, whatever the phase."""
    rollout, obs = ctx.rollout, ctx.obs
    status = ctx.status  # a new run replaces the status object
    status.observed_generation = rollout.generation  # this status answers this generation
    note_next_version(ctx)
    if obs.lock.held and status.queue is not None and status.queue.holder == obs.lock.holder:
        # The holder's phase as this plan leaves it, not as the lock was observed before
        # it: otherwise the next reconcile writes the status again just to catch up.
        status.queue.holder_phase = status.phase.value
    _renewal_condition(ctx)
    _finalizer(ctx)
    if obs.lock.held and status.phase in (Phase.PROGRESSING, Phase.PAUSED, Phase.CLEANING_UP):
        status.weight = obs.route.weight
    elif status.phase in TERMINAL_PHASES and status.cleanup is not None:
        status.weight = 0
    status.step_label = step_label(rollout.spec, status.current_step)
    record_live(ctx)
    record_evidence(ctx)


def _finalizer(ctx: Context) -> None:
    """The finalizer guards a run that may still owe a cleanup; an ended one needs none.

    Adding it comes before any side effect (actions run in order); removing it after
    the terminal status is written (the reconciler runs RemoveFinalizer last)."""
    rollout = ctx.rollout
    terminal = ctx.status.phase in TERMINAL_PHASES
    if not terminal and not rollout.has_finalizer and not rollout.deleting:
        ctx.plan.actions.insert(0, AddFinalizer())
    if terminal and rollout.has_finalizer:
        ctx.act(RemoveFinalizer())


def _renewal_condition(ctx: Context) -> None:
    """A held lease whose renewal fails is said so (it is never taken from a live
    holder, but a human should know the operator cannot write it)."""
    error = ctx.obs.lock.renew_error if ctx.obs.lock.held else None
    if error:
        ctx.set_condition("LockRenewed", False, "RenewalFailing", error)
    elif ctx.status.condition("LockRenewed") is not None:
        ctx.set_condition("LockRenewed", True, "Renewed", "")


def blamed_status(
    rollout: Rollout, obs: Observed, planned: Plan, failed: Action | None
) -> CanaryRolloutStatus:
    """The planned status a failed action is judged against: when the step that asked
    for it finished in that plan (and later steps started, or the run was decided),
    the same plan stopped right after that step, so the failure is that step's."""
    owner = planned.owner(failed) if failed is not None else None
    if owner is None or owner >= (planned.status.current_step or 0):
        return planned.status
    # With the observation the failed plan was made from: no need is asked again.
    return _decided(rollout, obs, last_step=owner).status
