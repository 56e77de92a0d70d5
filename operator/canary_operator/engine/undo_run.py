"""An undo run (`kubectl canary undo TARGET`, issue 25 item 3): a rollout of its own
(annotation canary-operator.dev/undo naming the run whose promotion it undoes), whose
spec.template is a version the target ran before (from the rollback window) and whose
one step promotes it. It queues for the target's lock like any run, and its cleanup
is the usual one.

Its decisions, here: it starts only while the promotion it undoes is still the one the
target carries (otherwise it ends UndoOutdated, the target untouched); it is never
refused as older than the live version (it is the user's explicit choice of an earlier
one: engine/versions.py); its promotion puts the whole template back exactly."""

from __future__ import annotations

from canary_operator.engine.annotations import undoes
from canary_operator.engine.context import Context
from canary_operator.engine.versions import image_label


def restores(ctx: Context) -> str:
    """The version the undo puts back, short form (web:1.0)."""
    template = ctx.rollout.spec.template
    if template is None:
        return "?"
    containers = template.spec.model_dump().get("containers") or []
    return image_label({str(c.get("name")): str(c.get("image", "")) for c in containers})


def refusal(ctx: Context) -> str | None:
    """Why this undo may not start (None: it may, or it is no undo). Checked before it
    takes the lock and again once it holds it, when no other run can promote."""
    undone, target = undoes(ctx.rollout), ctx.obs.target
    if undone is None or target is None or target.promoted_by == undone:
        return None
    name = ctx.rollout.spec.target.deployment
    record = target.promotion
    if target.promoted_by is None:
        now = "it carries no promotion"
    elif record is None:
        now = f"it carries another promotion (run {target.promoted_by})"
    else:
        label = image_label(record.images)
        now = f"it was promoted since by {record.rollout} run {record.run} ({label})"
    return (
        f"deployment {name} no longer runs the promotion this undo was asked for "
        f"(run {undone}): {now}; nothing was changed. To undo what is live now: "
        f"kubectl canary undo {name}"
    )


def announce(ctx: Context) -> None:
    """The undo's first Event, as its run starts."""
    undone = undoes(ctx.rollout)
    if undone is None:
        return
    target = ctx.obs.target
    now = image_label(target.images) if target is not None else "?"
    ctx.event(
        "UndoStarted",
        f"undoing the promotion by run {undone}: deployment "
        f"{ctx.rollout.spec.target.deployment} goes from {now} back to {restores(ctx)}",
    )


def done(ctx: Context) -> str | None:
    """The promote step's message when the undo is done, with its Event (None: no undo)."""
    undone = undoes(ctx.rollout)
    if undone is None:
        return None
    text = (
        f"undone: deployment {ctx.rollout.spec.target.deployment} back on {restores(ctx)} "
        f"(the promotion by run {undone} undone)"
    )
    ctx.event("Undone", text)
    return text
