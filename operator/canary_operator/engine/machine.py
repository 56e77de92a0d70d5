"""The rollout state machine: (rollout, observations) -> (next status, actions).

Pure: no I/O, no clock (time comes in `Observed.now`). Level-triggered: every call
recomputes what must happen from the status and what is observed, so calling it again
after a crash, a lost write or a duplicate event converges on the same result.

Lifecycle: Pending -> Queued -> Progressing <-> Paused -> CleaningUp -> terminal.
The outcome of a run is recorded *before* CleaningUp starts; cleanup always follows
once the lock was taken (the "finally"), and the lock is released only after the
cleanup has been verified.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta

from canary_operator.api.models import (
    TERMINAL_PHASES,
    AnalysisStatus,
    CanaryRolloutSpec,
    CanaryRolloutStatus,
    ChildStepStatus,
    CleanupStatus,
    Condition,
    ContainerLogTail,
    FailedCleanupStep,
    LiveVersion,
    LockStatus,
    Outcome,
    ParallelItem,
    Phase,
    QueueStatus,
    Result,
    Step,
    StepPhase,
    StepStatus,
    WebhookSpec,
    parse_duration,
)

# Re-exported for code that still imports them from here (their home is api/timestamps).
from canary_operator.api.timestamps import iso as iso
from canary_operator.api.timestamps import parse_any_time as parse_any_time
from canary_operator.api.timestamps import parse_time as parse_time
from canary_operator.api.timestamps import precise as precise
from canary_operator.checks.render import template_problems
from canary_operator.engine import analysis
from canary_operator.engine.types import (
    Action,
    AddFinalizer,
    CallWebhook,
    DeleteCanaryObjects,
    DeleteJob,
    Emit,
    EnsureCanary,
    EnsureJob,
    JobView,
    Observed,
    Plan,
    PromoteStable,
    PromotionRecord,
    ReleaseLock,
    RemoveFinalizer,
    ResetRoute,
    Rollout,
    ScaleStable,
    SetRouteWeight,
    WorkloadView,
)
from canary_operator.engine.weights import (
    original_replicas,
    plan_shift,
    plan_shift_canary,
    plan_weight,
    stable_floor,
)

RESUME_ANNOTATION = "canary-operator.dev/resume"
RETRY_ANNOTATION = "canary-operator.dev/retry"
PROMOTE_ANNOTATION = "canary-operator.dev/promote"  # = run number: skip to promotion
# For humans, when a cleanup can never finish: give the lock up without a verified
# cleanup. The next holder cleans the target before its first step.
FORCE_RELEASE_ANNOTATION = "canary-operator.dev/force-release"
# = run number: that run may roll out a version older than the one live on the target.
ALLOW_OLDER_ANNOTATION = "canary-operator.dev/allow-older"

# Polling is only a safety net: progress is driven by watch events on the rollout,
# its Deployments, Jobs and the Lease. These bound how stale a missed event can leave us.
POLL_RUNNING = 5.0
POLL_WAITING = 15.0


def image_label(images: dict[str, str] | Mapping[str, str]) -> str:
    """The short form of a version: each image's last path element (web:2.0)."""
    return ",".join(sorted(image.rsplit("/", 1)[-1] for image in images.values()))


def version_text(images: Mapping[str, str]) -> str:
    return ",".join(f"{c}={i}" for c, i in sorted(images.items()))


def step_label(spec: CanaryRolloutSpec, index: int | None) -> str | None:
    if index is None:
        return None
    if index >= len(spec.steps):
        return f"{len(spec.steps)}/{len(spec.steps)} done"
    step = spec.steps[index]
    return f"{index + 1}/{len(spec.steps)} {step.name or step.kind}"


def job_name(rollout: Rollout, suffix: str) -> str:
    """Deterministic, unique per rollout and run, at most 63 characters."""
    base = f"{rollout.name[:30].rstrip('-.')}-{rollout.uid[:5]}-r{rollout.status.run}-{suffix}"
    return base[:63].rstrip("-")


def run_id(rollout: Rollout) -> str:
    return f"{rollout.uid}/{rollout.status.run}"


class _Context:
    """Per-call helpers bound to one rollout and one observation."""

    def __init__(self, rollout: Rollout, obs: Observed, last_step: int | None = None) -> None:
        self.rollout = rollout
        self.last_step = last_step  # no step after this one starts in this plan
        self.spec = rollout.spec
        self.obs = obs
        self.now = obs.now
        self.status = rollout.status.model_copy(deep=True)
        self.plan = Plan(status=self.status)
        self.waiting_for_resume = False  # an inconclusive analysis holds like a pause

    # -- status helpers --------------------------------------------------------

    def act(self, *actions: Action) -> None:
        self.plan.actions.extend(actions)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.act(Emit(reason, message, warning))

    def set_condition(self, type_: str, status: bool, reason: str, message: str = "") -> None:
        value = "True" if status else "False"
        conditions = self.status.conditions or []
        existing = next((c for c in conditions if c.type == type_), None)
        if existing and existing.status == value and existing.reason == reason:
            existing.message = message
            existing.observed_generation = self.rollout.generation
            return
        changed = Condition(
            type=type_,
            status=value,
            reason=reason,
            message=message,
            last_transition_time=(
                existing.last_transition_time
                if existing and existing.status == value
                else iso(self.now)
            ),
            observed_generation=self.rollout.generation,
        )
        self.status.conditions = [c for c in conditions if c.type != type_] + [changed]

    def enter(self, phase: Phase, message: str, announce: bool = True) -> None:
        """`announce`: record the new phase as an Event (unless another Event of the
        same plan says it better)."""
        if self.status.phase != phase and announce:
            self.event(phase.value, message)
        self.status.phase = phase
        self.status.message = message


def plan(rollout: Rollout, obs: Observed, last_step: int | None = None) -> Plan:
    """Decide the next status and actions for one rollout. `last_step`: steps that
    finish here are followed by the next one only up to this step (index)."""
    ctx = _Context(rollout, obs, last_step)
    status = ctx.status
    phase = status.phase

    if phase in TERMINAL_PHASES:
        _terminal(ctx)
    elif phase == Phase.PENDING:
        _pending(ctx, holding=obs.lock.held)
    elif phase == Phase.QUEUED:
        _queued(ctx)
    elif phase in (Phase.PROGRESSING, Phase.PAUSED):
        _progressing(ctx)
    elif phase == Phase.CLEANING_UP:
        _cleaning_up(ctx)
    status = ctx.status  # a new run replaces the status object
    status.observed_generation = rollout.generation  # this status answers this generation
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
    _record_live(ctx)
    _record_evidence(ctx)
    return ctx.plan


def _record_version_age(ctx: _Context) -> None:
    """status.versionSince: when this spec was first seen. The first spec is as old as
    the rollout (creationTimestamp, the API server's clock); a changed spec is as old as
    the reconcile that first saw it. A retry keeps it (same spec, same age)."""
    status, fingerprint = ctx.status, ctx.rollout.spec.run_fingerprint()
    if status.fingerprint is not None and status.fingerprint != fingerprint:
        status.version_since = precise(ctx.now)
    elif status.version_since is None:
        status.version_since = ctx.rollout.created or precise(ctx.now)
    status.fingerprint = fingerprint


def _older_than_live(ctx: _Context) -> str | None:
    """Why this run must not start because the target runs a newer version, or None.

    "Older" compares the ages of the two specs, never version strings: this run's
    status.versionSince against the versionSince recorded with the target's last
    promotion. A run of the very spec that is live (same rollout, same fingerprint) is
    never older. The user may let one run through (annotation allow-older=<run>)."""
    target = ctx.obs.target
    record = target.promotion if target is not None else None
    status, rollout = ctx.status, ctx.rollout
    if record is None or status.version_since is None:
        return None
    if record.uid == rollout.uid and record.fingerprint == status.fingerprint:
        return None
    mine, live = parse_any_time(status.version_since), parse_any_time(record.version_since)
    if mine is None or live is None or live <= mine:
        return None
    if rollout.annotations.get(ALLOW_OLDER_ANNOTATION) == str(status.run):
        return None
    return (
        f"target {rollout.spec.target.deployment} runs {version_text(record.images)}, promoted "
        f"by {record.rollout} run {record.run} at {record.promoted_at}; that version "
        f"(since {record.version_since}) is newer than this one (since "
        f"{status.version_since}), so this run was refused and nothing was changed. To roll "
        f"this older version out anyway: kubectl canary retry {rollout.name} --allow-older"
    )


def _record_live(ctx: _Context) -> None:
    """status.live: what the target runs, from its promotion record, and whether it
    still runs it (a client-side `kubectl apply` of an older manifest reverts the
    images and keeps the record: that shows as drift)."""
    target = ctx.obs.target
    record: PromotionRecord | None = target.promotion if target is not None else None
    if target is None or record is None:
        return
    now_runs = {c: target.images.get(c, "") for c in record.images}
    drifted = (
        version_text({c: i or "(none)" for c, i in now_runs.items()})
        if now_runs != dict(record.images)
        else None
    )
    ctx.status.live = LiveVersion(
        rollout=record.rollout,
        uid=record.uid,
        run=record.run,
        version=version_text(record.images),
        label=image_label(record.images) + (" (drifted)" if drifted else ""),
        version_since=record.version_since,
        promoted_at=record.promoted_at,
        this_rollout=record.uid == ctx.rollout.uid,
        drifted=drifted,
    )


# ---------------------------------------------------------------------- phases


def _finalizer(ctx: _Context) -> None:
    """The finalizer guards a run that may still owe a cleanup; an ended one needs none.

    Adding it comes before any side effect (actions run in order); removing it after
    the terminal status is written (the reconciler runs RemoveFinalizer last)."""
    rollout = ctx.rollout
    terminal = ctx.status.phase in TERMINAL_PHASES
    if not terminal and not rollout.has_finalizer and not rollout.deleting:
        ctx.plan.actions.insert(0, AddFinalizer())
    if terminal and rollout.has_finalizer:
        ctx.act(RemoveFinalizer())


def _terminal(ctx: _Context) -> None:
    rollout, status = ctx.rollout, ctx.status
    if ctx.obs.lock.held:  # the release after a verified cleanup did not go through
        ctx.act(ReleaseLock())
    if rollout.deleting:
        return
    wants_retry = _retry_requested(rollout)
    if status.fingerprint != rollout.spec.run_fingerprint() or wants_retry:
        why = "retry requested" if wants_retry else "spec changed"
        retry = rollout.annotations.get(RETRY_ANNOTATION, "")
        run = int(retry) if wants_retry else status.run + 1
        _new_run(ctx, f"{why}: starting run {run}", run)
        _pending(ctx)


def _retry_requested(rollout: Rollout) -> bool:
    """retry=N asks for run N: honoured once, when N is above the current run (a stale
    or lower value must not start runs over and over)."""
    retry = rollout.annotations.get(RETRY_ANNOTATION, "")
    return retry.isascii() and retry.isdigit() and int(retry) > rollout.status.run


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
        return status.fingerprint != rollout.spec.run_fingerprint() or _retry_requested(rollout)
    return False


def _new_run(ctx: _Context, message: str, run: int | None = None) -> None:
    old = ctx.status
    # The spec's age and what the target runs carry over: a retry of the same spec is
    # as old as that spec (see _older_than_live).
    fresh = CanaryRolloutStatus(
        run=run or old.run + 1,
        conditions=old.conditions,
        fingerprint=old.fingerprint,
        version_since=old.version_since,
        live=old.live,
    )
    ctx.status = fresh
    ctx.plan.status = fresh
    for type_ in ("Completed", "Failed"):  # the previous run's verdict is not this run's
        if fresh.condition(type_) is not None:
            ctx.set_condition(type_, False, "NewRun", message)
    ctx.event("NewRun", message)


def _pending(ctx: _Context, holding: bool = False) -> None:
    """`holding`: the reconciler took the lock for this new run in this very round (a
    run that passes its checks at the head of a free lock); a run that ends here gives
    it back. A new run of an ended rollout is never holding: its old run's lock is
    being released."""
    rollout, status, obs = ctx.rollout, ctx.status, ctx.obs
    status.run = max(status.run, 1)
    _record_version_age(ctx)
    status.observed_generation = rollout.generation
    if rollout.deleting:
        _end_without_run(ctx, Result.DELETED, "deleted before it started", holding)
        return
    if rollout.spec.abort:
        _end_without_run(ctx, Result.ABORTED, "aborted before it started", holding)
        return
    problems = [*_spec_problems(rollout.spec), *obs.policy_problems, *obs.spec_problems]
    if problems:
        _end_without_run(ctx, Result.INVALID, "; ".join(problems), holding)
        return
    if obs.target is None:
        _end_without_run(
            ctx,
            Result.TARGET_NOT_FOUND,
            f"target Deployment {rollout.spec.target.deployment!r} not found",
            holding,
        )
        return
    older = _older_than_live(ctx)
    if older:
        _end_without_run(ctx, Result.OLDER_THAN_LIVE, older, holding)
        return
    status.queued_at = precise(ctx.now)
    # A run that holds its lock already never waits: no Queued Event to say it does
    # (LockAcquired follows in this plan; status.queuedAt still records the moment).
    ctx.enter(Phase.QUEUED, f"waiting for lock {obs.lock.name}", announce=not holding)
    ctx.set_condition("Progressing", True, "Queued", status.message or "")
    if holding:  # it goes on as a queued run holding its lock: it starts now
        _queued(ctx)
        return
    ctx.plan.requeue(0)


def _queued(ctx: _Context) -> None:
    rollout, status, obs, spec = ctx.rollout, ctx.status, ctx.obs, ctx.rollout.spec
    lock = obs.lock
    _record_queue(ctx)
    if rollout.deleting:
        _end_without_run(ctx, Result.DELETED, "deleted while queued", lock.held)
        return
    if spec.abort:
        _end_without_run(ctx, Result.ABORTED, "aborted while queued", lock.held)
        return
    if status.fingerprint != spec.run_fingerprint():
        _record_version_age(ctx)
        status.observed_generation = rollout.generation
    # Checked again here: the spec may have changed while it waited.
    problems = [*_spec_problems(spec), *obs.policy_problems]
    if lock.held:  # validated against the cluster again right before the first step
        problems += obs.spec_problems
    if problems:
        _end_without_run(ctx, Result.INVALID, "; ".join(problems), lock.held)
        return
    if obs.target is None:
        _end_without_run(
            ctx,
            Result.TARGET_NOT_FOUND,
            f"target Deployment {spec.target.deployment!r} not found",
            lock.held,
        )
        return
    # Before anything touches the target, also right after the lock is taken (while it
    # is held no other run can promote): a version older than the live one never runs.
    older = _older_than_live(ctx)
    if older:
        _end_without_run(ctx, Result.OLDER_THAN_LIVE, older, lock.held)
        return
    if lock.superseded_by and not lock.held:
        _end_without_run(
            ctx, Result.SUPERSEDED, f"superseded by newer rollout {lock.superseded_by}"
        )
        return
    if not lock.held:
        if lock.busy and spec.policy.value == "Reject":
            _end_without_run(
                ctx, Result.REJECTED, f"lock {lock.name} is held by {lock.holder} (policy Reject)"
            )
            return
        holder = f"held by {lock.holder} ({lock.holder_phase})" if lock.holder else "free"
        status.message = f"waiting for lock {lock.name}: {holder}, position {lock.position}"
        ctx.set_condition("Progressing", True, "Queued", status.message)
        ctx.plan.requeue(POLL_WAITING)
        return
    # Holding the lock. The target must be clean before the first step: a previous
    # holder may have died half-way (takeover), so undo whatever it left behind.
    if status.lock is None or status.lock.token != lock.token:
        status.lock = LockStatus(
            name=lock.name,
            token=lock.token or 0,
            acquired_at=iso(ctx.now),
            recovered_from=lock.recovered_from,
        )
        ctx.event("LockAcquired", f"acquired lock {lock.name} (token {lock.token})")
    if obs.route.error:  # e.g. an HTTPRoute without a rule to the stable Service
        _end_without_run(ctx, Result.INVALID, f"cannot use the route: {obs.route.error}", True)
        return
    if not obs.route.reset:
        status.message = "recovery: routing 100% to stable before starting" + (
            f" ({obs.route.restoring})" if obs.route.restoring else ""
        )
        ctx.act(ResetRoute())
        ctx.plan.requeue(1)
        return
    if _leftovers(obs):
        status.message = "recovery: deleting canary objects left by a previous run"
        ctx.act(DeleteCanaryObjects())
        ctx.plan.requeue(1)
        return
    status.started_at = iso(ctx.now)
    status.deadline_at = iso(ctx.now + timedelta(seconds=spec.progress_deadline_seconds))
    assert obs.target is not None
    status.stable_replicas = obs.target.replicas
    status.current_step = 0
    status.steps = [_fresh_step_status(s) for s in spec.steps]
    ctx.enter(Phase.PROGRESSING, "started")
    ctx.set_condition("Progressing", True, "Started", "rollout started")
    # The first step starts in this same plan, with no second status write and no trip
    # through the work queue: the observation is as fresh as a run's start wants it
    # (the reconciler read it from the API server), and nothing above acted on the
    # target, so every action of this plan is step 1's (a failed one fails step 1).
    _progressing(ctx)


def _progressing(ctx: _Context) -> None:
    rollout, status, obs, spec = ctx.rollout, ctx.status, ctx.obs, ctx.rollout.spec
    _record_queue(ctx)
    # A run owns the lock it started with: never one acquired again later (another
    # rollout may have run in between). Lost, it does nothing more to the target and
    # queues for its cleanup.
    if not obs.lock.held:
        now_with = obs.lock.holder or "nobody"
        _decide(ctx, Result.LOCK_LOST, f"lock {obs.lock.name} is no longer held (now: {now_with})")
        return
    started_with = status.lock.token if status.lock is not None else None
    if started_with is not None and obs.lock.token != started_with:
        _decide(
            ctx,
            Result.LOCK_LOST,
            f"lock {obs.lock.name} changed hands during the run "
            f"(token {started_with}, now {obs.lock.token})",
        )
        return
    if rollout.deleting:
        _decide(ctx, Result.DELETED, "the rollout was deleted")
        return
    if spec.abort:
        _decide(ctx, Result.ABORTED, "aborted by the user (spec.abort)")
        return
    if status.fingerprint != spec.run_fingerprint():
        _decide(ctx, Result.SPEC_CHANGED, "spec changed during the run; a new run will follow")
        return
    if obs.target is None:
        _decide(ctx, Result.TARGET_NOT_FOUND, "the target Deployment disappeared")
        return

    if spec.paused:
        if status.phase != Phase.PAUSED or status.paused_at is None:
            status.paused_at = iso(ctx.now)
        ctx.enter(Phase.PAUSED, "paused by the user (spec.paused)")
        ctx.set_condition("Paused", True, "UserPaused", "spec.paused is true")
        return
    # Time spent paused (by the user or at a pause step) does not count; it is added to
    # the deadline when the pause ends (whole seconds: no drift).
    paused_for = timedelta(0)
    if status.paused_at is not None:
        paused_for = parse_time(iso(ctx.now)) - parse_time(status.paused_at)
    if status.deadline_at:
        deadline = parse_time(status.deadline_at) + paused_for
        if ctx.now > deadline:
            _decide(
                ctx,
                Result.DEADLINE_EXCEEDED,
                f"not finished within progressDeadlineSeconds={spec.progress_deadline_seconds}",
            )
            return
        if status.paused_at is None:  # paused, the deadline moves on with the clock
            # Enforced on time even while a check is in flight or nothing else happens.
            ctx.plan.requeue((deadline - ctx.now).total_seconds() + 1)

    # A step that finishes here is followed by the next in this same plan (one status
    # write per transition, no trip through the work queue). Each action remembers
    # the step that asked for it, so a failed one fails that step (see blamed_status).
    while _run_current_step(ctx, paused_for):
        if ctx.last_step is not None and (status.current_step or 0) > ctx.last_step:
            break
    _drop_superseded(ctx)


# Actions that set one object's whole desired state: a later one of the same kind in a
# plan makes an earlier one pointless.
_LEVELS = (EnsureCanary, ScaleStable, SetRouteWeight)


def _drop_superseded(ctx: _Context) -> None:
    """A step that ended in this plan re-asserted its level (the canary's size, the
    route's weight); when a later step of the plan sets the same level anew, the
    earlier write would only be undone a moment later."""
    actions = ctx.plan.actions
    kept: list[Action] = []
    for i, action in enumerate(actions):
        later = actions[i + 1 :]
        if isinstance(action, _LEVELS) and any(type(a) is type(action) for a in later):
            continue
        kept.append(action)
    ctx.plan.actions = kept


# Steps that run something for a while (a pause, Jobs, queries) record their start as
# an Event as well as their end; a step that moves a level (the canary's size, the
# weight, the promotion) records its end only, with what it read back: its start is in
# status.steps[].startedAt. One Event per step less is most of a rollout's Events.
STEPS_THAT_RUN = frozenset({"pause", "test", "parallel", "analysis"})


def _run_current_step(ctx: _Context, paused_for: timedelta) -> bool:
    """Run the current step; True when it succeeded (the next one may start)."""
    status, spec = ctx.status, ctx.rollout.spec
    index = status.current_step or 0
    _skip_to_promotion(ctx, index)
    index = status.current_step or 0
    if index >= len(spec.steps):
        _decide(ctx, Result.SUCCEEDED, "all steps passed")
        return False
    step = spec.steps[index]
    assert status.steps is not None
    step_status = status.steps[index]
    if step_status.phase == StepPhase.PENDING:
        step_status.phase = StepPhase.RUNNING
        step_status.started_at = iso(ctx.now)
        if step.kind in STEPS_THAT_RUN:
            ctx.event("StepStarted", f"step {index + 1}/{len(spec.steps)} {step.kind} started")
    status.message = f"running step {index + 1}: {step.name or step.kind}"  # a step may refine
    asked = len(ctx.plan.actions)
    result = _run_step(ctx, index, step, step_status)
    ctx.plan.owners.extend((a, index) for a in ctx.plan.actions[asked:])
    in_pause = result is None and (step.kind == "pause" or ctx.waiting_for_resume)
    if in_pause:
        status.paused_at = status.paused_at or iso(ctx.now)
        ctx.enter(Phase.PAUSED, f"paused at step {index + 1}")
        ctx.set_condition("Paused", True, "PauseStep", f"step {index + 1} is a pause")
    else:
        if status.paused_at is not None:  # the pause ended
            if status.deadline_at:
                status.deadline_at = iso(parse_time(status.deadline_at) + paused_for)
            status.paused_at = None
        if status.phase != Phase.PROGRESSING:
            ctx.enter(Phase.PROGRESSING, f"running step {index + 1}")
        ctx.set_condition("Paused", False, "Running", "")
    if result is None:
        return False
    ok, message = result
    step_status.finished_at = iso(ctx.now)
    step_status.message = message
    if not ok:
        step_status.phase = StepPhase.FAILED
        name = step.name or step.kind
        _decide(ctx, Result.STEP_FAILED, f"step {index + 1} ({name}) failed: {message}")
        assert status.outcome is not None
        status.outcome.failed_step = index + 1
        return False
    step_status.phase = StepPhase.SUCCEEDED
    ctx.event("StepSucceeded", f"step {index + 1} {step.kind}: {message}")
    status.current_step = index + 1
    return True


def _cleaning_up(ctx: _Context) -> None:
    status, obs, spec = ctx.status, ctx.obs, ctx.rollout.spec
    cleanup = status.cleanup or CleanupStatus(started_at=iso(ctx.now))
    status.cleanup = cleanup
    _record_queue(ctx)
    if ctx.rollout.annotations.get(FORCE_RELEASE_ANNOTATION) == "true":
        _force_release(ctx)
        return
    if not obs.lock.held:
        # Cleanup touches the target: it waits for the lock like a step would.
        status.message = f"cleanup waiting for lock {obs.lock.name} ({obs.lock.holder})"
        ctx.plan.requeue(POLL_WAITING)
        return
    if status.lock is None or status.lock.token != obs.lock.token:
        # The run lost its lock; it was taken again (first in the queue) for the cleanup.
        status.lock = LockStatus(
            name=obs.lock.name,
            token=obs.lock.token or 0,
            acquired_at=iso(ctx.now),
            recovered_from=obs.lock.recovered_from,
        )
        ctx.event(
            "LockAcquired", f"acquired lock {obs.lock.name} for cleanup (token {obs.lock.token})"
        )
    if cleanup.next_attempt_at and ctx.now < parse_time(cleanup.next_attempt_at):
        remaining = (parse_time(cleanup.next_attempt_at) - ctx.now).total_seconds()
        ctx.plan.requeue(remaining)
        return
    if obs.route.error:
        _cleanup_failed(ctx, f"cannot read the route: {obs.route.error}")
        return
    if not obs.route.reset:
        cleanup.stage = "Routing"
        status.message = "cleanup: routing 100% to stable" + (
            f" ({obs.route.restoring})" if obs.route.restoring else ""
        )
        ctx.act(ResetRoute())
        ctx.plan.requeue(1)
        return
    if _leftovers(obs) or _test_jobs(ctx):
        cleanup.stage = "Deleting"
        status.message = "cleanup: deleting canary objects"
        ctx.act(DeleteCanaryObjects(keep_jobs=tuple(sorted(_jobs_to_keep(ctx)))))
        ctx.plan.requeue(1)
        return
    user_steps = spec.cleanup or []
    while cleanup.user_step < len(user_steps):
        cleanup.stage = "UserSteps"
        k = cleanup.user_step
        user = user_steps[k]
        label = f"cleanup {k + 1}/{len(user_steps)} {user.name or 'job'}"
        if user.webhook is not None:
            answer = _webhook(ctx, f"c{k + 1}-a{cleanup.attempts}", user.webhook, label)
            if answer is None:
                status.message = f"cleanup: calling {label}"
                return
            if not answer[0] and not user.required:
                _best_effort_failed(ctx, k, user.name or "webhook", label, answer[1])
                continue
            if not answer[0]:
                _cleanup_failed(ctx, f"{label} failed: {answer[1]}")
                return
            ctx.event("CleanupStepSucceeded", f"{label} succeeded: {answer[1]}")
            cleanup.user_step += 1
            continue
        assert user.job is not None
        name = job_name(ctx.rollout, f"c{k + 1}-a{cleanup.attempts}")
        job = obs.jobs.get(name)
        if job is None or not (job.succeeded or job.failed):
            status.message = f"cleanup: running {label}"
            ctx.act(EnsureJob(name=name, template=user.job, step_label=label))
            ctx.plan.requeue(POLL_RUNNING)
            return
        if job.failed and not user.required:
            _best_effort_failed(ctx, k, user.name or "job", label, job.message or "Job failed")
            continue
        if job.failed:
            _cleanup_failed(ctx, f"{label} failed: {job.message}")
            return
        ctx.event("CleanupStepSucceeded", f"{label} succeeded")
        cleanup.user_step += 1
    # Verify: the router reads 100 % stable and no canary pod remains.
    if obs.canary_pods > 0:
        status.message = f"cleanup: waiting for {obs.canary_pods} canary pods to go"
        cleanup.stage = "Verifying"
        ctx.plan.requeue(1)
        return
    cleanup.stage = "Done"
    cleanup.finished_at = iso(ctx.now)
    cleanup.last_error = None
    cleanup.next_attempt_at = None
    skipped = ", ".join(f.name for f in cleanup.failed_steps or [])
    verified = "100% stable, no canary left" + (
        f"; best-effort cleanup steps failed: {skipped}" if skipped else ""
    )
    ctx.set_condition("CleanupVerified", True, "Verified", verified)
    ctx.event("CleanupFinished", "cleanup verified: 100% stable, no canary objects left")
    ctx.act(ReleaseLock())
    ctx.event("LockReleased", f"released lock {obs.lock.name}")
    outcome = status.outcome
    assert outcome is not None
    if outcome.result == Result.SPEC_CHANGED and not ctx.rollout.deleting:
        _new_run(ctx, "previous run cleaned up; the new spec queues")
        _pending(ctx)
        return
    _finish(ctx, outcome)


# ------------------------------------------------------------------------ steps

StepResult = tuple[bool, str] | None  # None: still running


def _run_step(ctx: _Context, index: int, step: Step, st: StepStatus) -> StepResult:
    timeout = _timed_out(ctx, step.timeout, st)
    if timeout:
        _cancel_children(ctx, st)
        return False, timeout
    kind = step.kind
    if kind == "canary":
        assert step.canary is not None
        return _ensure_canary(ctx, step.canary.replicas)
    if kind == "setWeight":
        assert step.set_weight is not None
        return _set_weight(ctx, step.set_weight)
    if kind == "promote":
        return _promote(ctx)
    if kind == "parallel":
        assert step.parallel is not None
        return _parallel(ctx, index, step.parallel, st)
    return _leaf(ctx, step, st, f"s{index + 1}", f"step {index + 1}")


def _leaf(
    ctx: _Context, item: Step | ParallelItem, st: ChildStepStatus, suffix: str, label: str
) -> StepResult:
    """Steps that can also run inside a parallel group: pause, test, analysis."""
    if item.pause is not None:
        if item.pause.duration:
            assert st.started_at is not None
            until = parse_time(st.started_at) + parse_duration(item.pause.duration)
            if ctx.now >= until:
                return True, f"paused {item.pause.duration}"
            ctx.plan.requeue((until - ctx.now).total_seconds())
            return None
        return (True, "resumed") if _resumed(ctx) else None
    if item.test is not None and item.test.webhook is not None:
        return _webhook(ctx, suffix, item.test.webhook, label)
    if item.test is not None:
        assert item.test.job is not None
        name = job_name(ctx.rollout, suffix)
        st.job = name
        job = ctx.obs.jobs.get(name)
        if job is not None and job.succeeded:
            return True, f"Job {name} succeeded"
        if job is not None and job.failed:
            return False, f"Job {name} failed{': ' + job.message if job.message else ''}"
        ctx.act(EnsureJob(name=name, template=item.test.job, step_label=label))
        ctx.plan.requeue(POLL_RUNNING)
        return None
    assert item.analysis is not None and st.started_at is not None
    st.analysis = st.analysis or AnalysisStatus()
    resumed = _resumed(ctx)
    progress = analysis.progress(
        item.analysis,
        st.analysis,
        parse_time(st.started_at),
        ctx.now,
        suffix,
        ctx.rollout.spec.baseline,
        ctx.obs.measurements,
        resumed,
    )
    ctx.act(*progress.actions)
    if progress.requeue is not None:
        ctx.plan.requeue(progress.requeue)
    ctx.waiting_for_resume = ctx.waiting_for_resume or progress.waiting_for_resume
    return progress.result


def _resumed(ctx: _Context) -> bool:
    """The resume annotation names the current step: "N", or "N@RUN" to hold only in
    that run (what `kubectl canary resume` writes, so a later run does not inherit it)."""
    value = ctx.rollout.annotations.get(RESUME_ANNOTATION, "")
    step, _, run = value.partition("@")
    return step == str((ctx.status.current_step or 0) + 1) and run in ("", str(ctx.status.run))


def _webhook(ctx: _Context, key: str, webhook: WebhookSpec, label: str) -> StepResult:
    """A webhook is called in the background, never inside a reconcile: asked for
    (again and again, which is idempotent) until its answer comes back as an
    observation. A call no plan asks for any more (abort, timeout, a failed sibling,
    lost lock) is cancelled; one lost with a restarted operator is asked for anew."""
    result = ctx.obs.checks.get(key)
    if result is not None:
        return result.ok, result.message
    ctx.act(CallWebhook(key=key, webhook=webhook, step_label=label))
    # The answer wakes the rollout; polling is only a safety net.
    ctx.plan.requeue(POLL_WAITING if key in ctx.obs.in_flight else POLL_RUNNING)
    return None


def _parallel(ctx: _Context, index: int, items: list[ParallelItem], st: StepStatus) -> StepResult:
    if not st.children:
        st.children = [
            ChildStepStatus(name=i.name or f"{i.kind}-{n + 1}", kind=i.kind)
            for n, i in enumerate(items)
        ]
    failures: list[str] = []
    asked: dict[int, list[Action]] = {}  # actions of each item in this round
    for n, (item, child) in enumerate(zip(items, st.children, strict=True)):
        if child.phase in (StepPhase.SUCCEEDED, StepPhase.FAILED, StepPhase.CANCELLED):
            continue
        if child.phase == StepPhase.PENDING:
            child.phase = StepPhase.RUNNING
            child.started_at = iso(ctx.now)
        result = _timed_out(ctx, item.timeout, child)
        before = len(ctx.plan.actions)
        res: StepResult = (
            (False, result)
            if result
            else _leaf(ctx, item, child, f"s{index + 1}-{n + 1}", f"step {index + 1}.{n + 1}")
        )
        asked[n] = ctx.plan.actions[before:]
        if res is None:
            continue
        ok, message = res
        child.phase = StepPhase.SUCCEEDED if ok else StepPhase.FAILED
        child.finished_at = iso(ctx.now)
        child.message = message
        if not ok:
            failures.append(f"{child.name}: {message}")
    if failures:
        dropped = [
            id(a)
            for n, child in enumerate(st.children)
            if child.phase in (StepPhase.RUNNING, StepPhase.PENDING)
            for a in asked.get(n, [])
        ]
        ctx.plan.actions = [a for a in ctx.plan.actions if id(a) not in dropped]
        _cancel_children(ctx, st)
        return False, "; ".join(failures)
    if all(c.phase == StepPhase.SUCCEEDED for c in st.children):
        return True, f"all {len(items)} passed"
    return None


def _cancel_children(ctx: _Context, st: StepStatus) -> None:
    for child in st.children or []:
        if child.phase in (StepPhase.RUNNING, StepPhase.PENDING):
            child.phase = StepPhase.CANCELLED
            child.finished_at = iso(ctx.now)
            child.message = "cancelled: another step in the group failed"
            if child.job:
                ctx.act(DeleteJob(child.job))


def _timed_out(ctx: _Context, timeout: str | None, st: ChildStepStatus) -> str | None:
    if not timeout or st.started_at is None:
        return None
    deadline = parse_time(st.started_at) + parse_duration(timeout)
    if ctx.now >= deadline:
        return f"timed out after {timeout}"
    ctx.plan.requeue((deadline - ctx.now).total_seconds())
    return None


def _stable_replicas(ctx: _Context) -> int:
    return ctx.status.stable_replicas or (ctx.obs.target.replicas if ctx.obs.target else 1)


def _workload_failure(ctx: _Context) -> str | None:
    """Canary (or baseline) pods that cannot come up fail the step at once: waiting
    for the progress deadline would hold the lock for nothing."""
    for role, view in (("canary", ctx.obs.canary), ("baseline", ctx.obs.baseline)):
        if view is not None and view.failure:
            return f"the {role} Deployment cannot run its pods: {view.failure}"
    return None


def _ensure_canary(ctx: _Context, replicas: int) -> StepResult:
    failure = _workload_failure(ctx)
    if failure:
        return False, failure
    if ctx.rollout.spec.shift is not None:
        original, floor = _shift_sizes(ctx)
        wanted = plan_shift_canary(original, replicas, floor)
        if not _shift_to(ctx, wanted.canary_replicas, wanted.stable_replicas):
            ctx.plan.requeue(POLL_RUNNING)
            return None
        ctx.status.weight = ctx.obs.route.weight
        return True, f"{replicas} canary pods ready, stable at {wanted.stable_replicas}"
    ctx.act(EnsureCanary(replicas))
    canary = ctx.obs.canary
    if canary is not None and canary.replicas == replicas and canary.rolled_out:
        ctx.status.weight = ctx.obs.route.weight
        return True, f"{replicas} canary pods ready"
    ctx.plan.requeue(POLL_RUNNING)
    return None


def _canary_minimum(ctx: _Context) -> int:
    steps = ctx.rollout.spec.steps[: (ctx.status.current_step or 0) + 1]
    sizes = [s.canary.replicas for s in steps if s.canary is not None]
    return sizes[-1] if sizes else 1


def _shift_sizes(ctx: _Context) -> tuple[int, int]:
    """Mode Shift: the stable's original replicas (as recorded on it, or adopted from
    whoever scaled it since: see original_replicas) and its floor."""
    target, shift = ctx.obs.target, ctx.rollout.spec.shift
    assert target is not None and shift is not None
    record = target.stable_record
    original = original_replicas(
        target.replicas,
        record.original if record else None,
        record.written if record else None,
    )
    return original, stable_floor(original, shift.stable_floor)


def _settled_at(view: WorkloadView | None, replicas: int) -> bool:
    if view is None:
        return replicas == 0
    return view.replicas == replicas and view.rolled_out


def _shift_to(ctx: _Context, canary: int, stable: int) -> bool:
    """Move both Deployments to these sizes, growing before shrinking: whatever grows
    (the canary on the way up, the stable on the way down) is scaled and ready before
    the other side loses a pod, so ready capacity never dips below either end state.
    True once both are there and ready."""
    target, current = ctx.obs.target, ctx.obs.canary
    assert target is not None
    original, floor = _shift_sizes(ctx)
    have_canary = current.replicas if current is not None else 0
    grow = (max(canary, have_canary), max(stable, target.replicas))
    if not (_settled_at(current, grow[0]) and _settled_at(target, grow[1])):
        ctx.act(EnsureCanary(grow[0]))
        if grow[1] != target.replicas:
            ctx.act(ScaleStable(grow[1], original, floor))
        # What is asked, not what each side has now: the message then changes with the
        # phase of the move, not with each of this reconcile's own writes landing (each
        # change is one more status write).
        ctx.status.message = f"scaling: canary to {grow[0]}, stable to {grow[1]}"
        return False
    ctx.act(EnsureCanary(canary))
    if stable != target.replicas:
        ctx.act(ScaleStable(stable, original, floor))
    if (canary, stable) != (have_canary, target.replicas):
        ctx.status.message = f"scaling: canary to {canary}, stable to {stable}"
        return False
    return True


def _set_weight(ctx: _Context, weight: int) -> StepResult:
    spec = ctx.rollout.spec
    if spec.shift is not None:
        return _shift_weight(ctx, weight)
    try:
        wp = plan_weight(spec.router_kind, _stable_replicas(ctx), weight, _canary_minimum(ctx))
    except ValueError as exc:  # 100 % with the replicas router (past the CEL rule)
        return False, str(exc)
    failure = _workload_failure(ctx)
    if failure:
        return False, failure
    canary = ctx.obs.canary
    ctx.act(EnsureCanary(wp.canary_replicas))
    canary_ready = (
        canary is not None and canary.replicas == wp.canary_replicas and (canary.rolled_out)
    )
    if not canary_ready and wp.canary_replicas > 0:
        ctx.plan.requeue(POLL_RUNNING)
        return None
    if spec.router_kind != "replicas":
        ctx.act(SetRouteWeight(weight))
    ctx.status.weight = ctx.obs.route.weight
    if ctx.obs.route.weight == wp.expected_weight:
        return True, f"weight {ctx.obs.route.weight}% read back ({wp.canary_replicas} canary pods)"
    ctx.plan.requeue(1)
    return None


def _shift_weight(ctx: _Context, weight: int) -> StepResult:
    original, floor = _shift_sizes(ctx)
    try:
        wanted = plan_shift(original, weight, floor)
    except ValueError as exc:  # 100 % (past the CEL rule)
        return False, str(exc)
    failure = _workload_failure(ctx)
    if failure:
        return False, failure
    if not _shift_to(ctx, wanted.canary_replicas, wanted.stable_replicas):
        ctx.plan.requeue(POLL_RUNNING)
        return None
    ctx.status.weight = ctx.obs.route.weight
    if ctx.obs.route.weight == wanted.expected_weight:
        return True, (
            f"weight {ctx.obs.route.weight}% read back ({wanted.canary_replicas} canary pods, "
            f"{wanted.stable_replicas} stable)"
        )
    ctx.plan.requeue(1)
    return None


PROMOTING = "promoting: the stable takes the new version, then all traffic"


def _promote(ctx: _Context) -> StepResult:
    target = ctx.obs.target
    assert target is not None
    rid = run_id(ctx.rollout)
    # One message for the whole step, not a count of pods (each change of it would be
    # one more status write): the pods are in the status tree and on the Deployment.
    ctx.status.message = PROMOTING
    # Mode Shift: the stable takes the new version at its shifted size (the canary
    # serves beside it meanwhile); the ResetRoute below then scales it back to its
    # original replicas and waits for them before the canary goes.
    if target.promoted_by != rid:
        ctx.act(PromoteStable(rid, ctx.status.version_since or precise(ctx.now)))
        ctx.plan.requeue(POLL_RUNNING)
        return None
    if not target.rolled_out:
        ctx.plan.requeue(POLL_RUNNING)
        return None
    if not ctx.obs.route.reset:
        ctx.act(ResetRoute())
        ctx.plan.requeue(1)
        return None
    ctx.status.weight = 0
    return True, "stable runs the new version and takes 100% of traffic"


# ---------------------------------------------------------------------- helpers


def _skip_to_promotion(ctx: _Context, index: int) -> None:
    """`kubectl canary promote`: the remaining steps before the promote step are skipped
    (a running step's Jobs are cancelled); without a promote step the run just ends."""
    if ctx.rollout.annotations.get(PROMOTE_ANNOTATION) != str(ctx.status.run):
        return
    steps = ctx.rollout.spec.steps
    promote_at = next((i for i, s in enumerate(steps) if s.kind == "promote"), len(steps))
    if index >= promote_at:
        return
    assert ctx.status.steps is not None
    for i in range(index, promote_at):
        st = ctx.status.steps[i]
        if st.phase in (StepPhase.PENDING, StepPhase.RUNNING):
            _cancel_children(ctx, st)
            if st.job and st.phase == StepPhase.RUNNING:
                ctx.act(DeleteJob(st.job))
            st.phase = StepPhase.CANCELLED
            st.finished_at = iso(ctx.now)
            st.message = "skipped: promoted by the user"
    ctx.status.current_step = promote_at
    ctx.event("PromotedByUser", f"skipping to step {promote_at + 1} (promotion)")


def _spec_problems(spec: CanaryRolloutSpec) -> list[str]:
    """Checks the schema cannot express, made before anything is touched."""
    problems = []
    for n, step in enumerate(spec.steps, start=1):
        items: list[Step | ParallelItem] = [step, *(step.parallel or [])]
        for item in items:
            if item.analysis is not None:
                problems += [f"step {n}: {e}" for e in analysis.spec_errors(item.analysis)]
            webhook = item.test.webhook if item.test is not None else None
            if webhook is not None and webhook.body is not None:
                problems += [f"step {n} webhook body: {e}" for e in template_problems(webhook.body)]
    for n, user in enumerate(spec.cleanup or [], start=1):
        if user.webhook is not None and user.webhook.body is not None:
            problems += [
                f"cleanup {n} webhook body: {e}" for e in template_problems(user.webhook.body)
            ]
    return problems


def _fresh_step_status(step: Step) -> StepStatus:
    return StepStatus(name=step.name or step.kind, kind=step.kind)


def _leftovers(obs: Observed) -> bool:
    return obs.canary is not None or obs.canary_service or obs.canary_pods > 0


def _test_jobs(ctx: _Context) -> bool:
    """Test Jobs that still exist (cleanup Jobs are kept for their logs, and so are
    failed test Jobs once marked kept under keepFailedJobs)."""
    return any(not job.cleanup and not job.kept for job in ctx.obs.jobs.values())


def _step_statuses(status: CanaryRolloutStatus) -> Iterator[ChildStepStatus]:
    for st in status.steps or []:
        yield st
        yield from st.children or []


def _jobs_to_keep(ctx: _Context) -> set[str]:
    """Failed test Jobs kept (not deleted) by cleanup under keepFailedJobs."""
    policy = ctx.rollout.spec.cleanup_policy
    if policy is None or not policy.keep_failed_jobs:
        return set()
    return {st.job for st in _step_statuses(ctx.status) if st.job and st.phase == StepPhase.FAILED}


def jobs_wanting_logs(status: CanaryRolloutStatus, jobs: Mapping[str, JobView]) -> list[str]:
    """Test Jobs whose log tails are to be read before cleanup deletes them: the Job
    failed, or its step failed (timed out) with the Job still there, and the status
    does not hold its logs yet."""
    wanted = []
    for st in _step_statuses(status):
        job = jobs.get(st.job or "")
        if job is None or job.cleanup or st.logs is not None:
            continue
        if job.failed or st.phase == StepPhase.FAILED:
            wanted.append(job.name)
    return wanted


LOG_EVENT_ROOM = 700  # of an Event's 1024 characters, for the log tail itself


def _record_evidence(ctx: _Context) -> None:
    """Keep the log tails of failed test Jobs in the step status, and say so in a
    Warning Event, before cleanup deletes the Jobs."""
    for st in _step_statuses(ctx.status):
        if st.phase != StepPhase.FAILED or not st.job or st.logs is not None:
            continue
        tails = ctx.obs.job_logs.get(st.job)
        if tails is None:
            continue
        st.logs = [t.model_copy() for t in tails]
        ctx.event("TestLogs", _evidence_message(st.name, st.job, st.logs), warning=True)


def _evidence_message(step: str, job: str, tails: list[ContainerLogTail]) -> str:
    if not tails:
        return f"{step}: Job {job} failed; it left no pod logs"
    parts = []
    room = LOG_EVENT_ROOM // len(tails)
    for t in tails:
        where = f"{t.pod}/{t.container}"
        if t.error:
            parts.append(f"{where}: logs unavailable ({t.error})")
        else:
            text = t.tail.rstrip("\n")
            shown = text if len(text) <= room else "..." + text[-room:]
            parts.append(f"{where}:\n{shown}")
    return f"{step}: Job {job} failed; log tail of " + "\n".join(parts)


def _renewal_condition(ctx: _Context) -> None:
    """A held lease whose renewal fails is said so (it is never taken from a live
    holder, but a human should know the operator cannot write it)."""
    error = ctx.obs.lock.renew_error if ctx.obs.lock.held else None
    if error:
        ctx.set_condition("LockRenewed", False, "RenewalFailing", error)
    elif ctx.status.condition("LockRenewed") is not None:
        ctx.set_condition("LockRenewed", True, "Renewed", "")


def retrying(rollout: Rollout, obs: Observed, status: CanaryRolloutStatus, error: str) -> Plan:
    """An API call of the planned actions failed in a way a retry may cure (a 5xx, a
    timeout, a refused connection): keep the planned status and the lock, and say what
    fails, once, rather than let the run look stuck for no reason."""
    ctx = _Context(rollout.__class__(**{**rollout.__dict__, "status": status}), obs)
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
    status.conditions = [c for c in status.conditions or [] if c.type != "ReconcileError"] + [
        Condition(
            type="ReconcileError",
            status="False",
            reason="Recovered",
            message=f"recovered from: {previous.message}"[:1000],
            last_transition_time=iso(now),
            observed_generation=generation,
        )
    ]


def _record_queue(ctx: _Context) -> None:
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


def _decide(ctx: _Context, result: Result, message: str) -> None:
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


def _force_release(ctx: _Context) -> None:
    """A human gave up on this cleanup: end the run unverified and free the lock."""
    cleanup = ctx.status.cleanup
    assert cleanup is not None and ctx.status.outcome is not None
    why = f"cleanup not verified ({cleanup.last_error or 'forced'}); lock force-released"
    cleanup.stage = "ForceReleased"
    cleanup.finished_at = iso(ctx.now)
    ctx.set_condition("CleanupVerified", False, "ForceReleased", why)
    ctx.event("ForceReleased", f"{why} by annotation {FORCE_RELEASE_ANNOTATION}", warning=True)
    if ctx.obs.lock.held:
        ctx.act(ReleaseLock())
        ctx.event("LockReleased", f"released lock {ctx.obs.lock.name} (forced)", warning=True)
    ctx.status.outcome.message += f"; {why}"
    _finish(ctx, ctx.status.outcome)


def _best_effort_failed(ctx: _Context, k: int, name: str, label: str, message: str) -> None:
    """A `required: false` cleanup step failed: recorded, said once, and passed over
    (the target's state does not depend on it, so the lock need not wait for it)."""
    cleanup = ctx.status.cleanup
    assert cleanup is not None
    cleanup.failed_steps = [
        *(cleanup.failed_steps or []),
        FailedCleanupStep(step=k + 1, name=name, message=message[:1000], at=iso(ctx.now)),
    ]
    cleanup.user_step = k + 1
    ctx.event(
        "CleanupStepFailed",
        f"{label} (best effort, required: false) failed: {message}; cleanup goes on",
        warning=True,
    )


def _cleanup_failed(ctx: _Context, error: str) -> None:
    """A cleanup that cannot finish keeps the lock and retries with backoff."""
    cleanup_failed(ctx.status, ctx.rollout.spec, error, ctx.now, ctx.rollout.generation)
    ctx.event("CleanupBlocked", f"{error}; retrying, lock kept", warning=True)
    assert ctx.status.cleanup is not None and ctx.status.cleanup.next_attempt_at
    ctx.plan.requeue((parse_time(ctx.status.cleanup.next_attempt_at) - ctx.now).total_seconds())


def cleanup_failed(
    status: CanaryRolloutStatus, spec: CanaryRolloutSpec, error: str, now: datetime, generation: int
) -> None:
    """Record a failed cleanup attempt (also used by the reconciler for API errors)."""
    cleanup = status.cleanup or CleanupStatus(started_at=iso(now))
    status.cleanup = cleanup
    policy = spec.cleanup_policy
    base = policy.retry_backoff_seconds if policy else 2
    cap = policy.max_backoff_seconds if policy else 60
    delay = min(cap, base * 2 ** min(cleanup.attempts, 16))
    cleanup.attempts += 1
    cleanup.last_error = error
    cleanup.next_attempt_at = iso(now + timedelta(seconds=delay))
    status.message = f"cleanup blocked: {error}; retry {cleanup.attempts} in {delay}s"
    previous = status.condition("CleanupVerified")
    since = previous.last_transition_time if previous and previous.status == "False" else iso(now)
    conditions = [c for c in status.conditions or [] if c.type != "CleanupVerified"]
    conditions.append(
        Condition(
            type="CleanupVerified",
            status="False",
            reason="CleanupBlocked",
            message=status.message,
            last_transition_time=since,
            observed_generation=generation,
        )
    )
    status.conditions = conditions


def _end_without_run(ctx: _Context, result: Result, message: str, holding: bool = False) -> None:
    """End a rollout that never touched the target: nothing to clean up."""
    status = ctx.status
    status.outcome = Outcome(result=result, message=message, decided_at=iso(ctx.now))
    if holding:  # lock acquired in this very round, before any step: give it back
        ctx.act(ReleaseLock())
    _finish(ctx, status.outcome)


def _finish(ctx: _Context, outcome: Outcome) -> None:
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


def blamed_status(
    rollout: Rollout, obs: Observed, planned: Plan, failed: Action | None
) -> CanaryRolloutStatus:
    """The planned status a failed action is judged against: when the step that asked
    for it finished in that plan (and later steps started, or the run was decided),
    the same plan stopped right after that step, so the failure is that step's."""
    owner = planned.owner(failed) if failed is not None else None
    if owner is None or owner >= (planned.status.current_step or 0):
        return planned.status
    return plan(rollout, obs, last_step=owner).status


def action_failed(rollout: Rollout, obs: Observed, status: CanaryRolloutStatus, error: str) -> Plan:
    """An action failed for good (bad input, a missing object): end the step or retry
    the cleanup. `status` is the planned status the failed action belonged to."""
    ctx = _Context(rollout.__class__(**{**rollout.__dict__, "status": status}), obs)
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
        _decide(ctx, Result.STEP_FAILED, f"step {index + 1} failed: {error}")
        assert ctx.status.outcome is not None
        ctx.status.outcome.failed_step = index + 1
    elif phase == Phase.CLEANING_UP:
        _cleanup_failed(ctx, error)
    elif phase not in TERMINAL_PHASES:
        _end_without_run(ctx, Result.INVALID, error, obs.lock.held)
    ctx.status.step_label = step_label(rollout.spec, ctx.status.current_step)
    return ctx.plan
