"""A cleanup blocked by a canary pod that will not go, through whole reconciles on the
fake cluster (engine/cleanup_blocked.py, reconcile/observe.py, reconcile/views.py):
the condition, the Event said once, no write per check, the lock kept, the recheck
delay the work queue is given; then the way out, and the cleanup finishes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from canary_operator.api.timestamps import iso
from canary_operator.engine.cleanup_blocked import RECHECK_MAX
from canary_operator.kube import objects
from canary_operator.kube.api import JsonObj
from canary_operator.reconcile import views
from canary_operator.reconcile.reconciler import Reconciler
from tests.harness.reconcile_fixtures import (
    EVENTS,
    LEASES,
    NAME,
    NS,
    PODS,
    UID,
    Cluster,
    fake_cluster,
)

POD = "web-canary-7c9d5-q8x2m"
HOLD = "example.com/hold"


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with fake_cluster() as made:
        yield made


def canary_pod(deleted_ago: float | None, finalizers: list[str], **extra: Any) -> JsonObj:
    """A canary pod as the API server has it: deleted `deleted_ago` seconds ago (its
    deletionTimestamp; None: not deleted), held by `finalizers`."""
    meta: JsonObj = {
        "name": POD,
        "namespace": NS,
        "labels": {
            objects.TARGET_LABEL: "web",
            objects.ROLE_LABEL: "canary",
            objects.ROLLOUT_LABEL: NAME,
        },
        "finalizers": finalizers,
    }
    if deleted_ago is not None:
        meta["deletionTimestamp"] = iso(datetime.now(UTC) - timedelta(seconds=deleted_ago))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": "n1"},
        **extra,
    }


async def events(cluster: Cluster) -> list[JsonObj]:
    await cluster.deps.events.flush()
    return list(await cluster.kube.list(EVENTS))


def verified(body: JsonObj) -> JsonObj:
    return next(c for c in body["status"]["conditions"] if c["type"] == "CleanupVerified")


def lease_holder(cluster: Cluster) -> str | None:
    lease = cluster.kube.stored(f"{LEASES}/cro-lock-web")
    assert lease is not None
    holder = lease["spec"].get("holderIdentity")
    return str(holder) if holder else None


async def test_a_pod_that_will_not_go_blocks_the_cleanup_then_the_way_out_ends_it(
    cluster: Cluster,
) -> None:
    await cluster.cleaning_up(deleted=True)
    holder = lease_holder(cluster)
    assert holder is not None and UID in holder
    cluster.kube.put(f"{PODS}/{POD}", canary_pod(60, [HOLD]))
    cluster.clear()

    delay = await Reconciler(cluster.deps).reconcile(NS, NAME)
    body = cluster.rollout()
    condition = verified(body)
    assert (condition["status"], condition["reason"]) == ("False", "CleanupBlocked")
    assert f"pod/{POD}" in condition["message"] and HOLD in condition["message"]
    assert f"kubectl patch pod {POD} -n {NS} --type=json" in condition["message"]
    assert body["status"]["phase"] == "CleaningUp"
    assert body["status"]["cleanup"]["blockedBy"][0].startswith(f"pod/{POD}: deletion due ")
    # 60 s overdue: the next look in 30 s (RECHECK_MAX), not in 1 s.
    assert delay == RECHECK_MAX
    said = [e for e in await events(cluster) if e["reason"] == "CleanupBlocked"]
    assert len(said) == 1 and said[0]["type"] == "Warning"
    # The pod is already going: no DELETE again, nothing forced; the lock is kept.
    writes = [r for r in cluster.kube.requests if not r.startswith(("GET", "POST events"))]
    assert writes == [f"PUT canaryrollouts/{NAME}/status"]
    assert lease_holder(cluster) == holder

    # Another look finds nothing new: no status write, no second Event.
    cluster.clear()
    assert await Reconciler(cluster.deps).reconcile(NS, NAME) == RECHECK_MAX
    assert [r for r in cluster.kube.requests if not r.startswith("GET")] == []
    assert [e["reason"] for e in await events(cluster)].count("CleanupBlocked") == 1

    # The way out the condition names: the finalizer removed, the pod goes.
    await cluster.kube.merge_patch(f"{PODS}/{POD}", {"metadata": {"finalizers": None}})
    assert cluster.kube.stored(f"{PODS}/{POD}") is None
    await Reconciler(cluster.deps).reconcile(NS, NAME)
    body = cluster.rollout()
    assert body["status"]["phase"] == "Failed"
    assert (verified(body)["status"], verified(body)["reason"]) == ("True", "Verified")
    assert "blockedBy" not in body["status"]["cleanup"]
    reasons = [e["reason"] for e in await events(cluster)]
    assert {"CleanupUnblocked", "CleanupFinished", "LockReleased"} <= set(reasons)
    assert reasons.count("CleanupBlocked") == 1
    assert lease_holder(cluster) is None


async def test_a_pod_in_its_grace_period_is_waited_for_without_a_word(cluster: Cluster) -> None:
    await cluster.cleaning_up(deleted=True)
    cluster.kube.put(f"{PODS}/{POD}", canary_pod(-10, [HOLD]))  # due in 10 s
    delay = await Reconciler(cluster.deps).reconcile(NS, NAME)
    assert verified(cluster.rollout())["reason"] == "CleanupRunning"
    assert delay is not None and 9 <= delay <= 10


def test_views_read_why_a_pod_stays() -> None:
    evicted = canary_pod(
        30,
        [],
        status={
            "conditions": [
                {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"}
            ]
        },
    )
    gone = canary_pod(30, [], status={"reason": "NodeLost"})
    live = canary_pod(None, [])
    found = views.lingering([("pod", evicted), ("pod", gone), ("pod", live), ("service", None)])
    assert [(o.kind, o.name, o.node) for o in found] == [("pod", POD, "n1"), ("pod", POD, "n1")]
    assert found[0].node_problem == "evicted because node n1 is not ready or unreachable"
    assert found[1].node_problem == "node n1 was lost"
    assert found[0].finalizers == ()
