"""Cleanup's first stage: a promotion that this run started and did not complete is
undone. Complete means its promote step succeeded (the target fully available on the
new version, all traffic on it); anything less — an abort, a deletion, a deadline, a
lost lock while it was under way — puts the target back on the template it had before
(recorded on the target with the promotion: PrePromotion), with the promotion record
it had, and the outcome says so."""

from __future__ import annotations

from canary_operator.api.models import PromotionUndo, StepPhase
from canary_operator.api.timestamps import iso
from canary_operator.engine.context import Context
from canary_operator.engine.labels import run_id
from canary_operator.engine.types import UndoPromotion
from canary_operator.engine.versions import image_label


def promotion_completed(ctx: Context) -> bool:
    """This run's promote step succeeded: its promotion stays."""
    steps = ctx.status.steps or []
    return any(s.kind == "promote" and s.phase == StepPhase.SUCCEEDED for s in steps)


def _to_undo(ctx: Context) -> PromotionUndo | None:
    """The undo this cleanup owes, as first seen on the target (None: none)."""
    target, rid = ctx.obs.target, run_id(ctx.rollout)
    before = target.pre_promotion if target is not None else None
    if target is None or before is None or target.promoted_by != rid or before.run_id != rid:
        return None
    if promotion_completed(ctx):
        return None
    record = target.promotion
    promoted = record.images if record is not None else target.images
    return PromotionUndo(
        promoted=image_label(promoted),
        restores=image_label(before.images),
        template_hash=before.template_hash,
    )


def promotion_undone(ctx: Context) -> bool:
    """True once no promotion of this run is left to undo; until then this plan asks
    for it. Whether to undo is recorded in the status before the target is written, so
    that a restart in the middle of the undo still knows (and says) what it undid."""
    cleanup = ctx.status.cleanup
    assert cleanup is not None
    undo = cleanup.promotion_undo
    if undo is None:
        undo = _to_undo(ctx)
        if undo is None:
            return True
        cleanup.promotion_undo = undo
        cleanup.stage = "UndoingPromotion"
        ctx.status.message = f"cleanup: undoing the promotion to {undo.promoted}"
        ctx.event(
            "PromotionUndoStarted",
            f"promotion to {undo.promoted} incomplete: target going back to {undo.restores}",
            warning=True,
        )
        ctx.plan.requeue(0)
        return False
    rid, target = run_id(ctx.rollout), ctx.obs.target
    if target is None or target.promoted_by != rid:
        if undo.undone_at is None and target is not None:
            undo.undone_at = iso(ctx.now)
            ctx.event("PromotionUndone", undone_text(ctx, undo))
        return True
    cleanup.stage = "UndoingPromotion"
    ctx.status.message = (
        f"cleanup: undoing the promotion to {undo.promoted} (target back to {undo.restores})"
    )
    ctx.act(UndoPromotion(rid))
    ctx.plan.requeue(1)
    return False


def undone_text(ctx: Context, undo: PromotionUndo) -> str:
    """What became of the promotion, as the target now shows it."""
    target = ctx.obs.target
    if target is None:
        return f"promotion to {undo.promoted} not undone: the target Deployment is gone"
    if target.template_hash == undo.template_hash:
        return f"promotion to {undo.promoted} undone, target back on {undo.restores}"
    return (
        f"promotion to {undo.promoted} undone; the target was changed since and runs "
        f"{image_label(target.images)}"
    )
