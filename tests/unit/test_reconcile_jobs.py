"""reconcile/jobs.py: test and cleanup Jobs created once, owned by the rollout, with the
canary Service's address in their environment."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from canary_operator.api.models import JobTemplate
from canary_operator.engine.types import EnsureJob
from canary_operator.kube import objects
from canary_operator.reconcile import canary, jobs, views
from tests.harness.reconcile_fixtures import JOBS, UID, Cluster, fake_cluster

RUN = f"{UID}/1"
TEMPLATE = JobTemplate.model_validate(
    {"spec": {"template": {"spec": {"containers": [{"name": "t", "image": "busybox"}]}}}}
)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with fake_cluster() as made:
        yield made


async def test_a_job_created_twice_is_fine(cluster: Cluster) -> None:
    ctx = await cluster.running()
    action = EnsureJob("web-v2-1-s1", TEMPLATE, "step 1")
    await jobs.ensure(ctx, action, cluster.kube, RUN)
    await jobs.ensure(ctx, action, cluster.kube, RUN)  # the 409 of an earlier create
    assert cluster.kube.requests == ["POST jobs", "POST jobs"]
    created = cluster.kube.stored(f"{JOBS}/web-v2-1-s1")
    assert created is not None
    assert views.owned_by(created, UID) and views.purpose(created) == "test"
    assert created["metadata"]["labels"][objects.MANAGED_BY] == objects.OPERATOR
    env = {
        e["name"]: e.get("value")
        for c in created["spec"]["template"]["spec"]["containers"]
        for e in c.get("env") or []
    }
    assert any("web-canary" in str(v) for v in env.values()), env


async def test_a_cleanup_job_is_labelled_as_one(cluster: Cluster) -> None:
    ctx = await cluster.running()
    action = EnsureJob("web-v2-1-c1-a0", TEMPLATE, "cleanup 1/1 purge")
    await jobs.ensure(ctx, action, cluster.kube, RUN)
    created = cluster.kube.stored(f"{JOBS}/web-v2-1-c1-a0")
    assert created is not None and views.job(created).cleanup


async def test_no_job_without_a_target(cluster: Cluster) -> None:
    ctx = await cluster.running()
    ctx.targets.target = None
    with pytest.raises(ValueError, match="target Deployment web not found"):
        await jobs.ensure(ctx, EnsureJob("j", TEMPLATE, "step 1"), cluster.kube, RUN)
    assert cluster.kube.requests == []


async def test_deleting_a_job_gone_already_is_fine(cluster: Cluster) -> None:
    ctx = await cluster.running()
    await jobs.ensure(ctx, EnsureJob("j", TEMPLATE, "step 1"), cluster.kube, RUN)
    created = cluster.kube.stored(f"{JOBS}/j")
    assert created is not None
    assert created["metadata"]["annotations"][canary.RUN_ANNOTATION] == RUN
    cluster.clear()
    await jobs.delete(ctx, "j", cluster.kube, RUN)
    await jobs.delete(ctx, "j", cluster.kube, RUN)  # gone: not even asked for
    assert cluster.kube.stored(f"{JOBS}/j") is None
    assert cluster.kube.requests == ["GET jobs/j", "DELETE jobs/j", "GET jobs/j"]
    assert cluster.kube.deletions == [("jobs/j", "Background")]
    [(_, body)] = cluster.kube.bodies
    assert body["preconditions"] == {"uid": created["metadata"]["uid"]}


async def test_a_job_of_another_run_is_not_deleted(cluster: Cluster) -> None:
    ctx = await cluster.running()
    await jobs.ensure(ctx, EnsureJob("j", TEMPLATE, "step 1"), cluster.kube, f"{UID}/2")
    cluster.clear()
    with pytest.raises(canary.NotThisRun, match="job j"):
        await jobs.delete(ctx, "j", cluster.kube, RUN)
    assert cluster.kube.deletions == [] and cluster.kube.stored(f"{JOBS}/j") is not None
