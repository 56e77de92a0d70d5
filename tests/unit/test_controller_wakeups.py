"""Targeted wake-ups (controller.py): a Lease or rollout change wakes who can act on it
at once, the other waiters later (coalesced), and a renewal wakes nobody."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client

from canary_operator.controller import QUEUE_REFRESH_SECONDS, Controller
from canary_operator.kube import objects
from canary_operator.kube.api import Kube
from canary_operator.lock.lease import HOLDER_ANNOTATION, LOCK_KEY_ANNOTATION, lease_name

NS = "ns"


class RecordingQueue:
    def __init__(self) -> None:
        self.now: list[str] = []
        self.later: list[tuple[str, float]] = []

    def add(self, key: tuple[str, str], delay: float = 0.0) -> None:
        if delay > 0:
            self.later.append((key[1], delay))
        else:
            self.now.append(key[1])

    def clear(self) -> None:
        self.now.clear()
        self.later.clear()


def rollout(name: str, created: str, phase: str, rv: int = 1) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-{name}",
            "creationTimestamp": created,
            "resourceVersion": str(rv),
        },
        "spec": {
            "target": {"deployment": "web"},
            "images": [{"container": "app", "image": "web:2"}],
            "steps": [{"canary": {"replicas": 1}}],
        },
        "status": {"phase": phase},
    }


def lease(holder: str | None, transitions: int, rv: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": lease_name("web"),
            "namespace": NS,
            "resourceVersion": str(rv),
            "annotations": {
                LOCK_KEY_ANNOTATION: "web",
                **({HOLDER_ANNOTATION: "a"} if holder else {}),
            },
        },
        "spec": {"holderIdentity": holder, "leaseTransitions": transitions},
    }


@pytest.fixture
async def controller() -> AsyncIterator[Controller]:
    api_client = client.ApiClient()
    c = Controller(Kube(api_client), namespaces=(NS,))
    c.queue = RecordingQueue()  # type: ignore[assignment]
    yield c
    await api_client.close()


async def test_a_lock_handoff_wakes_the_head_now_and_the_rest_later(controller: Controller) -> None:
    queue: RecordingQueue = controller.queue  # type: ignore[assignment]
    controller.on_rollout("ADDED", rollout("a", "2026-01-01T00:00:00Z", "Progressing"))
    for i, name in enumerate("bcde"):
        controller.on_rollout("ADDED", rollout(name, f"2026-01-01T00:00:0{i + 1}Z", "Queued"))
    controller.on_lease("ADDED", lease("uid-a", 1, 10))
    queue.clear()

    controller.on_lease("MODIFIED", lease("uid-a", 1, 11))  # a renewal
    assert queue.now == [] and queue.later == []

    # a ended and released: b is next; c, d, e only learn their new positions later.
    controller.on_rollout("MODIFIED", rollout("a", "2026-01-01T00:00:00Z", "Succeeded", rv=2))
    queue.clear()
    controller.on_lease("MODIFIED", lease(None, 1, 12))
    assert set(queue.now) == {"b", "e"}  # the head, and the newest (for Supersede)
    assert sorted(queue.later) == [(n, QUEUE_REFRESH_SECONDS) for n in "cd"]
    assert "a" not in queue.now  # ended: nothing to do

    queue.clear()
    controller.on_lease("MODIFIED", lease("uid-b", 2, 13))  # b took it
    assert "b" in queue.now and "c" in queue.now  # the holder, and the new head
    assert "d" in [n for n, _ in queue.later]


async def test_a_rollout_whose_earlier_run_holds_the_lock_is_woken_in_its_place(
    controller: Controller,
) -> None:
    """Run 1 of a still holds the Lease (its release lost); a's run 2 waits, applied
    before b: a is the head and woken at once, as lock/lease.py ranks it, not left out
    as if it held the lock."""
    queue: RecordingQueue = controller.queue  # type: ignore[assignment]
    a = rollout("a", "2026-01-01T00:00:00Z", "Queued")
    a["status"]["run"] = 2
    controller.on_rollout("ADDED", a)
    controller.on_rollout("ADDED", rollout("b", "2026-01-01T00:00:01Z", "Queued"))
    controller.on_rollout("ADDED", rollout("c", "2026-01-01T00:00:02Z", "Queued"))
    queue.clear()
    controller.on_lease("ADDED", lease("uid-a/1", 1, 10))
    assert sorted(queue.now) == ["a", "c"]  # the head, and the newest waiter (Supersede)
    assert [n for n, _ in queue.later] == ["b"]  # second in line: later
    queue.clear()
    controller.on_lease("MODIFIED", lease("uid-a/2", 2, 11))  # run 2 took it
    assert sorted(queue.now) == ["a", "b", "c"]  # the holder, the new head, the newest


async def test_a_status_change_without_a_new_phase_wakes_only_that_rollout(
    controller: Controller,
) -> None:
    queue: RecordingQueue = controller.queue  # type: ignore[assignment]
    controller.on_rollout("ADDED", rollout("a", "2026-01-01T00:00:00Z", "Progressing"))
    controller.on_rollout("ADDED", rollout("b", "2026-01-01T00:00:01Z", "Queued"))
    controller.on_lease("ADDED", lease("uid-a", 1, 10))
    queue.clear()
    body = rollout("a", "2026-01-01T00:00:00Z", "Progressing", rv=5)
    body["status"]["currentStep"] = 1
    controller.on_rollout("MODIFIED", body)
    assert queue.now == ["a"] and queue.later == []
    # A phase change is news for the others (the holder's phase shows in their status).
    controller.on_rollout("MODIFIED", rollout("a", "2026-01-01T00:00:00Z", "CleaningUp", rv=6))
    assert "b" in queue.now


async def test_a_watch_event_older_than_the_index_is_ignored(controller: Controller) -> None:
    controller.on_rollout("ADDED", rollout("a", "2026-01-01T00:00:00Z", "Progressing", rv=7))
    controller.index.update(rollout("a", "2026-01-01T00:00:00Z", "CleaningUp", rv=9))  # our write
    controller.on_rollout("MODIFIED", rollout("a", "2026-01-01T00:00:00Z", "Progressing", rv=8))
    body = controller.index.body(NS, "a")
    assert body is not None and body["status"]["phase"] == "CleaningUp"


async def test_a_target_change_wakes_its_run_now_and_the_others_later(
    controller: Controller,
) -> None:
    """A rolling target sends many events: the run under way acts on each; waiting and
    ended rollouts of that target (status.live only) catch up once, coalesced."""
    queue: RecordingQueue = controller.queue  # type: ignore[assignment]
    controller.on_rollout("ADDED", rollout("old", "2026-01-01T00:00:00Z", "Succeeded"))
    controller.on_rollout("ADDED", rollout("a", "2026-01-01T00:00:01Z", "Progressing"))
    controller.on_rollout("ADDED", rollout("b", "2026-01-01T00:00:02Z", "Queued"))
    controller.on_rollout("ADDED", rollout("new", "2026-01-01T00:00:03Z", "Pending"))
    queue.clear()
    target = {"metadata": {"name": "web", "namespace": NS, "labels": {}}}
    controller.on_deployment(target)
    assert sorted(queue.now) == ["a", "new"]
    assert sorted(queue.later) == [("b", QUEUE_REFRESH_SECONDS), ("old", QUEUE_REFRESH_SECONDS)]


async def test_a_canary_pod_gone_wakes_only_a_cleanup_waiting_for_it(
    controller: Controller,
) -> None:
    """A cleanup blocked by a pod that would not go looks again at most every 30 s; the
    pod's deletion wakes it at once. Pod events of a run under way wake nobody."""
    queue: RecordingQueue = controller.queue  # type: ignore[assignment]
    controller.on_rollout("ADDED", rollout("a", "2026-01-01T00:00:01Z", "CleaningUp"))
    controller.on_rollout("ADDED", rollout("b", "2026-01-01T00:00:02Z", "Progressing"))
    queue.clear()

    def pod(owner: str) -> dict[str, Any]:
        labels = {objects.ROLE_LABEL: "canary", objects.ROLLOUT_LABEL: owner}
        return {"metadata": {"name": f"{owner}-pod", "namespace": NS, "labels": labels}}

    controller.on_pod("MODIFIED", pod("a"))
    controller.on_pod("DELETED", pod("b"))
    controller.on_pod("DELETED", pod("gone"))
    assert queue.now == [] and queue.later == []
    controller.on_pod("DELETED", pod("a"))
    assert queue.now == ["a"] and queue.later == []
