"""Before a run starts: a new run (of a new or ended rollout), Pending, Queued, and the
checks that may refuse it; holding its lock, the target made clean and step 1 begun."""

from __future__ import annotations

from datetime import timedelta

from canary_operator.api.models import (
    DEFAULT_REPLICAS_MODE,
    ROUTER_REPLICAS,
    TERMINAL_PHASES,
    CanaryRolloutStatus,
    Phase,
    Result,
    Step,
    StepStatus,
)
from canary_operator.api.timestamps import iso, precise
from canary_operator.engine import undo_run
from canary_operator.engine.annotations import RETRY_ANNOTATION, retry_requested
from canary_operator.engine.context import POLL_WAITING, Context
from canary_operator.engine.lock_records import record_lock, record_queue
from canary_operator.engine.outcomes import end_without_run
from canary_operator.engine.spec_checks import reach_problems, spec_problems
from canary_operator.engine.steps import progressing
from canary_operator.engine.types import (
    DeleteCanaryObjects,
    Observed,
    ReleaseLock,
    ResetRoute,
    Rollout,
)
from canary_operator.engine.versions import older_than_live, record_version_age
from canary_operator.engine.weights import original_replicas, run_mode


def terminal(ctx: Context) -> None:
    rollout, status = ctx.rollout, ctx.status
    if ctx.obs.lock.held:  # the release after a verified cleanup did not go through
        ctx.act(ReleaseLock())
    if rollout.deleting:
        return
    wants_retry = retry_requested(rollout)
    if status.fingerprint != rollout.spec.run_fingerprint() or wants_retry:
        why = "retry requested" if wants_retry else "spec changed"
        retry = rollout.annotations.get(RETRY_ANNOTATION, "")
        run = int(retry) if wants_retry else status.run + 1
        new_run(ctx, f"{why}: starting run {run}", run)
        pending(ctx)


def wants_validation(rollout: Rollout, lock_held: bool) -> bool:
    """Whether this reconcile may start a run, so the spec is to be checked against the
    cluster first (validation.py): a new rollout, a new run of an ended one, or a queued
    one that holds its lock and is about to take its first step."""
    status = rollout.status
    if rollout.deleting or rollout.spec.abort:
        return False
    if status.phase == Phase.PENDING:
        return True
    if status.phase == Phase.QUEUED:
        return lock_held and status.started_at is None
    if status.phase in TERMINAL_PHASES:
        return status.fingerprint != rollout.spec.run_fingerprint() or retry_requested(rollout)
    return False


def new_run(ctx: Context, message: str, run: int | None = None) -> None:
    old = ctx.status
    # The spec's age and what the target runs carry over: a retry of the same spec is
    # as old as that spec (see older_than_live).
    fresh = CanaryRolloutStatus(
        run=run or old.run + 1,
        conditions=old.conditions,
        fingerprint=old.fingerprint,
        version_since=old.version_since,
        next_version_since=old.next_version_since,
        live=old.live,
        replicas_mode=old.replicas_mode,  # the next run's, if its spec names no mode
    )
    ctx.status = fresh
    ctx.plan.status = fresh
    for type_ in ("Completed", "Failed"):  # the previous run's verdict is not this run's
        if fresh.condition(type_) is not None:
            ctx.set_condition(type_, False, "NewRun", message)
    ctx.event("NewRun", message)


def start_refusal(ctx: Context, when: str, validated: bool) -> tuple[Result, str] | None:
    """The first reason this run may not start, as the result and message it ends
    with, or None. `when` completes "deleted ..." and "aborted ..."; `validated`: the
    start-of-run validation against the cluster (obs.spec_problems) counts."""
    rollout, spec, obs = ctx.rollout, ctx.rollout.spec, ctx.obs
    if rollout.deleting:
        return Result.DELETED, f"deleted {when}"
    if spec.abort:
        return Result.ABORTED, f"aborted {when}"
    if ctx.status.fingerprint != spec.run_fingerprint():  # changed while it waited
        record_version_age(ctx)
        ctx.status.observed_generation = rollout.generation
    problems = [*spec_problems(spec), *obs.policy_problems]
    if validated:
        problems += obs.spec_problems
    if obs.target is None:
        if problems:
            return Result.INVALID, "; ".join(problems)
        return (
            Result.TARGET_NOT_FOUND,
            f"target Deployment {spec.target.deployment!r} not found",
        )
    mode = run_mode(spec.replicas_mode, ctx.status.replicas_mode)
    record = obs.target.stable_record  # a Shift run's left: the recovery restores it first
    replicas = original_replicas(
        obs.target.replicas,
        record.original if record else None,
        record.written if record else None,
    )
    problems += reach_problems(spec, mode, replicas)
    if problems:
        return Result.INVALID, "; ".join(problems)
    # Before anything touches the target, also right after the lock is taken (while it
    # is held no other run can promote): a version older than the live one never runs.
    outdated = undo_run.refusal(ctx)
    if outdated:
        return Result.UNDO_OUTDATED, outdated
    older = older_than_live(ctx)
    if older:
        return Result.OLDER_THAN_LIVE, older
    return None


def pending(ctx: Context, holding: bool = False) -> None:
    """`holding`: the reconciler took the lock for this new run in this very round (a
    run that passes its checks at the head of a free lock); a run that ends here gives
    it back. A new run of an ended rollout is never holding: its old run's lock is
    being released."""
    rollout, status, obs = ctx.rollout, ctx.status, ctx.obs
    if status.run == 0 and status.replicas_mode is None:
        # A rollout's first run. One that ran before has a run number; without a
        # recorded mode, an operator whose default was Add ran it, and it keeps Add.
        status.replicas_mode = DEFAULT_REPLICAS_MODE
    status.run = max(status.run, 1)
    record_version_age(ctx)
    status.observed_generation = rollout.generation
    refusal = start_refusal(ctx, "before it started", validated=True)
    if refusal is not None:
        end_without_run(ctx, *refusal, holding)
        return
    status.queued_at = precise(ctx.now)
    # A run that holds its lock already never waits: no Queued Event to say it does
    # (LockAcquired follows in this plan; status.queuedAt still records the moment).
    ctx.enter(Phase.QUEUED, f"waiting for lock {obs.lock.name}", announce=not holding)
    ctx.set_condition("Progressing", True, "Queued", status.message or "")
    if holding:  # it goes on as a queued run holding its lock: it starts now
        queued(ctx)
        return
    ctx.plan.requeue(0)


def queued(ctx: Context) -> None:
    """A run waiting for its lock; holding it, the target is made clean and the run
    starts."""
    lock = ctx.obs.lock
    record_queue(ctx)
    # Checked again here: the spec may have changed while it waited. The validation
    # against the cluster counts once the lock is held (it is made again right before
    # the first step).
    refusal = start_refusal(ctx, "while queued", validated=lock.held)
    if refusal is not None:
        end_without_run(ctx, *refusal, lock.held)
        return
    if not lock.held:
        _wait_for_lock(ctx)
        return
    # Holding the lock. The target must be clean before the first step: a previous
    # holder may have died half-way (takeover), so undo whatever it left behind.
    record_lock(ctx)
    if _recovering_target(ctx):
        return
    _start(ctx)


def _wait_for_lock(ctx: Context) -> None:
    """Not holding the lock: wait in the queue, unless superseded or rejected."""
    lock, status = ctx.obs.lock, ctx.status
    if lock.superseded_by:
        end_without_run(ctx, Result.SUPERSEDED, f"superseded by newer rollout {lock.superseded_by}")
        return
    if lock.busy and ctx.rollout.spec.policy.value == "Reject":
        end_without_run(
            ctx, Result.REJECTED, f"lock {lock.name} is held by {lock.holder} (policy Reject)"
        )
        return
    phase = f" ({lock.holder_phase})" if lock.holder_phase else ""
    holder = f"held by {lock.holder}{phase}" if lock.holder else "free"
    status.message = f"waiting for lock {lock.name}: {holder}, position {lock.position}"
    ctx.set_condition("Progressing", True, "Queued", status.message)
    ctx.plan.requeue(POLL_WAITING)


def _recovering_target(ctx: Context) -> bool:
    """Undo what a previous holder left on the target (or refuse a route that cannot
    be used); True while this plan does so instead of starting."""
    obs, status = ctx.obs, ctx.status
    if obs.route.error:  # e.g. an HTTPRoute without a rule to the stable Service
        end_without_run(ctx, Result.INVALID, f"cannot use the route: {obs.route.error}", True)
        return True
    if not obs.route.reset:
        status.message = "recovery: routing 100% to stable before starting" + (
            f" ({obs.route.restoring})" if obs.route.restoring else ""
        )
        ctx.act(ResetRoute())
        ctx.plan.requeue(1)
        return True
    if leftovers(obs):
        status.message = "recovery: deleting canary objects left by a previous run"
        ctx.act(DeleteCanaryObjects())
        ctx.plan.requeue(1)
        return True
    return False


def _start(ctx: Context) -> None:
    status, spec, obs = ctx.status, ctx.rollout.spec, ctx.obs
    status.started_at = iso(ctx.now)
    status.deadline_at = iso(ctx.now + timedelta(seconds=spec.progress_deadline_seconds))
    assert obs.target is not None
    status.stable_replicas = obs.target.replicas
    if spec.router_kind == ROUTER_REPLICAS:  # kept to the run's end (traffic_steps.py)
        status.replicas_mode = run_mode(spec.replicas_mode, status.replicas_mode)
    status.current_step = 0
    status.steps = [fresh_step_status(s) for s in spec.steps]
    ctx.enter(Phase.PROGRESSING, "started")
    ctx.set_condition("Progressing", True, "Started", "rollout started")
    undo_run.announce(ctx)
    # The first step starts in this same plan, with no second status write and no trip
    # through the work queue: the observation is as fresh as a run's start wants it
    # (the reconciler read it from the API server), and nothing above acted on the
    # target, so every action of this plan is step 1's (a failed one fails step 1).
    progressing(ctx)


def fresh_step_status(step: Step) -> StepStatus:
    return StepStatus(name=step.name or step.kind, kind=step.kind)


def leftovers(obs: Observed) -> bool:
    """Canary objects on the target, or test Jobs (a previous run's: a run deletes
    only its own in its cleanup, so the recovery before a run starts takes the rest)."""
    return (
        obs.canary is not None
        or obs.canary_service
        or obs.canary_pods > 0
        or any(not job.cleanup and not job.kept for job in obs.jobs.values())
    )
