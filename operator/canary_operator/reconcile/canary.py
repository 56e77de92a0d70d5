"""The canary's objects: the Deployment(s) and Service a run applies (only what the
cache does not show as last applied), and their deletion by cleanup.

Each object a run makes carries the run (RUN_ANNOTATION, "<rollout uid>/<run>"; the
canary's pods carry it through their template), so that a run's cleanup deletes its
own objects and nothing of another run; only the recovery cleanup of a run that has
not started yet deletes whatever a previous holder left (but what the run about to
start made: another operator process may have started it a moment ago, its status
write not seen yet). Every deletion names the
uid of the object as read: one deleted and made again under its name since (by the
next run) is not touched."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from canary_operator.api.models import Phase
from canary_operator.engine.types import DeleteCanaryObjects
from canary_operator.kube import objects
from canary_operator.kube.api import Conflict, JsonObj, Kube, path
from canary_operator.reconcile import views
from canary_operator.reconcile.context import ReconcileContext

RUN_ANNOTATION = "canary-operator.dev/run"


class NotThisRun(ValueError):
    """A run's cleanup found objects of another run, and left them alone."""

    def __init__(self, run: str, others: list[str]) -> None:
        super().__init__(
            f"left alone, made by another run than this one ({run}): " + ", ".join(others)
        )


def run_of(ctx: ReconcileContext, run: int) -> str:
    """The value of RUN_ANNOTATION on what run `run` of this rollout makes."""
    return f"{ctx.rollout.uid}/{run}"


def mark(manifest: JsonObj, run: str) -> JsonObj:
    """The manifest, annotated with the run that makes it (and its pod template, if
    it has one: the pods then carry it too)."""
    metas = [manifest.setdefault("metadata", {})]
    template = (manifest.get("spec") or {}).get("template")
    if isinstance(template, dict) and manifest.get("kind") == "Deployment":
        metas.append(template.setdefault("metadata", {}))
    for meta in metas:
        meta["annotations"] = {**(meta.get("annotations") or {}), RUN_ANNOTATION: run}
    return manifest


def recovering(planned: Phase) -> bool:
    """Whether a cleanup a plan asks for is a recovery: the plan leaves the run not
    started yet (Pending or Queued, holding the lock; the status as read may be the
    end of the previous run), and it makes the target clean of whatever a previous
    holder left. Any other cleanup (CleaningUp) is a run's own."""
    return planned in (Phase.PENDING, Phase.QUEUED)


def marked_run(obj: JsonObj) -> str | None:
    """The run `obj` is marked with (RUN_ANNOTATION), if any."""
    value = (obj["metadata"].get("annotations") or {}).get(RUN_ANNOTATION)
    return None if value is None else str(value)


def made_by(ctx: ReconcileContext, obj: JsonObj, run: str) -> bool:
    """Whether `obj` was made by `run` of this rollout. Objects made before runs were
    marked count as the rollout's (its ownerReference or, for a pod, its rollout
    label)."""
    meta = obj["metadata"]
    marked = (meta.get("annotations") or {}).get(RUN_ANNOTATION)
    if marked is not None:
        return bool(marked == run)
    rollout = ctx.rollout
    made = objects.owned_metadata(rollout.spec, "canary", "", "", rollout.name, rollout.uid)
    label = (meta.get("labels") or {}).get(objects.ROLLOUT_LABEL)
    return views.owned_by(obj, rollout.uid) or label == made["labels"][objects.ROLLOUT_LABEL]


async def to_apply(
    ctx: ReconcileContext, replicas: int, run: int | None = None
) -> list[tuple[str, JsonObj]]:
    """The canary's objects (Deployment, baseline Deployment, Service) that the cache
    does not show as last applied: each manifest carries a digest of itself, so a
    step re-asserting an unchanged canary writes nothing (and needs no fencing
    read). The cache holds the answer of our last write; someone else's change
    (a scale, a deletion) shows as a difference, and the object is applied again.
    `run`: the run the plan is for (its status may start it: the status as read
    then still has the last run)."""
    marked = run_of(ctx, ctx.rollout.status.run if run is None else run)
    stale = []
    for where, wanted in await _wanted(ctx, replicas):
        manifest = mark(wanted, marked)
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
            path("", "v1", "services", ns, objects.canary_service_name(spec)),
            objects.canary_service(spec, name, uid, ns, service, target),
        )
    )
    return wanted


async def delete(
    ctx: ReconcileContext,
    action: DeleteCanaryObjects,
    kube: Kube,
    run: str | None,
    spare: str | None = None,
) -> None:
    """Cleanup's deletions: canary and baseline Deployments, the canary Service, the
    test Jobs (those kept for their logs are relabelled instead), and the pods.
    `run`: the run whose objects these are (a run's own cleanup); None for a
    recovery, which deletes whatever a previous holder left but what `spare` (the
    run about to start) made. Objects of another run are left alone, and named
    (NotThisRun) once this run's are deleted."""
    ns, spec = ctx.namespace, ctx.rollout.spec
    target = objects.target_selector(spec)
    others: list[str] = []

    def spared(listed: Iterable[JsonObj]) -> list[JsonObj]:
        return [o for o in listed if spare is None or marked_run(o) != spare]

    deployments = path("apps", "v1", "deployments", ns)
    listed = await kube.list(deployments, f"{target},{objects.ROLE_LABEL}")
    others += await _delete_each(ctx, kube, deployments, spared(listed), run, "Foreground")
    services = path("", "v1", "services", ns)
    listed = await kube.list(services, f"{target},{objects.ROLE_LABEL}")
    others += await _delete_each(ctx, kube, services, spared(listed), run)
    others += await _delete_test_jobs(ctx, frozenset(action.keep_jobs), kube, run, spared)
    # Pods of a deleted ReplicaSet go through the garbage collector; delete them
    # directly too, so verification does not wait on it.
    pods = path("", "v1", "pods", ns)
    listed = await kube.list(pods, objects.any_role_selector(spec))
    others += await _delete_each(ctx, kube, pods, spared(listed), run)
    if others:
        raise NotThisRun(run or "", others)


async def _delete_test_jobs(
    ctx: ReconcileContext,
    keep: frozenset[str],
    kube: Kube,
    run: str | None,
    spared: Callable[[Iterable[JsonObj]], list[JsonObj]],
) -> list[str]:
    spec = ctx.rollout.spec
    jobs = path("batch", "v1", "jobs", ctx.namespace)
    listed = await kube.list(
        jobs, f"{objects.operator_jobs_selector(spec)},{objects.PURPOSE_LABEL}=test"
    )
    going = []
    for job in spared(listed):
        meta = job["metadata"]
        if meta["name"] in keep and views.owned_by(job, ctx.rollout.uid):
            # Kept for its logs (keepFailedJobs): relabelled so that no cleanup, of this
            # rollout or a later one, deletes it; it goes with its owner. The uid: the
            # Job as read (a patch may not change it, so another Job of that name since
            # is refused).
            relabel = {"uid": meta["uid"], "labels": {objects.PURPOSE_LABEL: views.EVIDENCE}}
            await kube.merge_patch(f"{jobs}/{meta['name']}", {"metadata": relabel})
            continue
        going.append(job)
    return await _delete_each(ctx, kube, jobs, going, run)


async def _delete_each(
    ctx: ReconcileContext,
    kube: Kube,
    collection: str,
    listed: Iterable[JsonObj],
    run: str | None,
    propagation: str = "Background",
) -> list[str]:
    """Delete each object listed from `collection` that `run` made (with None, each);
    returns the others, by kind and name. The deletions are issued at once: they share
    one fencing read, which starts after all of them were issued (kube/api.py
    FencedWrites), so a cleanup of many pods costs one read, not one per pod."""
    others, ours = [], []
    for obj in listed:
        if run is None or made_by(ctx, obj, run):
            ours.append(obj)
        else:
            others.append(f"{collection.rsplit('/', 1)[-1][:-1]} {obj['metadata']['name']}")
    await asyncio.gather(*(_delete_unless_going(kube, collection, o, propagation) for o in ours))
    return others


async def _delete_unless_going(
    kube: Kube, collection: str, obj: JsonObj, propagation: str = "Background"
) -> None:
    """Delete `obj` (listed from `collection`) unless it is already being deleted (a
    Foreground deletion waits for its pods): cleanup asks for this on every reconcile
    until every canary object is gone, and each repeat would cost a fencing read.

    Only the object as listed: its uid is the deletion's precondition, so an object
    made again under that name since (by the next run, after this one lost its lock)
    is not deleted; that Conflict means there is nothing of ours left to delete."""
    meta = obj["metadata"]
    if meta.get("deletionTimestamp"):
        return
    try:
        await kube.delete(f"{collection}/{meta['name']}", propagation, uid=meta.get("uid"))
    except Conflict:
        return
