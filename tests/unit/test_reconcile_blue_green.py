"""A blue-green through whole reconciles on the in-memory API (reconcile/canary.py's
preview objects, traffic/service_switch.py's switch): the preview at the target's full
size beside it, reached only by the preview Service; the active Service switched to the
preview's pods once they are all ready, and back by the cleanup of a failure."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from canary_operator.kube import objects
from canary_operator.traffic.service_switch import ORIGINAL_SELECTOR
from tests.harness.reconcile_fixtures import (
    DEPLOYMENTS,
    SELECTOR,
    SERVICES,
    Cluster,
    fake_cluster,
    rollout_body,
)

PREVIEW = f"{DEPLOYMENTS}/web-canary"
ACTIVE = f"{SERVICES}/web"
ROLE = {objects.TARGET_LABEL: "web", objects.ROLE_LABEL: "canary"}  # the preview's pods


def bg_spec(**blue_green: Any) -> dict[str, Any]:
    return {
        "target": {"deployment": "web", "service": "web"},
        "images": [{"container": "app", "image": "web:2"}],
        "strategy": {"blueGreen": {"previewService": "web-preview", **blue_green}},
    }


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with fake_cluster() as made:
        yield made


def stored(cluster: Cluster, where: str) -> dict[str, Any]:
    body = cluster.kube.stored(where)
    assert body is not None, where
    return body


def ready(cluster: Cluster, where: str) -> None:
    """The Deployment controller's report: all its pods ready."""
    body = stored(cluster, where)
    n = body["spec"]["replicas"]
    body["metadata"]["generation"] = 1
    body["status"] = {
        "observedGeneration": 1,
        "replicas": n,
        "readyReplicas": n,
        "availableReplicas": n,
        "updatedReplicas": n,
    }
    cluster.kube.put(where, body)


async def started(cluster: Cluster, **blue_green: Any) -> dict[str, Any]:
    cluster.with_target(replicas=3)
    cluster.add_rollout(rollout_body(bg_spec(**blue_green)))
    body = await cluster.reconcile()
    assert body["status"]["phase"] == "Progressing", body["status"]
    return body


async def test_the_preview_runs_at_full_size_reached_only_by_the_preview_service(
    cluster: Cluster,
) -> None:
    await started(cluster)
    preview = stored(cluster, PREVIEW)
    assert preview["spec"]["replicas"] == 3  # the target's size
    labels = preview["spec"]["template"]["metadata"]["labels"]
    # None of the active Service's selector: it does not reach the preview's pods.
    assert not set(SELECTOR) & set(labels)
    assert preview["spec"]["template"]["spec"]["containers"][0]["image"] == "web:2"
    service = stored(cluster, f"{SERVICES}/web-preview")
    assert service["spec"]["selector"] == ROLE
    assert stored(cluster, ACTIVE)["spec"]["selector"] == SELECTOR
    assert cluster.kube.stored(f"{SERVICES}/web-canary") is None


async def test_the_switch_waits_for_the_preview_then_points_the_active_service_at_it(
    cluster: Cluster,
) -> None:
    await started(cluster, scaleDownDelaySeconds=3600)
    await cluster.reconcile()
    assert stored(cluster, ACTIVE)["spec"]["selector"] == SELECTOR  # pods not ready yet
    ready(cluster, PREVIEW)
    await cluster.reconcile()
    body = await cluster.reconcile()
    active = stored(cluster, ACTIVE)
    assert active["spec"]["selector"] == ROLE
    assert active["metadata"]["annotations"][ORIGINAL_SELECTOR]
    steps = body["status"]["steps"]
    assert [s["kind"] for s in steps] == ["preview", "switch", "promote"]
    assert steps[1]["phase"] == "Succeeded" and body["status"]["weight"] == 100
    # The target is untouched for the delay: the previous version still serves a
    # switch back.
    target = stored(cluster, f"{DEPLOYMENTS}/web")["spec"]["template"]["spec"]
    assert target["containers"][0]["image"] == "web:1"
    # An abort now: the cleanup switches back, then the preview goes.
    now = cluster.rollout()
    now["metadata"]["generation"] = 2
    cluster.add_rollout({**now, "spec": {**now["spec"], "abort": True}})
    for _ in range(6):
        body = await cluster.reconcile()
        if body["status"]["phase"] == "Aborted":
            break
    assert body["status"]["phase"] == "Aborted", body["status"]
    active = stored(cluster, ACTIVE)
    assert active["spec"]["selector"] == SELECTOR
    assert ORIGINAL_SELECTOR not in (active["metadata"].get("annotations") or {})
    assert cluster.kube.stored(PREVIEW) is None
    assert cluster.kube.stored(f"{SERVICES}/web-preview") is None


async def test_a_canary_after_a_blue_green_left_switched_switches_back_first(
    cluster: Cluster,
) -> None:
    """A blue-green's rollout gone without its cleanup (finalizer removed by hand): the
    Service still selects its preview's pods. The next rollout, a canary, recovers the
    target: the Service back on the target's pods before the preview is deleted."""
    await started(cluster, scaleDownDelaySeconds=3600)
    ready(cluster, PREVIEW)
    await cluster.reconcile()
    await cluster.reconcile()
    assert stored(cluster, ACTIVE)["spec"]["selector"] == ROLE
    gone = cluster.rollout()
    cluster.kube.store.objects = {
        k: v
        for k, v in cluster.kube.store.objects.items()
        if k[1] not in ("canaryrollouts", "leases")
    }
    cluster.deps.index.update(gone, deleted=True)
    canary_spec = {
        "target": {"deployment": "web", "service": "web"},
        "images": [{"container": "app", "image": "web:3"}],
        "steps": [{"canary": {"replicas": 1}}, {"promote": {}}],
    }
    cluster.add_rollout(rollout_body(canary_spec, name="web-v3", uid="uid-v3"))
    cluster.clear()
    for _ in range(10):
        body = await cluster.reconcile("web-v3")
        if (cluster.kube.stored(PREVIEW) or {}).get("spec", {}).get("replicas") == 0:
            ready(cluster, PREVIEW)  # scaled to zero by the replicas router's reset
        if body["status"].get("phase") == "Progressing":
            break
    assert body["status"]["phase"] == "Progressing", body["status"].get("message")
    writes = [r for r in cluster.kube.requests if r.startswith(("PATCH", "DELETE"))]
    back = writes.index("PATCH services/web")
    preview_writes = [i for i, w in enumerate(writes) if w.endswith("deployments/web-canary")]
    assert preview_writes and back < min(preview_writes), writes
    active = stored(cluster, ACTIVE)
    assert active["spec"]["selector"] == SELECTOR
    assert ORIGINAL_SELECTOR not in (active["metadata"].get("annotations") or {})
