"""traffic/factory.py: each router kind of the API gives its router, wrapped so that its
reset restores the stable Deployment first; an unknown kind fails by name."""

from __future__ import annotations

from typing import Any

import pytest

from canary_operator.api.models import (
    ROUTER_KINDS,
    CanaryRolloutSpec,
    CanaryRolloutStatus,
)
from canary_operator.engine.types import Rollout
from canary_operator.kube import objects
from canary_operator.kube.api import Kube
from canary_operator.traffic import factory
from canary_operator.traffic.factory import ROUTERS, route_router_for, router_for
from canary_operator.traffic.gateway_api import GatewayAPIRouter
from canary_operator.traffic.istio import IstioRouter
from canary_operator.traffic.nginx import NginxRouter
from canary_operator.traffic.replicas import ReplicasRouter, RestoresStable

ROUTING: dict[str, dict[str, Any] | None] = {
    "replicas": {"replicas": {}},
    "gatewayAPI": {"gatewayAPI": {"httpRoute": "web-route"}},
    "nginx": {"nginx": {"stableIngress": "web-ingress"}},
    "istio": {"istio": {"virtualServices": [{"name": "web-vs"}]}},
}
CLASSES: dict[str, type] = {
    "replicas": ReplicasRouter,
    "gatewayAPI": GatewayAPIRouter,
    "nginx": NginxRouter,
    "istio": IstioRouter,
}


class NoApi(Kube):
    """Building a router reads nothing: a client that cannot ask anything."""

    def __init__(self, name: str) -> None:
        self.name = name


def rollout(routing: dict[str, Any] | None, service: str | None = "web-svc") -> Rollout:
    body: dict[str, Any] = {
        "target": {"deployment": "web", **({"service": service} if service else {})},
        "images": [{"container": "app", "image": "web:2"}],
        "steps": [{"canary": {}}],
    }
    if routing is not None:
        body["trafficRouting"] = routing
    spec = CanaryRolloutSpec.model_validate(body)
    return Rollout("web-v2", "ns", "uid-1", 1, spec, CanaryRolloutStatus())


def test_one_router_for_each_kind_of_the_api() -> None:
    assert tuple(ROUTERS) == ROUTER_KINDS == tuple(ROUTING) == tuple(CLASSES)


@pytest.mark.parametrize("kind", ROUTER_KINDS)
def test_each_kind_gives_its_router(kind: str) -> None:
    ro = rollout(ROUTING[kind])
    assert ro.spec.router_kind == kind
    reads = NoApi("reads")
    router = route_router_for(ro, 7, reads)
    assert type(router) is CLASSES[kind]
    assert vars(router)["kube"] is reads
    assert vars(router)["namespace"] == "ns"


@pytest.mark.parametrize("kind", ROUTER_KINDS)
def test_restores_stable_wraps_each_router(kind: str) -> None:
    ro = rollout(ROUTING[kind])
    reads, fresh = NoApi("reads"), NoApi("fresh")
    router = router_for(ro, 7, reads, fresh)
    assert isinstance(router, RestoresStable)
    assert type(router.inner) is CLASSES[kind]
    assert (router.kube, router.fresh) == (reads, fresh)
    assert (router.namespace, router.stable, router.by) == ("ns", "web", "web-v2/7")


def test_no_routing_is_the_replicas_router() -> None:
    router = route_router_for(rollout(None), 1, NoApi("reads"))
    assert isinstance(router, ReplicasRouter)
    assert (router.stable, router.canary) == ("web", objects.canary_name(rollout(None).spec))


def test_each_router_is_given_the_rollout_s_objects() -> None:
    """The stable Service (or, without one, the Deployment's name), the canary's, and
    the fencing text NAME/TOKEN, as the reconciler has always passed them."""
    reads = NoApi("reads")
    canary = objects.canary_name(rollout(None).spec)
    gateway = route_router_for(rollout(ROUTING["gatewayAPI"], service=None), None, reads)
    assert isinstance(gateway, GatewayAPIRouter)
    assert (gateway.route, gateway.stable, gateway.canary) == ("web-route", "web", canary)
    assert gateway.token == "web-v2/None"

    ro = rollout(ROUTING["nginx"])
    nginx = route_router_for(ro, 3, reads)
    assert isinstance(nginx, NginxRouter)
    assert (nginx.stable, nginx.canary, nginx.token) == ("web-svc", canary, "web-v2/3")
    assert nginx.config == ro.spec.traffic_routing.nginx  # type: ignore[union-attr]
    assert nginx.metadata == objects.owned_metadata(
        ro.spec, "canary", canary, "ns", "web-v2", "uid-1"
    )

    ro = rollout(ROUTING["istio"])
    istio = route_router_for(ro, 3, reads)
    assert isinstance(istio, IstioRouter)
    assert istio.token == "web-v2/3"
    assert istio.config == ro.spec.traffic_routing.istio  # type: ignore[union-attr]
    assert istio.canary_pod_labels == objects.selector_labels(ro.spec, "canary")


def test_several_routers_set_routes_as_before() -> None:
    """The CRD refuses two routers; a spec built in code may carry them: nginx, then
    istio, then gatewayAPI (as the reconciler always chose), and the spec agrees."""
    both = {**ROUTING["gatewayAPI"], **ROUTING["istio"]}  # type: ignore[dict-item]
    assert isinstance(route_router_for(rollout(both), 1, NoApi("r")), IstioRouter)
    assert rollout(both).spec.router_kind == "istio"
    every = {k: v for routing in ROUTING.values() for k, v in (routing or {}).items()}
    assert isinstance(route_router_for(rollout(every), 1, NoApi("r")), NginxRouter)
    assert rollout(every).spec.router_kind == "nginx"


def test_an_unknown_kind_fails_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CanaryRolloutSpec, "router_kind", property(lambda _: "linkerd"))
    with pytest.raises(ValueError, match=r"no router of kind 'linkerd' \(known: replicas, "):
        route_router_for(rollout(None), 1, NoApi("reads"))
    with pytest.raises(ValueError, match="linkerd"):
        router_for(rollout(None), 1, NoApi("reads"), NoApi("fresh"))


def test_a_kind_without_a_router_cannot_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module checks its table against the API's kinds when it loads."""
    import importlib

    from canary_operator.api import models

    monkeypatch.setattr(models, "ROUTER_KINDS", (*ROUTER_KINDS, "linkerd"))
    try:
        with pytest.raises(ImportError, match="linkerd"):
            importlib.reload(factory)
    finally:
        monkeypatch.undo()
        importlib.reload(factory)
