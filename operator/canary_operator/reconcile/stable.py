"""What a run writes to the stable Deployment: its size (mode Shift, through the
replicas router's scale_stable), at promotion the new version (with what it replaces,
and the rollback window: engine/rollback_window.py), and, when a cleanup undoes an
incomplete promotion, the template it replaced."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

from canary_operator.api.models import CanaryRolloutSpec, RollbackWindow
from canary_operator.api.timestamps import precise
from canary_operator.engine import rollback_window
from canary_operator.engine.types import PromoteStable, ScaleStable, UndoPromotion
from canary_operator.kube import objects, promotion
from canary_operator.kube.api import Kube
from canary_operator.reconcile import views
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
    a conflict on those fields instead of reverting them unnoticed. The same write
    records what it replaces (annotation pre-promotion), for an undo, and keeps it in
    the rollback window (for `kubectl canary undo`). An undo's promotion (`exact`)
    replaces the whole pod template instead, so that it is exactly the one kept."""
    rollout, spec = ctx.rollout, ctx.rollout.spec
    where = target_path(ctx)
    # Fresh: the apply is conditional on the target's resourceVersion.
    target = await ctx.deps.fresh.get(where)
    if target is None:
        raise ValueError(f"target Deployment {spec.target.deployment} not found")
    annotations = target["metadata"].get("annotations") or {}
    if annotations.get(objects.PROMOTED_BY) == action.run_id:
        # Already promoted (a cache that had not seen it yet): what it replaced is
        # recorded, and the target as it is now must not be taken for that.
        return
    record = {
        "rollout": rollout.name,
        "uid": rollout.uid,
        "run": rollout.status.run,
        "fingerprint": spec.run_fingerprint(),
        "images": objects.template_images(objects.new_pod_template(spec, target)),
        "versionSince": action.version_since,
        "promotedAt": precise(now := datetime.now(UTC)),
    }
    before = {
        "run": action.run_id,
        "template": target["spec"]["template"],
        "promotion": annotations.get(objects.PROMOTION),
        "promotedBy": annotations.get(objects.PROMOTED_BY),
    }
    written = {
        objects.PROMOTED_BY: action.run_id,
        objects.FENCING: f"{rollout.name}/{ctx.obs.lock.token}",
        objects.PROMOTION: json.dumps(record, sort_keys=True),
        objects.PRE_PROMOTION: json.dumps(before, sort_keys=True),
    }
    window = _window(target, action.run_id, spec.rollback_window, now)
    if window:
        written[rollback_window.WINDOW_ANNOTATION] = json.dumps(window, sort_keys=True)
    if action.exact:
        await kube.replace(where, exact_promotion(spec, target, written))
        return
    await kube.apply(where, promotion.promotion(spec, target, written))  # resourceVersion


def _window(
    target: dict[str, Any], run_id: str, window: RollbackWindow | None, now: datetime
) -> list[dict[str, Any]]:
    """The rollback window after this promotion: what it replaces first."""
    annotations = target["metadata"].get("annotations") or {}
    entry = rollback_window.replaced(
        target["spec"]["template"],
        annotations.get(objects.REVISION),
        annotations.get(objects.PROMOTED_BY),
        run_id,
        now,
        window,
    )
    kept = rollback_window.read(annotations.get(rollback_window.WINDOW_ANNOTATION))
    return rollback_window.after_promotion(kept, entry, window, now)


def exact_promotion(
    spec: CanaryRolloutSpec, target: dict[str, Any], written: dict[str, str]
) -> dict[str, Any]:
    """The target with the spec's pod template as its whole template (the target's pod
    labels kept, as every promotion does) and the promotion's annotations; the window
    is the one written (none: none kept)."""
    body = copy.deepcopy(target)
    body["metadata"].pop("managedFields", None)
    body["spec"]["template"] = objects.new_pod_template(spec, target)
    annotations = body["metadata"].setdefault("annotations", {})
    annotations.pop(rollback_window.WINDOW_ANNOTATION, None)
    annotations.update(written)
    return body


async def undo(ctx: ReconcileContext, action: UndoPromotion, kube: Kube) -> None:
    """Put the target back as it was before the promotion by `action.run_id`: the pod
    template it replaced, and the promotion record and promoted-by it had. One update
    of the whole object, conditional on the resourceVersion read fresh here (fenced
    like every write to the target). Nothing is written when the target no longer
    carries that promotion (undone already, or promoted again since)."""
    where = target_path(ctx)
    target = await ctx.deps.fresh.get(where)
    if target is None:
        return
    annotations = target["metadata"].get("annotations") or {}
    before = views.pre_promotion_data(target)
    if annotations.get(objects.PROMOTED_BY) != action.run_id:
        return
    if before is None or before["run"] != action.run_id:
        raise ValueError(
            f"cannot undo the promotion of {ctx.rollout.spec.target.deployment}: the record "
            f"of what it replaced ({objects.PRE_PROMOTION}) is missing or not this run's"
        )
    await kube.replace(where, restored(target, before, f"{ctx.rollout.name}/{ctx.obs.lock.token}"))


def restored(target: dict[str, Any], before: dict[str, Any], fencing: str) -> dict[str, Any]:
    """The target with the template and annotations it had before the promotion."""
    body = copy.deepcopy(target)
    # The API server keeps who manages what (the template's fields pass to this update).
    body["metadata"].pop("managedFields", None)
    body["spec"]["template"] = copy.deepcopy(before["template"])
    annotations = body["metadata"].setdefault("annotations", {})
    annotations.pop(objects.PRE_PROMOTION, None)
    # The version put back is live again, not a previous one.
    kept = rollback_window.read(annotations.get(rollback_window.WINDOW_ANNOTATION))
    kept = rollback_window.after_undo_of_promotion(kept, str(before["run"]))
    if kept:
        annotations[rollback_window.WINDOW_ANNOTATION] = json.dumps(kept, sort_keys=True)
    else:
        annotations.pop(rollback_window.WINDOW_ANNOTATION, None)
    for key, previous in (
        (objects.PROMOTION, before.get("promotion")),
        (objects.PROMOTED_BY, before.get("promotedBy")),
    ):
        if previous is None:
            annotations.pop(key, None)
        else:
            annotations[key] = str(previous)
    annotations[objects.FENCING] = fencing
    return body
