"""The parts of a spec that a run will need from the cluster, each with its field path:
the webhooks and the Secrets they name, the Jobs a run may create; and the names that
identify items, which must differ."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from canary_operator.api.models import (
    CanaryRolloutSpec,
    JobTemplate,
    MetricProvider,
    SecretKeyRef,
    WebhookHeader,
    WebhookMetricProviderSpec,
    WebhookSpec,
)
from canary_operator.engine.spec_checks import spec_items

Webhook = WebhookSpec | WebhookMetricProviderSpec


@dataclass(frozen=True)
class SecretUse:
    """A Secret key a webhook reads: for a header's value, or (`url`) for its URL."""

    field: str  # ...valueFrom.secretKeyRef / ...urlFrom.secretKeyRef
    ref: SecretKeyRef
    url: bool


def webhooks(spec: CanaryRolloutSpec) -> Iterator[tuple[str, Webhook]]:
    """(field, webhook) of every webhook of the spec: each step's and parallel item's
    test and metric providers, in order, then the cleanup steps'."""

    def provider(field: str, p: MetricProvider | None) -> Iterator[tuple[str, Webhook]]:
        if p is not None and p.webhook is not None:
            yield f"{field}.webhook", p.webhook

    for field, item in spec_items(spec):
        if item.test is not None and item.test.webhook is not None:
            yield f"{field}.test.webhook", item.test.webhook
        if item.analysis is not None:
            yield from provider(f"{field}.analysis.provider", item.analysis.provider)
            for m, metric in enumerate(item.analysis.metrics):
                yield from provider(f"{field}.analysis.metrics[{m}].provider", metric.provider)
    for k, user in enumerate(spec.cleanup or []):
        if user.webhook is not None:
            yield f"spec.cleanup[{k}].webhook", user.webhook


def webhook_headers(spec: CanaryRolloutSpec) -> Iterator[tuple[str, WebhookHeader]]:
    """(field, header) of every webhook header: tests, metric providers, cleanup steps."""
    for field, hook in webhooks(spec):
        for h, header in enumerate(hook.headers or []):
            yield f"{field}.headers[{h}]", header


def secret_uses(spec: CanaryRolloutSpec) -> Iterator[SecretUse]:
    """Every Secret key a webhook names: its URL's (`urlFrom`), its headers'."""
    for field, hook in webhooks(spec):
        source = hook.url_from if isinstance(hook, WebhookSpec) else None
        if source is not None:
            yield SecretUse(f"{field}.urlFrom.secretKeyRef", source.secret_key_ref, url=True)
        for h, header in enumerate(hook.headers or []):
            if header.value_from is not None:
                where = f"{field}.headers[{h}].valueFrom.secretKeyRef"
                yield SecretUse(where, header.value_from.secret_key_ref, url=False)


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


def _repeated(field: str, names: Sequence[str | None], what: str) -> list[str]:
    first: dict[str, int] = {}
    problems = []
    for n, name in enumerate(names):
        if name is None:
            continue  # an unnamed item is shown by its kind: it may repeat
        if name in first:
            problems.append(
                f"{field}[{n}].name: {what} {name!r} is already the name of {field}[{first[name]}]"
            )
        first.setdefault(name, n)
    return problems


def name_problems(spec: CanaryRolloutSpec) -> list[str]:
    """Names that identify items (steps, parallel items, cleanup steps, metrics) used
    twice. The CRD refuses them at apply; a spec from an older CRD, or built in code,
    is refused here."""
    problems = _repeated("spec.steps", [s.name for s in spec.steps], "step")
    for field, item in spec_items(spec):
        parallel = getattr(item, "parallel", None) or []
        problems += _repeated(f"{field}.parallel", [i.name for i in parallel], "parallel item")
        if item.analysis is not None:
            metrics = [m.name for m in item.analysis.metrics]
            problems += _repeated(f"{field}.analysis.metrics", metrics, "metric")
    problems += _repeated("spec.cleanup", [c.name for c in spec.cleanup or []], "cleanup step")
    return problems
