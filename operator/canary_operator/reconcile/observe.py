"""What the engine plans from: the rollout's objects, its lock and the answers of its
background checks, from the watch-fed caches, or from the API server itself (through
one ReadOnce) when the engine asks for a fresh observation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from canary_operator.api.job_policy import job_service_account_problems
from canary_operator.api.models import MeasurementStatus, Phase
from canary_operator.engine import machine
from canary_operator.engine.types import CheckResult, LockView, Observed
from canary_operator.index import candidate
from canary_operator.kube import objects
from canary_operator.kube.api import JsonObj, Kube, path
from canary_operator.lock.run_lock import StillAsRead
from canary_operator.reconcile import canary as canary_objects
from canary_operator.reconcile import views
from canary_operator.reconcile.context import ReconcileContext, Targets


def target_path(ctx: ReconcileContext) -> str:
    return path("apps", "v1", "deployments", ctx.namespace, ctx.rollout.spec.target.deployment)


async def read_targets(ctx: ReconcileContext) -> Targets:
    """The target Deployment and its stable Service, from the caches."""
    service_name = ctx.rollout.spec.target.service
    target, service = await asyncio.gather(
        ctx.deps.kube.get(target_path(ctx)),
        ctx.deps.kube.get(path("", "v1", "services", ctx.namespace, service_name))
        if service_name
        else _nothing(),
    )
    return Targets(target, service)


async def observe(ctx: ReconcileContext, reads: Kube, lock: LockView | None = None) -> Observed:
    """Everything but the target itself (ctx.targets), read through `reads`. With
    `lock`, the lock as already observed (and perhaps just acquired) in this reconcile
    is kept: observing it again would lose what the acquisition found (a holder it
    took over from)."""
    ns, spec = ctx.namespace, ctx.rollout.spec
    # Only a rollout about to start, or one owing a cleanup, takes the lock. A run in
    # progress never takes it again: if it is not held any more, the run lost it.
    wants = machine.takes_lock(ctx.rollout.status)
    # Independent round trips, issued at once (the route read needs no token).
    observed_lock, (canary, baseline), canary_service, pods, jobs, route = await asyncio.gather(
        _given(lock) if lock is not None else observe_lock(ctx, wants),
        _role_deployments(ctx, reads),
        reads.get(path("", "v1", "services", ns, objects.canary_service_name(spec))),
        reads.list(path("", "v1", "pods", ns), objects.any_role_selector(spec)),
        reads.list(path("batch", "v1", "jobs", ns), objects.operator_jobs_selector(spec)),
        ctx.router(None, reads).read(),
    )
    answers, running = ctx.deps.checks.observe(ctx.ref)
    uid = ctx.rollout.uid
    jobs = [j for j in jobs if views.owned_by(j, uid) or views.purpose(j) == "test"]
    if (unstarted := _unstarted_run(ctx)) is not None:
        # What the run about to start made is no previous holder's leftover: another
        # process started this run a moment ago (its status write not seen yet), or a
        # start whose status write was lost made it. The start takes it over as is.
        canary, baseline, canary_service = (
            None if o is not None and canary_objects.marked_run(o) == unstarted else o
            for o in (canary, baseline, canary_service)
        )
        pods = [p for p in pods if canary_objects.marked_run(p) != unstarted]
        jobs = [j for j in jobs if canary_objects.marked_run(j) != unstarted]
    going = [("deployment", canary), ("deployment", baseline), ("service", canary_service)]
    return Observed(
        now=datetime.now(UTC),
        lock=observed_lock,
        target=views.workload(ctx.targets.target),
        canary=views.workload(canary, views.with_role(pods, "canary")),
        baseline=views.workload(baseline, views.with_role(pods, "baseline")),
        canary_service=canary_service is not None,
        route=route,
        jobs={j["metadata"]["name"]: views.job(j) for j in jobs},
        canary_pods=len(pods),
        lingering=views.lingering(
            [*going, *(("pod", p) for p in pods), *(("job", j) for j in jobs)]
        ),
        checks={k: v for k, v in answers.items() if isinstance(v, CheckResult)},
        measurements={k: v for k, v in answers.items() if isinstance(v, MeasurementStatus)},
        in_flight=running,
        policy_problems=tuple(job_service_account_problems(spec, ns, ctx.deps.allowed_accounts)),
    )


def _unstarted_run(ctx: ReconcileContext) -> str | None:
    """The run (as objects are marked with it) of a rollout whose run has not started
    yet, or None."""
    status = ctx.rollout.status
    if status.phase in (Phase.PENDING, Phase.QUEUED) and status.started_at is None:
        return canary_objects.run_of(ctx, status.run)
    return None


async def observe_lock(ctx: ReconcileContext, wants: bool) -> LockView:
    """The lock, taken if `wants` and this rollout is next and may."""
    me = candidate(ctx.body)
    assert me is not None  # the spec was parsed before the context was made
    index = ctx.deps.index
    sharing = {key: index.sharing_lock(ctx.namespace, key) for key in ctx.run_lock.keys}
    precondition = StillAsRead(ctx.deps.kube, ctx.deps.fresh, ctx.body)
    return await ctx.run_lock.observe(me, sharing, wants, precondition)


async def _role_deployments(
    ctx: ReconcileContext, reads: Kube
) -> tuple[JsonObj | None, JsonObj | None]:
    """The canary Deployment, and the baseline's when the spec asks for one."""
    ns, spec = ctx.namespace, ctx.rollout.spec
    canary, baseline = await asyncio.gather(
        reads.get(path("apps", "v1", "deployments", ns, objects.canary_name(spec))),
        reads.get(path("apps", "v1", "deployments", ns, objects.baseline_name(spec)))
        if spec.baseline
        else _nothing(),
    )
    return canary, baseline


async def _nothing() -> None:
    return None


async def _given(lock: LockView) -> LockView:
    return lock
