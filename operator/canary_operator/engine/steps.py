"""A run's steps: the current one run in turn (several in one plan when each finishes
at once), and the steps that run something for a while (pause, test, analysis,
parallel groups). Steps that move a level are in traffic_steps.py."""

from __future__ import annotations

from datetime import timedelta

from canary_operator.api.models import (
    AnalysisStatus,
    ChildStepStatus,
    ParallelItem,
    Phase,
    Result,
    Step,
    StepPhase,
    StepStatus,
    WebhookSpec,
    parse_duration,
)
from canary_operator.api.timestamps import iso, parse_time
from canary_operator.engine import analysis, blue_green
from canary_operator.engine.annotations import PROMOTE_ANNOTATION, RESUME_ANNOTATION
from canary_operator.engine.context import POLL_RUNNING, POLL_WAITING, Context, StepResult
from canary_operator.engine.labels import job_name
from canary_operator.engine.lock_records import record_queue
from canary_operator.engine.outcomes import decide
from canary_operator.engine.traffic_steps import ensure_canary, promote, set_weight
from canary_operator.engine.types import (
    Action,
    CallWebhook,
    DeleteJob,
    EnsureCanary,
    EnsureJob,
    ScaleStable,
    SetRouteWeight,
)


def progressing(ctx: Context) -> None:
    """A run in progress (or paused): end it if it must, else run its steps."""
    status = ctx.status
    record_queue(ctx)
    ending = _why_the_run_ends(ctx)
    if ending is not None:
        decide(ctx, *ending)
        return
    if ctx.rollout.spec.paused:
        _pause_by_user(ctx)
        return
    # Time spent paused (by the user or at a pause step) does not count; it is added to
    # the deadline when the pause ends (whole seconds: no drift).
    paused_for = timedelta(0)
    if status.paused_at is not None:
        paused_for = parse_time(iso(ctx.now)) - parse_time(status.paused_at)
    if _deadline_passed(ctx, paused_for):
        return
    # A step that finishes here is followed by the next in this same plan (one status
    # write per transition, no trip through the work queue). Each action remembers
    # the step that asked for it, so a failed one fails that step (see blamed_status).
    while _run_current_step(ctx, paused_for):
        if ctx.last_step is not None and (status.current_step or 0) > ctx.last_step:
            break
    _drop_superseded(ctx)


def _why_the_run_ends(ctx: Context) -> tuple[Result, str] | None:
    """The outcome a run in progress must end with before its next step, or None."""
    rollout, status, obs, spec = ctx.rollout, ctx.status, ctx.obs, ctx.rollout.spec
    # A run owns the lock it started with: never one acquired again later (another
    # rollout may have run in between). Lost, it does nothing more to the target and
    # queues for its cleanup.
    if not obs.lock.held:
        now_with = obs.lock.holder or "nobody"
        return Result.LOCK_LOST, f"lock {obs.lock.name} is no longer held (now: {now_with})"
    started_with = status.lock.token if status.lock is not None else None
    if started_with is not None and obs.lock.token != started_with:
        return (
            Result.LOCK_LOST,
            f"lock {obs.lock.name} changed hands during the run "
            f"(token {started_with}, now {obs.lock.token})",
        )
    if rollout.deleting:
        return Result.DELETED, "the rollout was deleted"
    if spec.abort:
        return Result.ABORTED, "aborted by the user (spec.abort)"
    if status.fingerprint != spec.run_fingerprint():
        return Result.SPEC_CHANGED, "spec changed during the run; a new run will follow"
    if obs.target is None:
        return Result.TARGET_NOT_FOUND, "the target Deployment disappeared"
    return None


def _pause_by_user(ctx: Context) -> None:
    status = ctx.status
    if status.phase != Phase.PAUSED or status.paused_at is None:
        status.paused_at = iso(ctx.now)
    ctx.enter(Phase.PAUSED, "paused by the user (spec.paused)")
    ctx.set_condition("Paused", True, "UserPaused", "spec.paused is true")


def _deadline_passed(ctx: Context, paused_for: timedelta) -> bool:
    """Past progressDeadlineSeconds (plus the time paused): the run is decided."""
    status = ctx.status
    if not status.deadline_at:
        return False
    deadline = parse_time(status.deadline_at) + paused_for
    if ctx.now > deadline:
        seconds = ctx.rollout.spec.progress_deadline_seconds
        decide(
            ctx,
            Result.DEADLINE_EXCEEDED,
            f"not finished within progressDeadlineSeconds={seconds}",
        )
        return True
    if status.paused_at is None:  # paused, the deadline moves on with the clock
        # Enforced on time even while a check is in flight or nothing else happens.
        ctx.plan.requeue((deadline - ctx.now).total_seconds() + 1)
    return False


# Actions that set one object's whole desired state: a later one of the same kind in a
# plan makes an earlier one pointless.
_LEVELS = (EnsureCanary, ScaleStable, SetRouteWeight)


def _drop_superseded(ctx: Context) -> None:
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


def _run_current_step(ctx: Context, paused_for: timedelta) -> bool:
    """Run the current step; True when it succeeded (the next one may start)."""
    status, spec = ctx.status, ctx.rollout.spec
    index = status.current_step or 0
    skip_to_promotion(ctx, index)
    index = status.current_step or 0
    if index >= len(spec.steps):
        decide(ctx, Result.SUCCEEDED, "all steps passed")
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
        decide(ctx, Result.STEP_FAILED, f"step {index + 1} ({name}) failed: {message}")
        assert status.outcome is not None
        status.outcome.failed_step = index + 1
        return False
    step_status.phase = StepPhase.SUCCEEDED
    ctx.event("StepSucceeded", f"step {index + 1} {step.kind}: {message}")
    status.current_step = index + 1
    return True


def _run_step(ctx: Context, index: int, step: Step, st: StepStatus) -> StepResult:
    timeout = timed_out(ctx, step.timeout, st)
    if timeout:
        cancel_children(ctx, st)
        return False, timeout
    kind = step.kind
    if kind == "canary":
        assert step.canary is not None
        return ensure_canary(ctx, step.canary.replicas)
    if kind == "setWeight":
        assert step.set_weight is not None
        return set_weight(ctx, step.set_weight)
    if kind == "promote":
        return blue_green.promote_after_delay(ctx) if ctx.spec.blue_green else promote(ctx)
    if kind == "preview":
        return blue_green.preview(ctx)
    if kind == "switch":
        return blue_green.switch(ctx)
    if kind == "parallel":
        assert step.parallel is not None
        return _parallel(ctx, index, step.parallel, st)
    return _leaf(ctx, step, st, f"s{index + 1}", f"step {index + 1}")


def _leaf(
    ctx: Context, item: Step | ParallelItem, st: ChildStepStatus, suffix: str, label: str
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
        return webhook_step(ctx, suffix, item.test.webhook, label)
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


def _resumed(ctx: Context) -> bool:
    """The resume annotation names the current step: "N", or "N@RUN" to hold only in
    that run (what `kubectl canary resume` writes, so a later run does not inherit it)."""
    value = ctx.rollout.annotations.get(RESUME_ANNOTATION, "")
    step, _, run = value.partition("@")
    return step == str((ctx.status.current_step or 0) + 1) and run in ("", str(ctx.status.run))


def webhook_step(ctx: Context, key: str, webhook: WebhookSpec, label: str) -> StepResult:
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


def _parallel(ctx: Context, index: int, items: list[ParallelItem], st: StepStatus) -> StepResult:
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
        result = timed_out(ctx, item.timeout, child)
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
        cancel_children(ctx, st)
        return False, "; ".join(failures)
    if all(c.phase == StepPhase.SUCCEEDED for c in st.children):
        return True, f"all {len(items)} passed"
    return None


def cancel_children(ctx: Context, st: StepStatus) -> None:
    for child in st.children or []:
        if child.phase in (StepPhase.RUNNING, StepPhase.PENDING):
            child.phase = StepPhase.CANCELLED
            child.finished_at = iso(ctx.now)
            child.message = "cancelled: another step in the group failed"
            if child.job:
                ctx.act(DeleteJob(child.job))


def timed_out(ctx: Context, timeout: str | None, st: ChildStepStatus) -> str | None:
    if not timeout or st.started_at is None:
        return None
    deadline = parse_time(st.started_at) + parse_duration(timeout)
    if ctx.now >= deadline:
        return f"timed out after {timeout}"
    ctx.plan.requeue((deadline - ctx.now).total_seconds())
    return None


def skip_to_promotion(ctx: Context, index: int) -> None:
    """`kubectl canary promote`: the remaining steps before the promote step are skipped
    (a running step's Jobs are cancelled); without a promote step the run just ends. A
    blue-green skips to its switch (as Argo Rollouts' promote does), once its preview
    is up; the steps after the switch still run."""
    if ctx.rollout.annotations.get(PROMOTE_ANNOTATION) != str(ctx.status.run):
        return
    steps = ctx.rollout.spec.steps
    to = ("switch", "promote") if ctx.spec.blue_green else ("promote",)
    promote_at = next((i for i, s in enumerate(steps) if s.kind in to), len(steps))
    if index >= promote_at or (ctx.spec.blue_green and index == 0):  # the preview first
        return
    assert ctx.status.steps is not None
    for i in range(index, promote_at):
        st = ctx.status.steps[i]
        if st.phase in (StepPhase.PENDING, StepPhase.RUNNING):
            cancel_children(ctx, st)
            if st.job and st.phase == StepPhase.RUNNING:
                ctx.act(DeleteJob(st.job))
            st.phase = StepPhase.CANCELLED
            st.finished_at = iso(ctx.now)
            st.message = "skipped: promoted by the user"
    ctx.status.current_step = promote_at
    ctx.event("PromotedByUser", f"skipping to step {promote_at + 1} (promotion)")
