"""Steps that move a level: the canary's size, the traffic weight (mode Shift: both
Deployments' sizes), the promotion."""

from __future__ import annotations

from canary_operator.api.models import ReplicasMode
from canary_operator.api.timestamps import precise
from canary_operator.engine import undo_run
from canary_operator.engine.annotations import undoes
from canary_operator.engine.context import POLL_RUNNING, Context, StepResult
from canary_operator.engine.labels import run_id
from canary_operator.engine.types import (
    EnsureCanary,
    PromoteStable,
    ResetRoute,
    ScaleStable,
    SetRouteWeight,
    WorkloadView,
)
from canary_operator.engine.weights import (
    original_replicas,
    plan_shift,
    plan_shift_canary,
    plan_weight,
    run_mode,
    stable_floor,
)


def _shifts(ctx: Context) -> bool:
    """Whether this run moves pods from the stable (replicas router, mode Shift): the
    mode recorded at its start (engine/start.py), kept whatever the default becomes."""
    spec = ctx.rollout.spec
    if spec.router_kind != "replicas":
        return False
    return run_mode(spec.replicas_mode, ctx.status.replicas_mode) == ReplicasMode.SHIFT


def _stable_replicas(ctx: Context) -> int:
    return ctx.status.stable_replicas or (ctx.obs.target.replicas if ctx.obs.target else 1)


def _workload_failure(ctx: Context) -> str | None:
    """Canary (or baseline) pods that cannot come up fail the step at once: waiting
    for the progress deadline would hold the lock for nothing."""
    for role, view in (("canary", ctx.obs.canary), ("baseline", ctx.obs.baseline)):
        if view is not None and view.failure:
            return f"the {role} Deployment cannot run its pods: {view.failure}"
    return None


def ensure_canary(ctx: Context, replicas: int) -> StepResult:
    failure = _workload_failure(ctx)
    if failure:
        return False, failure
    if _shifts(ctx):
        original, floor = _shift_sizes(ctx)
        wanted = plan_shift_canary(original, replicas, floor)
        if not _shift_to(ctx, wanted.canary_replicas, wanted.stable_replicas):
            ctx.plan.requeue(POLL_RUNNING)
            return None
        ctx.status.weight = ctx.obs.route.weight
        return True, f"{replicas} canary pods ready, stable at {wanted.stable_replicas}"
    ctx.act(EnsureCanary(replicas))
    canary = ctx.obs.canary
    if canary is not None and canary.replicas == replicas and canary.rolled_out:
        ctx.status.weight = ctx.obs.route.weight
        return True, f"{replicas} canary pods ready"
    ctx.plan.requeue(POLL_RUNNING)
    return None


def _canary_minimum(ctx: Context) -> int:
    steps = ctx.rollout.spec.steps[: (ctx.status.current_step or 0) + 1]
    sizes = [s.canary.replicas for s in steps if s.canary is not None]
    return sizes[-1] if sizes else 1


def _shift_sizes(ctx: Context) -> tuple[int, int]:
    """Mode Shift: the stable's original replicas (as recorded on it, or adopted from
    whoever scaled it since: see original_replicas) and its floor."""
    target = ctx.obs.target
    assert target is not None
    record = target.stable_record
    original = original_replicas(
        target.replicas,
        record.original if record else None,
        record.written if record else None,
    )
    return original, stable_floor(original, ctx.rollout.spec.stable_floor)


def _settled_at(view: WorkloadView | None, replicas: int) -> bool:
    if view is None:
        return replicas == 0
    return view.replicas == replicas and view.rolled_out


def _shift_to(ctx: Context, canary: int, stable: int) -> bool:
    """Move both Deployments to these sizes, growing before shrinking: whatever grows
    (the canary on the way up, the stable on the way down) is scaled and ready before
    the other side loses a pod, so ready capacity never dips below either end state.
    True once both are there and ready."""
    target, current = ctx.obs.target, ctx.obs.canary
    assert target is not None
    original, floor = _shift_sizes(ctx)
    have_canary = current.replicas if current is not None else 0
    grow = (max(canary, have_canary), max(stable, target.replicas))
    if not (_settled_at(current, grow[0]) and _settled_at(target, grow[1])):
        ctx.act(EnsureCanary(grow[0]))
        if grow[1] != target.replicas:
            ctx.act(ScaleStable(grow[1], original, floor))
        # What is asked, not what each side has now: the message then changes with the
        # phase of the move, not with each of this reconcile's own writes landing (each
        # change is one more status write).
        ctx.status.message = f"scaling: canary to {grow[0]}, stable to {grow[1]}"
        return False
    ctx.act(EnsureCanary(canary))
    if stable != target.replicas:
        ctx.act(ScaleStable(stable, original, floor))
    if (canary, stable) != (have_canary, target.replicas):
        ctx.status.message = f"scaling: canary to {canary}, stable to {stable}"
        return False
    return True


def set_weight(ctx: Context, weight: int) -> StepResult:
    spec = ctx.rollout.spec
    if _shifts(ctx):
        return _shift_weight(ctx, weight)
    try:
        wp = plan_weight(spec.router_kind, _stable_replicas(ctx), weight, _canary_minimum(ctx))
    except ValueError as exc:  # 100 % with the replicas router (past the CEL rule)
        return False, str(exc)
    failure = _workload_failure(ctx)
    if failure:
        return False, failure
    canary = ctx.obs.canary
    ctx.act(EnsureCanary(wp.canary_replicas))
    canary_ready = (
        canary is not None and canary.replicas == wp.canary_replicas and (canary.rolled_out)
    )
    if not canary_ready and wp.canary_replicas > 0:
        ctx.plan.requeue(POLL_RUNNING)
        return None
    if spec.router_kind != "replicas":
        ctx.act(SetRouteWeight(weight))
    ctx.status.weight = ctx.obs.route.weight
    if ctx.obs.route.weight == wp.expected_weight:
        return True, f"weight {ctx.obs.route.weight}% read back ({wp.canary_replicas} canary pods)"
    ctx.plan.requeue(1)
    return None


def _shift_weight(ctx: Context, weight: int) -> StepResult:
    original, floor = _shift_sizes(ctx)
    try:
        wanted = plan_shift(original, weight, floor)
    except ValueError as exc:  # 100 % (past the CEL rule)
        return False, str(exc)
    failure = _workload_failure(ctx)
    if failure:
        return False, failure
    if not _shift_to(ctx, wanted.canary_replicas, wanted.stable_replicas):
        ctx.plan.requeue(POLL_RUNNING)
        return None
    ctx.status.weight = ctx.obs.route.weight
    if ctx.obs.route.weight == wanted.expected_weight:
        return True, (
            f"weight {ctx.obs.route.weight}% read back ({wanted.canary_replicas} canary pods, "
            f"{wanted.stable_replicas} stable)"
        )
    ctx.plan.requeue(1)
    return None


PROMOTING = "promoting: the stable takes the new version, then all traffic"


def promote(ctx: Context) -> StepResult:
    target = ctx.obs.target
    assert target is not None
    rid = run_id(ctx.rollout)
    # One message for the whole step, not a count of pods (each change of it would be
    # one more status write): the pods are in the status tree and on the Deployment.
    ctx.status.message = PROMOTING
    # Mode Shift: the stable takes the new version at its shifted size (the canary
    # serves beside it meanwhile); the ResetRoute below then scales it back to its
    # original replicas and waits for them before the canary goes.
    if target.promoted_by != rid:
        exact = undoes(ctx.rollout) is not None
        ctx.act(PromoteStable(rid, ctx.status.version_since or precise(ctx.now), exact))
        ctx.plan.requeue(POLL_RUNNING)
        return None
    if not target.rolled_out:
        ctx.plan.requeue(POLL_RUNNING)
        return None
    if not ctx.obs.route.reset:
        ctx.act(ResetRoute())
        ctx.plan.requeue(1)
        return None
    ctx.status.weight = 0
    return True, undo_run.done(ctx) or "stable runs the new version and takes 100% of traffic"
