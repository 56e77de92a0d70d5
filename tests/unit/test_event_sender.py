"""Events posted by a reconcile are written by a background sender (kube/events.py
EventRecorder.post): the reconcile does not wait on the writes, each Event keeps the
moment it happened, writes keep their order (a count's patch after its create), and
stop() writes what is still waiting."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from canary_operator.kube import events as events_module
from canary_operator.kube.api import Kube
from canary_operator.kube.events import EventRecorder


class GatedEvents:
    """An API that takes Event writes only while its gate is open."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.writes: list[tuple[str, str, dict[str, Any]]] = []

    async def create(self, resource_path: str, body: dict[str, Any]) -> dict[str, Any]:
        await self.gate.wait()
        self.writes.append(("create", resource_path, body))
        return body

    async def merge_patch(self, resource_path: str, patch: dict[str, Any]) -> dict[str, Any]:
        await self.gate.wait()
        self.writes.append(("patch", resource_path, patch))
        return patch


def recorder(api: GatedEvents) -> EventRecorder:
    return EventRecorder(cast(Kube, api))


def post(rec: EventRecorder, reason: str, message: str = "m") -> None:
    rec.post("ns", "web-a", "u1", reason, message, False)


async def test_post_returns_before_the_write_and_keeps_the_moment_it_happened() -> None:
    api = GatedEvents()
    rec = recorder(api)
    before = datetime.now(UTC)
    post(rec, "CleanupFinished")
    post(rec, "LockReleased")
    await asyncio.sleep(0)  # the sender runs, and waits on the closed gate
    assert api.writes == []
    api.gate.set()
    await asyncio.wait_for(rec.flush(), 5)
    assert [(w[0], w[2]["reason"]) for w in api.writes] == [
        ("create", "CleanupFinished"),
        ("create", "LockReleased"),
    ]
    times = [datetime.strptime(w[2]["eventTime"], "%Y-%m-%dT%H:%M:%S.%f%z") for w in api.writes]
    # Stamped when posted, not when written: before the gate opened, in posting order.
    assert before <= times[0] <= times[1]
    await rec.stop()


async def test_a_repeat_is_patched_after_its_create() -> None:
    api = GatedEvents()
    rec = recorder(api)
    for _ in range(3):
        post(rec, "RetryingAfterError", "connection refused")
    api.gate.set()
    await asyncio.wait_for(rec.flush(), 5)
    kinds = [w[0] for w in api.writes]
    assert kinds == ["create", "patch", "patch"]
    name = api.writes[0][2]["metadata"]["name"]
    assert all(w[1].endswith(f"/events/{name}") for w in api.writes[1:])
    assert [w[2]["count"] for w in api.writes[1:]] == [2, 3]
    await rec.stop()


async def test_stop_writes_what_is_waiting() -> None:
    api = GatedEvents()
    api.gate.set()
    rec = recorder(api)
    post(rec, "Succeeded")
    await rec.stop()
    assert [w[2]["reason"] for w in api.writes] == ["Succeeded"]


async def test_a_stalled_api_server_costs_dropped_events_not_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(events_module, "MAX_PENDING", 3)
    api = GatedEvents()
    rec = recorder(api)
    for n in range(6):
        post(rec, "StepStarted", f"step {n}")
        await asyncio.sleep(0)
    # One is being written (held at the gate), three wait, the rest are dropped.
    assert rec.dropped == 2
    api.gate.set()
    await asyncio.wait_for(rec.flush(), 5)
    assert [w[2]["message"] for w in api.writes] == [f"step {n}" for n in range(4)]
    await rec.stop()
