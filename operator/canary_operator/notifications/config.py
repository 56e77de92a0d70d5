"""Per-namespace notification configuration and per-rollout subscriptions.

A ConfigMap `canary-operator-notifications` in the rollout's namespace defines the
services (where to send), and may override templates (what to say) and triggers
(which template, and for `on-lock-waiting` after how long). Values written `$key`
are read from key `key` of the Secret `canary-operator-notifications-secret`, so URLs
that carry credentials stay in a Secret. A rollout subscribes with annotations:

    notifications.canary-operator.dev/subscribe.<trigger>.<service>: "<recipient>"

(the recipient is optional: a Slack channel override; empty otherwise). The shape
follows Argo Rollouts' notifications (service.* / template.* / trigger.* keys and
subscribe.<trigger>.<service> annotations); the payloads are ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import yaml

from canary_operator.api.models import parse_duration
from canary_operator.notifications import triggers

CONFIGMAP = "canary-operator-notifications"
SECRET = "canary-operator-notifications-secret"
SUBSCRIBE_PREFIX = "notifications.canary-operator.dev/subscribe."
SERVICE_TYPES = ("slack", "teams", "webhook")
DEFAULT_LOCK_WAITING = timedelta(minutes=10)


class ConfigError(ValueError):
    """The ConfigMap, the Secret or a subscription is not usable (said in an Event)."""


@dataclass(frozen=True)
class Template:
    title: str
    message: str
    color: str = "#439FE0"  # Slack attachment colour; Teams uses the title's style


@dataclass(frozen=True)
class Service:
    name: str
    type: str  # slack | teams | webhook
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None  # webhook: templated body (JSON unless contentType says not)
    method: str = "POST"
    content_type: str = "application/json"
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class Trigger:
    template: str
    after: timedelta | None = None  # on-lock-waiting only


@dataclass(frozen=True)
class Subscription:
    trigger: str
    service: str
    recipient: str = ""


DEFAULT_TEMPLATES: dict[str, Template] = {
    "rollout-started": Template(
        "Rollout {{ rollout.name }} started",
        "Run {{ rollout.run }} of {{ rollout.namespace }}/{{ rollout.name }} took the lock of "
        "deployment/{{ rollout.target }} and started its steps ({{ rollout.newVersion }}).",
    ),
    "rollout-step-failed": Template(
        "Rollout {{ rollout.name }}: step {{ rollout.failedStep }} failed",
        "{{ rollout.outcome }}. Cleanup runs next.",
        "#E01E5A",
    ),
    "rollout-paused": Template(
        "Rollout {{ rollout.name }} paused",
        "Run {{ rollout.run }} is paused at step {{ rollout.step }}: {{ rollout.message }}",
        "#ECB22E",
    ),
    "rollout-promoted": Template(
        "Rollout {{ rollout.name }} promoted",
        "The new version ({{ rollout.newVersion }}) is in deployment/{{ rollout.target }}.",
        "#2EB67D",
    ),
    "rollout-succeeded": Template(
        "Rollout {{ rollout.name }} succeeded",
        "Run {{ rollout.run }} of {{ rollout.namespace }}/{{ rollout.name }} succeeded; "
        "cleanup verified.",
        "#2EB67D",
    ),
    "rollout-failed": Template(
        "Rollout {{ rollout.name }} failed",
        "Run {{ rollout.run }} ended {{ rollout.phase }}: {{ rollout.outcome }}",
        "#E01E5A",
    ),
    "rollout-aborted": Template(
        "Rollout {{ rollout.name }} aborted",
        "Run {{ rollout.run }} was aborted and cleaned up: {{ rollout.outcome }}",
        "#ECB22E",
    ),
    "rollout-cleanup-blocked": Template(
        "Rollout {{ rollout.name }}: cleanup blocked",
        "Cleanup of deployment/{{ rollout.target }} cannot finish ({{ rollout.cleanupError }}); "
        "it retries with backoff and keeps the lock.",
        "#E01E5A",
    ),
    "rollout-lock-waiting": Template(
        "Rollout {{ rollout.name }} is waiting for its lock",
        "Run {{ rollout.run }} has waited {{ rollout.waited }} for lock {{ rollout.lock }}: "
        "{{ rollout.queue }}",
        "#ECB22E",
    ),
}

DEFAULT_TRIGGERS: dict[str, Trigger] = {
    t: Trigger(f"rollout-{t.removeprefix('on-')}") for t in triggers.TRIGGERS
} | {triggers.LOCK_WAITING: Trigger("rollout-lock-waiting", DEFAULT_LOCK_WAITING)}


@dataclass(frozen=True)
class NotificationConfig:
    services: dict[str, Service]
    templates: dict[str, Template]
    triggers: dict[str, Trigger]

    def lock_waiting_after(self) -> timedelta:
        return self.triggers[triggers.LOCK_WAITING].after or DEFAULT_LOCK_WAITING


def _yaml(key: str, text: str) -> dict[str, Any]:
    try:
        value = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"ConfigMap {CONFIGMAP} key {key}: not YAML: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"ConfigMap {CONFIGMAP} key {key}: expected a mapping")
    return value


def _secret_value(value: Any, secret: dict[str, str], where: str) -> str:
    text = str(value)
    if text.startswith("$"):
        name = text[1:]
        if name not in secret:
            raise ConfigError(f"{where}: Secret {SECRET} has no key {name!r}")
        return secret[name]
    return text


def parse(data: dict[str, str] | None, secret: dict[str, str] | None) -> NotificationConfig:
    """The configuration from a ConfigMap's data and a Secret's decoded data."""
    data, secret = data or {}, secret or {}
    services: dict[str, Service] = {}
    templates = dict(DEFAULT_TEMPLATES)
    trigger_map = dict(DEFAULT_TRIGGERS)
    for key, text in sorted(data.items()):
        if key.startswith("service."):
            parts = key.split(".", 2)
            if len(parts) != 3 or parts[1] not in SERVICE_TYPES or not parts[2]:
                raise ConfigError(
                    f"ConfigMap {CONFIGMAP} key {key}: expected service.<type>.<name>, "
                    f"type one of {', '.join(SERVICE_TYPES)}"
                )
            kind, name = parts[1], parts[2]
            raw = _yaml(key, text)
            if "url" not in raw:
                raise ConfigError(f"ConfigMap {CONFIGMAP} key {key}: url is required")
            url = _secret_value(raw["url"], secret, key)
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"ConfigMap {CONFIGMAP} key {key}: url must be http(s)")
            headers = {
                str(h): _secret_value(v, secret, key) for h, v in (raw.get("headers") or {}).items()
            }
            services[name] = Service(
                name=name,
                type=kind,
                url=url,
                headers=headers,
                body=str(raw["body"]) if raw.get("body") is not None else None,
                method=str(raw.get("method") or "POST").upper(),
                content_type=str(raw.get("contentType") or "application/json"),
                timeout_seconds=float(raw.get("timeoutSeconds") or 10.0),
            )
        elif key.startswith("template."):
            name = key.removeprefix("template.")
            raw = _yaml(key, text)
            base = templates.get(name, Template("", ""))
            templates[name] = Template(
                title=str(raw.get("title", base.title)),
                message=str(raw.get("message", base.message)),
                color=str(raw.get("color", base.color)),
            )
        elif key.startswith("trigger."):
            name = key.removeprefix("trigger.")
            if name not in triggers.TRIGGERS:
                raise ConfigError(
                    f"ConfigMap {CONFIGMAP} key {key}: unknown trigger; known: "
                    + ", ".join(triggers.TRIGGERS)
                )
            raw = _yaml(key, text)
            base_trigger = trigger_map[name]
            after = base_trigger.after
            if raw.get("after") is not None:
                try:
                    after = parse_duration(str(raw["after"]))
                except ValueError as exc:
                    raise ConfigError(f"ConfigMap {CONFIGMAP} key {key}: after: {exc}") from exc
            trigger_map[name] = Trigger(str(raw.get("template", base_trigger.template)), after)
    for name, trigger in trigger_map.items():
        if trigger.template not in templates:
            raise ConfigError(f"trigger {name}: no template {trigger.template!r}")
    return NotificationConfig(services, templates, trigger_map)


def subscriptions(annotations: dict[str, str] | None) -> tuple[list[Subscription], list[str]]:
    """A rollout's subscriptions, and the problems of annotations that cannot be one."""
    found: list[Subscription] = []
    problems: list[str] = []
    for key, value in sorted((annotations or {}).items()):
        if not key.startswith(SUBSCRIBE_PREFIX):
            continue
        rest = key.removeprefix(SUBSCRIBE_PREFIX)
        trigger, _, service = rest.partition(".")
        if trigger not in triggers.TRIGGERS or not service:
            problems.append(
                f"annotation {key}: expected {SUBSCRIBE_PREFIX}<trigger>.<service>, trigger one "
                f"of {', '.join(triggers.TRIGGERS)}"
            )
            continue
        found.append(Subscription(trigger, service, str(value or "").strip()))
    return found, problems
