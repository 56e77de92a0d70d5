"""Test and cleanup Jobs a plan asks for: created once (an earlier reconcile's create
stands), owned by the rollout, with the canary's Service address in their environment."""

from __future__ import annotations

import contextlib

from canary_operator.engine.types import EnsureJob
from canary_operator.kube import objects
from canary_operator.kube.api import Conflict, Kube, path
from canary_operator.reconcile import views
from canary_operator.reconcile.context import ReconcileContext


async def ensure(ctx: ReconcileContext, action: EnsureJob, kube: Kube) -> None:
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
        await kube.create(path("batch", "v1", "jobs", ns), manifest)


async def delete(ctx: ReconcileContext, name: str, kube: Kube) -> None:
    await kube.delete(path("batch", "v1", "jobs", ctx.namespace, name))
