"""A blue-green's switch with the replicas router (`traffic/service_switch.py`): the
active Service's selector to the preview's pods and back, read back like a weight, and
the factory's choice of it for a blue-green (`traffic/factory.py` SWITCHES)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from canary_operator.api.models import CanaryRolloutSpec, CanaryRolloutStatus
from canary_operator.engine.types import Rollout
from canary_operator.kube.api import Conflict
from canary_operator.traffic.base import PermanentRouteError
from canary_operator.traffic.factory import route_router_for, router_for
from canary_operator.traffic.replicas import ReplicasRouter
from canary_operator.traffic.service_switch import ORIGINAL_SELECTOR, ServiceSwitchRouter
from tests.harness.fake_kube import FakeKube

SERVICE = "/api/v1/namespaces/ns/services/web"
PREVIEW = {"canary-operator.dev/target": "web", "canary-operator.dev/role": "canary"}
ORIGINAL = {"app": "web", "tier": "front"}


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    client = ApiClient()
    try:
        fake = FakeKube(client)
        fake.put(
            SERVICE,
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web"},
                "spec": {"selector": dict(ORIGINAL), "ports": [{"port": 80}]},
            },
        )
        yield fake
    finally:
        await client.close()


def router(kube: FakeKube) -> ServiceSwitchRouter:
    return ServiceSwitchRouter(kube, "ns", "web", PREVIEW)


def selector(kube: FakeKube) -> dict[str, Any]:
    body = kube.stored(SERVICE)
    assert body is not None
    return dict(body["spec"]["selector"])


def recorded(kube: FakeKube) -> str | None:
    body = kube.stored(SERVICE)
    assert body is not None
    return (body["metadata"].get("annotations") or {}).get(ORIGINAL_SELECTOR)


async def test_before_the_switch_nothing_reaches_the_preview(kube: FakeKube) -> None:
    view = await router(kube).read()
    assert view.weight == 0 and view.reset
    # The preview's pods must not carry the labels the active Service selects by.
    assert await router(kube).canary_labels_to_drop(dict(ORIGINAL)) == {"app", "tier"}


async def test_the_switch_selects_only_the_preview_and_records_what_it_replaced(
    kube: FakeKube,
) -> None:
    await router(kube).set_weight(100)
    assert selector(kube) == PREVIEW  # exactly: the stable's labels are gone from it
    assert json.loads(recorded(kube) or "") == ORIGINAL
    view = await router(kube).read()
    assert view.weight == 100 and view.references_canary and not view.reset
    # Once switched, the preview's pods still must not carry the original labels (a
    # preview applied again must not roll its pods while it has all the traffic).
    assert await router(kube).canary_labels_to_drop(dict(PREVIEW)) == {"app", "tier"}
    kube.clear()
    await router(kube).set_weight(100)  # again: nothing to write
    assert [r for r in kube.requests if not r.startswith("GET")] == []


async def test_the_switch_back_puts_the_recorded_selector_back(kube: FakeKube) -> None:
    await router(kube).set_weight(100)
    await router(kube).reset()
    assert selector(kube) == ORIGINAL and recorded(kube) is None
    assert (await router(kube).read()).reset
    kube.clear()
    await router(kube).reset()  # nothing left to put back
    assert [r for r in kube.requests if not r.startswith("GET")] == []


async def test_a_weight_below_100_switches_back(kube: FakeKube) -> None:
    await router(kube).set_weight(100)
    await router(kube).set_weight(0)
    assert selector(kube) == ORIGINAL and recorded(kube) is None


async def test_a_switch_back_by_another_router_object_reads_the_record(kube: FakeKube) -> None:
    """A recovery (after a restart, by another rollout of the target) knows nothing but
    what is on the Service."""
    await router(kube).set_weight(100)
    other = ServiceSwitchRouter(kube, "ns", "web", PREVIEW)
    assert (await other.read()).weight == 100
    await other.reset()
    assert selector(kube) == ORIGINAL


async def test_a_record_left_after_the_selector_went_back_still_needs_a_reset(
    kube: FakeKube,
) -> None:
    """Someone put the selector back by hand: not reset until the record is gone."""
    await router(kube).set_weight(100)
    body = kube.stored(SERVICE)
    assert body is not None
    body["spec"]["selector"] = dict(ORIGINAL)
    kube.put(SERVICE, body)
    view = await router(kube).read()
    assert view.weight == 0 and view.references_canary and not view.reset
    await router(kube).reset()
    assert selector(kube) == ORIGINAL and recorded(kube) is None


async def test_the_writes_are_conditional_on_the_service_as_read(kube: FakeKube) -> None:
    kube.fail_next("PATCH", "services/web", Conflict("changed"))
    with pytest.raises(Conflict):
        await router(kube).set_weight(100)
    assert selector(kube) == ORIGINAL
    await router(kube).set_weight(100)
    sent = [b for r, b in kube.bodies if r.startswith("PATCH")]
    assert sent and all(b["metadata"].get("resourceVersion") for b in sent)


async def test_a_missing_active_service_is_said(kube: FakeKube) -> None:
    gone = ServiceSwitchRouter(kube, "ns", "nope", PREVIEW)
    assert (await gone.read()).error
    with pytest.raises(PermanentRouteError, match="Service nope"):
        await gone.set_weight(100)


def _rollout(**strategy: Any) -> Rollout:
    body: dict[str, Any] = {
        "target": {"deployment": "web", "service": "web"},
        "images": [{"container": "app", "image": "web:2"}],
    }
    body.update({"strategy": strategy} if strategy else {"steps": [{"promote": {}}]})
    return Rollout(
        "r", "ns", "uid", 1, CanaryRolloutSpec.model_validate(body), CanaryRolloutStatus()
    )


async def test_the_factory_gives_a_blue_green_its_switch(kube: FakeKube) -> None:
    assert isinstance(route_router_for(_rollout(blueGreen={}), 1, kube), ServiceSwitchRouter)
    assert isinstance(route_router_for(_rollout(), 1, kube), ReplicasRouter)


async def test_a_canary_s_router_switches_back_what_a_blue_green_left_switched(
    kube: FakeKube,
) -> None:
    """A recovery by a canary of the target (it took the lock over) must not delete the
    preview's pods while the Service still selects them: its reset switches back first."""
    await router(kube).set_weight(100)
    canary = _rollout()
    plain = router_for(canary, 1, kube, kube)
    assert (await plain.read()).reset  # not told: the replicas router alone sees nothing
    told = router_for(canary, 1, kube, kube, switched=True)
    assert not (await told.read()).reset
    await told.reset()
    assert selector(kube) == ORIGINAL and recorded(kube) is None
    assert (await told.read()).reset
