"""The replicas router reports the weight of READY pods: a canary whose pods cannot
start takes no traffic, and the WEIGHT shown must not say it does (issue 10)."""

from __future__ import annotations

import copy
import json
from typing import Any, cast

import pytest

from canary_operator.engine.types import StableRecord
from canary_operator.kube.api import Conflict, Kube
from canary_operator.kube.objects import STABLE_REPLICAS
from canary_operator.traffic.replicas import (
    ReplicasRouter,
    RestoresStable,
    scale_stable,
    stable_record,
)


class Deployments:
    """Just enough of Kube for the router's reads."""

    def __init__(self, **ready: tuple[int, int]) -> None:
        self.bodies = {
            name: {"spec": {"replicas": want}, "status": {"readyReplicas": up}}
            for name, (want, up) in ready.items()
        }

    async def get(self, resource_path: str) -> dict[str, Any] | None:
        return self.bodies.get(resource_path.rsplit("/", 1)[-1])


def router(kube: Deployments) -> ReplicasRouter:
    return ReplicasRouter(cast(Kube, kube), "ns", "web", "web_canary")


async def test_requested_but_not_ready_canary_pods_take_no_traffic() -> None:
    read = await router(Deployments(web=(3, 3), web_canary=(1, 0))).read()
    assert read.weight == 0


async def test_ready_canary_pods_take_their_share() -> None:
    assert (await router(Deployments(web=(3, 3), web_canary=(1, 1))).read()).weight == 25
    # Half ready: only the ready one counts.
    assert (await router(Deployments(web=(2, 2), web_canary=(2, 1))).read()).weight == 33


async def test_no_canary_no_weight() -> None:
    assert (await router(Deployments(web=(3, 3))).read()).weight == 0


# ------------------------------------------------ mode Shift: the stable's own size


class Cluster:
    """Deployments by name, merge patches applied as the API server does (a
    resourceVersion in the patch is a precondition; null removes a key)."""

    def __init__(self, **deployments: dict[str, Any]) -> None:
        self.bodies = deployments
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.version = 1

    async def get(self, resource_path: str) -> dict[str, Any] | None:
        body = self.bodies.get(resource_path.rsplit("/", 1)[-1])
        return copy.deepcopy(body) if body is not None else None

    async def merge_patch(self, resource_path: str, patch: dict[str, Any]) -> dict[str, Any]:
        name = resource_path.rsplit("/", 1)[-1]
        body = self.bodies[name]
        precondition = patch.get("metadata", {}).get("resourceVersion")
        if precondition is not None and precondition != body["metadata"]["resourceVersion"]:
            raise Conflict("changed")
        self.patches.append((name, copy.deepcopy(patch)))
        merge(body, patch)
        self.version += 1
        body["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(body)


def merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            merge(target.setdefault(key, {}), value)
        else:
            target[key] = value


def deployment(
    name: str, replicas: int, ready: int, record: dict[str, int] | None = None
) -> dict[str, Any]:
    annotations = {STABLE_REPLICAS: json.dumps(record)} if record else {}
    return {
        "metadata": {
            "name": name,
            "resourceVersion": "1",
            "generation": 1,
            "annotations": annotations,
        },
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": 1, "readyReplicas": ready},
    }


def shifted_router(cluster: Cluster) -> RestoresStable:
    kube = cast(Kube, cluster)
    return RestoresStable(ReplicasRouter(kube, "ns", "web", "web-canary"), kube, "ns", "web", "r/3")


async def test_scale_stable_writes_the_replicas_and_the_record_in_one_conditional_patch() -> None:
    cluster = Cluster(web=deployment("web", 4, 4))
    await scale_stable(cast(Kube, cluster), "ns", "web", 2, 4, 1, "r/3")
    [(name, patch)] = cluster.patches
    assert name == "web" and patch["spec"] == {"replicas": 2}
    assert patch["metadata"]["resourceVersion"] == "1"  # fencing: the version just read
    record = json.loads(patch["metadata"]["annotations"][STABLE_REPLICAS])
    assert record == {"original": 4, "written": 2, "floor": 1, "by": "r/3"}
    assert stable_record(cluster.bodies["web"]) == StableRecord(4, 2, 1)
    await scale_stable(cast(Kube, cluster), "ns", "web", 2, 4, 1, "r/3")
    assert len(cluster.patches) == 1, "nothing to write when it is already so"


async def test_reset_restores_the_stable_then_waits_for_its_pods_then_removes_the_canary() -> None:
    record = {"original": 4, "written": 1, "floor": 1}
    cluster = Cluster(
        web=deployment("web", 1, 1, record), **{"web-canary": deployment("web-canary", 3, 3)}
    )
    router = shifted_router(cluster)
    view = await router.read()
    assert view.weight == 75 and not view.reset
    assert view.restoring == "waiting for stable Deployment web to be scaled back to 4 replicas"

    await router.reset()  # 1: the stable's replicas, the canary untouched
    assert [(n, p["spec"]) for n, p in cluster.patches] == [("web", {"replicas": 4})]
    assert cluster.bodies["web-canary"]["spec"]["replicas"] == 3
    assert "1/4 pods" in str((await router.read()).restoring)

    await router.reset()  # 2: its pods are not ready yet: nothing
    assert len(cluster.patches) == 1

    cluster.bodies["web"]["status"]["readyReplicas"] = 4
    await router.reset()  # 3: the record goes, then the canary to zero, in that order
    assert [n for n, _ in cluster.patches] == ["web", "web", "web-canary"]
    assert STABLE_REPLICAS not in cluster.bodies["web"]["metadata"]["annotations"]
    assert cluster.bodies["web-canary"]["spec"]["replicas"] == 0
    # Asked again while the canary's pods go (each reconcile of the cleanup): the
    # canary already reads 0 replicas, so nothing more is written (nor fenced).
    await router.reset()
    assert [n for n, _ in cluster.patches] == ["web", "web", "web-canary"]
    cluster.bodies["web-canary"]["status"]["readyReplicas"] = 0
    assert (await router.read()).reset


async def test_a_count_written_by_someone_else_is_what_the_stable_is_restored_to() -> None:
    # the operator wrote 1 (of 4); then `kubectl scale --replicas=6` or an HPA
    record = {"original": 4, "written": 1, "floor": 1}
    cluster = Cluster(web=deployment("web", 6, 6, record))
    router = shifted_router(cluster)
    await router.reset()
    assert cluster.bodies["web"]["spec"]["replicas"] == 6  # kept, no write of replicas
    assert [p["metadata"]["annotations"] for _, p in cluster.patches] == [{STABLE_REPLICAS: None}]


async def test_a_stable_that_cannot_create_its_pods_needs_only_its_floor() -> None:
    record = {"original": 4, "written": 4, "floor": 2}
    body = deployment("web", 4, 2, record)
    cluster = Cluster(web=body, **{"web-canary": deployment("web-canary", 2, 2)})
    router = shifted_router(cluster)
    await router.reset()
    assert cluster.patches == [], "2 of 4 ready: the canary stays"
    body["status"]["conditions"] = [
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate"}
    ]
    await router.reset()  # quota: the canary's pods may hold what the stable needs
    assert cluster.bodies["web-canary"]["spec"]["replicas"] == 0
    body["status"]["readyReplicas"] = 1
    body["metadata"]["annotations"] = {STABLE_REPLICAS: json.dumps(record)}
    cluster.patches.clear()
    await router.reset()
    assert cluster.patches == [], "below the floor: still waiting"


async def test_a_changed_target_refuses_the_write() -> None:
    cluster = Cluster(web=deployment("web", 1, 1, {"original": 3, "written": 1, "floor": 1}))
    real_get = cluster.get

    async def stale_get(resource_path: str) -> dict[str, Any] | None:
        body = await real_get(resource_path)
        if body is not None:
            body["metadata"]["resourceVersion"] = "0"  # someone wrote since
        return body

    cluster.get = stale_get  # type: ignore[method-assign]
    with pytest.raises(Conflict):
        await shifted_router(cluster).reset()


@pytest.mark.parametrize(
    "raw",
    ["", "not json", "[1]", '{"original": 3}', '{"original": -1, "written": 1, "floor": 1}'],
)
def test_an_unreadable_record_is_no_record(raw: str) -> None:
    body = deployment("web", 1, 1)
    body["metadata"]["annotations"] = {STABLE_REPLICAS: raw}
    assert stable_record(body) is None


async def test_without_a_record_the_wrapper_is_the_router() -> None:
    cluster = Cluster(web=deployment("web", 3, 3), **{"web-canary": deployment("web-canary", 1, 1)})
    router = shifted_router(cluster)
    view = await router.read()
    assert view.weight == 25 and view.restoring is None
    await router.reset()
    assert [n for n, _ in cluster.patches] == ["web-canary"]


async def test_a_write_that_loses_one_race_is_made_again_from_a_fresh_read() -> None:
    # the Deployment controller wrote the status between our read and our patch
    cluster = Cluster(web=deployment("web", 4, 4))
    real_patch = cluster.merge_patch
    raced: list[str] = []

    async def racing_patch(resource_path: str, patch: dict[str, Any]) -> dict[str, Any]:
        if not raced:
            raced.append(resource_path)
            cluster.bodies["web"]["metadata"]["resourceVersion"] = "7"
        return await real_patch(resource_path, patch)

    cluster.merge_patch = racing_patch  # type: ignore[method-assign]
    await scale_stable(cast(Kube, cluster), "ns", "web", 2, 4, 1, "r/3")
    assert raced and cluster.bodies["web"]["spec"]["replicas"] == 2
    [(_, patch)] = cluster.patches
    assert patch["metadata"]["resourceVersion"] == "7"  # conditional on the fresh read
