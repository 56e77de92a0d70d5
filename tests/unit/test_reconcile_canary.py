"""reconcile/canary.py: the canary's objects a run applies (only what the cache does
not show as last applied) and cleanup's deletions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from canary_operator.engine.types import DeleteCanaryObjects
from canary_operator.kube import objects
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


def job(name: str, purpose: str, owner: str) -> Any:
    labels = {objects.MANAGED_BY: objects.OPERATOR, **WEB, objects.PURPOSE_LABEL: purpose}
    return {"metadata": {"name": name, "labels": labels, "ownerReferences": [{"uid": owner}]}}


def pod(name: str, role: str) -> Any:
    return {"metadata": {"name": name, "labels": {**WEB, objects.ROLE_LABEL: role}}}


async def test_cleanup_deletes_in_order_and_keeps_failed_jobs_by_relabelling(
    cluster: Cluster,
) -> None:
    ctx = await cluster.running()
    kube = cluster.kube
    kube.put(f"{JOBS}/failed-smoke", job("failed-smoke", "test", UID))
    kube.put(f"{JOBS}/passed-smoke", job("passed-smoke", "test", UID))
    kube.put(f"{JOBS}/theirs", job("theirs", "test", "uid-other"))  # a kept name, not ours
    kube.put(f"{JOBS}/purge", job("purge", "cleanup", UID))  # a user cleanup Job
    kube.put(f"{PODS}/c1", pod("c1", "canary"))
    kube.put(f"{PODS}/stable", {"metadata": {"name": "stable", "labels": {"app": "web"}}})
    cluster.clear()
    await canary.delete(ctx, DeleteCanaryObjects(keep_jobs=("failed-smoke", "theirs")), kube)
    assert kube.deletions == [
        ("deployments/web-canary", "Foreground"),
        ("services/web-canary", "Background"),
        ("jobs/passed-smoke", "Background"),
        ("jobs/theirs", "Background"),
        ("pods/c1", "Background"),
    ]
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
    await canary.delete(ctx, DeleteCanaryObjects(), kube)
    assert kube.deletions == [] and kube.stored(f"{JOBS}/failed-smoke") is not None


async def test_cleanup_leaves_what_is_already_going(cluster: Cluster) -> None:
    ctx = await cluster.running()
    going = cluster.kube.stored(CANARY)
    assert going is not None
    going["metadata"].update(deletionTimestamp="2026-12-07T00:00:00Z", finalizers=["x"])
    cluster.kube.put(CANARY, going)
    cluster.clear()
    await canary.delete(ctx, DeleteCanaryObjects(), cluster.kube)
    assert cluster.kube.deletions == [("services/web-canary", "Background")]
