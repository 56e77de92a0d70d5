"""A blue-green's own steps (spec.strategy.blueGreen; api/models.py blue_green_steps
makes its step list): the preview at the target's full size, the switch of all traffic
to it, and the promotion once the previous version has stayed up long enough.

The steps before and after the switch are ordinary steps (steps.py). A failure after
the switch ends the run like any failure: the cleanup (cleanup.py) resets the route,
which for a blue-green is the switch back, then deletes the preview and verifies. The
previous version is the target itself, untouched until the promotion: a switch back
never waits for pods."""

from __future__ import annotations

from datetime import timedelta

from canary_operator.api.models import StepPhase
from canary_operator.api.timestamps import iso, parse_time
from canary_operator.engine.context import POLL_RUNNING, Context, StepResult
from canary_operator.engine.traffic_steps import promote
from canary_operator.engine.types import EnsureCanary, SetRouteWeight

SWITCHED = 100  # the weight the router reads back once all traffic is on the preview


def preview_replicas(ctx: Context) -> int:
    """The preview's size: the target's replicas as the run found them."""
    target = ctx.obs.target
    return ctx.status.stable_replicas or (target.replicas if target is not None else 1)


def _preview_ready(ctx: Context) -> tuple[bool, str | None]:
    """(ready at full size, why it never will be)."""
    preview = ctx.obs.canary
    if preview is not None and preview.failure:
        return False, f"the preview Deployment cannot run its pods: {preview.failure}"
    n = preview_replicas(ctx)
    return preview is not None and preview.replicas == n and preview.rolled_out, None


def preview(ctx: Context) -> StepResult:
    """The preview Deployment (and its Service) at full size, all its pods ready; the
    active Service does not reach it."""
    n = preview_replicas(ctx)
    ctx.act(EnsureCanary(n))
    ready, failure = _preview_ready(ctx)
    if failure:
        return False, failure
    if not ready:
        ctx.status.message = f"preview: starting {n} pods of the new version"
        ctx.plan.requeue(POLL_RUNNING)
        return None
    return True, f"preview ready: {n} pods of the new version"


def switch(ctx: Context) -> StepResult:
    """All traffic to the preview at once (never to a preview short of pods), read back."""
    ready, failure = _preview_ready(ctx)
    if failure:
        return False, failure
    if not ready:  # its pods went since the preview step: wait for them again
        ctx.act(EnsureCanary(preview_replicas(ctx)))
        ctx.status.message = "switch: waiting for the preview's pods"
        ctx.plan.requeue(POLL_RUNNING)
        return None
    if ctx.obs.route.weight != SWITCHED:
        ctx.act(SetRouteWeight(SWITCHED))
        ctx.status.message = "switching all traffic to the preview"
        ctx.plan.requeue(1)
        return None
    ctx.status.weight = SWITCHED
    return True, "all traffic on the preview (read back); the previous version stays up"


def switched_at(ctx: Context) -> str | None:
    """When the switch step succeeded (None: not yet)."""
    for step in ctx.status.steps or []:
        if step.kind == "switch" and step.phase == StepPhase.SUCCEEDED:
            return step.finished_at
    return None


def promote_after_delay(ctx: Context) -> StepResult:
    """The target takes the new version once the previous version has stayed up for
    scaleDownDelaySeconds after the switch (and the steps after the switch passed:
    this step follows them); then traffic goes back to it, and cleanup removes the
    preview."""
    blue_green = ctx.rollout.spec.blue_green
    assert blue_green is not None
    at = switched_at(ctx)
    if at is not None:
        until = parse_time(at) + timedelta(seconds=blue_green.scale_down_delay_seconds)
        if ctx.now < until:
            ctx.status.message = (
                f"previous version kept up until {iso(until)} "
                f"(scaleDownDelaySeconds={blue_green.scale_down_delay_seconds})"
            )
            ctx.plan.requeue((until - ctx.now).total_seconds())
            return None
    return promote(ctx)
