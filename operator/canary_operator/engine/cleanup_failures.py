"""A cleanup that fails: a required step blocks it (retried with backoff, the lock
kept), a best-effort one is recorded and passed over."""

from __future__ import annotations

from datetime import datetime, timedelta

from canary_operator.api.models import (
    CanaryRolloutSpec,
    CanaryRolloutStatus,
    CleanupStatus,
    FailedCleanupStep,
)
from canary_operator.api.timestamps import iso, parse_time
from canary_operator.engine.conditions import set_condition
from canary_operator.engine.context import Context


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
    # Blocked since the cleanup first failed (or started): every attempt rewrites it.
    set_condition(
        status,
        "CleanupVerified",
        False,
        "CleanupBlocked",
        status.message,
        now,
        generation,
        to_end=True,
    )


def block_cleanup(ctx: Context, error: str) -> None:
    """A cleanup that cannot finish keeps the lock and retries with backoff."""
    cleanup_failed(ctx.status, ctx.rollout.spec, error, ctx.now, ctx.rollout.generation)
    ctx.event("CleanupBlocked", f"{error}; retrying, lock kept", warning=True)
    assert ctx.status.cleanup is not None and ctx.status.cleanup.next_attempt_at
    ctx.plan.requeue((parse_time(ctx.status.cleanup.next_attempt_at) - ctx.now).total_seconds())


def best_effort_failed(ctx: Context, k: int, name: str, label: str, message: str) -> None:
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
