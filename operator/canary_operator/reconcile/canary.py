"""The canary's objects: the Deployment(s) and Service a run applies (only what the
cache does not show as last applied), and their deletion by cleanup."""

from __future__ import annotations

from canary_operator.engine.types import DeleteCanaryObjects
from canary_operator.kube import objects
from canary_operator.kube.api import JsonObj, Kube, path
from canary_operator.reconcile import views
from canary_operator.reconcile.context import ReconcileContext


async def to_apply(ctx: ReconcileContext, replicas: int) -> list[tuple[str, JsonObj]]:
    """The canary's objects (Deployment, baseline Deployment, Service) that the cache
    does not show as last applied: each manifest carries a digest of itself, so a
    step re-asserting an unchanged canary writes nothing (and needs no fencing
    read). The cache holds the answer of our last write; someone else's change
    (a scale, a deletion) shows as a difference, and the object is applied again."""
    stale = []
    for where, manifest in await _wanted(ctx, replicas):
        digest = objects.stamp_digest(manifest)
        have = await ctx.deps.kube.get(where)
        if not objects.applied_as(have, digest, manifest):
            stale.append((where, manifest))
    return stale


async def _wanted(ctx: ReconcileContext, replicas: int) -> list[tuple[str, JsonObj]]:
    rollout, ns, spec = ctx.rollout, ctx.namespace, ctx.rollout.spec
    target, service = ctx.targets.target, ctx.targets.service
    if target is None:
        raise ValueError(f"target Deployment {spec.target.deployment} not found")
    selector = (service or {}).get("spec", {}).get("selector")
    # Which of the stable pods' labels the canary's must not carry, so that only the
    # router sends it traffic (Istio subsets: the stable subset's).
    drop = await ctx.router(ctx.obs.lock.token).canary_labels_to_drop(selector or {})
    name, uid = rollout.name, rollout.uid
    deployments = path("apps", "v1", "deployments", ns)
    wanted = [
        (
            f"{deployments}/{objects.canary_name(spec)}",
            objects.canary_deployment(spec, name, uid, ns, target, selector, replicas, drop),
        )
    ]
    if spec.baseline:
        wanted.append(
            (
                f"{deployments}/{objects.baseline_name(spec)}",
                objects.baseline_deployment(spec, name, uid, ns, target, replicas),
            )
        )
    wanted.append(
        (
            path("", "v1", "services", ns, objects.canary_name(spec)),
            objects.canary_service(spec, name, uid, ns, service, target),
        )
    )
    return wanted


async def delete(ctx: ReconcileContext, action: DeleteCanaryObjects, kube: Kube) -> None:
    """Cleanup's deletions: canary and baseline Deployments, the canary Service, the
    test Jobs (those kept for their logs are relabelled instead), and the pods."""
    ns, spec = ctx.namespace, ctx.rollout.spec
    target = objects.target_selector(spec)
    deployments = path("apps", "v1", "deployments", ns)
    for deployment in await kube.list(deployments, f"{target},{objects.ROLE_LABEL}"):
        await _delete_unless_going(kube, deployments, deployment, "Foreground")
    services = path("", "v1", "services", ns)
    for service in await kube.list(services, f"{target},{objects.ROLE_LABEL}"):
        await _delete_unless_going(kube, services, service)
    await _delete_test_jobs(ctx, frozenset(action.keep_jobs), kube)
    # Pods of a deleted ReplicaSet go through the garbage collector; delete them
    # directly too, so verification does not wait on it.
    pods = path("", "v1", "pods", ns)
    for pod in await kube.list(pods, objects.any_role_selector(spec)):
        await _delete_unless_going(kube, pods, pod)


async def _delete_test_jobs(ctx: ReconcileContext, keep: frozenset[str], kube: Kube) -> None:
    spec = ctx.rollout.spec
    jobs = path("batch", "v1", "jobs", ctx.namespace)
    for job in await kube.list(
        jobs, f"{objects.operator_jobs_selector(spec)},{objects.PURPOSE_LABEL}=test"
    ):
        name = job["metadata"]["name"]
        if name in keep and views.owned_by(job, ctx.rollout.uid):
            # Kept for its logs (keepFailedJobs): relabelled so that no cleanup, of this
            # rollout or a later one, deletes it; it goes with its owner.
            await kube.merge_patch(
                f"{jobs}/{name}", {"metadata": {"labels": {objects.PURPOSE_LABEL: views.EVIDENCE}}}
            )
            continue
        await _delete_unless_going(kube, jobs, job)


async def _delete_unless_going(
    kube: Kube, collection: str, obj: JsonObj, propagation: str = "Background"
) -> None:
    """Delete `obj` (listed from `collection`) unless it is already being deleted (a
    Foreground deletion waits for its pods): cleanup asks for this on every reconcile
    until every canary object is gone, and each repeat would cost a fencing read."""
    if not obj["metadata"].get("deletionTimestamp"):
        await kube.delete(f"{collection}/{obj['metadata']['name']}", propagation)
