"""The CanaryRollout API: the single source of truth for spec, status and the CRD.

Field descriptions become the CRD's OpenAPI descriptions (`kubectl explain`), and
`cel(...)` rules become `x-kubernetes-validations`, so invalid input is refused at
`kubectl apply` time. Status models are what the operator writes.
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

GROUP = "canary-operator.dev"
VERSION = "v1alpha1"
KIND = "CanaryRollout"
PLURAL = "canaryrollouts"
SINGULAR = "canaryrollout"
SHORT_NAMES = ["cro"]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration ("90s", "1m30s", "250ms")."""
    if not re.fullmatch(DURATION, text):
        raise ValueError(f"invalid duration {text!r}; use e.g. 30s, 5m, 1h30m")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
    return timedelta(seconds=seconds)


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """One `x-kubernetes-validations` entry."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def unique_names(item: str) -> JsonDict:
    """The schema extra of a list whose items' `name`s must differ (an item without a
    name may repeat): refused at apply, the message naming the list."""
    return {
        "x-kubernetes-validations": [
            {
                "rule": "self.all(x, !has(x.name) || "
                "self.exists_one(y, has(y.name) && y.name == x.name))",
                # A messageExpression naming the name would be clearer, but its estimated
                # cost (a filter over items with open Job templates) is over the budget.
                "message": f"two {item}s have the same name: {item} names must be unique",
            }
        ]
    }


class ApiModel(BaseModel):
    """Base for API objects: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=False
    )


class OpenObject(BaseModel):
    """A Kubernetes object body kept as-is (e.g. a PodSpec); the API server validates it."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"x-preserve": True})


# --------------------------------------------------------------------------- spec


class TargetRef(ApiModel):
    deployment: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Name of the stable Deployment (same namespace) that the rollout updates.",
    )
    service: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=63,
        description=(
            "The stable Service in front of the Deployment. Required for gatewayAPI, nginx and "
            "istio routing; "
            "otherwise used to copy ports onto the canary Service."
        ),
    )


class ObjectMeta(ApiModel):
    labels: dict[str, str] | None = Field(default=None, description="Pod labels.")
    annotations: dict[str, str] | None = Field(default=None, description="Pod annotations.")


class PodTemplate(ApiModel):
    metadata: ObjectMeta | None = Field(
        default=None,
        description="Labels and annotations of the new version's pods (tooling such as "
        "Spinnaker adds its own here).",
    )
    spec: OpenObject = Field(description="The new version's PodSpec.")


class ImageOverride(ApiModel):
    container: str = Field(min_length=1, description="Container name in the target's template.")
    image: str = Field(min_length=1, description="New image for that container.")


class ReplicasMode(StrEnum):
    ADD = "Add"
    SHIFT = "Shift"


# The replicas router's mode for a rollout's first run when its spec names none. It was
# Add before status.replicasMode existed; a rollout that ran then keeps Add (see
# docs/traffic-routing.md, "Upgrade: the default mode").
DEFAULT_REPLICAS_MODE = ReplicasMode.SHIFT


class ReplicasRouting(ApiModel):
    """No traffic router: traffic follows the canary's share of ready pods behind the
    stable Service."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.minStableReplicas) || !has(self.mode) || self.mode == 'Shift'",
                    "minStableReplicas applies to mode Shift only",
                    ".minStableReplicas",
                )
            ]
        }
    )
    mode: ReplicasMode | None = Field(
        default=None,
        description="Shift (the default for a new rollout): the canary scales up while the "
        "stable scales down, so the two together stay at the stable's replicas (one pod more "
        "where that is closer to the weight), as Argo Rollouts' basic canary does; cleanup, "
        "promotion and every failure scale the stable back to its original replicas before "
        "the canary goes. Add: the stable Deployment keeps all its pods and the canary is "
        "added beside it (a weight W needs about N*W/(100-W) canary pods; use it with an "
        "HPA). Unset: the mode of the rollout's previous run, Shift for its first run, Add for "
        "a rollout an operator older than this field ran (status.replicasMode shows it).",
    )
    min_stable_replicas: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Shift only: the stable keeps at least this many pods (default 1; "
        "never more than it had). A setWeight step the floor keeps more than one pod away "
        "from its weight is refused before the run touches anything.",
    )

    @property
    def stable_floor(self) -> int:
        return self.min_stable_replicas or 1


class GatewayAPIRouting(ApiModel):
    http_route: str = Field(
        alias="httpRoute",
        pattern=DNS_SUBDOMAIN,
        description="HTTPRoute (same namespace) whose backendRef to the stable Service is "
        "weighted against the canary Service the operator creates.",
    )


# ingress-nginx validates these annotation values with its BasicCharsRegex (canary-by-header,
# -value, canary-by-cookie) and IsValidRegex (canary-by-header-pattern); a value outside them
# is dropped by the controller with only a log line, so they are refused here instead.
# Spaces are left out (the controller strips them before checking, then uses the raw value).
NGINX_BASIC_CHARS = r"^[-._~a-zA-Z0-9/:]+$"
NGINX_REGEX_CHARS = r"^[-._~a-zA-Z0-9/:^$\[\](){}*+?|&=\\]+$"


class NginxHeaderMatch(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!(has(self.value) && has(self.pattern))",
                    "set value or pattern, not both (ingress-nginx ignores the pattern then)",
                )
            ]
        }
    )
    name: str = Field(
        pattern=NGINX_BASIC_CHARS,
        max_length=256,
        description="canary-by-header: requests with this header set to `always` go to the "
        "canary, `never` to stable, whatever the weight.",
    )
    value: str | None = Field(
        default=None,
        pattern=NGINX_BASIC_CHARS,
        max_length=256,
        description="canary-by-header-value: the header value that sends a request to the "
        "canary (instead of `always`).",
    )
    pattern: str | None = Field(
        default=None,
        pattern=NGINX_REGEX_CHARS,
        max_length=256,
        description="canary-by-header-pattern: a PCRE the header value must match.",
    )


class NginxRouting(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.canaryIngressAnnotations) || self.canaryIngressAnnotations"
                    ".all(k, !k.startsWith((has(self.annotationPrefix) ? self.annotationPrefix"
                    " : 'nginx.ingress.kubernetes.io') + '/canary'))",
                    "the canary annotations are the operator's: use header, cookie and weightTotal",
                    ".canaryIngressAnnotations",
                )
            ]
        }
    )
    stable_ingress: str = Field(
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="The user's Ingress (same namespace) with paths to the stable Service. The "
        "operator clones it into a canary Ingress (backends: the canary Service) carrying "
        "ingress-nginx's canary annotations, and deletes that clone in cleanup. The stable "
        "Ingress itself is never written.",
    )
    annotation_prefix: str = Field(
        default="nginx.ingress.kubernetes.io",
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="The controller's --annotations-prefix.",
    )
    weight_total: int = Field(
        default=100,
        ge=100,
        le=1000000,
        description="canary-weight-total: the weight the canary's weight is a share of. "
        "Percent weights are converted to it; at least 100, so every percent can be "
        "written and read back exactly.",
    )
    header: NginxHeaderMatch | None = Field(
        default=None, description="Send requests with this header to the canary."
    )
    cookie: str | None = Field(
        default=None,
        pattern=NGINX_BASIC_CHARS,
        max_length=256,
        description="canary-by-cookie: requests with this cookie set to `always` go to the "
        "canary, `never` to stable.",
    )
    canary_ingress_annotations: dict[str, str] | None = Field(
        default=None,
        max_length=20,
        description="Extra annotations for the canary Ingress (the canary ones are the "
        "operator's and cannot be set here).",
    )


class IstioVirtualService(ApiModel):
    name: str = Field(
        pattern=DNS_SUBDOMAIN, max_length=253, description="VirtualService (same namespace)."
    )
    routes: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=50,
        description="Names of the HTTP routes to weight; default: every HTTP route with a "
        "destination to stable. A named route without one is an error.",
    )


class IstioDestinationRule(ApiModel):
    name: str = Field(
        pattern=DNS_SUBDOMAIN, max_length=253, description="DestinationRule (same namespace)."
    )
    stable_subset_name: str = Field(
        min_length=1, max_length=253, description="Subset of the stable pods."
    )
    canary_subset_name: str = Field(
        min_length=1,
        max_length=253,
        description="Subset the operator points at the canary pods (its labels are set to "
        "the canary's while a rollout runs and restored by cleanup).",
    )


class IstioRouting(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.virtualServices.all(v, self.virtualServices"
                    ".filter(w, w.name == v.name).size() == 1)",
                    "each VirtualService may be named once",
                ),
                cel(
                    "!has(self.destinationRule) || self.destinationRule.stableSubsetName"
                    " != self.destinationRule.canarySubsetName",
                    "the stable and canary subsets must differ",
                ),
            ]
        }
    )
    virtual_services: list[IstioVirtualService] = Field(
        min_length=1,
        max_length=20,
        description="VirtualServices whose HTTP routes are weighted between stable and canary.",
    )
    destination_rule: IstioDestinationRule | None = Field(
        default=None,
        description="Split by subsets of this DestinationRule's host instead of by the "
        "stable and canary Service hosts.",
    )


# The router kinds: the keys of spec.trafficRouting, as TrafficRouting.kind and
# CanaryRolloutSpec.router_kind name them. traffic/factory.py builds a router for each
# (and checks it covers exactly these); the layers below traffic/ compare with them.
ROUTER_REPLICAS = "replicas"  # the default: weight by pod count, no router object
ROUTER_GATEWAY_API = "gatewayAPI"
ROUTER_NGINX = "nginx"
ROUTER_ISTIO = "istio"
ROUTER_KINDS = (ROUTER_REPLICAS, ROUTER_GATEWAY_API, ROUTER_NGINX, ROUTER_ISTIO)


class TrafficRouting(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "[has(self.replicas), has(self.gatewayAPI), has(self.nginx), has(self.istio)]"
                    ".filter(x, x).size() <= 1",
                    "set at most one traffic router",
                )
            ]
        }
    )
    replicas: ReplicasRouting | None = Field(
        default=None, description="Weight by pod count (the default router)."
    )
    gateway_api: GatewayAPIRouting | None = Field(
        default=None, alias="gatewayAPI", description="Weight by Gateway API HTTPRoute."
    )
    nginx: NginxRouting | None = Field(
        default=None, description="Weight by an ingress-nginx canary Ingress."
    )
    istio: IstioRouting | None = Field(
        default=None, description="Weight by Istio VirtualService HTTP routes."
    )

    @property
    def kind(self) -> str:
        # With several set (the CRD refuses it; a spec built in code may not), the one
        # the operator has always routed with: nginx, then istio, then gatewayAPI.
        if self.nginx:
            return ROUTER_NGINX
        if self.istio:
            return ROUTER_ISTIO
        if self.gateway_api:
            return ROUTER_GATEWAY_API
        return ROUTER_REPLICAS


class CanaryStepSpec(ApiModel):
    replicas: int = Field(default=1, ge=1, le=1000, description="Canary pods to start.")


class PauseStepSpec(ApiModel):
    duration: str | None = Field(
        default=None,
        pattern=DURATION,
        description="How long to wait (e.g. 30s, 5m). Without it the rollout waits until "
        "resumed (annotation canary-operator.dev/resume set to this step's number).",
    )


class JobTemplate(ApiModel):
    metadata: ObjectMeta | None = None
    spec: OpenObject = Field(description="A batch/v1 JobSpec.")


class SecretKeyRef(ApiModel):
    name: str = Field(pattern=DNS_SUBDOMAIN, description="Secret in the rollout's namespace.")
    key: str = Field(min_length=1)


class HeaderValueFrom(ApiModel):
    secret_key_ref: SecretKeyRef


class WebhookHeader(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.value) != has(self.valueFrom)", "set one of value, valueFrom")
            ]
        }
    )
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9-]+$")
    value: str | None = None
    value_from: HeaderValueFrom | None = Field(
        default=None, description="Take the value from a Secret (e.g. a bearer token)."
    )


class WebhookSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.url) != has(self.urlFrom)", "set one of url, urlFrom")
            ]
        }
    )
    url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="URL the rollout's context is POSTed to. Shown redacted in status, "
        "Events and logs (userinfo dropped, query values and token-like path segments "
        "replaced by ***).",
    )
    url_from: HeaderValueFrom | None = Field(
        default=None,
        description="Take the URL from a Secret (for endpoints whose credential is in the "
        "URL, such as chat incoming webhooks): the spec then holds no token at all.",
    )
    timeout: str = Field(default="10s", pattern=DURATION, description="Per-call timeout.")
    retries: int = Field(default=2, ge=0, le=10, description="Retries after a failed call.")
    headers: list[WebhookHeader] | None = Field(default=None, max_length=20)
    body: str | None = Field(
        default=None,
        max_length=16384,
        description="Request body template sent instead of the rollout's context (e.g. the "
        "JSON a chat endpoint expects). {{name}} is replaced by a context value, escaped for "
        "a JSON string: rollout, namespace, run, target, step, weight, phase, outcome, "
        "message, version, canaryService, stableService. An unknown name is refused.",
    )
    content_type: str = Field(
        default="application/json",
        min_length=1,
        max_length=200,
        description="Content-Type of the request.",
    )


class TestStepSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.job) != has(self.webhook)", "a test sets exactly one of job, webhook")
            ]
        }
    )
    job: JobTemplate | None = Field(
        default=None,
        description="Run this Job; pass when it succeeds. It gets CANARY_SERVICE, CANARY_URL, "
        "STABLE_SERVICE, ROLLOUT_NAME and ROLLOUT_STEP in its environment.",
    )
    webhook: WebhookSpec | None = Field(default=None, description="POST to a URL; 2xx passes.")


class PrometheusProviderSpec(ApiModel):
    address: str = Field(pattern=r"^https?://", description="Base URL of the Prometheus API.")
    timeout: str = Field(default="10s", pattern=DURATION)


class WebhookMetricProviderSpec(ApiModel):
    url: str = Field(
        pattern=r"^https?://",
        description='POSTed {query, context}; answers {"value": number or null}.',
    )
    timeout: str = Field(default="10s", pattern=DURATION)
    headers: list[WebhookHeader] | None = Field(default=None, max_length=20)


class MetricProvider(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.prometheus) != has(self.webhook)",
                    "a provider sets one of prometheus, webhook",
                )
            ]
        }
    )
    prometheus: PrometheusProviderSpec | None = None
    webhook: WebhookMetricProviderSpec | None = None


class NoDataPolicy(StrEnum):
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"
    PASS = "Pass"


class Direction(StrEnum):
    INCREASE = "increase"
    DECREASE = "decrease"
    EITHER = "either"


class AnalysisMetricSpec(ApiModel):
    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    query: str = Field(
        min_length=1,
        description="Query for one number. {{role}} (canary, baseline, stable), "
        "{{deployment}}, {{namespace}} and {{rollout}} are replaced before it is sent.",
    )
    provider: MetricProvider | None = Field(
        default=None, description="Overrides the analysis step's provider."
    )
    success_condition: str | None = Field(
        default=None, description="Expression on `result`, e.g. `result < 0.05`."
    )
    failure_condition: str | None = Field(
        default=None, description="Expression on `result`, e.g. `result > 0.1`."
    )
    failure_limit: int = Field(default=0, ge=0, description="Failed measurements tolerated.")
    consecutive_success_limit: int = Field(
        default=0, ge=0, description="Pass early after this many successes in a row (0: off)."
    )
    no_data: NoDataPolicy = Field(
        default=NoDataPolicy.FAIL,
        description="What a measurement without data counts as. No data is not a pass unless "
        "set to Pass.",
    )
    # Statistical comparison (judge: kayenta)
    group: str | None = Field(default=None, max_length=63)
    direction: Direction = Field(default=Direction.EITHER)
    critical: bool = False
    allowed_increase: float = Field(default=1.0, ge=1.0, description="Mean ratio allowed up.")
    allowed_decrease: float = Field(
        default=1.0, gt=0.0, le=1.0, description="Mean ratio allowed down."
    )


class JudgeKind(StrEnum):
    THRESHOLDS = "thresholds"
    KAYENTA = "kayenta"


class AnalysisStepSpec(ApiModel):
    """Measure metrics while the rollout holds its weight, then decide Pass/Fail/Inconclusive."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.judge != 'thresholds' || self.metrics.all(m, "
                    "has(m.successCondition) || has(m.failureCondition))",
                    "the thresholds judge needs a successCondition or failureCondition "
                    "on every metric",
                    ".metrics",
                ),
            ]
        }
    )
    provider: MetricProvider | None = Field(default=None, description="Default metric provider.")
    metrics: list[AnalysisMetricSpec] = Field(
        min_length=1,
        max_length=20,
        description="The metrics, each named once.",
        # A list keyed by name (names are required): the API server refuses a name used
        # twice (spec.steps[N].analysis.metrics[M]: Duplicate value).
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    interval: str = Field(default="30s", pattern=DURATION, description="Between measurements.")
    count: int = Field(default=5, ge=1, le=200, description="Measurements to take.")
    initial_delay: str | None = Field(
        default=None, pattern=DURATION, description="Wait before the first measurement."
    )
    judge: JudgeKind = Field(default=JudgeKind.THRESHOLDS)
    pass_score: float = Field(default=75, ge=0, le=100, description="kayenta: pass threshold.")
    marginal_score: float = Field(
        default=50, ge=0, le=100, description="kayenta: marginal threshold."
    )
    group_weights: dict[str, float] | None = Field(default=None, description="kayenta weights.")
    inconclusive: str = Field(
        default="Fail",
        pattern="^(Fail|Pause)$",
        description="Fail, or Pause until resumed (resume = pass).",
    )


class PromoteStepSpec(ApiModel):
    """Roll the new version into the stable Deployment and wait until it is available."""


class PreviewStepSpec(ApiModel):
    """Blue-green only (made from spec.strategy.blueGreen): the preview Deployment at the
    target's full size, and its preview Service; no traffic of the stable Service."""


class SwitchStepSpec(ApiModel):
    """Blue-green only (made from spec.strategy.blueGreen): all traffic of the stable
    Service to the preview's pods at once, read back."""


_STEP_KINDS = [
    "canary",
    "setWeight",
    "pause",
    "test",
    "parallel",
    "analysis",
    "promote",
    "preview",
    "switch",
]
# The kinds a blue-green's steps before and after the switch may use.
BLUE_GREEN_STEP_KINDS = ("pause", "test", "parallel", "analysis")
_PARALLEL_KINDS = ["pause", "test", "analysis"]


def _exactly_one(kinds: list[str]) -> str:
    return "[" + ", ".join(f"has(self.{k})" for k in kinds) + "].filter(x, x).size() == 1"


class ParallelItem(ApiModel):
    """A step inside a parallel group: a test, a pause or an analysis."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    _exactly_one(_PARALLEL_KINDS),
                    "a parallel item sets exactly one of: " + ", ".join(_PARALLEL_KINDS),
                )
            ]
        }
    )
    name: str | None = Field(default=None, max_length=63, description="Display name.")
    timeout: str | None = Field(default=None, pattern=DURATION, description="Step deadline.")
    pause: PauseStepSpec | None = None
    test: TestStepSpec | None = None
    analysis: AnalysisStepSpec | None = None

    @property
    def kind(self) -> str:
        return next(k for k in _PARALLEL_KINDS if getattr(self, _attr(k)) is not None)


class Step(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    _exactly_one(_STEP_KINDS),
                    "a step sets exactly one of: " + ", ".join(_STEP_KINDS),
                )
            ]
        }
    )
    name: str | None = Field(default=None, max_length=63, description="Display name.")
    timeout: str | None = Field(default=None, pattern=DURATION, description="Step deadline.")
    canary: CanaryStepSpec | None = Field(default=None, description="Start/scale the canary.")
    set_weight: int | None = Field(
        default=None, ge=0, le=100, description="Percent of traffic to the canary."
    )
    pause: PauseStepSpec | None = None
    test: TestStepSpec | None = None
    parallel: list[ParallelItem] | None = Field(
        default=None,
        min_length=1,
        max_length=20,
        description="Steps run at once; all must pass; the first failure cancels the rest. "
        "Their names (optional) must differ.",
        json_schema_extra=unique_names("parallel item"),
    )
    analysis: AnalysisStepSpec | None = None
    promote: PromoteStepSpec | None = None
    preview: PreviewStepSpec | None = Field(
        default=None, description="Blue-green only: set by spec.strategy.blueGreen, never here."
    )
    switch: SwitchStepSpec | None = Field(
        default=None, description="Blue-green only: set by spec.strategy.blueGreen, never here."
    )

    @property
    def kind(self) -> str:
        return next(k for k in _STEP_KINDS if getattr(self, _attr(k)) is not None)


def _attr(kind: str) -> str:
    return "set_weight" if kind == "setWeight" else kind


class CleanupStep(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.job) != has(self.webhook)", "a cleanup step sets one of job, webhook")
            ]
        }
    )
    name: str | None = Field(default=None, max_length=63)
    required: bool = Field(
        default=True,
        description="true (default): a failure blocks the cleanup, which retries with "
        "backoff and keeps the lock. false (best effort, e.g. a notification): a failure "
        "is recorded in status.cleanup.failedSteps and one Warning Event, and the cleanup "
        "goes on and releases the lock.",
    )
    job: JobTemplate | None = None
    webhook: WebhookSpec | None = None


class ConcurrencyPolicy(StrEnum):
    QUEUE = "Queue"
    SUPERSEDE = "Supersede"
    REJECT = "Reject"


class Concurrency(ApiModel):
    policy: ConcurrencyPolicy = Field(
        default=ConcurrencyPolicy.QUEUE,
        description="Queue: wait in creation order. Supersede: when several wait, only the "
        "newest runs and older waiting ones end Superseded. Reject: fail at once if the lock "
        "is taken.",
    )


class CleanupPolicy(ApiModel):
    retry_backoff_seconds: int = Field(
        default=2, ge=1, le=300, description="First retry delay of a failing cleanup."
    )
    max_backoff_seconds: int = Field(
        default=60, ge=1, le=3600, description="Longest delay between cleanup retries."
    )
    keep_failed_jobs: bool = Field(
        default=False,
        description="Keep the test Jobs that failed (or timed out), for their logs, instead of "
        "deleting them in cleanup. They are owned by the rollout: deleting the rollout deletes "
        "them. The tail of their logs is kept in the step's status either way.",
    )


class RollbackWindow(ApiModel):
    """What a promotion keeps of the version it replaces, for `kubectl canary undo`: the
    replaced pod templates, in an annotation on the target (no pods, no ReplicaSets)."""

    revisions: int = Field(
        default=1,
        ge=0,
        le=10,
        description="How many previous versions to keep (newest first); 0 keeps none.",
    )
    max_age: str | None = Field(
        default=None,
        pattern=DURATION,
        description="How long a replaced version can be put back (e.g. 24h); default: "
        "until the window's later promotions push it out.",
    )


# The names of the steps a blue-green is made of (its own; a user's step may not take them).
PREVIEW_STEP = "preview"
AWAIT_SWITCH_STEP = "await-switch"
SWITCH_STEP = "switch"
PROMOTE_STEP = "promote"
_BLUE_GREEN_NAMES = (PREVIEW_STEP, AWAIT_SWITCH_STEP, SWITCH_STEP, PROMOTE_STEP)
_STEP_KINDS_MOVING = [k for k in _STEP_KINDS if k not in BLUE_GREEN_STEP_KINDS]


def _blue_green_steps(item: str) -> JsonDict:
    """The schema extra of a blue-green's steps: names unique, only the kinds that run
    something (pause, test, parallel, analysis)."""
    extra = unique_names(item)
    rules = list(extra["x-kubernetes-validations"])  # type: ignore[arg-type]
    rules.append(
        cel(
            "self.all(s, " + " && ".join(f"!has(s.{k})" for k in _STEP_KINDS_MOVING) + ")",
            "a blue-green's steps are pause, test, parallel or analysis steps "
            "(the preview, the switch and the promotion are the strategy's own)",
        )
    )
    names = ", ".join(f"'{n}'" for n in _BLUE_GREEN_NAMES)
    rules.append(
        cel(
            f"self.all(s, !has(s.name) || !(s.name in [{names}]))",
            f"{names} are the names of a blue-green's own steps",
        )
    )
    return {"x-kubernetes-validations": rules}


class BlueGreenStrategy(ApiModel):
    """Blue-green: the new version runs beside the stable at full size (the preview, its
    own Deployment and preview Service), the steps before the switch run against it,
    all traffic of the stable Service is switched to it at once, the steps after the
    switch run (a failure switches back), and then the target takes the new version and
    the preview goes. Argo Rollouts' blueGreen: activeService is spec.target.service,
    prePromotionAnalysis/postPromotionAnalysis are beforeSwitch/afterSwitch."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.beforeSwitch) || !has(self.afterSwitch) || self.afterSwitch.all("
                    "a, !has(a.name) || !self.beforeSwitch.exists(b, has(b.name) && "
                    "b.name == a.name))",
                    "a step after the switch has the name of a step before it: step names "
                    "must be unique",
                    ".afterSwitch",
                )
            ]
        }
    )

    preview_service: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=63,
        description="Name of the preview Service, which reaches only the preview's pods "
        "(made and removed by the operator; default: <target>-canary).",
    )
    before_switch: list[Step] | None = Field(
        default=None,
        max_length=40,
        description="Steps run against the preview before the switch (tests, analysis, "
        "pauses): a failure ends the run with the stable untouched.",
        json_schema_extra=_blue_green_steps("step"),
    )
    after_switch: list[Step] | None = Field(
        default=None,
        max_length=40,
        description="Steps run after the switch, while the previous version is still up: a "
        "failure switches all traffic back to it.",
        json_schema_extra=_blue_green_steps("step"),
    )
    auto_promotion_enabled: bool = Field(
        default=True,
        description="false: the rollout pauses before the switch until resumed "
        "(`kubectl canary resume` or `promote`).",
    )
    scale_down_delay_seconds: int = Field(
        default=30,
        ge=0,
        le=86400,
        description="How long the previous version stays up after the switch (at least; "
        "longer while steps after the switch run): until then a switch back is instant.",
    )


class Strategy(ApiModel):
    blue_green: BlueGreenStrategy | None = Field(
        default=None,
        description="Blue-green instead of a canary: spec.steps is then left out.",
    )


def blue_green_steps(blue_green: BlueGreenStrategy) -> list[Step]:
    """The steps a blue-green runs: the preview, the steps before the switch, a pause
    (without auto promotion), the switch, the steps after it, the promotion."""
    steps = [Step(name=PREVIEW_STEP, preview=PreviewStepSpec())]
    steps += [s.model_copy(deep=True) for s in blue_green.before_switch or []]
    if not blue_green.auto_promotion_enabled:
        steps.append(Step(name=AWAIT_SWITCH_STEP, pause=PauseStepSpec()))
    steps.append(Step(name=SWITCH_STEP, switch=SwitchStepSpec()))
    steps += [s.model_copy(deep=True) for s in blue_green.after_switch or []]
    steps.append(Step(name=PROMOTE_STEP, promote=PromoteStepSpec()))
    return steps


def _blue_green_problems(spec: CanaryRolloutSpec, given: list[Step]) -> list[str]:
    """What is wrong with a blue-green spec, each naming its field."""
    bg = spec.strategy.blue_green if spec.strategy else None
    assert bg is not None
    where = "spec.strategy.blueGreen"
    problems = []
    if given:
        problems.append(
            "spec.steps: a blue-green has no spec.steps; its steps are "
            f"{where}.beforeSwitch and {where}.afterSwitch"
        )
    if spec.router_kind != ROUTER_REPLICAS:
        problems.append(
            f"{where}: only the replicas router switches so far (spec.trafficRouting."
            f"{spec.router_kind} is not supported for blue-green yet)"
        )
    if not spec.target.service:
        problems.append(f"{where}: needs spec.target.service (the active Service it switches)")
    if bg.preview_service is not None and bg.preview_service == spec.target.service:
        problems.append(f"{where}.previewService: must differ from spec.target.service")
    before = {s.name for s in bg.before_switch or [] if s.name}
    for field, steps in (("beforeSwitch", bg.before_switch), ("afterSwitch", bg.after_switch)):
        for n, step in enumerate(steps or []):
            if step.kind not in BLUE_GREEN_STEP_KINDS:
                problems.append(
                    f"{where}.{field}[{n}]: a {step.kind} step is not allowed here "
                    f"(only {', '.join(BLUE_GREEN_STEP_KINDS)})"
                )
            if step.name and field == "afterSwitch" and step.name in before:
                problems.append(
                    f"{where}.{field}[{n}].name: {step.name!r} is also a step before the switch"
                )
            if step.name in _BLUE_GREEN_NAMES:
                problems.append(
                    f"{where}.{field}[{n}].name: {step.name!r} is the name of the "
                    "blue-green's own step"
                )
    return problems


class CanaryRolloutSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.template) || has(self.images)",
                    "set the new version: spec.template or spec.images",
                ),
                cel(
                    "!(has(self.trafficRouting) && (has(self.trafficRouting.gatewayAPI)"
                    " || has(self.trafficRouting.nginx) || has(self.trafficRouting.istio)))"
                    " || has(self.target.service)",
                    "gatewayAPI, nginx and istio routing need spec.target.service "
                    "(the stable Service)",
                    ".target.service",
                ),
                cel(
                    "has(self.steps) != (has(self.strategy) && has(self.strategy.blueGreen))",
                    "set spec.steps (a canary) or spec.strategy.blueGreen (a blue-green), not both",
                    ".steps",
                ),
                cel(
                    "!has(self.steps) || self.steps.all(s, !has(s.preview) && !has(s.switch))",
                    "preview and switch steps are a blue-green's own (spec.strategy.blueGreen)",
                    ".steps",
                ),
                cel(
                    "!has(self.strategy) || !has(self.strategy.blueGreen) || "
                    "has(self.target.service)",
                    "a blue-green needs spec.target.service (the active Service it switches)",
                    ".target.service",
                ),
                cel(
                    "!has(self.strategy) || !has(self.strategy.blueGreen) || "
                    "!has(self.trafficRouting) || has(self.trafficRouting.replicas)",
                    "a blue-green switches with the replicas router only (so far)",
                    ".strategy.blueGreen",
                ),
                cel(
                    "(has(self.trafficRouting) && (has(self.trafficRouting.gatewayAPI)"
                    " || has(self.trafficRouting.nginx) || has(self.trafficRouting.istio)))"
                    " || !has(self.steps)"
                    " || self.steps.all(s, !has(s.setWeight) || s.setWeight < 100)",
                    "the replicas router cannot send 100% to the canary; use promote",
                    ".steps",
                ),
                cel(
                    # A weight needs canary pods, which only a canary step starts.
                    "!has(self.steps) || !self.steps.exists(s, has(s.setWeight)) || "
                    "(self.steps.exists(s, has(s.canary)) && "
                    "self.steps.map(s, has(s.canary)).indexOf(true) < "
                    "self.steps.map(s, has(s.setWeight)).indexOf(true))",
                    "a setWeight step needs a canary step before it (the canary step starts "
                    "the canary pods that take the weight)",
                    ".steps",
                ),
            ]
        }
    )
    target: TargetRef = Field(description="What is rolled out.")
    lock_group: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=50,
        description="Lock key shared by several targets (e.g. shared networking). "
        "Defaults to the target Deployment.",
    )
    template: PodTemplate | None = Field(
        default=None, description="The new version's full pod template."
    )
    images: list[ImageOverride] | None = Field(
        default=None,
        min_length=1,
        description="The new version as image overrides of the target's current template, "
        "one entry a container.",
        # A list keyed by container, as a PodSpec's containers are: the API server
        # refuses a container named twice (spec.images[1]: Duplicate value).
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["container"],
        },
    )
    traffic_routing: TrafficRouting | None = Field(
        default=None, description="How traffic is split (default: replicas)."
    )
    steps: list[Step] = Field(
        default_factory=list,
        min_length=1,
        max_length=100,
        description="The rollout, in order (at least one step). Their names (optional) must "
        "differ. Left out for a blue-green (spec.strategy.blueGreen), whose steps it makes.",
        json_schema_extra=unique_names("step"),
    )
    strategy: Strategy | None = Field(
        default=None, description="Blue-green instead of a canary (default: a canary)."
    )
    cleanup: list[CleanupStep] | None = Field(
        default=None,
        max_length=20,
        description="User steps run at the end of the built-in cleanup, whatever the outcome. "
        "Their names (optional) must differ.",
        json_schema_extra=unique_names("cleanup step"),
    )
    baseline: bool = Field(
        default=False,
        description="Run a baseline: a fresh Deployment of the stable version at the "
        "canary's size, created with the canary and removed by cleanup (an unbiased control "
        "for analysis).",
    )
    concurrency: Concurrency | None = None
    cleanup_policy: CleanupPolicy | None = None
    progress_deadline_seconds: int = Field(
        default=3600,
        ge=10,
        description="The rollout fails if it has not finished its steps this long after it "
        "started (time spent paused does not count).",
    )
    rollback_window: RollbackWindow | None = Field(
        default=None,
        description="What this rollout's promotion keeps of the version it replaces, for "
        "`kubectl canary undo` (default: the one previous version, for as long as it is the "
        "previous one). Changing it starts no run.",
    )
    paused: bool = Field(default=False, description="Hold the rollout at its current step.")
    abort: bool = Field(default=False, description="Stop the rollout; cleanup runs.")

    @model_validator(mode="after")
    def _made_steps(self) -> CanaryRolloutSpec:
        """A blue-green's steps are made from spec.strategy.blueGreen (in memory only:
        the object keeps no spec.steps). Parsing a spec made so again gives it again."""
        bg = self.strategy.blue_green if self.strategy else None
        if bg is None:
            if not self.steps:
                raise ValueError("spec.steps: at least one step (or spec.strategy.blueGreen)")
            for n, step in enumerate(self.steps):
                if step.kind in ("preview", "switch"):
                    raise ValueError(
                        f"spec.steps[{n}].{step.kind}: a blue-green's own step "
                        "(spec.strategy.blueGreen)"
                    )
            return self
        made = blue_green_steps(bg)
        given = [] if self.steps == made else self.steps
        problems = _blue_green_problems(self, given)
        if problems:
            raise ValueError("; ".join(problems))
        self.steps = made
        return self

    @property
    def blue_green(self) -> BlueGreenStrategy | None:
        return self.strategy.blue_green if self.strategy else None

    @property
    def lock_key(self) -> str:
        return self.lock_group or self.target.deployment

    @property
    def policy(self) -> ConcurrencyPolicy:
        return self.concurrency.policy if self.concurrency else ConcurrencyPolicy.QUEUE

    @property
    def router_kind(self) -> str:
        return self.traffic_routing.kind if self.traffic_routing else ROUTER_REPLICAS

    @property
    def replicas_routing(self) -> ReplicasRouting | None:
        return self.traffic_routing.replicas if self.traffic_routing else None

    @property
    def replicas_mode(self) -> ReplicasMode | None:
        """The replicas router's mode as the spec names it (None: not named)."""
        routing = self.replicas_routing
        return routing.mode if routing is not None else None

    @property
    def stable_floor(self) -> int:
        routing = self.replicas_routing
        return routing.stable_floor if routing is not None else 1

    def run_fingerprint(self) -> str:
        """Hash of everything that defines a run; control fields are left out so that
        pausing or aborting is not mistaken for a new version."""
        import hashlib
        import json

        body = self.model_dump(
            by_alias=True, exclude={"paused", "abort", "rollback_window"}, exclude_none=True
        )
        replicas = body.get("trafficRouting", {}).get("replicas")
        if replicas is not None:  # as before mode lost its default: no new run on upgrade
            replicas.setdefault("mode", ReplicasMode.ADD.value)
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------- status


class Phase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    CLEANING_UP = "CleaningUp"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    ABORTED = "Aborted"
    SUPERSEDED = "Superseded"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_PHASES


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED, Phase.SUPERSEDED})


class Result(StrEnum):
    """Why a run ended: decided before cleanup starts."""

    SUCCEEDED = "Succeeded"
    STEP_FAILED = "StepFailed"
    ABORTED = "Aborted"
    DELETED = "Deleted"
    SUPERSEDED = "Superseded"
    DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    SPEC_CHANGED = "SpecChanged"
    REJECTED = "LockBusy"
    OLDER_THAN_LIVE = "OlderThanLive"  # a newer version was promoted since this spec
    UNDO_OUTDATED = "UndoOutdated"  # an undo whose promotion is no longer the live one
    INVALID = "InvalidSpec"
    TARGET_NOT_FOUND = "TargetNotFound"
    LOCK_LOST = "LockLost"

    @property
    def final_phase(self) -> Phase:
        return {
            Result.SUCCEEDED: Phase.SUCCEEDED,
            Result.ABORTED: Phase.ABORTED,
            Result.DELETED: Phase.ABORTED,
            Result.SUPERSEDED: Phase.SUPERSEDED,
            Result.OLDER_THAN_LIVE: Phase.SUPERSEDED,
            Result.UNDO_OUTDATED: Phase.SUPERSEDED,
        }.get(self, Phase.FAILED)


class StepPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


class StatusModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Condition(StatusModel):
    type: str
    status: str = Field(description="True, False or Unknown.")
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class MetricVerdictStatus(StatusModel):
    """One metric's verdict: thresholds (counts) or statistical (classification, CI)."""

    name: str
    verdict: str = Field(description="Successful/Failed/Inconclusive, or Pass/High/Low/Nodata.")
    successful: int | None = None
    failed: int | None = None
    inconclusive: int | None = None
    no_data: int | None = None
    last_value: float | None = None
    ratio: float | None = None
    estimate: float | None = None
    lower_ci: float | None = Field(default=None, alias="lowerCI")
    upper_ci: float | None = Field(default=None, alias="upperCI")
    message: str | None = None


class MeasurementStatus(StatusModel):
    at: str
    values: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="metric -> role (canary, baseline, stable) -> value; absent = no data.",
    )
    error: str | None = None


class AnalysisStatus(StatusModel):
    phase: str = Field(default="Running", description="Running, Successful, Failed, Inconclusive.")
    measurements: list[MeasurementStatus] = Field(default_factory=list)
    metrics: list[MetricVerdictStatus] | None = None
    score: float | None = Field(default=None, description="kayenta: overall score.")
    classification: str | None = Field(default=None, description="kayenta: Pass/Marginal/Fail.")
    message: str | None = None


class ContainerLogTail(StatusModel):
    """The end of one container's log of a failed test Job, kept before cleanup
    deletes the Job."""

    pod: str
    container: str
    tail: str = Field(default="", description="The last bytes of the log (at most 4 KiB).")
    truncated: bool = Field(default=False, description="The log was longer than the tail.")
    error: str | None = Field(default=None, description="Why the log could not be read.")


class ChildStepStatus(StatusModel):
    """One item of a parallel group (structural schemas cannot recurse)."""

    name: str
    kind: str
    phase: StepPhase = StepPhase.PENDING
    started_at: str | None = None
    finished_at: str | None = None
    message: str | None = None
    job: str | None = Field(default=None, description="The Job this step created.")
    logs: list[ContainerLogTail] | None = Field(
        default=None,
        description="Log tails of the failed test Job's pods (`kubectl canary logs`).",
    )
    analysis: AnalysisStatus | None = None


class StepStatus(ChildStepStatus):
    children: list[ChildStepStatus] | None = None


class Outcome(StatusModel):
    result: Result
    message: str
    failed_step: int | None = Field(default=None, description="1-based number of the step.")
    decided_at: str


class QueueStatus(StatusModel):
    lock: str = Field(description="Name of the Lease serialising this target.")
    holder: str | None = Field(default=None, description="Rollout holding the lock.")
    holder_phase: str | None = None
    position: int = Field(default=0, description="0 while holding the lock, else 1-based.")
    waiting: int = Field(default=0, description="Rollouts waiting for this lock.")


class LockStatus(StatusModel):
    name: str
    token: int = Field(description="Fencing token: the Lease's transition count at acquire.")
    acquired_at: str
    recovered_from: str | None = Field(
        default=None, description="Previous holder whose leftovers were cleaned at takeover."
    )


class FailedCleanupStep(StatusModel):
    step: int = Field(description="1-based number of the spec.cleanup step.")
    name: str
    message: str
    at: str


class PromotionUndo(StatusModel):
    """A promotion this run started and did not complete (its promote step had not
    succeeded), undone by its cleanup: the target's pod template and its promotion
    record put back as they were before it (annotation
    canary-operator.dev/pre-promotion, written with the promotion)."""

    promoted: str = Field(description="The version the promotion put on the target.")
    restores: str = Field(description="The version the target ran before it.")
    template_hash: str = Field(description="Hash of the pod template put back.")
    undone_at: str | None = Field(
        default=None, description="When the target was seen back on its template."
    )


class CleanupStatus(StatusModel):
    stage: str = Field(
        default="Routing",
        description="UndoingPromotion, Routing, Deleting, UserSteps, Verifying.",
    )
    promotion_undo: PromotionUndo | None = Field(
        default=None, description="An incomplete promotion of this run, undone by cleanup."
    )
    user_step: int = 0
    failed_steps: list[FailedCleanupStep] | None = Field(
        default=None, description="Best-effort (required: false) steps that failed."
    )
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: str | None = None
    blocked_by: list[str] | None = Field(
        default=None,
        description="Objects whose deletion is overdue (kind/name: why, if known): the "
        "cleanup waits for them, its lock kept (condition CleanupVerified, reason "
        "CleanupBlocked, says how to let them go).",
    )
    started_at: str | None = None
    finished_at: str | None = None


class LiveVersion(StatusModel):
    """What the target runs, as the last promotion by this operator recorded it on the
    target (annotation canary-operator.dev/promotion)."""

    rollout: str = Field(description="Rollout whose run promoted it.")
    uid: str | None = None
    run: int | None = None
    version: str = Field(description="container=image, for every container promoted.")
    label: str | None = Field(default=None, description="Short form: the image names.")
    version_since: str | None = Field(
        default=None, description="When the promoting spec was first seen (its age)."
    )
    promoted_at: str | None = None
    this_rollout: bool | None = Field(
        default=None, description="Promoted by this rollout (any run)."
    )
    drifted: str | None = Field(
        default=None,
        description="Set when the target's images no longer match the promotion (e.g. a "
        "client-side `kubectl apply` of an older manifest): what it runs now.",
    )


class CanaryRolloutStatus(StatusModel):
    phase: Phase = Phase.PENDING
    observed_generation: int | None = None
    run: int = Field(default=0, description="Run number; a spec change or retry starts another.")
    fingerprint: str | None = None
    version_since: str | None = Field(
        default=None,
        description="When this spec (its fingerprint) was first seen: the rollout's "
        "creationTimestamp, or when the operator saw the spec change. A run whose "
        "versionSince is before the live version's is older than it and is refused.",
    )
    next_version_since: str | None = Field(
        default=None,
        description="While a run goes on, when the operator first saw the spec change "
        "that the next run will roll out: that run's place in the lock's queue and its "
        "versionSince.",
    )
    live: LiveVersion | None = Field(default=None, description="What the target runs.")
    message: str | None = None
    current_step: int | None = Field(default=None, description="0-based index of the step.")
    step_label: str | None = Field(default=None, description="e.g. 3/7 setWeight")
    weight: int | None = Field(default=None, description="Observed canary traffic percent.")
    queue_label: str | None = Field(
        default=None, description="Holding, or the position in the lock's queue and the holder."
    )
    stable_replicas: int | None = None
    replicas_mode: ReplicasMode | None = Field(
        default=None,
        description="The replicas router's mode of this run (recorded at its start, kept to "
        "its end) and, with no mode in the spec, of the next: Shift from a rollout's first "
        "run, Add for a run started by an operator older than this field.",
    )
    queue: QueueStatus | None = None
    lock: LockStatus | None = None
    outcome: Outcome | None = None
    cleanup: CleanupStatus | None = None
    steps: list[StepStatus] | None = None
    queued_at: str | None = Field(
        default=None,
        description="When the operator queued this run (microseconds): orders rollouts "
        "created within the same second.",
    )
    started_at: str | None = None
    deadline_at: str | None = None
    paused_at: str | None = None
    completed_at: str | None = None
    conditions: list[Condition] | None = None

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions or [] if c.type == type_), None)


def dump_status(status: CanaryRolloutStatus) -> dict[str, Any]:
    """Status as written to the API (camelCase, no nulls)."""
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")
