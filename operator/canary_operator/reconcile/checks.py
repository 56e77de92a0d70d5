"""Starting the calls to user endpoints a plan asks for (webhook tests, metric
measurements) as background work (checks/inflight.py): nothing here runs on the
reconcile path but the start; answers come back as observations."""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime
from typing import Any

from canary_operator.analysis.providers import (
    MetricProvider,
    PrometheusProvider,
    ProviderError,
    WebhookMetricProvider,
)
from canary_operator.analysis.queries import render_query
from canary_operator.api.models import MeasurementStatus, parse_duration
from canary_operator.api.models import MetricProvider as MetricProviderSpec
from canary_operator.api.timestamps import iso
from canary_operator.checks.webhook import lock_headers, resolve_headers, run_webhook, with_lock
from canary_operator.engine.types import CallWebhook, CheckResult, Measure, Observed, Rollout
from canary_operator.kube import objects
from canary_operator.kube.api import Kube, describe, path
from canary_operator.reconcile.context import ReconcileContext
from canary_operator.redact import scrub


def start(ctx: ReconcileContext, action: CallWebhook | Measure) -> None:
    """Start a webhook call or a measurement in the background. Webhooks (tests,
    cleanup steps, metric providers) are told the run's lock and fencing token in
    headers (checks/webhook.py lock_headers)."""
    rollout, kube = ctx.rollout, ctx.deps.kube
    lock = ctx.obs.lock
    fencing = lock_headers(ctx.namespace, lock.name, lock.token if lock.held else None)
    if isinstance(action, CallWebhook):
        context = {**webhook_context(rollout, ctx.obs), "step": action.step_label}
        ctx.deps.checks.ensure(
            ctx.ref,
            action.key,
            lambda: call_webhook(kube, rollout, action, context, fencing),
            lambda exc: CheckResult(
                False, scrub(f"webhook call failed: {describe(exc)}", [action.webhook.url or ""])
            ),
        )
    else:
        ctx.deps.checks.ensure(
            ctx.ref,
            action.key,
            lambda: measure(kube, rollout, action, fencing),
            lambda exc: MeasurementStatus(
                at=iso(datetime.now(UTC)), error=f"measurement failed: {exc}"
            ),
        )


def webhook_context(rollout: Rollout, obs: Observed | None) -> dict[str, Any]:
    """What webhooks (tests and metric providers) are told about the rollout."""
    spec, ns, status = rollout.spec, rollout.namespace, rollout.status
    images = spec.images or []
    return {
        "rollout": rollout.name,
        "namespace": ns,
        "run": status.run,
        "target": spec.target.deployment,
        "weight": obs.route.weight if obs else status.weight,
        "canaryService": f"{objects.canary_service_name(spec)}.{ns}.svc",
        "stableService": f"{spec.target.service or spec.target.deployment}.{ns}.svc",
        "newVersion": [i.model_dump() for i in images] or "template",
        "version": ",".join(f"{i.container}={i.image}" for i in images) or "template",
        "phase": status.phase.value,
        "outcome": status.outcome.result.value if status.outcome else "",
        "message": status.outcome.message if status.outcome else "",
    }


async def call_webhook(
    kube: Kube,
    rollout: Rollout,
    action: CallWebhook,
    context: dict[str, Any],
    fencing: dict[str, str] | None = None,
) -> CheckResult:
    try:
        headers = await resolve_headers(
            action.webhook.headers, lambda n, k: secret(kube, rollout.namespace, n, k)
        )
        headers = with_lock(headers, fencing or {})
    except ValueError as exc:
        return CheckResult(False, str(exc))
    url = action.webhook.url
    source = action.webhook.url_from
    if source is not None:
        ref = source.secret_key_ref
        url = await secret(kube, rollout.namespace, ref.name, ref.key)
        if url is None:
            return CheckResult(
                False, f"urlFrom: Secret {ref.name!r} has no key {ref.key!r} (or is missing)"
            )
        url = url.strip()
        if not url.startswith(("http://", "https://")):
            return CheckResult(
                False, f"urlFrom: Secret {ref.name!r} key {ref.key!r} holds no http(s) URL"
            )
    try:
        ok, message = await run_webhook(action.webhook, context, headers, url=url)
    except Exception as exc:  # a URL from a Secret must not leak through an error
        return CheckResult(False, scrub(f"webhook call failed: {describe(exc)}", [url or ""]))
    return CheckResult(ok, message)


async def secret(kube: Kube, namespace: str, name: str, key: str) -> str | None:
    found = await kube.get(path("", "v1", "secrets", namespace, name))
    raw = ((found or {}).get("data") or {}).get(key)
    return base64.b64decode(raw).decode() if raw is not None else None


async def measure(
    kube: Kube, rollout: Rollout, action: Measure, fencing: dict[str, str] | None = None
) -> MeasurementStatus:
    """One measurement of every metric of an analysis step, for each role it compares;
    a webhook provider is sent `fencing` (the lock's headers) too."""
    spec, ns = rollout.spec, rollout.namespace
    deployments = {
        "canary": objects.canary_name(spec),
        "baseline": objects.baseline_name(spec),
        "stable": spec.target.deployment,
    }
    measurement = MeasurementStatus(at=iso(datetime.now(UTC)))
    for metric in action.analysis.metrics:
        provider_spec = metric.provider or action.analysis.provider
        if provider_spec is None:
            measurement.error = f"metric {metric.name}: no provider configured"
            return measurement
        try:
            provider = await _provider(kube, rollout, provider_spec, fencing or {})
            for role in action.roles:
                variables = {
                    "role": role,
                    "deployment": deployments[role],
                    "namespace": ns,
                    "rollout": rollout.name,
                }
                value = await provider.query(
                    render_query(metric.query, variables),
                    {"role": role, "metric": metric.name, **webhook_context(rollout, None)},
                )
                if value is not None and math.isfinite(value):
                    measurement.values.setdefault(metric.name, {})[role] = value
        except (ProviderError, ValueError) as exc:
            measurement.error = f"metric {metric.name}: {exc}"
            return measurement
    return measurement


async def _provider(
    kube: Kube, rollout: Rollout, spec: MetricProviderSpec, fencing: dict[str, str]
) -> MetricProvider:
    if spec.prometheus is not None:
        return PrometheusProvider(
            spec.prometheus.address, parse_duration(spec.prometheus.timeout).total_seconds()
        )
    assert spec.webhook is not None
    headers = await resolve_headers(
        spec.webhook.headers, lambda n, k: secret(kube, rollout.namespace, n, k)
    )
    return WebhookMetricProvider(
        spec.webhook.url,
        parse_duration(spec.webhook.timeout).total_seconds(),
        with_lock(headers, fencing),
    )
