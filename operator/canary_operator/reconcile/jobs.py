"""Test and cleanup Jobs a plan asks for: created once (an earlier reconcile's create
stands), owned by the rollout and marked with its run, with the canary's Service
address in their environment; deleted only as read (its uid), and only this run's."""

from __future__ import annotations

import contextlib

from canary_operator.engine.types import EnsureJob
from canary_operator.kube import objects
from canary_operator.kube.api import Conflict, Kube, path
from canary_operator.reconcile import canary, views
from canary_operator.reconcile.context import ReconcileContext


async def ensure(ctx: ReconcileContext, action: EnsureJob, kube: Kube, run: str) -> None:
    """`run`: the run that makes it (canary.RUN_ANNOTATION)."""
    rollout, ns, spec = ctx.rollout, ctx.namespace, ctx.rollout.spec
    target = ctx.targets.target
    if target is None:
        raise ValueError(f"target Deployment {spec.target.deployment} not found")
    service = objects.canary_service(
        spec, rollout.name, rollout.uid, ns, ctx.targets.service, target
    )
    manifest = objects.job_manifest(
        spec,
        rollout.name,
        rollout.uid,
        ns,
        action.name,
        action.template,
        action.step_label,
        cleanup=action.step_label.startswith("cleanup"),
        service_port=views.first_port(service),
    )
    with contextlib.suppress(Conflict):  # created by an earlier reconcile
        await kube.create(path("batch", "v1", "jobs", ns), canary.mark(manifest, run))


async def delete(ctx: ReconcileContext, name: str, kube: Kube, run: str) -> None:
    """The Job `name` as the cache shows it, if `run` made it: deleted with its uid as
    the precondition (another Job of that name since is not touched)."""
    where = path("batch", "v1", "jobs", ctx.namespace, name)
    job = await kube.get(where)
    if job is None or job["metadata"].get("deletionTimestamp"):
        return
    if not canary.made_by(ctx, job, run):
        raise canary.NotThisRun(run, [f"job {name}"])
    with contextlib.suppress(Conflict):  # not the Job read: nothing of ours to delete
        await kube.delete(where, uid=job["metadata"].get("uid"))
