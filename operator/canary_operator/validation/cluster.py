"""`ClusterValidator`: the reads and server-side dry-runs of the checks made before a
run touches anything. Each problem names the field it is about."""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Coroutine
from typing import Any, Protocol

from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.api.models import JobTemplate, Phase
from canary_operator.engine.labels import job_name
from canary_operator.engine.types import Rollout
from canary_operator.kube import objects
from canary_operator.kube.api import Conflict, JsonObj, Kube, path
from canary_operator.validation.fields import SecretUse, job_templates, name_problems, secret_uses
from canary_operator.validation.images import image_problems
from canary_operator.validation.names import taken_problem, target_problem
from canary_operator.validation.refusals import api_refusal, refused_for_good
from canary_operator.validation.routes import RouteChecks

Check = Coroutine[Any, Any, list[str]]


class SpecValidator(Protocol):
    async def problems(
        self, rollout: Rollout, target: JsonObj, service: JsonObj | None
    ) -> list[str]: ...


def secret_problem(use: SecretUse, secret: JsonObj | None, namespace: str) -> str | None:
    """Why a webhook cannot use this Secret key (None: it can). A URL is never shown:
    the Secret holds it because it is a credential."""
    ref = use.ref
    if secret is None:
        return f"{use.field}: Secret {ref.name!r} not found in namespace {namespace}"
    raw = (secret.get("data") or {}).get(ref.key)
    if raw is None:
        return f"{use.field}: Secret {ref.name!r} has no key {ref.key!r}"
    if use.url:
        try:
            url = base64.b64decode(raw, validate=True).decode().strip()
        except (binascii.Error, UnicodeDecodeError):
            url = ""
        if not url.startswith(("http://", "https://")):
            return f"{use.field}: Secret {ref.name!r} key {ref.key!r} holds no http(s) URL"
    return None


class ClusterValidator:
    """Reads and server-side dry-runs; each problem names the field it is about. An
    answer that says nothing of the spec (a timeout, a 500) is raised: the run waits
    and checks again."""

    def __init__(self, kube: Kube, cached: Kube | None = None) -> None:
        self.kube = kube
        # The watch-fed views, for whether a name is taken: a user's object of a
        # canary's name is not made in the moment between a read and the run.
        self.cached = cached or kube

    async def problems(
        self, rollout: Rollout, target: JsonObj, service: JsonObj | None
    ) -> list[str]:
        spec, ns = rollout.spec, rollout.namespace
        problems = [*name_problems(spec), *image_problems(spec, target)]
        if spec.target.service and service is None:
            problems.append(
                f"spec.target.service: Service {spec.target.service!r} not found in namespace {ns}"
            )
        if (problem := target_problem(spec, target)) is not None:
            problems.append(problem)
        checks: list[Check] = [RouteChecks(self.kube, rollout, service).problems()]
        checks.append(self._names(rollout))
        checks += self._secrets(rollout)
        if not problems:  # a canary of a broken template is not worth a dry-run
            checks.append(self._canary(rollout, target, service))
        checks += [
            self._job(rollout, target, service, field, suffix, label, template)
            for field, suffix, label, template in job_templates(spec)
        ]
        for found in await asyncio.gather(*checks):
            problems += found
        return problems

    async def _names(self, rollout: Rollout) -> list[str]:
        """The canary's (and baseline's) names free for this target (validation/names.py)."""
        spec, ns = rollout.spec, rollout.namespace
        # Checked before the lock is asked for (Pending), and again once it is held.
        lock_held = rollout.status.phase != Phase.PENDING
        wanted = [("Deployment", "deployments", objects.canary_name(spec))]
        wanted.append(("Service", "services", objects.canary_service_name(spec)))
        if spec.baseline:
            wanted.append(("Deployment", "deployments", objects.baseline_name(spec)))
        found = await asyncio.gather(
            *(
                self.cached.get(
                    path("apps" if kind == "Deployment" else "", "v1", plural, ns, name)
                )
                for kind, plural, name in wanted
            )
        )
        return [
            p
            for (kind, _, _), obj in zip(wanted, found, strict=True)
            if (p := taken_problem(spec, kind, obj, lock_held)) is not None
        ]

    def _secrets(self, rollout: Rollout) -> list[Check]:
        """One read of each Secret, however many fields name it."""
        uses: dict[str, list[SecretUse]] = {}
        for use in secret_uses(rollout.spec):
            uses.setdefault(use.ref.name, []).append(use)
        return [self._secret(rollout.namespace, name, found) for name, found in uses.items()]

    async def _secret(self, namespace: str, name: str, uses: list[SecretUse]) -> list[str]:
        try:
            secret = await self.kube.get(path("", "v1", "secrets", namespace, name))
        except ApiException as exc:
            if exc.status == 403:
                return [f"{u.field}: the operator may not read Secret {name!r}" for u in uses]
            raise
        return [p for u in uses if (p := secret_problem(u, secret, namespace)) is not None]

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
