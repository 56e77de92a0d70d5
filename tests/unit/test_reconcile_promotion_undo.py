"""Whole reconciles on the fake cluster: a rollout deleted (or aborted) while its
promotion is under way ends with the target back on the template it had before,
written once through the fenced writes, verified on a fresh read, and said so in the
outcome (issue 25, item 1). reconcile/stable.py `promote` and `undo` apart, too."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from canary_operator.engine.types import PromoteStable, UndoPromotion
from canary_operator.kube import objects
from canary_operator.kube.api import FencedWrites, JsonObj
from canary_operator.kube.rollouts import rollout_path
from canary_operator.reconcile import stable, views
from canary_operator.reconcile.reconciler import Reconciler
from tests.harness.reconcile_fixtures import (
    DEPLOYMENTS,
    NAME,
    NS,
    UID,
    Cluster,
    fake_cluster,
    rollout_body,
    spec,
)

TARGET = f"{DEPLOYMENTS}/web"
RID = f"{UID}/1"
UNDONE = "promotion to web:2 undone, target back on web:1"


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with fake_cluster() as made:
        yield made


def _target(cluster: Cluster) -> JsonObj:
    body = cluster.kube.stored(TARGET)
    assert body is not None
    return body


async def _promoting(cluster: Cluster) -> JsonObj:
    """A run whose promote step is under way: the target carries the new version and
    has not rolled it out (its status still names the previous generation). Returns
    the target's pod template before the promotion."""
    cluster.with_target()
    before: JsonObj = copy.deepcopy(_target(cluster)["spec"]["template"])
    cluster.add_rollout(rollout_body(spec(trafficRouting={"replicas": {"mode": "Add"}})))
    await cluster.reconcile()
    assert cluster.kube.stored(f"{DEPLOYMENTS}/web-canary") is not None
    _canary_follows_its_spec(cluster)
    body = await cluster.reconcile()
    assert body["status"]["currentStep"] == 1, body["status"].get("message")
    annotations = _target(cluster)["metadata"]["annotations"]
    assert annotations[objects.PROMOTED_BY] == RID
    assert _target(cluster)["spec"]["template"] != before
    record = json.loads(annotations[objects.PRE_PROMOTION])
    assert record["run"] == RID and record["template"] == before
    assert record["promotion"] is None and record["promotedBy"] is None
    cluster.clear()
    cluster.kube.store.requests.clear()
    return before


def _statuses(cluster: Cluster) -> list[dict[str, Any]]:
    """Every status the reconciles wrote, in order."""
    return [b["status"] for e, b in cluster.kube.bodies if e == f"PUT canaryrollouts/{NAME}/status"]


def _canary_follows_its_spec(cluster: Cluster) -> None:
    """The Deployment controller, for the canary: its status as its spec asks."""
    canary = cluster.kube.stored(f"{DEPLOYMENTS}/web-canary")
    if canary is None:
        return
    n = canary["spec"].get("replicas", 1)
    ready = {"replicas": n, "readyReplicas": n, "availableReplicas": n, "updatedReplicas": n}
    gen = canary["metadata"]["generation"]
    cluster.kube.put(
        f"{DEPLOYMENTS}/web-canary", {**canary, "status": {**ready, "observedGeneration": gen}}
    )


async def _until_ended(cluster: Cluster) -> dict[str, Any]:
    """Reconcile until the run ended (the rollout gone, or terminal); its last status."""
    for _ in range(30):
        _canary_follows_its_spec(cluster)
        await Reconciler(cluster.deps).reconcile(NS, NAME)
        await cluster.deps.events.flush()
        statuses = _statuses(cluster)
        if statuses and statuses[-1]["phase"] not in ("Progressing", "Paused", "CleaningUp"):
            return statuses[-1]
    raise AssertionError(f"not ended: {_statuses(cluster)[-1:]}")


async def _delete(cluster: Cluster) -> None:
    await cluster.kube.delete(rollout_path(NS, NAME))
    cluster.deps.index.update(cluster.rollout())


async def _abort(cluster: Cluster) -> None:
    await cluster.kube.merge_patch(rollout_path(NS, NAME), {"spec": {"abort": True}})
    cluster.deps.index.update(cluster.rollout())


@pytest.mark.parametrize(("end", "result"), [(_delete, "Deleted"), (_abort, "Aborted")])
async def test_a_rollout_ended_during_its_promotion_puts_the_target_back(
    cluster: Cluster, end: Any, result: str
) -> None:
    before = await _promoting(cluster)
    await end(cluster)
    status = await _until_ended(cluster)
    target = _target(cluster)
    assert target["spec"]["template"] == before, "the template it had before the promotion"
    annotations = target["metadata"].get("annotations") or {}
    assert not {objects.PROMOTED_BY, objects.PROMOTION, objects.PRE_PROMOTION} & set(annotations)
    assert status["phase"] == "Aborted" and status["outcome"]["result"] == result
    assert status["outcome"]["message"].endswith(UNDONE)
    assert status["message"].endswith(UNDONE)
    undo = status["cleanup"]["promotionUndo"]
    assert (undo["promoted"], undo["restores"]) == ("web:2", "web:1") and undo["undoneAt"]
    assert status.get("live") is None, "no promotion on the target: nothing live"
    # Written once, by an update of the whole object, after a fresh read of the Lease
    # (the fence); verified on a fresh read of the target after it.
    sent = cluster.kube.store.requests
    assert sent.count("PUT deployments/web") == 1
    put = sent.index("PUT deployments/web")
    assert any(r.startswith("GET leases/") for r in sent[:put])
    assert "GET deployments/web" in cluster.fresh.requests
    assert sent.index("GET deployments/web", put + 1) > put
    events = [b.get("reason") for e, b in cluster.kube.bodies if e.startswith("POST events")]
    assert "PromotionUndoStarted" in events and "PromotionUndone" in events


async def test_undo_restores_the_previous_promotion_record(cluster: Cluster) -> None:
    """A target promoted before (by another run): its record and promoted-by come back,
    so status.live names that promotion again."""
    ctx = await cluster.running()
    previous = json.dumps({"rollout": "web-v1", "images": {"app": "web:1"}})
    await cluster.kube.merge_patch(
        TARGET,
        {"metadata": {"annotations": {objects.PROMOTION: previous, objects.PROMOTED_BY: "v1/3"}}},
    )
    before = copy.deepcopy(_target(cluster)["spec"]["template"])
    await stable.promote(ctx, PromoteStable(run_id=RID), cluster.kube)
    promoted = _target(cluster)
    assert promoted["metadata"]["annotations"][objects.PROMOTED_BY] == RID
    view = views.workload(promoted)
    assert view is not None and view.pre_promotion is not None
    assert view.pre_promotion.run_id == RID and view.pre_promotion.images == {"app": "web:1"}
    assert view.pre_promotion.template_hash == objects.template_hash(before)
    cluster.clear()
    await stable.promote(ctx, PromoteStable(run_id=RID), cluster.kube)
    assert cluster.kube.requests == [], "promoted already: what it replaced is kept"
    await stable.undo(ctx, UndoPromotion(RID), cluster.kube)
    target = _target(cluster)
    annotations = target["metadata"]["annotations"]
    assert target["spec"]["template"] == before
    assert annotations[objects.PROMOTION] == previous
    assert annotations[objects.PROMOTED_BY] == "v1/3"
    assert objects.PRE_PROMOTION not in annotations
    undone = views.workload(target)
    assert undone is not None and undone.template_hash == objects.template_hash(before)
    cluster.clear()
    await stable.undo(ctx, UndoPromotion(RID), cluster.kube)  # undone already
    assert cluster.kube.requests == [] and cluster.fresh.requests == ["GET deployments/web"]


async def test_undo_is_fenced_and_conditional(cluster: Cluster) -> None:
    ctx = await cluster.running()
    await stable.promote(ctx, PromoteStable(run_id=RID), cluster.kube)
    confirmed: list[str] = []

    async def fence() -> None:
        confirmed.append("fence")

    await stable.undo(ctx, UndoPromotion(RID), FencedWrites(cluster.kube, fence))
    assert confirmed == ["fence"]
    assert objects.PROMOTED_BY not in (_target(cluster)["metadata"].get("annotations") or {})


async def test_an_undo_without_the_record_of_what_was_replaced_fails(cluster: Cluster) -> None:
    ctx = await cluster.running()
    await cluster.kube.merge_patch(
        TARGET, {"metadata": {"annotations": {objects.PROMOTED_BY: RID}}}
    )
    with pytest.raises(ValueError, match="pre-promotion"):
        await stable.undo(ctx, UndoPromotion(RID), cluster.kube)
