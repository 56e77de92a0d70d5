"""Validation of a rollout against the cluster, before its run touches anything.

The schema (OpenAPI + CEL) refuses what it can at `kubectl apply`; what needs the
cluster is checked here at the start of a run: the containers named by `images` exist
in the target, image references are well formed, every Job of every step and the
canary's pod template pass the API server's own validation (server-side dry-run), the
HTTPRoute and the Service exist, and the Secrets named by webhook headers hold their
keys. Each problem is a plain sentence that starts with the field it is about
(`spec.steps[2].test.job: ...`), so the user knows what to fix.

The pure checks are functions; `ClusterValidator` does the reads and dry-runs.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any, Protocol

from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.api.models import (
    CanaryRolloutSpec,
    JobTemplate,
    MetricProvider,
    WebhookHeader,
)
from canary_operator.engine.labels import job_name
from canary_operator.engine.types import Rollout
from canary_operator.kube import objects
from canary_operator.kube.api import Conflict, JsonObj, Kube, path
from canary_operator.traffic.gateway_api import is_service_ref

# Image references, as container runtimes parse them (the distribution "reference"
# grammar): [domain[:port]/]path-component(/path-component)*[:tag][@digest], the name
# at most 255 characters. The API server itself only refuses surrounding whitespace
# (and only for Pods, not for a Deployment's template), so the rest is checked here.
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::{_TAG})?(?:@{_DIGEST})?")
NAME_MAX = 255
# Long enough for a name, a tag and a sha512 digest; a longer text is not an image.
REFERENCE_MAX = NAME_MAX + 1 + 128 + 1 + 7 + 128


def image_problem(image: Any) -> str | None:
    """Why `image` is not a usable image reference (None: it is)."""
    if not isinstance(image, str) or not image:
        return "an image is required"
    if image != image.strip():
        return f"{_quote(image)} must not have leading or trailing whitespace"
    if any(c.isspace() for c in image):
        return f"{_quote(image)} must not contain whitespace"
    if len(image) > REFERENCE_MAX:
        return f"the image reference is {len(image)} characters long (at most {REFERENCE_MAX})"
    match = _REFERENCE.fullmatch(image)
    if match is None:
        return (
            f"{_quote(image)} is not a valid image reference (expected "
            "[registry/]repository[:tag][@digest], the repository in lower case)"
        )
    if len(match.group("name")) > NAME_MAX:
        return f"the repository name is longer than {NAME_MAX} characters"
    return None


def _quote(text: str, room: int = 80) -> str:
    shown = text if len(text) <= room else text[:room] + "..."
    return repr(shown)


def _containers(pod_spec: Any) -> Iterator[tuple[str, Any]]:
    """(field, container) of a PodSpec given as plain JSON (it may be ill-typed)."""
    if not isinstance(pod_spec, dict):
        return
    for kind in ("initContainers", "containers"):
        items = pod_spec.get(kind)
        if isinstance(items, list):
            for n, container in enumerate(items):
                yield f"{kind}[{n}]", container


def image_problems(spec: CanaryRolloutSpec, target: JsonObj) -> list[str]:
    """The new version's containers and images, checked against the target."""
    problems: list[str] = []
    template_spec = ((target.get("spec") or {}).get("template") or {}).get("spec") or {}
    names = [c.get("name") for _, c in _containers(template_spec) if isinstance(c, dict)]
    deployment = spec.target.deployment
    for n, override in enumerate(spec.images or []):
        if override.container not in names:
            has = ", ".join(sorted(str(x) for x in names)) or "none"
            problems.append(
                f"spec.images[{n}].container: the target Deployment {deployment} has no "
                f"container {override.container!r} (it has: {has})"
            )
        problem = image_problem(override.image)
        if problem:
            problems.append(f"spec.images[{n}].image: {problem}")
    if spec.template is not None:
        for field, container in _containers(spec.template.spec.model_dump()):
            if isinstance(container, dict):
                problem = image_problem(container.get("image"))
                if problem:
                    problems.append(f"spec.template.spec.{field}.image: {problem}")
    return problems


def route_problem(route: JsonObj | None, name: str, stable_service: str) -> str | None:
    field = "spec.trafficRouting.gatewayAPI.httpRoute"
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


def webhook_headers(spec: CanaryRolloutSpec) -> Iterator[tuple[str, WebhookHeader]]:
    """(field, header) of every webhook header: tests, cleanup steps, metric providers."""

    def provider(field: str, p: MetricProvider | None) -> Iterator[tuple[str, WebhookHeader]]:
        if p is not None and p.webhook is not None:
            for h, header in enumerate(p.webhook.headers or []):
                yield f"{field}.webhook.headers[{h}]", header

    for n, step in enumerate(spec.steps):
        items: list[tuple[str, Any]] = [(f"spec.steps[{n}]", step)]
        items += [(f"spec.steps[{n}].parallel[{m}]", i) for m, i in enumerate(step.parallel or [])]
        for field, item in items:
            if item.test is not None and item.test.webhook is not None:
                for h, header in enumerate(item.test.webhook.headers or []):
                    yield f"{field}.test.webhook.headers[{h}]", header
            if item.analysis is not None:
                yield from provider(f"{field}.analysis.provider", item.analysis.provider)
                for m, metric in enumerate(item.analysis.metrics):
                    yield from provider(f"{field}.analysis.metrics[{m}].provider", metric.provider)
    for k, user in enumerate(spec.cleanup or []):
        if user.webhook is not None:
            for h, header in enumerate(user.webhook.headers or []):
                yield f"spec.cleanup[{k}].webhook.headers[{h}]", header


def job_templates(spec: CanaryRolloutSpec) -> Iterator[tuple[str, str, str, JobTemplate]]:
    """(field, Job name suffix, step label, template) of every Job a run may create."""
    for n, step in enumerate(spec.steps):
        if step.test is not None and step.test.job is not None:
            yield f"spec.steps[{n}].test.job", f"s{n + 1}", f"step {n + 1}", step.test.job
        for m, item in enumerate(step.parallel or []):
            if item.test is not None and item.test.job is not None:
                yield (
                    f"spec.steps[{n}].parallel[{m}].test.job",
                    f"s{n + 1}-{m + 1}",
                    f"step {n + 1}.{m + 1}",
                    item.test.job,
                )
    cleanup = spec.cleanup or []
    for k, user in enumerate(cleanup):
        if user.job is not None:
            label = f"cleanup {k + 1}/{len(cleanup)} {user.name or 'job'}"
            yield f"spec.cleanup[{k}].job", f"c{k + 1}-a0", label, user.job


_INVALID_PREFIX = re.compile(r'^[A-Za-z.]+ "[^"]*" is invalid: ')
# What the API server says of a value of the wrong JSON type, in Go's words.
_WRONG_TYPE = re.compile(
    r"(?:[A-Za-z]+ in version \S+ cannot be handled as a [A-Za-z]+: )?"
    r"json: cannot unmarshal (?P<got>\w+) into Go struct field \w+\.(?P<field>\S+)"
    r" of type (?P<want>\S+)"
)


def _json_type(go_type: str) -> str:
    if go_type.startswith("[]"):
        return "a list"
    if go_type.startswith("map[") or "." in go_type:
        return "an object"
    if go_type.startswith(("int", "uint", "float")):
        return "a number"
    return {"string": "a string", "bool": "true or false"}.get(go_type, go_type)


def api_refusal(exc: ApiException) -> str:
    """The API server's reason in plain words: without the `Kind "name" is invalid:`
    preamble, and a value of the wrong type said as such."""
    reason = str(exc.reason or f"HTTP {exc.status}")
    wrong = _WRONG_TYPE.search(reason)
    if wrong:
        got = {"object": "an object", "array": "a list", "number": "a number"}.get(
            wrong["got"], f"a {wrong['got']}"
        )
        return f"{wrong['field']} must be {_json_type(wrong['want'])}, not {got}"
    return _INVALID_PREFIX.sub("", reason)[:600]


def refused_for_good(exc: BaseException) -> bool:
    """An answer that sending the same request again cannot change: the API refused
    the object itself (400, 422, 403), or could not even type it (a 500 from
    server-side apply "failed to create typed patch object")."""
    if not isinstance(exc, ApiException):
        return False
    if exc.status in (400, 403, 422):
        return True
    return exc.status == 500 and "typed" in str(exc.reason or "")


class SpecValidator(Protocol):
    async def problems(
        self, rollout: Rollout, target: JsonObj, service: JsonObj | None
    ) -> list[str]: ...


class ClusterValidator:
    """Reads and server-side dry-runs; each problem names the field it is about."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    async def problems(
        self, rollout: Rollout, target: JsonObj, service: JsonObj | None
    ) -> list[str]:
        spec, ns = rollout.spec, rollout.namespace
        problems = image_problems(spec, target)
        if spec.target.service and service is None:
            problems.append(
                f"spec.target.service: Service {spec.target.service!r} not found in namespace {ns}"
            )
        checks = [self._route(rollout), *self._secrets(rollout)]
        if not problems:  # a canary of a broken template is not worth a dry-run
            checks.append(self._canary(rollout, target, service))
        checks += [
            self._job(rollout, target, service, field, suffix, label, template)
            for field, suffix, label, template in job_templates(spec)
        ]
        for found in await asyncio.gather(*checks):
            problems += found
        return problems

    async def _route(self, rollout: Rollout) -> list[str]:
        spec = rollout.spec
        if spec.traffic_routing is None or spec.traffic_routing.gateway_api is None:
            return []
        name = spec.traffic_routing.gateway_api.http_route
        route = await self.kube.get(
            path("gateway.networking.k8s.io", "v1", "httproutes", rollout.namespace, name)
        )
        problem = route_problem(route, name, spec.target.service or spec.target.deployment)
        return [problem] if problem else []

    def _secrets(self, rollout: Rollout) -> list[Any]:
        return [
            self._secret(rollout.namespace, field, header)
            for field, header in webhook_headers(rollout.spec)
            if header.value_from is not None
        ]

    async def _secret(self, namespace: str, field: str, header: WebhookHeader) -> list[str]:
        assert header.value_from is not None
        ref = header.value_from.secret_key_ref
        where = f"{field}.valueFrom.secretKeyRef"
        try:
            secret = await self.kube.get(path("", "v1", "secrets", namespace, ref.name))
        except ApiException as exc:
            if exc.status == 403:
                return [f"{where}: the operator may not read Secret {ref.name!r}"]
            raise
        if secret is None:
            return [f"{where}: Secret {ref.name!r} not found in namespace {namespace}"]
        if ref.key not in (secret.get("data") or {}):
            return [f"{where}: Secret {ref.name!r} has no key {ref.key!r}"]
        return []

    async def _canary(
        self, rollout: Rollout, target: JsonObj, service: JsonObj | None
    ) -> list[str]:
        spec, ns = rollout.spec, rollout.namespace
        selector = (service or {}).get("spec", {}).get("selector")
        manifest = objects.canary_deployment(
            spec, rollout.name, rollout.uid, ns, target, selector, 1
        )
        field = "spec.template" if spec.template is not None else "spec.images"
        return await self._dry_run(
            path("apps", "v1", "deployments", ns),
            manifest,
            f"{field}: the API server refuses the canary Deployment",
        )

    async def _job(
        self,
        rollout: Rollout,
        target: JsonObj,
        service: JsonObj | None,
        field: str,
        suffix: str,
        label: str,
        template: JobTemplate,
    ) -> list[str]:
        spec, ns = rollout.spec, rollout.namespace
        canary_service = objects.canary_service(
            spec, rollout.name, rollout.uid, ns, service, target
        )
        ports = canary_service["spec"].get("ports") or []
        manifest = objects.job_manifest(
            spec,
            rollout.name,
            rollout.uid,
            ns,
            job_name(rollout, suffix),
            template,
            label,
            cleanup=label.startswith("cleanup"),
            service_port=int(ports[0]["port"]) if ports else None,
        )
        return await self._dry_run(
            path("batch", "v1", "jobs", ns), manifest, f"{field}: the API server refuses this Job"
        )

    async def _dry_run(self, collection: str, body: JsonObj, what: str) -> list[str]:
        try:
            await self.kube.request("POST", collection, body, query={"dryRun": "All"})
        except Conflict:
            return []  # the name exists (an earlier attempt): the body was still valid
        except ApiException as exc:
            if refused_for_good(exc):
                return [f"{what}: {api_refusal(exc)}"]
            raise
        return []
