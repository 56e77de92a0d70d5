"""RolloutIndex.targeting: the rollouts of one target Deployment (a Deployment's watch
event wakes them), found without walking every rollout in the index: with 10,000
rollouts of 1,000 targets, each event of a rolling Deployment walked all 10,000
(issue 26: nothing on the way to one rollout grows with the others)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from canary_operator.index import RolloutIndex


class NoWalk(dict[Any, Any]):
    def __iter__(self) -> Iterator[Any]:
        raise AssertionError("walked every rollout")

    def items(self) -> Any:
        raise AssertionError("walked every rollout")

    def values(self) -> Any:
        raise AssertionError("walked every rollout")

    def keys(self) -> Any:
        raise AssertionError("walked every rollout")


def body(name: str, target: str, generation: int = 1, ns: str = "ns") -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": ns,
            "name": name,
            # Specs are parsed once per (uid, generation): one uid per spec here.
            "uid": f"uid-{ns}-{name}-{target}",
            "generation": generation,
            "creationTimestamp": "2026-12-08T01:00:00Z",
        },
        "spec": {"target": {"deployment": target}, "steps": [{"canary": {}}]},
        "status": {"phase": "Succeeded"},
    }


def names(index: RolloutIndex, target: str, ns: str = "ns") -> list[str]:
    return [c.name for c in index.targeting(ns, target)]


def test_the_rollouts_of_a_target_are_found_without_walking_the_others() -> None:
    index = RolloutIndex()
    for i in range(2000):
        index.update(body(f"old-{i:04d}", f"t{i % 200}"))
    index.update(body("web-v2", "web"))
    index.update(body("web-v1", "web"))
    index.update(body("web-v2", "web", ns="other"))
    index._entries = NoWalk(index._entries)
    assert names(index, "web") == ["web-v1", "web-v2"]
    assert names(index, "web", ns="other") == ["web-v2"]
    assert names(index, "t7") == [f"old-{i:04d}" for i in range(7, 2000, 200)]
    assert names(index, "nobody") == []


def test_a_rollout_moved_to_another_target_or_deleted_leaves_its_old_target() -> None:
    index = RolloutIndex()
    index.update(body("web-v2", "web"))
    index.update(body("api-v1", "api"))
    moved = body("web-v2", "api", generation=2)
    moved["metadata"]["uid"] = "uid-ns-web-v2-web"  # the same rollout, its spec changed
    index.update(moved)
    assert names(index, "web") == []
    assert names(index, "api") == ["api-v1", "web-v2"]
    index.update(body("api-v1", "api"), deleted=True)
    assert names(index, "api") == ["web-v2"]
    unreadable = body("web-v2", "api", generation=3)
    unreadable["metadata"]["uid"] = "uid-ns-web-v2-web"
    unreadable["spec"] = {"target": {}}  # left out of the index's entries
    index.update(unreadable)
    assert names(index, "api") == []
    assert index._by_target == {}
