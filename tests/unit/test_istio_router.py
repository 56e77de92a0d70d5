"""The istio router, held to Istio's own rules.

Rules read from istio/api (the module whose CRDs the e2e suite installs):
- networking/v1alpha3/virtual_service.proto, HTTPRouteDestination.weight: a destination
  receives `weight / (sum of all weights)` of the route's requests; the only destination
  of a route receives all of them; a weight of 0 (with others) receives none.
- networking/v1alpha3/virtual_service.proto, Destination.host: short names are resolved
  in the VirtualService's namespace (`reviews` -> `reviews.<ns>.svc.cluster.local`).
- networking/v1alpha3/destination_rule.proto, Subset: a subset is the endpoints of the
  rule's host whose pods carry all of the subset's labels.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from canary_operator.api.models import IstioRouting
from canary_operator.kube.objects import FENCING
from canary_operator.traffic.base import PermanentRouteError
from canary_operator.traffic.istio import (
    ORIGINAL_WEIGHTS,
    IstioRouter,
    Sides,
    route_share,
    service_of,
)
from tests.harness.fake_api import FakeApi

NS = "shop"
VS = f"/apis/networking.istio.io/v1/namespaces/{NS}/virtualservices"
DR = f"/apis/networking.istio.io/v1/namespaces/{NS}/destinationrules"
CANARY_LABELS = {"canary-operator.dev/target": "web", "canary-operator.dev/role": "canary"}
HOSTS = Sides(NS, "web", "web-canary")
SUBSETS = Sides(NS, "web", "web-canary", "stable", "canary")


def dest(
    host: str, weight: int | None = None, subset: str | None = None, **extra: Any
) -> dict[str, Any]:
    d: dict[str, Any] = {"destination": {"host": host, **({"subset": subset} if subset else {})}}
    d["destination"].update(extra)
    if weight is not None:
        d["weight"] = weight
    return d


def virtual_service(name: str = "web", host: str = "web") -> dict[str, Any]:
    """A user's VirtualService with fields the router must leave alone."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "name": name,
            "namespace": NS,
            "resourceVersion": "11",
            "labels": {"app": "web"},
            "annotations": {"team": "checkout"},
        },
        "spec": {
            "hosts": ["shop.example.com", "web"],
            "gateways": ["mesh", "shop-gw"],
            "http": [
                {
                    "name": "beta",
                    "match": [{"headers": {"x-beta": {"exact": "1"}}}],
                    "route": [dest(host, port={"number": 80})],
                    "retries": {"attempts": 3, "perTryTimeout": "2s"},
                },
                {
                    "name": "primary",
                    "route": [dest(host, 100, port={"number": 80})],
                    "timeout": "10s",
                    "headers": {"response": {"add": {"x-served-by": "mesh"}}},
                },
                {"name": "static", "route": [dest("cdn.shop.svc.cluster.local")]},
                {"name": "legacy", "redirect": {"uri": "/v2"}},
            ],
            "tcp": [{"route": [dest("web", port={"number": 5432})]}],
        },
    }


def router(api: FakeApi, **config: Any) -> IstioRouter:
    routing = IstioRouting.model_validate({"virtualServices": [{"name": "web"}], **config})
    return IstioRouter(api, NS, routing, "web", "web-canary", "r/4", dict(CANARY_LABELS))  # type: ignore[arg-type]


# ------------------------------------------------------------------ arithmetic


@pytest.mark.parametrize(
    ("destinations", "share"),
    [
        ([], 0),
        ([dest("web")], 0),
        ([dest("web", 0)], 0),  # the only destination takes everything, weight or not
        ([dest("web-canary", 0)], 100),
        ([dest("web", 90), dest("web-canary", 10)], 10),
        ([dest("web", 1), dest("web-canary", 3)], 75),  # relative, not percent
        ([dest("web", 0), dest("web-canary", 0)], 0),
        ([dest("web", 100), dest("web-canary", 0)], 0),
        ([dest("web", 0), dest("web-canary", 100)], 100),
        ([dest("web", 2), dest("web-canary", 1)], 33),
    ],
)
def test_route_share_follows_istios_weight_rule(
    destinations: list[dict[str, Any]], share: int
) -> None:
    assert route_share(destinations, HOSTS) == share


@pytest.mark.parametrize(
    ("host", "service"),
    [
        ("web", ("web", NS)),
        ("web.shop", ("web", "shop")),
        ("web.shop.svc", ("web", "shop")),
        ("web.shop.svc.cluster.local", ("web", "shop")),
        ("web.other.svc.cluster.local", ("web", "other")),
        ("shop.example.com", None),
    ],
)
def test_hosts_resolve_like_istio_resolves_them(host: str, service: tuple[str, str] | None) -> None:
    assert service_of(host, NS) == service


def test_a_stable_host_in_another_namespace_is_not_stable() -> None:
    assert HOSTS.is_stable(dest("web.shop.svc.cluster.local"))
    assert not HOSTS.is_stable(dest("web.other.svc.cluster.local"))
    assert not HOSTS.is_stable(dest("web", subset="v1"))  # by host, a subset is someone else's


# ------------------------------------------------------------- the round trip


async def test_host_weights_read_back_and_the_original_restored_byte_for_byte() -> None:
    api = FakeApi()
    api.objects[f"{VS}/web"] = virtual_service()
    before = copy.deepcopy(api.objects[f"{VS}/web"])
    r = router(api)
    assert (await r.read()).reset

    for weight in (10, 50, 0, 100):
        await r.set_weight(weight)
        view = await r.read()
        assert view.weight == weight and view.references_canary
        body = api.objects[f"{VS}/web"]
        for name in ("beta", "primary"):
            route = next(h for h in body["spec"]["http"] if h["name"] == name)["route"]
            assert route == [
                dest("web", 100 - weight, port={"number": 80}),
                dest("web-canary", weight, port={"number": 80}),
            ]
        assert body["metadata"]["annotations"][FENCING] == "r/4"
        # untouched: the route to another service, the redirect, TCP, hosts, gateways
        for key in ("hosts", "gateways", "tcp"):
            assert body["spec"][key] == before["spec"][key]
        assert body["spec"]["http"][2:] == before["spec"]["http"][2:]
        assert json.loads(body["metadata"]["annotations"][ORIGINAL_WEIGHTS]) == {
            "name:beta": None,
            "name:primary": 100,
        }

    await r.reset()
    view = await r.read()
    assert view.reset
    after = api.objects[f"{VS}/web"]
    after["metadata"].pop("resourceVersion")
    before["metadata"].pop("resourceVersion")
    assert after == before


async def test_an_object_without_annotations_gets_none_back() -> None:
    api = FakeApi()
    body = virtual_service()
    del body["metadata"]["annotations"]
    api.objects[f"{VS}/web"] = copy.deepcopy(body)
    r = router(api)
    await r.set_weight(30)
    await r.reset()
    assert "annotations" not in api.objects[f"{VS}/web"]["metadata"]


async def test_named_routes_only_are_weighted() -> None:
    api = FakeApi()
    api.objects[f"{VS}/web"] = virtual_service()
    r = router(api, virtualServices=[{"name": "web", "routes": ["primary"]}])
    await r.set_weight(20)
    http = {h["name"]: h for h in api.objects[f"{VS}/web"]["spec"]["http"]}
    assert http["beta"] == virtual_service()["spec"]["http"][0]
    assert [d.get("weight") for d in http["primary"]["route"]] == [80, 20]
    assert (await r.read()).weight == 20


async def test_a_named_route_that_does_not_exist_fails_and_writes_nothing() -> None:
    api = FakeApi()
    api.objects[f"{VS}/web"] = virtual_service()
    before = copy.deepcopy(api.objects)
    r = router(api, virtualServices=[{"name": "web", "routes": ["primary", "typo"]}])
    with pytest.raises(PermanentRouteError, match="no HTTP route named typo"):
        await r.set_weight(20)
    assert api.objects == before


async def test_several_virtual_services_are_checked_before_any_is_written() -> None:
    api = FakeApi()
    api.objects[f"{VS}/web"] = virtual_service("web")
    api.objects[f"{VS}/web-internal"] = virtual_service(
        "web-internal", host="web.shop.svc.cluster.local"
    )
    r = router(api, virtualServices=[{"name": "web"}, {"name": "web-internal"}])
    await r.set_weight(25)
    for name in ("web", "web-internal"):
        primary = api.objects[f"{VS}/{name}"]["spec"]["http"][1]["route"]
        assert [(d["destination"]["host"], d["weight"]) for d in primary][1] == ("web-canary", 25)
    assert (await r.read()).weight == 25
    # one of them drifts: read reports the largest canary share of any route
    api.objects[f"{VS}/web-internal"]["spec"]["http"][1]["route"][0]["weight"] = 25
    api.objects[f"{VS}/web-internal"]["spec"]["http"][1]["route"][1]["weight"] = 75
    assert (await r.read()).weight == 75
    await r.reset()
    assert (await r.read()).reset

    # a missing second VirtualService: the first is not written either
    del api.objects[f"{VS}/web-internal"]
    before = copy.deepcopy(api.objects[f"{VS}/web"])
    with pytest.raises(PermanentRouteError, match="web-internal not found"):
        await r.set_weight(10)
    assert api.objects[f"{VS}/web"] == before


async def test_a_route_with_a_third_destination_is_refused() -> None:
    api = FakeApi()
    body = virtual_service()
    body["spec"]["http"][1]["route"] = [dest("web", 80), dest("legacy", 20)]
    api.objects[f"{VS}/web"] = body
    with pytest.raises(PermanentRouteError, match="exactly one stable destination"):
        await router(api).set_weight(10)


async def test_a_route_the_user_already_gave_a_canary_destination_keeps_only_one() -> None:
    api = FakeApi()
    body = virtual_service()
    body["spec"]["http"][1]["route"].append(dest("web-canary", 0, port={"number": 80}))
    body["spec"]["http"][1]["route"].append(dest("web-canary", 5, port={"number": 80}))
    api.objects[f"{VS}/web"] = body
    r = router(api)
    await r.set_weight(10)
    assert [d["weight"] for d in api.objects[f"{VS}/web"]["spec"]["http"][1]["route"]] == [90, 10]


# ------------------------------------------------------------------- subsets


def destination_rule(stable: dict[str, str], canary: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "web", "namespace": NS, "resourceVersion": "5"},
        "spec": {
            "host": "web.shop.svc.cluster.local",
            "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}},
            "subsets": [{"name": "stable", "labels": stable}, {"name": "canary", "labels": canary}],
        },
    }


SUBSET_CONFIG = {
    "destinationRule": {"name": "web", "stableSubsetName": "stable", "canarySubsetName": "canary"}
}


async def test_subset_weights_read_back_and_restore() -> None:
    api = FakeApi()
    body = virtual_service()
    for h in body["spec"]["http"][:2]:
        for d in h["route"]:
            d["destination"]["subset"] = "stable"
    api.objects[f"{VS}/web"] = copy.deepcopy(body)
    api.objects[f"{DR}/web"] = destination_rule({"app": "web", "track": "stable"}, CANARY_LABELS)
    dr_before = copy.deepcopy(api.objects[f"{DR}/web"])
    r = router(api, **SUBSET_CONFIG)
    assert await r.canary_labels_to_drop({"app": "web"}) == {"track"}
    await r.set_weight(40)
    primary = api.objects[f"{VS}/web"]["spec"]["http"][1]["route"]
    assert primary == [
        dest("web", 60, subset="stable", port={"number": 80}),
        dest("web", 40, subset="canary", port={"number": 80}),
    ]
    assert (await r.read()).weight == 40
    await r.reset()
    assert (await r.read()).reset
    after = api.objects[f"{VS}/web"]
    del after["metadata"]["resourceVersion"], body["metadata"]["resourceVersion"]
    assert after == body
    assert api.objects[f"{DR}/web"] == dr_before  # only read


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        (None, "DestinationRule web not found"),
        (destination_rule({"track": "stable"}, {"version": "v2"}), "must select the canary pods"),
        (destination_rule({"track": "stable"}, {}), "must select the canary pods"),
    ],
)
async def test_subset_routing_refuses_a_rule_that_cannot_split(
    rule: dict[str, Any] | None, problem: str
) -> None:
    api = FakeApi()
    api.objects[f"{VS}/web"] = virtual_service()
    if rule is not None:
        api.objects[f"{DR}/web"] = rule
    before = copy.deepcopy(api.objects)
    with pytest.raises(PermanentRouteError, match=problem):
        await router(api, **SUBSET_CONFIG).set_weight(10)
    assert api.objects == before


async def test_a_missing_subset_is_named() -> None:
    api = FakeApi()
    rule = destination_rule({"track": "stable"}, CANARY_LABELS)
    rule["spec"]["subsets"] = rule["spec"]["subsets"][1:]
    api.objects[f"{DR}/web"] = rule
    with pytest.raises(PermanentRouteError, match="no subset stable"):
        await router(api, **SUBSET_CONFIG).set_weight(10)


async def test_a_stable_subset_by_the_service_selector_alone_would_take_canary_pods() -> None:
    api = FakeApi()
    api.objects[f"{DR}/web"] = destination_rule({"app": "web"}, CANARY_LABELS)
    with pytest.raises(PermanentRouteError, match="would select the canary pods too"):
        await router(api, **SUBSET_CONFIG).canary_labels_to_drop({"app": "web"})


async def test_by_host_the_canary_drops_the_service_selector() -> None:
    assert await router(FakeApi()).canary_labels_to_drop({"app": "web"}) == {"app"}


def test_schema_refuses_duplicates_and_equal_subsets() -> None:
    from canary_operator.api import crd

    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    istio = schema["properties"]["spec"]["properties"]["trafficRouting"]["properties"]["istio"]
    messages = {r["message"] for r in istio["x-kubernetes-validations"]}
    assert messages == {
        "each VirtualService may be named once",
        "the stable and canary subsets must differ",
    }


@pytest.mark.parametrize("action", ["set_weight", "reset"])
async def test_writes_are_conditional_on_the_version_read(action: str) -> None:
    """Fencing: a VirtualService changed between the router's read and its write (by
    another holder, or a human) makes the write fail, to be decided again; nothing of
    the concurrent change is overwritten."""
    from canary_operator.kube.api import Conflict

    api = FakeApi()
    api.objects[f"{VS}/web"] = virtual_service()
    r = router(api)
    if action == "reset":
        await r.set_weight(30)
    original_get = api.get

    async def racing_get(path: str) -> dict[str, Any] | None:
        body = await original_get(path)
        if path == f"{VS}/web" and body is not None:
            api.objects[path] = api._stamp(api.objects[path])  # someone else wrote
        return body

    api.get = racing_get  # type: ignore[method-assign]
    concurrent = copy.deepcopy(api.objects[f"{VS}/web"])
    with pytest.raises(Conflict):
        await (r.set_weight(50) if action == "set_weight" else r.reset())
    current = api.objects[f"{VS}/web"]
    assert current["spec"] == concurrent["spec"]
