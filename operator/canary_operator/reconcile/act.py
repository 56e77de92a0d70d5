"""Carrying out a plan's actions: each write to the target fenced (confirmed right
before it, each write on its own, that the run still holds its lock), background
checks started under the lock; and what a failed action means for the plan that
asked for it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from canary_operator.api.models import CanaryRolloutStatus, Phase
from canary_operator.engine import machine
from canary_operator.engine.types import (
    CHECK_ACTIONS,
    TARGET_EFFECTS,
    Action,
    AddFinalizer,
    DeleteCanaryObjects,
    DeleteJob,
    Emit,
    EnsureCanary,
    EnsureJob,
    LockView,
    Need,
    Plan,
    PromoteStable,
    ReleaseLock,
    RemoveFinalizer,
    ResetRoute,
    ScaleStable,
    SetRouteWeight,
    UndoPromotion,
)
from canary_operator.kube.api import FencedWrites, Kube, describe
from canary_operator.kube.rollouts import add_finalizer, has_finalizer, remove_finalizer
from canary_operator.lock.run_lock import LockLost
from canary_operator.reconcile import canary, checks, jobs, stable, status
from canary_operator.reconcile.context import ReconcileContext
from canary_operator.reconcile.errors import TRANSIENT, refused
from canary_operator.traffic.base import PermanentRouteError

log = logging.getLogger(__name__)


def after_status(action: Action) -> bool:
    """Actions that must follow a durable terminal status: the lock and the finalizer."""
    return isinstance(action, ReleaseLock | RemoveFinalizer)


async def act_on(ctx: ReconcileContext, result: Plan) -> tuple[Plan, str | None]:
    """Run the plan's side effects (all but what must follow the status write).
    Returns the plan to record and, when an API call failed in a way a retry may
    cure, what failed (the caller retries after recording it)."""
    try:
        await act(ctx, result)
    except LockLost as lost:
        # Decide again as the run that lost its lock, with nothing more to observe: it
        # ends LockLost and queues for its cleanup, asking for nothing on the target.
        rollout = ctx.rollout
        log.warning("%s/%s: %s", rollout.namespace, rollout.name, lost)
        lock = LockView(name=ctx.obs.lock.name, holder=str(lost), busy=True)
        return machine.plan(rollout, replace(ctx.obs, lock=lock, answered=frozenset(Need))), None
    except (*TRANSIENT, PermanentRouteError, ValueError) as exc:
        return _failed(ctx, result, exc)
    machine.recovered(result.status, ctx.obs.now, ctx.rollout.generation)
    return result, None


def _failed(ctx: ReconcileContext, result: Plan, exc: Exception) -> tuple[Plan, str | None]:
    rollout, obs = ctx.rollout, ctx.obs
    permanent = not isinstance(exc, TRANSIENT) or refused(exc)
    if not permanent and rollout.status.phase != Phase.CLEANING_UP:
        # The run keeps its lock (renewed apart from reconciles) and says what fails;
        # the work queue retries with backoff.
        error = describe(exc)
        return machine.retrying(rollout, obs, result.status, error), error
    # The API refused what we sent (e.g. an invalid Job in the spec), or a cleanup
    # action failed: the step that asked for it fails, or the cleanup backs off.
    failed = ctx.acting[-1] if ctx.acting else None
    blamed = machine.blamed_status(rollout, obs, result, failed)
    return machine.action_failed(rollout, obs, blamed, describe(exc)), None


async def act(ctx: ReconcileContext, result: Plan) -> None:
    # Reads the Lease on each call, also the first after the lock was taken in this
    # reconcile: the start's dry-runs and webhooks may sit between the two.
    fence = ctx.run_lock.fence(ctx.obs.lock)
    planned = result.status
    for action in result.actions:
        if isinstance(action, Emit) or after_status(action):
            continue
        ctx.acting.append(action)
        if isinstance(action, CHECK_ACTIONS):
            if not ctx.deps.checks.known(ctx.ref, action.key):
                await fence()  # a step starts only under the lock
                checks.start(ctx, action)
            continue
        if not isinstance(action, TARGET_EFFECTS):
            await execute(ctx, action, planned=planned)
            continue
        # Each write confirmed right before it; an action that finds its work done (an
        # unchanged canary, a reset already written, objects already going) writes
        # nothing and needs no confirmation.
        fenced = FencedWrites(ctx.deps.kube, fence)
        if isinstance(action, EnsureCanary):
            # Only what the cache does not show as last applied; independent objects
            # (Deployment(s), Service) applied at once, after one confirmation that
            # starts once all of them were issued.
            stale = await canary.to_apply(ctx, action.replicas, planned.run)
            await asyncio.gather(*(fenced.apply(where, m) for where, m in stale))
            continue
        await execute(ctx, action, fenced, planned)


async def execute(
    ctx: ReconcileContext,
    action: Action,
    writes: Kube | None = None,
    planned: CanaryRolloutStatus | None = None,
) -> None:
    """Carry out one action; `writes` is the Kube its reads and writes go through (for
    a write to the target: one that confirms the lock before each write); `planned` is
    the status of the plan that asks for it (its run, its phase; by default the status
    as read)."""
    deps, rollout = ctx.deps, ctx.rollout
    kube = writes or deps.kube
    planned = planned or rollout.status
    this_run = canary.run_of(ctx, planned.run)
    match action:
        case Emit():
            status.announce(deps, rollout, action)
        case AddFinalizer():
            if not has_finalizer(ctx.body):
                await add_finalizer(deps.kube, ctx.body)
        case RemoveFinalizer():
            # Known at once: a reconcile woken by the terminal status write's event
            # would otherwise see the finalizer still there and remove it again.
            deps.index.update(await remove_finalizer(deps.kube, ctx.body))
        case ReleaseLock():
            await ctx.run_lock.release()
        case ScaleStable():
            await stable.scale(ctx, action, kube)
        case SetRouteWeight(weight=weight):
            await ctx.router(ctx.obs.lock.token, kube).set_weight(weight)
        case ResetRoute():
            await ctx.router(ctx.obs.lock.token, kube).reset()
        case DeleteCanaryObjects():
            # A recovery deletes what a previous holder left (never what the run about
            # to start made: this run, started a moment ago by another process); a
            # run's own cleanup, only what this run made.
            if canary.recovering(planned.phase):
                await canary.delete(ctx, action, kube, None, spare=this_run)
            else:
                await canary.delete(ctx, action, kube, this_run)
        case EnsureJob():
            await jobs.ensure(ctx, action, kube, this_run)
        case DeleteJob(name=name):
            await jobs.delete(ctx, name, kube, this_run)
        case PromoteStable():
            await stable.promote(ctx, action, kube)
        case UndoPromotion():
            await stable.undo(ctx, action, kube)
