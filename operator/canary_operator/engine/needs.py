"""What a plan needs observed before it decides (Need): the reasons the reconciler
once kept to itself for reading more than its caches, or for taking the lock, now
asked for by the engine. Each need is asked at most once per observation: an answered
one (in `Observed.answered`) is never asked again."""

from __future__ import annotations

from canary_operator.api.models import CanaryRolloutStatus, Phase
from canary_operator.engine.evidence import jobs_wanting_logs
from canary_operator.engine.start import wants_validation
from canary_operator.engine.types import Need, Observed, Plan, ReleaseLock, Rollout


def takes_lock(status: CanaryRolloutStatus) -> bool:
    """Whether observing this rollout takes its lock (when it is next and may): only a
    rollout about to start, or one owing a cleanup. A run in progress never takes it
    again: if it is not held any more, the run lost it."""
    return status.phase in (Phase.QUEUED, Phase.CLEANING_UP)


def need_before_planning(rollout: Rollout, obs: Observed) -> Need | None:
    """What must be observed before any phase logic runs, or None."""
    status, lock = rollout.status, obs.lock
    if (
        status.phase in (Phase.PENDING, Phase.QUEUED)
        and lock.held
        and status.started_at is None
        and Need.START not in obs.answered
    ):
        # Whether the target is clean is judged by the API server, not by caches that
        # may not have seen the last cleanup's deletions yet.
        return Need.START
    if (
        wants_validation(rollout, lock.held)
        and obs.target is not None
        and Need.VALIDATION not in obs.answered
    ):
        return Need.VALIDATION
    if jobs_wanting_logs(status, obs.jobs) and Need.JOB_LOGS not in obs.answered:
        return Need.JOB_LOGS
    return None


def need_after_planning(rollout: Rollout, obs: Observed, planned: Plan) -> Need | None:
    """What the full plan shows must be observed before it stands, or None."""
    phase = rollout.status.phase
    if (
        phase == Phase.PENDING
        and not obs.lock.held
        and planned.status.phase == Phase.QUEUED
        and Need.LOCK not in obs.answered
    ):
        # A new run that passed its checks asks for its lock in this round rather than
        # one trip through the work queue later.
        return Need.LOCK
    if (
        phase == Phase.CLEANING_UP
        and any(isinstance(a, ReleaseLock) for a in planned.actions)
        and Need.VERIFICATION not in obs.answered
    ):
        # The promise of a verified cleanup (100 % stable, no canary left) is checked
        # against the API server, not against caches.
        return Need.VERIFICATION
    return None
