"""The router's objects, checked before a run touches anything: the HTTPRoute; the
NGINX stable Ingress and the name of the canary Ingress cloned from it; the Istio
VirtualServices and DestinationRule. Each problem starts with the field that names
the object, and says what the router would find wrong when it first sets a weight
(the same functions of traffic/ decide it)."""

from __future__ import annotations

from canary_operator.api.models import (
    ROUTER_GATEWAY_API,
    ROUTER_ISTIO,
    ROUTER_NGINX,
    GatewayAPIRouting,
    IstioRouting,
    NginxRouting,
)
from canary_operator.engine.types import Rollout
from canary_operator.kube import objects
from canary_operator.kube.api import JsonObj, Kube, path
from canary_operator.traffic import istio, nginx
from canary_operator.traffic.base import PermanentRouteError
from canary_operator.traffic.gateway_api import is_service_ref

HTTP_ROUTE_FIELD = "spec.trafficRouting.gatewayAPI.httpRoute"
STABLE_INGRESS_FIELD = "spec.trafficRouting.nginx.stableIngress"
ISTIO_FIELD = "spec.trafficRouting.istio"


def route_problem(route: JsonObj | None, name: str, stable_service: str) -> str | None:
    field = HTTP_ROUTE_FIELD
    if route is None:
        return f"{field}: HTTPRoute {name!r} not found"
    rules = (route.get("spec") or {}).get("rules") or []
    if not any(
        is_service_ref(r, stable_service) for rule in rules for r in rule.get("backendRefs") or []
    ):
        return (
            f"{field}: HTTPRoute {name!r} has no rule with a backendRef to the stable "
            f"Service {stable_service!r} (spec.target.service)"
        )
    return None


def ingress_problems(
    stable: JsonObj | None, canary: JsonObj | None, config: NginxRouting, stable_service: str
) -> list[str]:
    """The stable Ingress (it must reach the stable Service) and whatever holds the
    canary Ingress's name (nothing, or the operator's own clone)."""
    field, name = STABLE_INGRESS_FIELD, config.stable_ingress
    if stable is None:
        return [f"{field}: Ingress {name!r} not found"]
    problems = []
    spec = nginx.canary_spec(stable, stable_service, "canary")
    if not spec.get("rules") and "defaultBackend" not in spec:
        problems.append(
            f"{field}: Ingress {name!r} has no path (or default backend) to the stable "
            f"Service {stable_service!r} (spec.target.service)"
        )
    labels = ((canary or {}).get("metadata") or {}).get("labels") or {}
    if canary is not None and labels.get(objects.MANAGED_BY) != objects.OPERATOR:
        problems.append(
            f"{field}: the canary Ingress is named after it, "
            f"{nginx.canary_ingress_name(name)!r}, and an Ingress of that name exists that "
            "is not the operator's: rename it or the stable Ingress"
        )
    return problems


class RouteChecks:
    """Reads the router's objects in the rollout's namespace and checks them."""

    def __init__(self, kube: Kube, rollout: Rollout, service: JsonObj | None) -> None:
        self.kube = kube
        self.rollout = rollout
        self.namespace = rollout.namespace
        self.service = service
        self.selector: dict[str, str] = ((service or {}).get("spec") or {}).get("selector") or {}
        self.stable_service = rollout.spec.target.service or rollout.spec.target.deployment

    async def problems(self) -> list[str]:
        routing = self.rollout.spec.traffic_routing
        kind = self.rollout.spec.router_kind
        if self.rollout.spec.blue_green is not None:
            return self._active_service()
        if kind == ROUTER_GATEWAY_API and routing and routing.gateway_api:
            return await self._gateway_api(routing.gateway_api)
        if kind == ROUTER_NGINX and routing and routing.nginx:
            return await self._nginx(routing.nginx)
        if kind == ROUTER_ISTIO and routing and routing.istio:
            return await self._istio(routing.istio)
        return []

    def _active_service(self) -> list[str]:
        """A blue-green switches its active Service's selector: one must be there."""
        name = self.stable_service
        if self.service is None:
            return [f"spec.target.service: Service {name} not found (a blue-green switches it)"]
        if not self.selector:
            return [f"spec.target.service: Service {name} has no selector to switch"]
        return []

    async def _read(self, group: str, version: str, plural: str, name: str) -> JsonObj | None:
        """The object, or None when there is none. Any other answer (a 403 included:
        RBAC may be fixed) is raised: the run waits and checks again."""
        return await self.kube.get(path(group, version, plural, self.namespace, name))

    async def _gateway_api(self, config: GatewayAPIRouting) -> list[str]:
        name = config.http_route
        route = await self._read("gateway.networking.k8s.io", "v1", "httproutes", name)
        problem = route_problem(route, name, self.stable_service)
        return [problem] if problem else []

    async def _nginx(self, config: NginxRouting) -> list[str]:
        group = "networking.k8s.io"
        stable = await self._read(group, "v1", "ingresses", config.stable_ingress)
        canary_name = nginx.canary_ingress_name(config.stable_ingress)
        canary = await self._read(group, "v1", "ingresses", canary_name)
        return ingress_problems(stable, canary, config, self.stable_service)

    async def _istio(self, config: IstioRouting) -> list[str]:
        spec = self.rollout.spec
        router = istio.IstioRouter(
            self.kube,
            self.namespace,
            config,
            self.stable_service,
            objects.canary_name(spec),
            "",
            objects.selector_labels(spec, "canary"),
        )
        problems: list[str] = []
        sides: istio.Sides | None = router.sides
        if config.destination_rule is not None:
            problems, sides = await self._destination_rule(router, config)
        for v, vs in enumerate(config.virtual_services):
            field = f"{ISTIO_FIELD}.virtualServices[{v}]"
            body = await self._read(istio.GROUP, istio.VERSION, "virtualservices", vs.name)
            if body is None:
                problems.append(f"{field}.name: VirtualService {vs.name!r} not found")
            elif sides is not None:
                try:
                    istio.weigh(body, vs, sides, 50)  # what setting a weight would refuse
                except PermanentRouteError as exc:
                    problems.append(f"{field}: {exc}")
        return problems

    async def _destination_rule(
        self, router: istio.IstioRouter, config: IstioRouting
    ) -> tuple[list[str], istio.Sides | None]:
        """The DestinationRule's problems, and the sides its host and subsets make
        (None when it cannot be used: the VirtualServices are then not weighed)."""
        rule = config.destination_rule
        assert rule is not None
        field = f"{ISTIO_FIELD}.destinationRule"
        body = await self._read(istio.GROUP, istio.VERSION, "destinationrules", rule.name)
        if body is None:
            return [f"{field}.name: DestinationRule {rule.name!r} not found"], None
        try:
            await router.canary_labels_to_drop(self.selector)  # its host and subsets
        except PermanentRouteError as exc:
            return [f"{field}: {exc}"], None
        host = istio.service_of(str((body.get("spec") or {}).get("host", "")), self.namespace)
        assert host is not None  # canary_labels_to_drop refuses any other
        # As the router tells stable from canary in subset mode: both behind the host.
        sides = istio.Sides(
            self.namespace,
            host[0],
            router.sides.canary_service,
            rule.stable_subset_name,
            rule.canary_subset_name,
        )
        return [], sides
