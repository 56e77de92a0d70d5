"""What is sent: the context templates see, and each service's payload shape.

- Slack incoming webhooks take a JSON object with `text` (required; with `blocks` it
  is the notification fallback), optional `blocks` (Block Kit) and, for legacy
  webhooks, `channel`; Slack answers 200 `ok`, 4xx with an error word such as
  `invalid_payload` or `no_text` (https://api.slack.com/messaging/webhooks).
- Microsoft Teams incoming webhooks (and the Workflows "post to a channel when a
  webhook request is received" flow that replaces them) take an Adaptive Card inside a
  message: `type` must be `message`, `attachments` holds cards whose `contentType` is
  `application/vnd.microsoft.card.adaptive` and whose `content` is the card
  (MicrosoftDocs/msteams-docs, msteams-platform/webhooks-and-connectors/how-to/
  connectors-using.md, "Send Adaptive Cards using an Incoming Webhook"). A throttled
  connector may answer 200 with "Microsoft Teams endpoint returned HTTP error 429"
  in the body (same page, "Rate limiting for connectors"): that is a retry.
- Generic webhooks: the service's templated `body`, or the context as JSON.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from canary_operator.api.models import CanaryRolloutStatus
from canary_operator.api.timestamps import iso
from canary_operator.kube.api import JsonObj
from canary_operator.notifications.config import Service, Subscription, Template
from canary_operator.notifications.templating import render

ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"
ADAPTIVE_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
TEAMS_THROTTLED = "Microsoft Teams endpoint returned HTTP error 429"


def context(body: JsonObj, trigger: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    meta, spec = body["metadata"], body.get("spec") or {}
    try:
        status = CanaryRolloutStatus.model_validate(body.get("status") or {})
    except ValueError:
        status = CanaryRolloutStatus()
    outcome = status.outcome
    images = [f"{i.get('container')}={i.get('image')}" for i in spec.get("images") or []]
    rollout: dict[str, Any] = {
        "name": meta["name"],
        "namespace": meta["namespace"],
        "uid": meta.get("uid", ""),
        "run": status.run,
        "phase": status.phase.value,
        "message": status.message or "",
        "target": (spec.get("target") or {}).get("deployment", ""),
        "step": status.step_label or "",
        "weight": status.weight if status.weight is not None else 0,
        "newVersion": ", ".join(images) or "template",
        "outcome": f"{outcome.result.value}: {outcome.message}" if outcome else "",
        "result": outcome.result.value if outcome else "",
        "failedStep": (outcome.failed_step or "") if outcome else "",
        "cleanupError": (status.cleanup.last_error or "") if status.cleanup else "",
        "lock": status.queue.lock if status.queue else "",
        "queue": status.queue_label or "",
        "waited": "",
    }
    rollout.update(extra or {})
    return {"rollout": rollout, "trigger": trigger, "time": _now()}


def _now() -> str:
    return iso(datetime.now(UTC))


def payload(
    service: Service, template: Template, ctx: dict[str, Any], sub: Subscription
) -> tuple[bytes, str]:
    """(body bytes, content type) for one service."""
    title = render(template.title, ctx)
    message = render(template.message, ctx)
    r = ctx["rollout"]
    facts = [
        ("Rollout", f"{r['namespace']}/{r['name']}"),
        ("Run", str(r["run"])),
        ("Phase", r["phase"]),
        ("Trigger", ctx["trigger"]),
    ]
    if service.type == "slack":
        doc: dict[str, Any] = {
            "text": f"{title}: {message}",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
                {"type": "section", "text": {"type": "mrkdwn", "text": message[:3000]}},
                {
                    "type": "context",
                    "elements": [{"type": "mrkdwn", "text": f"*{k}:* {v}"[:300]} for k, v in facts],
                },
            ],
        }
        if sub.recipient:
            doc["channel"] = sub.recipient
        return json.dumps(doc).encode(), "application/json"
    if service.type == "teams":
        card = {
            "$schema": ADAPTIVE_SCHEMA,
            "type": "AdaptiveCard",
            "version": "1.4",
            "body": [
                {
                    "type": "TextBlock",
                    "text": title,
                    "weight": "Bolder",
                    "size": "Medium",
                    "wrap": True,
                },
                {"type": "TextBlock", "text": message, "wrap": True},
                {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in facts]},
            ],
        }
        doc = {
            "type": "message",
            "attachments": [{"contentType": ADAPTIVE_CARD, "contentUrl": None, "content": card}],
        }
        return json.dumps(doc).encode(), "application/json"
    # generic webhook
    if service.body is not None:
        is_json = "json" in service.content_type
        text = render(service.body, {**ctx, "title": title, "message": message}, is_json)
        if is_json:
            json.loads(text)  # a body that is not JSON is a config error, said once
        return text.encode(), service.content_type
    doc = {**ctx, "title": title, "message": message}
    return json.dumps(doc).encode(), "application/json"


def accepted(service: Service, status: int, text: str) -> tuple[bool, bool]:
    """(delivered, worth retrying) for an HTTP answer."""
    if 200 <= status < 300:
        if service.type == "teams" and TEAMS_THROTTLED in text:
            return False, True
        return True, False
    retry = status >= 500 or status in (408, 425, 429)
    return False, retry
