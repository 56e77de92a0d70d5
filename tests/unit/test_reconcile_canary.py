"""reconcile/canary.py: the canary's objects a run applies (only what the cache does
not show as last applied) and cleanup's deletions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from canary_operator.engine.types import DeleteCanaryObjects
from canary_operator.kube import objects
from canary_operator.kube.api import FencedWrites
from canary_operator.reconcile import canary, views
from tests.harness.reconcile_fixtures import (
    DEPLOYMENTS,
    JOBS,
    PODS,
    SERVICES,
    UID,
    Cluster,
    fake_cluster,
    rollout_body,
    spec,
)

CANARY = f"{DEPLOYMENTS}/web-canary"
WEB = {objects.TARGET_LABEL: "web"}


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with fake_cluster() as made:
        yield made


def paths(stale: list[tuple[str, Any]]) -> list[str]:
    return [where.rsplit("/", 2)[-2] + "/" + where.rsplit("/", 1)[-1] for where, _ in stale]


async def test_an_unchanged_canary_is_not_applied_again(cluster: Cluster) -> None:
    ctx = await cluster.running()
    assert await canary.to_apply(ctx, 1) == []
    # Read from the cache only: nothing written, nothing read fresh.
    assert sorted(cluster.kube.requests) == [
        "GET deployments/web-canary",
        "GET services/web-canary",
    ]
    assert cluster.fresh.requests == []


async def test_a_canary_of_another_size_is_applied_again(cluster: Cluster) -> None:
    ctx = await cluster.running()
    assert paths(await canary.to_apply(ctx, 2)) == ["deployments/web-canary"]


async def test_a_canary_scaled_by_someone_else_is_applied_again(cluster: Cluster) -> None:
    ctx = await cluster.running()
    scaled = cluster.kube.stored(CANARY)
    assert scaled is not None
    scaled["spec"]["replicas"] = 4  # the digest annotation is left as it was
    cluster.kube.put(CANARY, scaled)
    stale = await canary.to_apply(ctx, 1)
    assert paths(stale) == ["deployments/web-canary"]
    manifest = stale[0][1]
    assert manifest["spec"]["replicas"] == 1
    assert manifest["metadata"]["annotations"][objects.APPLIED_DIGEST_ANNOTATION]


async def test_objects_deleted_or_being_deleted_are_applied_again(cluster: Cluster) -> None:
    ctx = await cluster.running()
    await cluster.kube.delete(f"{SERVICES}/web-canary")
    going = cluster.kube.stored(CANARY)
    assert going is not None
    going["metadata"].update(deletionTimestamp="2026-12-07T00:00:00Z", finalizers=["x"])
    cluster.kube.put(CANARY, going)
    assert paths(await canary.to_apply(ctx, 1)) == [
        "deployments/web-canary",
        "services/web-canary",
    ]


async def test_the_baseline_is_applied_with_the_canary(cluster: Cluster) -> None:
    cluster.with_target()
    ctx = await cluster.observed(rollout_body(spec(baseline=True)))
    stale = await canary.to_apply(ctx, 2)
    assert paths(stale) == [
        "deployments/web-canary",
        f"deployments/{objects.baseline_name(ctx.rollout.spec)}",
        "services/web-canary",
    ]
    assert [m["spec"].get("replicas") for _, m in stale[:2]] == [2, 2]
    assert stale[0][1]["metadata"]["ownerReferences"][0]["uid"] == UID


async def test_no_canary_without_a_target(cluster: Cluster) -> None:
    ctx = await cluster.running()
    ctx.targets.target = None
    with pytest.raises(ValueError, match="target Deployment web not found"):
        await canary.to_apply(ctx, 1)


# ---------------------------------------------------------------------- cleanup

RUN = f"{UID}/1"  # the run of cluster.running()
OTHER = "uid-other/1"


def job(name: str, purpose: str, owner: str, run: str = RUN) -> Any:
    labels = {objects.MANAGED_BY: objects.OPERATOR, **WEB, objects.PURPOSE_LABEL: purpose}
    return {
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {canary.RUN_ANNOTATION: run},
            "ownerReferences": [{"uid": owner}],
        }
    }


def pod(name: str, role: str, run: str = RUN) -> Any:
    labels = {**WEB, objects.ROLE_LABEL: role}
    return {
        "metadata": {"name": name, "labels": labels, "annotations": {canary.RUN_ANNOTATION: run}}
    }


async def test_the_canary_and_its_pods_carry_the_run(cluster: Cluster) -> None:
    await cluster.running()
    for where in (CANARY, f"{SERVICES}/web-canary"):
        made = cluster.kube.stored(where)
        assert made is not None
        assert made["metadata"]["annotations"][canary.RUN_ANNOTATION] == RUN
    deployment = cluster.kube.stored(CANARY)
    assert deployment is not None
    template = deployment["spec"]["template"]["metadata"]
    assert template["annotations"][canary.RUN_ANNOTATION] == RUN


async def test_cleanup_deletes_in_order_and_keeps_failed_jobs_by_relabelling(
    cluster: Cluster,
) -> None:
    ctx = await cluster.running()
    kube = cluster.kube
    kube.put(f"{JOBS}/failed-smoke", job("failed-smoke", "test", UID))
    kube.put(f"{JOBS}/passed-smoke", job("passed-smoke", "test", UID))
    kube.put(f"{JOBS}/purge", job("purge", "cleanup", UID))  # a user cleanup Job
    kube.put(f"{PODS}/c1", pod("c1", "canary"))
    kube.put(f"{PODS}/stable", {"metadata": {"name": "stable", "labels": {"app": "web"}}})
    listed = {
        where: (kube.stored(where) or {})["metadata"]["uid"]
        for where in (CANARY, f"{SERVICES}/web-canary", f"{JOBS}/passed-smoke", f"{PODS}/c1")
    }
    cluster.clear()
    await canary.delete(ctx, DeleteCanaryObjects(keep_jobs=("failed-smoke",)), kube, RUN)
    assert kube.deletions == [
        ("deployments/web-canary", "Foreground"),
        ("services/web-canary", "Background"),
        ("jobs/passed-smoke", "Background"),
        ("pods/c1", "Background"),
    ]
    # Each deletion only of the object as listed (its uid).
    sent = [body["preconditions"] for entry, body in kube.bodies if entry.startswith("DELETE")]
    assert sent == [{"uid": uid} for uid in listed.values()]
    kept = kube.stored(f"{JOBS}/failed-smoke")
    assert kept is not None
    assert kept["metadata"]["labels"][objects.PURPOSE_LABEL] == views.EVIDENCE
    assert views.job(kept).kept
    assert kube.stored(f"{JOBS}/purge") is not None
    assert kube.stored(f"{PODS}/stable") is not None
    assert kube.stored(f"{DEPLOYMENTS}/web") is not None  # the target, of course
    assert "PATCH jobs/failed-smoke" in kube.requests
    # A second cleanup finds the kept Job no more: it is evidence now.
    kube.clear()
    await canary.delete(ctx, DeleteCanaryObjects(), kube, RUN)
    assert kube.deletions == [] and kube.stored(f"{JOBS}/failed-smoke") is not None


async def test_cleanup_leaves_what_is_already_going(cluster: Cluster) -> None:
    ctx = await cluster.running()
    going = cluster.kube.stored(CANARY)
    assert going is not None
    going["metadata"].update(deletionTimestamp="2026-12-07T00:00:00Z", finalizers=["x"])
    cluster.kube.put(CANARY, going)
    cluster.clear()
    await canary.delete(ctx, DeleteCanaryObjects(), cluster.kube, RUN)
    assert cluster.kube.deletions == [("services/web-canary", "Background")]


def another_runs(cluster: Cluster) -> list[str]:
    """Objects of another run (of another rollout) of the same target, as the cache
    shows them; returns their paths."""
    made = [
        (f"{JOBS}/theirs", job("theirs", "test", "uid-other", OTHER)),
        (f"{PODS}/their-pod", pod("their-pod", "canary", OTHER)),
        (f"{JOBS}/unmarked", job("unmarked", "test", "uid-other")),  # before runs were marked
    ]
    unmarked = made[2][1]["metadata"]
    del unmarked["annotations"]
    for where, body in made:
        cluster.kube.put(where, body)
    return [where for where, _ in made]


async def test_a_runs_cleanup_never_deletes_an_object_of_another_run(cluster: Cluster) -> None:
    ctx = await cluster.running()
    theirs = another_runs(cluster)
    cluster.kube.put(f"{PODS}/c1", pod("c1", "canary"))
    cluster.clear()
    with pytest.raises(canary.NotThisRun) as raised:
        await canary.delete(ctx, DeleteCanaryObjects(), cluster.kube, RUN)
    # This run's objects went; the others' are named, and left alone.
    assert [what for what, _ in cluster.kube.deletions] == [
        "deployments/web-canary",
        "services/web-canary",
        "pods/c1",
    ]
    assert all(cluster.kube.stored(where) is not None for where in theirs)
    assert "job theirs" in str(raised.value) and "pod their-pod" in str(raised.value)
    assert "job unmarked" in str(raised.value)


async def test_a_recovery_deletes_what_a_previous_holder_left(cluster: Cluster) -> None:
    ctx = await cluster.running()
    theirs = another_runs(cluster)
    cluster.clear()
    await canary.delete(ctx, DeleteCanaryObjects(), cluster.kube, None)
    assert all(cluster.kube.stored(where) is None for where in theirs)
    assert cluster.kube.stored(CANARY) is None


async def test_a_recovery_spares_what_the_run_about_to_start_made(cluster: Cluster) -> None:
    """Another process started this very run a moment ago (its canary is up, its status
    write not seen here): the recovery deletes the previous holder's leftovers only."""
    ctx = await cluster.running()
    theirs = another_runs(cluster)
    cluster.kube.put(f"{PODS}/c1", pod("c1", "canary"))
    cluster.clear()
    await canary.delete(ctx, DeleteCanaryObjects(), cluster.kube, None, spare=RUN)
    assert all(cluster.kube.stored(where) is None for where in theirs)
    assert cluster.kube.stored(CANARY) is not None
    assert cluster.kube.stored(f"{SERVICES}/web-canary") is not None
    assert cluster.kube.stored(f"{PODS}/c1") is not None
    assert sorted(what for what, _ in cluster.kube.deletions) == [
        "jobs/theirs",
        "jobs/unmarked",
        "pods/their-pod",
    ]


async def test_an_object_made_again_since_it_was_listed_is_not_deleted(cluster: Cluster) -> None:
    """A process frozen after the confirmation of its delete (the one window fencing
    leaves), while the next run made the canary Service again under its name: the
    deletion names the uid as listed, and the API server refuses it."""
    ctx = await cluster.running()
    service = f"{SERVICES}/web-canary"
    old = cluster.kube.stored(service)
    assert old is not None
    confirmations: list[None] = []

    async def next_run_meanwhile() -> None:
        confirmations.append(None)
        if len(confirmations) != 2:  # the first is the canary Deployment's delete's
            return
        del cluster.kube.store.objects[("", "services", old["metadata"]["namespace"], "web-canary")]
        again = {k: v for k, v in old.items() if k != "metadata"}
        again["metadata"] = {
            k: v for k, v in old["metadata"].items() if k not in ("uid", "resourceVersion")
        }
        again["metadata"]["annotations"] = {canary.RUN_ANNOTATION: "uid-next/1"}
        cluster.kube.put(service, again)

    fenced = FencedWrites(cluster.kube, next_run_meanwhile)
    cluster.clear()
    await canary.delete(ctx, DeleteCanaryObjects(), fenced, RUN)
    now = cluster.kube.stored(service)
    assert now is not None and now["metadata"]["uid"] != old["metadata"]["uid"]
    assert "DELETE services/web-canary" in cluster.kube.requests  # sent, and refused
    assert ("services/web-canary", "Background") not in cluster.kube.deletions
