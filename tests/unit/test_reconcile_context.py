"""reconcile/context.py (the one object a reconcile works on) and the fake cluster the
reconcile's tests run on (tests/harness/fake_kube.py): a real Kube answered from a
store, so that every Kube method and wrapper runs unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.kube.api import Conflict, FencedWrites, ReadOnce
from canary_operator.kube.rollouts import FINALIZER, rollout_path
from canary_operator.reconcile.context import ReconcileContext, Targets
from tests.harness.reconcile_fixtures import (
    DEPLOYMENTS,
    NS,
    PODS,
    Cluster,
    fake_cluster,
    rollout_body,
)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with fake_cluster() as made:
        yield made


async def test_the_context_of_a_rollout(cluster: Cluster) -> None:
    ctx = cluster.context(rollout_body(status={"phase": "Queued", "run": 3}, finalizer=True))
    assert ctx.namespace == NS
    assert ctx.rollout.has_finalizer and ctx.rollout.status.run == 3
    assert (ctx.ref.name, ctx.ref.uid, ctx.ref.run) == ("web-v2", "uid-web-v2", 3)
    assert ctx.acting == []
    assert ctx.run_lock.lock is cluster.deps.lock and ctx.run_lock.fresh is cluster.fresh


async def test_the_targets_and_the_observation_are_set_by_the_reconcile(cluster: Cluster) -> None:
    made = cluster.context(rollout_body())
    ctx = ReconcileContext(made.deps, made.rollout, made.body, made.ref, made.run_lock)
    with pytest.raises(AttributeError):
        _ = ctx.targets
    with pytest.raises(AttributeError):
        _ = ctx.obs
    ctx.targets = Targets(None, None)
    assert not ctx.targets.fresh and ctx.targets.version_before_read is None


async def test_the_router_reads_through_the_kube_it_is_given(cluster: Cluster) -> None:
    cluster.with_target()
    ctx = cluster.context(rollout_body())
    reads = ["GET deployments/web", "GET deployments/web-canary"]  # stable record, canary
    await ctx.router(None).read()
    assert sorted(cluster.kube.requests) == reads and cluster.fresh.requests == []
    cluster.clear()
    await ctx.router(None, cluster.fresh).read()
    assert sorted(cluster.fresh.requests) == reads and cluster.kube.requests == []


# ------------------------------------------------------------------ the fake cluster


async def test_reads_and_writes_carry_versions_and_preconditions(cluster: Cluster) -> None:
    kube = cluster.kube
    created = await kube.create(DEPLOYMENTS, {"metadata": {"name": "a"}, "spec": {"replicas": 1}})
    assert created["metadata"]["namespace"] == NS and created["metadata"]["uid"]
    version = created["metadata"]["resourceVersion"]
    with pytest.raises(Conflict):
        await kube.create(DEPLOYMENTS, {"metadata": {"name": "a"}})
    replaced = await kube.replace(f"{DEPLOYMENTS}/a", {**created, "spec": {"replicas": 2}})
    assert int(replaced["metadata"]["resourceVersion"]) > int(version)
    assert replaced["metadata"]["generation"] == 2
    with pytest.raises(Conflict):  # written against the old version
        await kube.replace(f"{DEPLOYMENTS}/a", created)
    with pytest.raises(Conflict):
        await kube.merge_patch(
            f"{DEPLOYMENTS}/a", {"metadata": {"resourceVersion": version, "labels": {"x": "1"}}}
        )
    patched = await kube.merge_patch(
        f"{DEPLOYMENTS}/a", {"metadata": {"labels": {"x": "1", "y": "2"}}, "spec": {"paused": True}}
    )
    patched = await kube.merge_patch(
        f"{DEPLOYMENTS}/a", {"metadata": {"labels": {"y": None}}, "spec": {"paused": None}}
    )
    assert patched["metadata"]["labels"] == {"x": "1"} and patched["spec"] == {"replicas": 2}
    assert await kube.get(f"{DEPLOYMENTS}/b") is None
    with pytest.raises(ApiException) as missing:
        await kube.merge_patch(f"{DEPLOYMENTS}/b", {"spec": {}})
    assert missing.value.status == 404
    assert await kube.delete(f"{DEPLOYMENTS}/a", "Foreground") is True
    assert await kube.delete(f"{DEPLOYMENTS}/a") is False
    assert kube.deletions == [("deployments/a", "Foreground")]  # of what was there
    assert kube.requests == [
        "POST deployments",
        "POST deployments",
        "PUT deployments/a",
        "PUT deployments/a",
        "PATCH deployments/a",
        "PATCH deployments/a",
        "PATCH deployments/a",
        "GET deployments/b",
        "PATCH deployments/b",
        "DELETE deployments/a",
        "DELETE deployments/a",
    ]


async def test_apply_creates_or_merges_and_dry_runs_store_nothing(cluster: Cluster) -> None:
    kube = cluster.kube
    await kube.apply(f"{DEPLOYMENTS}/a", {"metadata": {"name": "a"}, "spec": {"replicas": 1}})
    applied = await kube.apply(f"{DEPLOYMENTS}/a", {"metadata": {"name": "a"}, "spec": {"x": 1}})
    assert applied["spec"] == {"replicas": 1, "x": 1}
    await kube.request("POST", DEPLOYMENTS, {"metadata": {"name": "b"}}, query={"dryRun": "All"})
    assert kube.stored(f"{DEPLOYMENTS}/b") is None
    assert kube.requests[-1] == "POST deployments?dryRun"


async def test_status_is_written_through_its_subresource_only(cluster: Cluster) -> None:
    body = cluster.add_rollout(rollout_body(status={"phase": "Pending"}))
    where = rollout_path(NS, "web-v2")
    written = await cluster.kube.replace(
        f"{where}/status", {**body, "spec": {}, "status": {"phase": "Queued"}}
    )
    assert written["status"] == {"phase": "Queued"} and written["spec"] == body["spec"]
    assert written["metadata"]["generation"] == 1
    kept = await cluster.kube.merge_patch(where, {"status": {"phase": "Failed"}})
    assert kept["status"] == {"phase": "Queued"}
    assert cluster.kube.requests == [
        "PUT canaryrollouts/web-v2/status",
        "PATCH canaryrollouts/web-v2",
    ]


async def test_a_finalizer_holds_a_deletion_until_it_is_removed(cluster: Cluster) -> None:
    cluster.add_rollout(rollout_body(finalizer=True))
    where = rollout_path(NS, "web-v2")
    assert await cluster.kube.delete(where)
    going = cluster.kube.stored(where)
    assert going is not None and going["metadata"]["deletionTimestamp"]
    await cluster.kube.merge_patch(where, {"metadata": {"finalizers": []}})
    assert cluster.kube.stored(where) is None
    assert FINALIZER in going["metadata"]["finalizers"]


async def test_lists_by_label_selector(cluster: Cluster) -> None:
    for name, labels in (("a", {"t": "web", "r": "canary"}), ("b", {"t": "web"}), ("c", {})):
        cluster.kube.put(f"{PODS}/{name}", {"metadata": {"name": name, "labels": labels}})
    cluster.kube.put(
        "/api/v1/namespaces/other/pods/d", {"metadata": {"name": "d", "labels": {"t": "web"}}}
    )

    async def names(selector: str | None) -> list[str]:
        return [p["metadata"]["name"] for p in await cluster.kube.list(PODS, selector)]

    assert await names(None) == ["a", "b", "c"]
    assert await names("t=web") == ["a", "b"]
    assert await names("t=web,r") == ["a"]
    assert await names("t=web,r!=canary") == ["b"]
    assert await names("r=stable") == []
    everywhere = await cluster.kube.list("/api/v1/pods", "t=web")
    assert len(everywhere) == 3


async def test_failures_injected_and_views_with_their_own_log(cluster: Cluster) -> None:
    cluster.with_target()
    cluster.kube.fail_next("GET", "deployments/web", ApiException(status=500, reason="boom"))
    cluster.kube.fail_next("PATCH", "deployments", ApiException(status=409, reason="changed"))
    assert await cluster.fresh.get(f"{DEPLOYMENTS}/web") is not None  # another view
    with pytest.raises(ApiException) as failed:
        await cluster.kube.get(f"{DEPLOYMENTS}/web")
    assert failed.value.status == 500
    assert await cluster.kube.get(f"{DEPLOYMENTS}/web") is not None  # once only
    with pytest.raises(Conflict):
        await cluster.kube.merge_patch(f"{DEPLOYMENTS}/web", {"spec": {"replicas": 1}})
    assert cluster.kube.requests == [
        "GET deployments/web",
        "GET deployments/web",
        "PATCH deployments/web",
    ]
    assert cluster.fresh.requests == ["GET deployments/web"]


async def test_the_kube_wrappers_run_unchanged_on_top(cluster: Cluster) -> None:
    cluster.with_target()
    once = ReadOnce(cluster.fresh)
    await once.get(f"{DEPLOYMENTS}/web")
    await once.get(f"{DEPLOYMENTS}/web")
    assert cluster.fresh.requests == ["GET deployments/web"]
    confirmed: list[str] = []

    async def confirm() -> None:
        confirmed.append("confirm")

    fenced = FencedWrites(cluster.kube, confirm)
    await fenced.get(f"{DEPLOYMENTS}/web")
    assert confirmed == []
    await fenced.merge_patch(f"{DEPLOYMENTS}/web", {"spec": {"replicas": 1}})
    await fenced.merge_patch(f"{DEPLOYMENTS}/web", {"spec": {"replicas": 2}})
    assert confirmed == ["confirm", "confirm"]  # each write its own
