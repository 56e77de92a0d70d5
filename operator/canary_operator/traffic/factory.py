"""The one place a router kind becomes a router.

ROUTERS maps each kind of `api.models.ROUTER_KINDS` (the kind
`CanaryRolloutSpec.router_kind` names) to the builder of its router. A new router adds
its module here in traffic/, one entry in ROUTERS and its kind in api/models.py (and,
when it writes a new kind of object, the operator's RBAC rules).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from canary_operator.api.models import (
    ROUTER_GATEWAY_API,
    ROUTER_ISTIO,
    ROUTER_KINDS,
    ROUTER_NGINX,
    ROUTER_REPLICAS,
    CanaryRolloutSpec,
    TrafficRouting,
)
from canary_operator.engine.types import Rollout
from canary_operator.kube import objects
from canary_operator.kube.api import Kube
from canary_operator.traffic.base import TrafficRouter
from canary_operator.traffic.gateway_api import GatewayAPIRouter
from canary_operator.traffic.istio import IstioRouter
from canary_operator.traffic.nginx import NginxRouter
from canary_operator.traffic.replicas import ReplicasRouter, RestoresStable
from canary_operator.traffic.service_switch import RestoresSelector, ServiceSwitchRouter

# (the rollout, what its writes are fenced with: "NAME/TOKEN", the client it reads with)
Builder = Callable[[Rollout, str, Kube], TrafficRouter]


def _stable_service(spec: CanaryRolloutSpec) -> str:
    return spec.target.service or spec.target.deployment


def _routing(spec: CanaryRolloutSpec) -> TrafficRouting:
    assert spec.traffic_routing is not None  # its kind is not the default
    return spec.traffic_routing


def _replicas(rollout: Rollout, by: str, reads: Kube) -> TrafficRouter:
    spec = rollout.spec
    return ReplicasRouter(
        reads, rollout.namespace, spec.target.deployment, objects.canary_name(spec)
    )


def _gateway_api(rollout: Rollout, by: str, reads: Kube) -> TrafficRouter:
    spec = rollout.spec
    config = _routing(spec).gateway_api
    assert config is not None
    return GatewayAPIRouter(
        reads,
        rollout.namespace,
        config.http_route,
        _stable_service(spec),
        objects.canary_name(spec),
        by,
    )


def _nginx(rollout: Rollout, by: str, reads: Kube) -> TrafficRouter:
    spec = rollout.spec
    config = _routing(spec).nginx
    assert config is not None
    canary = objects.canary_name(spec)
    return NginxRouter(
        reads,
        rollout.namespace,
        config,
        _stable_service(spec),
        canary,
        # The canary Ingress is the operator's: labelled and owned like its other objects.
        objects.owned_metadata(
            spec, "canary", canary, rollout.namespace, rollout.name, rollout.uid
        ),
        by,
    )


def _istio(rollout: Rollout, by: str, reads: Kube) -> TrafficRouter:
    spec = rollout.spec
    config = _routing(spec).istio
    assert config is not None
    return IstioRouter(
        reads,
        rollout.namespace,
        config,
        _stable_service(spec),
        objects.canary_name(spec),
        by,
        objects.selector_labels(spec, "canary"),
    )


ROUTERS: Mapping[str, Builder] = MappingProxyType(
    {
        ROUTER_REPLICAS: _replicas,
        ROUTER_GATEWAY_API: _gateway_api,
        ROUTER_NGINX: _nginx,
        ROUTER_ISTIO: _istio,
    }
)


def _service_switch(rollout: Rollout, by: str, reads: Kube) -> TrafficRouter:
    spec = rollout.spec
    assert spec.target.service is not None  # a blue-green names it (api/models.py)
    return ServiceSwitchRouter(
        reads, rollout.namespace, spec.target.service, objects.selector_labels(spec, "canary")
    )


# A blue-green's switch, by router kind (spec.strategy.blueGreen): all traffic at once to
# the preview (a weight of 100), and back. The other kinds' switches are to come; the API
# refuses a blue-green with them (api/models.py).
SWITCHES: Mapping[str, Builder] = MappingProxyType({ROUTER_REPLICAS: _service_switch})
# Not an `assert` (python -O drops those): a kind without a router must never load.
if tuple(ROUTERS) != ROUTER_KINDS:
    raise ImportError(f"routers for {tuple(ROUTERS)}, but the API's kinds are {ROUTER_KINDS}")


def route_router_for(rollout: Rollout, token: int | None, reads: Kube) -> TrafficRouter:
    """The router of the rollout's kind, alone: it moves traffic, and that is all."""
    kind = rollout.spec.router_kind
    build = (SWITCHES if rollout.spec.blue_green is not None else ROUTERS).get(kind)
    if build is None:
        raise ValueError(f"no router of kind {kind!r} (known: {', '.join(ROUTERS)})")
    return build(rollout, f"{rollout.name}/{token}", reads)


def router_for(
    rollout: Rollout, token: int | None, reads: Kube, fresh: Kube, switched: bool = False
) -> TrafficRouter:
    """The rollout's router; whichever it is, its reset first restores a stable
    Deployment that a Shift run scaled down (traffic/replicas.py). `reads` serves the
    router's reads (and its writes), `fresh` the restore's reads that must be current.
    `switched`: the stable Service, as this reconcile read it, is left switched by a
    blue-green; a canary's router then switches it back first (service_switch.py)."""
    router = route_router_for(rollout, token, reads)
    if switched and rollout.spec.blue_green is None and rollout.spec.target.service:
        switch = _service_switch(rollout, f"{rollout.name}/{token}", reads)
        assert isinstance(switch, ServiceSwitchRouter)
        router = RestoresSelector(router, switch)
    return RestoresStable(
        router,
        reads,
        rollout.namespace,
        rollout.spec.target.deployment,
        f"{rollout.name}/{token}",
        fresh=fresh,
    )
