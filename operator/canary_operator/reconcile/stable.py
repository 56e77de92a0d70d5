"""What a run writes to the stable Deployment: its size (mode Shift, through the
replicas router's scale_stable) and, at promotion, the new version."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from canary_operator.api.timestamps import precise
from canary_operator.engine.types import PromoteStable, ScaleStable
from canary_operator.kube import objects
from canary_operator.kube.api import Kube
from canary_operator.reconcile.context import ReconcileContext
from canary_operator.reconcile.observe import target_path
from canary_operator.traffic.replicas import scale_stable


async def scale(ctx: ReconcileContext, action: ScaleStable, kube: Kube) -> None:
    rollout = ctx.rollout
    await scale_stable(
        kube,
        rollout.namespace,
        rollout.spec.target.deployment,
        action.replicas,
        action.original,
        action.floor,
        f"{rollout.name}/{ctx.obs.lock.token}",
        fresh=ctx.deps.fresh,
    )


async def promote(ctx: ReconcileContext, action: PromoteStable, kube: Kube) -> None:
    """Server-side apply with the operator's field manager, of only what promotion
    changes (the images, or the template it was given) and its record: a later
    `kubectl apply --server-side` (or any applier) of an older manifest then meets
    a conflict on those fields instead of reverting them unnoticed."""
    rollout, spec = ctx.rollout, ctx.rollout.spec
    where = target_path(ctx)
    # Fresh: the apply is conditional on the target's resourceVersion.
    target = await ctx.deps.fresh.get(where)
    if target is None:
        raise ValueError(f"target Deployment {spec.target.deployment} not found")
    record = {
        "rollout": rollout.name,
        "uid": rollout.uid,
        "run": rollout.status.run,
        "fingerprint": spec.run_fingerprint(),
        "images": objects.template_images(objects.new_pod_template(spec, target)),
        "versionSince": action.version_since,
        "promotedAt": precise(datetime.now(UTC)),
    }
    body = objects.promotion(
        spec,
        target,
        {
            objects.PROMOTED_BY: action.run_id,
            objects.FENCING: f"{rollout.name}/{ctx.obs.lock.token}",
            objects.PROMOTION: json.dumps(record, sort_keys=True),
        },
    )
    await kube.apply(where, body)  # resourceVersion precondition
