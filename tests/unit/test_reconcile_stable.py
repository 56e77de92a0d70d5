"""reconcile/stable.py: the stable Deployment's size (mode Shift) and, at promotion,
the new version with its record and the fencing annotation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from canary_operator.engine.types import PromoteStable, ScaleStable, UndoPromotion
from canary_operator.kube import objects
from canary_operator.kube.api import Conflict, FencedWrites, JsonObj
from canary_operator.reconcile import stable, views
from tests.harness.reconcile_fixtures import (
    DEPLOYMENTS,
    NAME,
    SELECTOR,
    UID,
    Cluster,
    fake_cluster,
    rollout_body,
    spec,
)

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


# ------------------------------------------------ the rollback window (issue 25, item 3)

WINDOW = "canary-operator.dev/rollback-window"


async def _promoted(cluster: Cluster, **spec_fields: Any) -> tuple[JsonObj, JsonObj]:
    """The target before and after a promotion by a rollout of spec(**spec_fields)."""
    if cluster.kube.stored(TARGET) is None:
        cluster.with_target()
    ctx = await cluster.observed(cluster.add_rollout(rollout_body(spec(**spec_fields))))
    before = cluster.kube.stored(TARGET)
    assert before is not None
    exact = "template" in spec_fields
    await stable.promote(ctx, PromoteStable(run_id=f"{UID}/1", exact=exact), cluster.kube)
    after = cluster.kube.stored(TARGET)
    assert after is not None
    return before, after


def _window(body: JsonObj) -> list[JsonObj]:
    kept: list[JsonObj] = json.loads(body["metadata"]["annotations"][WINDOW])
    return kept


async def test_a_promotion_keeps_the_template_it_replaces_in_the_rollback_window(
    cluster: Cluster,
) -> None:
    before, after = await _promoted(cluster)
    [kept] = _window(after)
    assert kept["template"] == before["spec"]["template"]
    assert kept["images"] == {"app": "web:1"}
    assert (kept["replacedBy"], kept["promotedBy"], kept["expiresAt"]) == (f"{UID}/1", None, None)
    assert after["spec"]["template"]["spec"]["containers"][0]["image"] == "web:2"


async def test_the_window_is_bounded_by_the_promoting_rollouts_spec(cluster: Cluster) -> None:
    cluster.with_target()
    older = [{"template": {"spec": {}}, "revision": str(n)} for n in (3, 2, 1)]
    stored = cluster.kube.stored(TARGET)
    assert stored is not None
    stored["metadata"]["annotations"] = {WINDOW: json.dumps(older)}
    cluster.kube.put(TARGET, stored)
    _, after = await _promoted(cluster, rollbackWindow={"revisions": 2, "maxAge": "1h"})
    kept = _window(after)
    assert [k.get("revision") for k in kept] == [None, "3"]
    assert kept[0]["expiresAt"] is not None


async def test_revisions_zero_keeps_no_window(cluster: Cluster) -> None:
    _, after = await _promoted(cluster, rollbackWindow={"revisions": 0})
    assert WINDOW not in after["metadata"]["annotations"]


async def test_an_undos_promotion_replaces_the_whole_template_exactly(cluster: Cluster) -> None:
    kept = {
        "metadata": {"labels": {"app": "web", "version": "1"}},
        "spec": {"containers": [{"name": "app", "image": "web:0.9"}]},
    }
    before, after = await _promoted(cluster, images=None, template=kept)
    # Written whole (a PUT), not applied field by field: the port the template had
    # since is gone, as it was not in the version put back.
    assert "PUT deployments/web" in cluster.kube.requests
    assert after["spec"]["template"]["spec"] == kept["spec"]
    assert after["spec"]["template"]["metadata"]["labels"] == {**SELECTOR, "version": "1"}
    annotations = after["metadata"]["annotations"]
    assert annotations[objects.PROMOTED_BY] == f"{UID}/1"
    assert json.loads(annotations[objects.PRE_PROMOTION])["template"] == before["spec"]["template"]
    assert _window(after)[0]["template"] == before["spec"]["template"]


async def test_undoing_a_promotion_midway_takes_it_out_of_the_window(cluster: Cluster) -> None:
    await _promoted(cluster)
    ctx = await cluster.observed(cluster.rollout())
    await stable.undo(ctx, UndoPromotion(run_id=f"{UID}/1"), cluster.kube)
    undone = cluster.kube.stored(TARGET)
    assert undone is not None
    assert undone["spec"]["template"]["spec"]["containers"][0]["image"] == "web:1"
    assert WINDOW not in undone["metadata"].get("annotations", {})
