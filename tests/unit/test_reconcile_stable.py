"""reconcile/stable.py: the stable Deployment's size (mode Shift) and, at promotion,
the new version with its record and the fencing annotation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from canary_operator.engine.types import PromoteStable, ScaleStable
from canary_operator.kube import objects
from canary_operator.kube.api import Conflict, FencedWrites
from canary_operator.reconcile import stable, views
from tests.harness.reconcile_fixtures import DEPLOYMENTS, NAME, UID, Cluster, fake_cluster

TARGET = f"{DEPLOYMENTS}/web"


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with fake_cluster() as made:
        yield made


async def test_promotion_applies_the_new_version_its_record_and_the_fencing_token(
    cluster: Cluster,
) -> None:
    ctx = await cluster.running()
    action = PromoteStable(run_id=f"{NAME}/1", version_since="2026-12-07T10:00:00Z")
    await stable.promote(ctx, action, cluster.kube)
    # Read fresh (the apply is conditional on its version), written once.
    assert cluster.fresh.requests == ["GET deployments/web"]
    assert cluster.kube.requests == ["PATCH deployments/web"]
    promoted = cluster.kube.stored(TARGET)
    assert promoted is not None
    annotations = promoted["metadata"]["annotations"]
    assert annotations[objects.PROMOTED_BY] == f"{NAME}/1"
    assert annotations[objects.FENCING] == f"{NAME}/1"  # the rollout and its lock token
    record = json.loads(annotations[objects.PROMOTION])
    assert {k: record[k] for k in ("rollout", "uid", "run", "images", "versionSince")} == {
        "rollout": NAME,
        "uid": UID,
        "run": 1,
        "images": {"app": "web:2"},
        "versionSince": "2026-12-07T10:00:00Z",
    }
    assert record["fingerprint"] == ctx.rollout.spec.run_fingerprint()
    view = views.workload(promoted)
    assert view is not None and view.images == {"app": "web:2"}
    assert view.promotion is not None and view.promotion.run == 1


async def test_promotion_is_conditional_on_the_target_as_read(cluster: Cluster) -> None:
    ctx = await cluster.running()

    async def someone_writes_meanwhile() -> None:  # between the read and the apply
        await cluster.fresh.merge_patch(TARGET, {"metadata": {"labels": {"x": "1"}}})

    with pytest.raises(Conflict):
        await stable.promote(
            ctx, PromoteStable(run_id="r"), FencedWrites(cluster.kube, someone_writes_meanwhile)
        )
    target = cluster.kube.stored(TARGET)
    assert target is not None and objects.PROMOTION not in target["metadata"].get("annotations", {})


async def test_no_promotion_without_a_target(cluster: Cluster) -> None:
    ctx = await cluster.running()
    await cluster.kube.delete(TARGET)
    with pytest.raises(ValueError, match="target Deployment web not found"):
        await stable.promote(ctx, PromoteStable(run_id="r"), cluster.kube)


async def test_scaling_the_stable_writes_its_size_and_the_record_once(cluster: Cluster) -> None:
    ctx = await cluster.running()
    action = ScaleStable(replicas=2, original=3, floor=1)
    await stable.scale(ctx, action, cluster.kube)
    scaled = cluster.kube.stored(TARGET)
    assert scaled is not None and scaled["spec"]["replicas"] == 2
    assert objects.STABLE_REPLICAS in scaled["metadata"]["annotations"]
    record = views.workload(scaled)
    assert record is not None and record.stable_record is not None
    assert (record.stable_record.original, record.stable_record.written) == (3, 2)
    assert cluster.kube.requests.count("PATCH deployments/web") == 1
    cluster.clear()
    await stable.scale(ctx, action, cluster.kube)  # as written: nothing to write
    assert "PATCH deployments/web" not in cluster.kube.requests
