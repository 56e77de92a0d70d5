"""The `nginx` router: an ingress-nginx canary Ingress beside the user's stable one.

ingress-nginx splits traffic between two Ingresses of the same host and path: the
primary one, and one annotated `canary: "true"` whose backends are another Service
(internal/ingress/controller/controller.go, mergeAlternativeBackends). The operator
clones the user's Ingress into such a canary Ingress, pointed at the canary Service,
and weights it with `canary-weight` / `canary-weight-total`; header and cookie matches
send chosen requests to the canary whatever the weight. The user's Ingress is only
read, never written. Reset deletes the canary Ingress: with it gone, nothing routes
to the canary, and that is what `read()` reports as 100 % stable.

The annotations follow ingress-nginx's own parsing and validation
(internal/ingress/annotations/canary/main.go, parser/validators.go): see
`check_canary_annotations`, which the tests hold the generated objects to.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from canary_operator.api.models import NginxRouting
from canary_operator.engine.types import RouteView
from canary_operator.kube.api import JsonObj, Kube, path
from canary_operator.kube.objects import FENCING, MANAGED_BY, OPERATOR
from canary_operator.traffic.base import PermanentRouteError

# Copied from the stable Ingress: the controller picks Ingresses by class.
CLASS_ANNOTATION = "kubernetes.io/ingress.class"

# ingress-nginx's validators (parser/validators.go): alphaNumericChars, BasicCharsRegex
# and IsValidRegex; canary-by-header, -value and canary-by-cookie strip spaces first.
_ALNUM = r"\-\.\_\~a-zA-Z0-9\/:"
BASIC_CHARS = re.compile("^[/" + _ALNUM + "]*$")
REGEX_CHARS = re.compile("^[/" + _ALNUM + re.escape("^$[](){}*+?|&=\\") + "]*$")
_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}  # strconv.ParseBool
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_GO_INT = re.compile(r"^[+-]?[0-9]+$")  # strconv.Atoi


def canary_ingress_name(stable_ingress: str) -> str:
    return f"{stable_ingress[:246].rstrip('-.')}-canary"


def to_nginx_weight(percent: int, total: int) -> int:
    """The canary-weight for a percent of traffic out of canary-weight-total."""
    return round(percent * total / 100)


def to_percent(weight: int, total: int) -> int:
    return 0 if total <= 0 else round(100 * weight / total)


def check_canary_annotations(annotations: dict[str, str], prefix: str) -> list[str]:
    """What ingress-nginx would refuse or ignore in these annotations (empty: none).

    canary must parse as a Go bool; canary-weight and -total as Go ints (the total
    positive, the weight within [0, total]); the match values must pass the validators
    the canary parser names; a match or a weight without `canary: "true"` is an error
    ("configured but not enabled").
    """
    problems: list[str] = []

    def get(name: str) -> str:
        return annotations.get(f"{prefix}/{name}", "")

    enabled = get("canary")
    if enabled and enabled not in _GO_TRUE | _GO_FALSE:
        problems.append(f"canary: {enabled!r} is not a bool")
    ints: dict[str, int] = {}
    for name in ("canary-weight", "canary-weight-total"):
        value = get(name)
        if value and not _GO_INT.match(value):
            problems.append(f"{name}: {value!r} is not an integer")
        elif value:
            ints[name] = int(value)
    total = ints.get("canary-weight-total", 100)
    weight = ints.get("canary-weight", 0)
    if total <= 0:
        problems.append(f"canary-weight-total: {total} is not positive")
    if not 0 <= weight <= max(total, 0):
        problems.append(f"canary-weight: {weight} is outside [0, {total}]")
    for name, regex in (
        ("canary-by-header", BASIC_CHARS),
        ("canary-by-header-value", BASIC_CHARS),
        ("canary-by-cookie", BASIC_CHARS),
        ("canary-by-header-pattern", REGEX_CHARS),
    ):
        value = get(name)
        if name != "canary-by-header-pattern":
            value = value.replace(" ", "")
        if value and not regex.match(value):
            problems.append(f"{name}: {value!r} has characters ingress-nginx refuses")
    configured = weight > 0 or any(
        get(n)
        for n in (
            "canary-by-header",
            "canary-by-header-value",
            "canary-by-header-pattern",
            "canary-by-cookie",
        )
    )
    if configured and enabled not in _GO_TRUE:
        problems.append("canary: configured but not enabled")
    return problems


def canary_annotations(config: NginxRouting, weight: int) -> dict[str, str]:
    prefix = config.annotation_prefix
    result = {
        f"{prefix}/canary": "true",
        f"{prefix}/canary-weight": str(to_nginx_weight(weight, config.weight_total)),
    }
    if config.weight_total != 100:
        result[f"{prefix}/canary-weight-total"] = str(config.weight_total)
    if config.header is not None:
        result[f"{prefix}/canary-by-header"] = config.header.name
        if config.header.value is not None:
            result[f"{prefix}/canary-by-header-value"] = config.header.value
        if config.header.pattern is not None:
            result[f"{prefix}/canary-by-header-pattern"] = config.header.pattern
    if config.cookie is not None:
        result[f"{prefix}/canary-by-cookie"] = config.cookie
    return result


def _to_service(backend: JsonObj | None, name: str) -> bool:
    return bool(backend and (backend.get("service") or {}).get("name") == name)


def canary_spec(stable: JsonObj, stable_service: str, canary_service: str) -> JsonObj:
    """The stable Ingress's rules that reach the stable Service, pointed at the canary.

    Only host + path pairs of the stable Service are kept (ingress-nginx merges a
    canary path into the primary location with the same host and path, and drops a
    canary path that has none). TLS stays on the primary Ingress.
    """
    source = stable.get("spec") or {}
    spec: JsonObj = {}
    if source.get("ingressClassName"):
        spec["ingressClassName"] = source["ingressClassName"]
    if _to_service(source.get("defaultBackend"), stable_service):
        backend = copy.deepcopy(source["defaultBackend"])
        backend["service"]["name"] = canary_service
        spec["defaultBackend"] = backend
    rules = []
    for rule in source.get("rules") or []:
        paths = []
        for p in (rule.get("http") or {}).get("paths") or []:
            if _to_service(p.get("backend"), stable_service):
                clone = copy.deepcopy(p)
                clone["backend"]["service"]["name"] = canary_service
                paths.append(clone)
        if paths:
            rules.append(
                {**({"host": rule["host"]} if "host" in rule else {}), "http": {"paths": paths}}
            )
    if rules:
        spec["rules"] = rules
    return spec


class NginxRouter:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        config: NginxRouting,
        stable_service: str,
        canary_service: str,
        metadata: JsonObj,
        fencing_token: str,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.config = config
        self.stable = stable_service
        self.canary = canary_service
        self.name = canary_ingress_name(config.stable_ingress)
        self.metadata = metadata  # labels and owner of the canary objects
        self.token = fencing_token

    def _path(self, name: str | None = None) -> str:
        return path("networking.k8s.io", "v1", "ingresses", self.namespace, name)

    async def _ours(self) -> JsonObj | None:
        body = await self.kube.get(self._path(self.name))
        if body is None or (body["metadata"].get("labels") or {}).get(MANAGED_BY) != OPERATOR:
            return None  # absent, or the user's own Ingress of that name: never touched
        return body

    async def read(self) -> RouteView:
        body = await self._ours()
        if body is None:
            return RouteView(weight=0)
        annotations: dict[str, str] = body["metadata"].get("annotations") or {}
        prefix = self.config.annotation_prefix
        if check_canary_annotations(annotations, prefix) or (
            annotations.get(f"{prefix}/canary") not in _GO_TRUE
        ):
            # Not a valid canary any more (edited by hand?): ingress-nginx may route any
            # share to it, or treat it as a primary. Count it as all traffic so cleanup
            # removes it.
            return RouteView(weight=100, references_canary=True)
        weight = int(annotations.get(f"{prefix}/canary-weight") or 0)
        total = int(annotations.get(f"{prefix}/canary-weight-total") or 100)
        return RouteView(weight=to_percent(weight, total), references_canary=True)

    def desired(self, stable: JsonObj, weight: int) -> JsonObj:
        spec = canary_spec(stable, self.stable, self.canary)
        if not spec.get("rules") and "defaultBackend" not in spec:
            raise PermanentRouteError(
                f"Ingress {self.config.stable_ingress} has no path to Service {self.stable}"
            )
        annotations = dict(self.config.canary_ingress_annotations or {})
        stable_class = (stable["metadata"].get("annotations") or {}).get(CLASS_ANNOTATION)
        if stable_class is not None:
            annotations[CLASS_ANNOTATION] = stable_class
        annotations.update(canary_annotations(self.config, weight))
        annotations[FENCING] = self.token
        meta = copy.deepcopy(self.metadata)
        meta.update(name=self.name, namespace=self.namespace, annotations=annotations)
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": meta,
            "spec": spec,
        }

    async def set_weight(self, weight: int) -> None:
        stable = await self.kube.get(self._path(self.config.stable_ingress))
        if stable is None:
            raise PermanentRouteError(f"Ingress {self.config.stable_ingress} not found")
        want = self.desired(stable, weight)
        current = await self.kube.get(self._path(self.name))
        if current is None:
            await self.kube.create(self._path(), want)
            return
        if (current["metadata"].get("labels") or {}).get(MANAGED_BY) != OPERATOR:
            raise PermanentRouteError(
                f"Ingress {self.name} exists and is not the operator's: rename it or "
                f"the stable Ingress"
            )
        if _same(current, want):
            return
        updated = copy.deepcopy(current)
        updated["metadata"]["annotations"] = want["metadata"]["annotations"]
        updated["metadata"]["labels"] = want["metadata"]["labels"]
        updated["spec"] = want["spec"]
        await self.kube.replace(self._path(self.name), updated)  # resourceVersion precondition

    async def canary_labels_to_drop(self, service_selector: dict[str, str]) -> set[str]:
        """The stable Service's selector: only the canary Service reaches canary pods."""
        return set(service_selector)

    async def reset(self) -> None:
        body = await self._ours()
        if body is not None:
            await self.kube.delete(
                self._path(self.name), resource_version=body["metadata"]["resourceVersion"]
            )


def _same(current: JsonObj, want: JsonObj) -> bool:
    def view(body: JsonObj) -> Any:
        meta = body["metadata"]
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != FENCING}
        return annotations, meta.get("labels") or {}, body.get("spec") or {}

    return bool(view(current) == view(want))
