"""The Lease protocol against an in-memory API that enforces resourceVersion
preconditions like the real one (the real API is exercised by the e2e suite)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from canary_operator.api.models import Phase
from canary_operator.kube.api import Conflict
from canary_operator.lock.lease import LEASE_DURATION_SECONDS, LeaseLock, lease_name
from canary_operator.lock.queue import Candidate

NS = "ns"


class FakeKube:
    """Leases only: GET/POST/PUT with optimistic concurrency."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.rv = 0

    def _bump(self, body: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        body["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(body)

    async def get(self, path: str) -> dict[str, Any] | None:
        found = self.objects.get(path)
        return copy.deepcopy(found) if found else None

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        full = f"{path}/{body['metadata']['name']}"
        if full in self.objects:
            raise Conflict("exists")
        self.objects[full] = copy.deepcopy(body)
        return self._bump(self.objects[full])

    async def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        current = self.objects[path]
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise Conflict("stale resourceVersion")
        self.objects[path] = copy.deepcopy(body)
        return self._bump(self.objects[path])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rollout(name: str, created: str, phase: Phase = Phase.QUEUED) -> Candidate:
    return Candidate(name=name, uid=f"uid-{name}", created=created, phase=phase)


async def alive(namespace: str, name: str, uid: str) -> bool:
    return True


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


def lease_of(kube: FakeKube) -> dict[str, Any]:
    return next(iter(kube.objects.values()))


async def test_first_in_queue_acquires_and_others_wait(kube: FakeKube) -> None:
    lock = LeaseLock(kube, Clock())  # type: ignore[arg-type]
    a, b = rollout("a", "2026-01-01T00:00:00Z"), rollout("b", "2026-01-01T00:00:01Z")
    view_b = await lock.observe(NS, "web", b, [a, b], True, alive)
    assert not view_b.held and view_b.position == 2
    view_a = await lock.observe(NS, "web", a, [a, b], True, alive)
    assert view_a.held and view_a.token == 1
    assert lease_of(kube)["spec"]["holderIdentity"] == "uid-a"
    view_b = await lock.observe(NS, "web", b, [a, b], True, alive)
    assert not view_b.held and view_b.busy and view_b.holder == "a"


async def test_a_live_holder_is_taken_over_only_after_its_lease_stood_still(
    kube: FakeKube,
) -> None:
    clock = Clock()
    a = rollout("a", "2026-01-01T00:00:00Z", Phase.PROGRESSING)
    b = rollout("b", "2026-01-01T00:00:01Z")
    holder = LeaseLock(kube, clock)  # type: ignore[arg-type]
    assert (await holder.observe(NS, "web", a, [a], True, alive)).held
    waiter = LeaseLock(kube, clock)  # another operator: its own clock reading
    # The holder's operator died: nobody renews. The waiter starts counting from the
    # moment *it* first saw this version of the lease, whatever renewTime says.
    assert not (await waiter.observe(NS, "web", b, [a, b], True, alive)).held
    clock.now += LEASE_DURATION_SECONDS - 1
    assert not (await waiter.observe(NS, "web", b, [a, b], True, alive)).held
    clock.now += 1
    taken = await waiter.observe(NS, "web", b, [a, b], True, alive)
    assert taken.held and taken.recovered_from == "a" and taken.token == 2
    history = json.loads(lease_of(kube)["metadata"]["annotations"]["canary-operator.dev/history"])
    assert [h["holder"] for h in history] == ["a", "b"]
    assert history[0]["takenOverBy"] == "b"


async def test_a_renewal_restarts_the_expiry_count(kube: FakeKube) -> None:
    clock = Clock()
    a = rollout("a", "2026-01-01T00:00:00Z", Phase.PROGRESSING)
    b = rollout("b", "2026-01-01T00:00:01Z")
    holder = LeaseLock(kube, clock)  # type: ignore[arg-type]
    waiter = LeaseLock(kube, clock)  # type: ignore[arg-type]
    await holder.observe(NS, "web", a, [a], True, alive)
    await waiter.observe(NS, "web", b, [a, b], True, alive)
    clock.now += 20
    await holder.observe(NS, "web", a, [a, b], True, alive)  # renews: new resourceVersion
    clock.now += 20
    assert not (await waiter.observe(NS, "web", b, [a, b], True, alive)).held
    clock.now += LEASE_DURATION_SECONDS
    assert (await waiter.observe(NS, "web", b, [a, b], True, alive)).held


async def test_a_gone_or_ended_holder_is_taken_over_at_once(kube: FakeKube) -> None:
    a = rollout("a", "2026-01-01T00:00:00Z", Phase.PROGRESSING)
    b = rollout("b", "2026-01-01T00:00:01Z")
    lock = LeaseLock(kube, Clock())  # type: ignore[arg-type]
    await lock.observe(NS, "web", a, [a], True, alive)

    async def gone(namespace: str, name: str, uid: str) -> bool:
        return False

    taken = await lock.observe(NS, "web", b, [b], True, gone)  # a is not in the index
    assert taken.held and taken.recovered_from == "a"


async def test_only_one_of_two_racing_writers_wins(kube: FakeKube) -> None:
    a, b = rollout("a", "2026-01-01T00:00:00Z"), rollout("b", "2026-01-01T00:00:00Z")
    first, second = LeaseLock(kube, Clock()), LeaseLock(kube, Clock())  # type: ignore[arg-type]
    await first.observe(NS, "web", a, [a], True, alive)
    await first.release(NS, "web", "uid-a")
    stale = await kube.get(
        f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{lease_name('web')}"
    )
    assert stale is not None
    # a writes first; b's write carries the version it read before: 409, not a 2nd holder
    assert (await first.observe(NS, "web", a, [a, b], True, alive)).held
    stale["spec"]["holderIdentity"] = "uid-b"
    with pytest.raises(Conflict):
        await kube.replace(
            f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{lease_name('web')}", stale
        )
    assert not (await second.observe(NS, "web", b, [a, b], True, alive)).held


async def test_release_only_by_the_holder_and_records_it(kube: FakeKube) -> None:
    a = rollout("a", "2026-01-01T00:00:00Z")
    lock = LeaseLock(kube, Clock())  # type: ignore[arg-type]
    await lock.observe(NS, "web", a, [a], True, alive)
    assert not await lock.release(NS, "web", "uid-someone-else")
    assert await lock.release(NS, "web", "uid-a")
    body = lease_of(kube)
    assert body["spec"]["holderIdentity"] is None
    history = json.loads(body["metadata"]["annotations"]["canary-operator.dev/history"])
    assert "released" in history[-1]
    # the fencing token keeps counting across holders
    assert (await lock.observe(NS, "web", a, [a], True, alive)).token == 2
