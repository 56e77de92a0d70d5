"""Leader election between replicas, against an in-memory API with resourceVersion
preconditions (the only API behaviour the protocol relies on)."""

from __future__ import annotations

import copy
from typing import Any, cast

from canary_operator.kube.api import Kube
from canary_operator.leader import LeaderElector
from tests.harness.fake_api import Clock, FakeApi


def elector(api: FakeApi, clock: Clock, name: str, events: list[str]) -> LeaderElector:
    return LeaderElector(
        cast(Kube, api),
        "ops",
        "leader",
        on_started=lambda: events.append(f"{name} started"),
        on_lost=lambda: events.append(f"{name} lost"),
        identity=name,
        clock=clock,
    )


async def test_one_leader_and_takeover_after_expiry() -> None:
    api, clock, events = FakeApi(), Clock(), []
    a, b = elector(api, clock, "a", events), elector(api, clock, "b", events)
    assert await a.try_once() is True
    assert await b.try_once() is False
    assert events == ["a started"]
    # a renews: b sees a new resourceVersion each time and never takes over.
    for _ in range(5):
        clock.now += 10
        assert await a.try_once() is True
        assert await b.try_once() is False
    # a stops renewing (crashed): b waits a whole lease duration (15 s) on its own
    # clock, counted from when it first saw a's last renewal.
    clock.now += 5
    assert await b.try_once() is False
    clock.now += 9
    assert await b.try_once() is False
    clock.now += 1
    assert await b.try_once() is True
    assert events == ["a started", "b started"]
    lease = await api.get("/apis/coordination.k8s.io/v1/namespaces/ops/leases/leader")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "b"
    assert lease["spec"]["leaseTransitions"] == 1
    # a comes back: it sees it was replaced and must stop at once.
    a.leading = True
    assert await a.try_once() is False
    assert events[-1] == "a lost"


async def test_graceful_stop_hands_over_at_once() -> None:
    api, clock, events = FakeApi(), Clock(), []
    a, b = elector(api, clock, "a", events), elector(api, clock, "b", events)
    assert await a.try_once()
    await a.stop()
    assert await b.try_once() is True  # no wait for expiry: the Lease was released
    assert events == ["a started", "b started"]


async def test_a_lost_race_is_not_leadership() -> None:
    api, clock, events = FakeApi(), Clock(), []
    a, b = elector(api, clock, "a", events), elector(api, clock, "b", events)
    assert await a.try_once()
    await a.stop()
    # Both see the free Lease; only the first conditional write wins.
    lease = await api.get("/apis/coordination.k8s.io/v1/namespaces/ops/leases/leader")
    assert lease is not None
    stale = copy.deepcopy(lease)
    assert await b.try_once() is True
    c = elector(api, clock, "c", events)
    original_get = api.get

    async def stale_get(path: str) -> dict[str, Any] | None:
        return copy.deepcopy(stale)

    api.get = stale_get  # type: ignore[method-assign]
    assert await c.try_once() is False
    api.get = original_get  # type: ignore[method-assign]
    assert "c started" not in events
