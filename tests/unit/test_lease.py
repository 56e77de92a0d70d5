"""The Lease protocol against an in-memory API that enforces resourceVersion
preconditions like the real one (the real API is exercised by the e2e suite)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from canary_operator.api.models import Phase
from canary_operator.kube.api import Conflict
from canary_operator.lock.lease import LEASE_DURATION_SECONDS, LeaseLock, lease_name
from canary_operator.lock.queue import Candidate
from tests.harness.fake_api import Clock, FakeApi

NS = "ns"


def rollout(name: str, created: str, phase: Phase = Phase.QUEUED) -> Candidate:
    return Candidate(name=name, uid=f"uid-{name}", created=created, phase=phase)


async def alive(namespace: str, name: str, uid: str) -> bool:
    return True


@pytest.fixture
def kube() -> FakeApi:
    return FakeApi()


def lease_of(kube: FakeApi) -> dict[str, Any]:
    return next(iter(kube.objects.values()))


async def test_first_in_queue_acquires_and_others_wait(kube: FakeApi) -> None:
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
    kube: FakeApi,
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


async def test_a_renewal_restarts_the_expiry_count(kube: FakeApi) -> None:
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


async def test_a_gone_or_ended_holder_is_taken_over_at_once(kube: FakeApi) -> None:
    a = rollout("a", "2026-01-01T00:00:00Z", Phase.PROGRESSING)
    b = rollout("b", "2026-01-01T00:00:01Z")
    lock = LeaseLock(kube, Clock())  # type: ignore[arg-type]
    await lock.observe(NS, "web", a, [a], True, alive)

    async def gone(namespace: str, name: str, uid: str) -> bool:
        return False

    taken = await lock.observe(NS, "web", b, [b], True, gone)  # a is not in the index
    assert taken.held and taken.recovered_from == "a"


async def test_only_one_of_two_racing_writers_wins(kube: FakeApi) -> None:
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


async def test_release_only_by_the_holder_and_records_it(kube: FakeApi) -> None:
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
