"""Cleanup, the "finally" of every run that took its lock: route reset, canary objects
deleted, user cleanup steps, verification, then the lock released."""

from __future__ import annotations

from canary_operator.api.models import CleanupStatus, CleanupStep, Result, StepPhase
from canary_operator.api.timestamps import iso, parse_time
from canary_operator.engine.annotations import FORCE_RELEASE_ANNOTATION
from canary_operator.engine.cleanup_blocked import await_deletions, unblocked
from canary_operator.engine.cleanup_failures import best_effort_failed, block_cleanup
from canary_operator.engine.context import POLL_RUNNING, POLL_WAITING, Context
from canary_operator.engine.evidence import step_statuses
from canary_operator.engine.labels import job_name
from canary_operator.engine.lock_records import record_lock, record_queue
from canary_operator.engine.outcomes import finish
from canary_operator.engine.promotion_undo import promotion_undone, undone_text
from canary_operator.engine.start import leftovers, new_run, pending
from canary_operator.engine.steps import webhook_step
from canary_operator.engine.types import DeleteCanaryObjects, EnsureJob, ReleaseLock, ResetRoute


def cleaning_up(ctx: Context) -> None:
    """The run's outcome is decided: undo everything on the target, run the user's
    cleanup steps, verify, and only then release the lock (the "finally")."""
    status, obs = ctx.status, ctx.obs
    status.cleanup = status.cleanup or CleanupStatus(started_at=iso(ctx.now))
    record_queue(ctx)
    if ctx.rollout.annotations.get(FORCE_RELEASE_ANNOTATION) == "true":
        _force_release(ctx)
        return
    if not obs.lock.held:
        # Cleanup touches the target: it waits for the lock like a step would.
        status.message = f"cleanup waiting for lock {obs.lock.name} ({obs.lock.holder})"
        ctx.plan.requeue(POLL_WAITING)
        return
    # The run lost its lock; it was taken again (first in the queue) for the cleanup.
    record_lock(ctx, " for cleanup")
    if _backing_off(ctx) or not promotion_undone(ctx):
        return
    if not _target_reset(ctx) or not _user_steps_done(ctx):
        return
    # Verify: the router reads 100 % stable and no canary pod remains.
    if obs.canary_pods > 0:
        status.cleanup.stage = "Verifying"
        await_deletions(ctx, f"cleanup: waiting for {obs.canary_pods} canary pods to go")
        return
    _verified(ctx)


def _backing_off(ctx: Context) -> bool:
    """True while a failed attempt's backoff lasts."""
    cleanup = ctx.status.cleanup
    assert cleanup is not None
    if cleanup.next_attempt_at and ctx.now < parse_time(cleanup.next_attempt_at):
        remaining = (parse_time(cleanup.next_attempt_at) - ctx.now).total_seconds()
        ctx.plan.requeue(remaining)
        return True
    return False


def _target_reset(ctx: Context) -> bool:
    """True once the route sends 100 % to stable and no canary object (nor test Job)
    is left; until then this plan asks for it."""
    status, obs, cleanup = ctx.status, ctx.obs, ctx.status.cleanup
    assert cleanup is not None
    if obs.route.error:
        block_cleanup(ctx, f"cannot read the route: {obs.route.error}")
        return False
    if not obs.route.reset:
        cleanup.stage = "Routing"
        status.message = "cleanup: routing 100% to stable" + (
            f" ({obs.route.restoring})" if obs.route.restoring else ""
        )
        ctx.act(ResetRoute())
        ctx.plan.requeue(1)
        return False
    if leftovers(obs) or _test_jobs(ctx):
        cleanup.stage = "Deleting"
        ctx.act(DeleteCanaryObjects(keep_jobs=tuple(sorted(_jobs_to_keep(ctx)))))
        await_deletions(ctx, "cleanup: deleting canary objects")
        return False
    unblocked(ctx)  # whatever would not go is gone
    return True


def _user_steps_done(ctx: Context) -> bool:
    """Run the user's cleanup steps in order; True once each succeeded (or, best
    effort, failed)."""
    cleanup, user_steps = ctx.status.cleanup, ctx.rollout.spec.cleanup or []
    assert cleanup is not None
    while cleanup.user_step < len(user_steps):
        cleanup.stage = "UserSteps"
        k = cleanup.user_step
        user = user_steps[k]
        label = f"cleanup {k + 1}/{len(user_steps)} {user.name or 'job'}"
        run = _webhook_cleanup_step if user.webhook is not None else _job_cleanup_step
        if not run(ctx, k, user, label):
            return False
    return True


def _webhook_cleanup_step(ctx: Context, k: int, user: CleanupStep, label: str) -> bool:
    """True when this step is over (succeeded, or failed best effort)."""
    cleanup = ctx.status.cleanup
    assert cleanup is not None and user.webhook is not None
    answer = webhook_step(ctx, f"c{k + 1}-a{cleanup.attempts}", user.webhook, label)
    if answer is None:
        ctx.status.message = f"cleanup: calling {label}"
        return False
    ok, message = answer
    if not ok and not user.required:
        best_effort_failed(ctx, k, user.name or "webhook", label, message)
        return True
    if not ok:
        block_cleanup(ctx, f"{label} failed: {message}")
        return False
    ctx.event("CleanupStepSucceeded", f"{label} succeeded: {message}")
    cleanup.user_step += 1
    return True


def _job_cleanup_step(ctx: Context, k: int, user: CleanupStep, label: str) -> bool:
    """True when this step is over (succeeded, or failed best effort)."""
    cleanup = ctx.status.cleanup
    assert cleanup is not None and user.job is not None
    name = job_name(ctx.rollout, f"c{k + 1}-a{cleanup.attempts}")
    job = ctx.obs.jobs.get(name)
    if job is None or not (job.succeeded or job.failed):
        ctx.status.message = f"cleanup: running {label}"
        ctx.act(EnsureJob(name=name, template=user.job, step_label=label))
        ctx.plan.requeue(POLL_RUNNING)
        return False
    if job.failed and not user.required:
        best_effort_failed(ctx, k, user.name or "job", label, job.message or "Job failed")
        return True
    if job.failed:
        block_cleanup(ctx, f"{label} failed: {job.message}")
        return False
    ctx.event("CleanupStepSucceeded", f"{label} succeeded")
    cleanup.user_step += 1
    return True


def _verified(ctx: Context) -> None:
    """The cleanup is verified: release the lock, and end the run (or, after a spec
    change, queue the new run)."""
    status, cleanup = ctx.status, ctx.status.cleanup
    assert cleanup is not None
    cleanup.stage = "Done"
    cleanup.finished_at = iso(ctx.now)
    cleanup.last_error = None
    cleanup.next_attempt_at = None
    cleanup.blocked_by = None
    skipped = ", ".join(f.name for f in cleanup.failed_steps or [])
    verified = "100% stable, no canary left" + (
        f"; best-effort cleanup steps failed: {skipped}" if skipped else ""
    )
    outcome = status.outcome
    assert outcome is not None
    if cleanup.promotion_undo is not None:
        # What the run did to the target's version, said with how it ended.
        undone = undone_text(ctx, cleanup.promotion_undo)
        verified += f"; {undone}"
        outcome.message += f"; {undone}"
    ctx.set_condition("CleanupVerified", True, "Verified", verified)
    ctx.event("CleanupFinished", "cleanup verified: 100% stable, no canary objects left")
    ctx.act(ReleaseLock())
    ctx.event("LockReleased", f"released lock {ctx.obs.lock.name}")
    if outcome.result == Result.SPEC_CHANGED and not ctx.rollout.deleting:
        new_run(ctx, "previous run cleaned up; the new spec queues")
        pending(ctx)
        return
    finish(ctx, outcome)


def _force_release(ctx: Context) -> None:
    """A human gave up on this cleanup: end the run unverified and free the lock."""
    cleanup = ctx.status.cleanup
    assert cleanup is not None and ctx.status.outcome is not None
    why = f"cleanup not verified ({cleanup.last_error or 'forced'}); lock force-released"
    undo = cleanup.promotion_undo
    if undo is not None and undo.undone_at is None:
        why += f"; promotion to {undo.promoted} not undone"
    cleanup.stage = "ForceReleased"
    cleanup.finished_at = iso(ctx.now)
    ctx.set_condition("CleanupVerified", False, "ForceReleased", why)
    ctx.event("ForceReleased", f"{why} by annotation {FORCE_RELEASE_ANNOTATION}", warning=True)
    if ctx.obs.lock.held:
        ctx.act(ReleaseLock())
        ctx.event("LockReleased", f"released lock {ctx.obs.lock.name} (forced)", warning=True)
    ctx.status.outcome.message += f"; {why}"
    finish(ctx, ctx.status.outcome)


def _test_jobs(ctx: Context) -> bool:
    """Test Jobs that still exist (cleanup Jobs are kept for their logs, and so are
    failed test Jobs once marked kept under keepFailedJobs)."""
    return any(not job.cleanup and not job.kept for job in ctx.obs.jobs.values())


def _jobs_to_keep(ctx: Context) -> set[str]:
    """Failed test Jobs kept (not deleted) by cleanup under keepFailedJobs."""
    policy = ctx.rollout.spec.cleanup_policy
    if policy is None or not policy.keep_failed_jobs:
        return set()
    return {st.job for st in step_statuses(ctx.status) if st.job and st.phase == StepPhase.FAILED}
