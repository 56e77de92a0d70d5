"""Local stand-ins for chat webhooks that record what they receive, for end-to-end
tests of notifications. Paths: ``/slack/...`` answers 200 ``ok`` as Slack's incoming
webhooks do (https://api.slack.com/messaging/webhooks), ``/teams/...`` answers 200
``1`` as Teams incoming webhooks do (MicrosoftDocs/msteams-docs, msteams-platform/
webhooks-and-connectors/how-to/connectors-using.md, "Post a message to the webhook
using cURL"), ``/broken/...`` answers 500 for as long as the server lives,
``/hang/...`` accepts the request and never answers (until the server closes). Each
endpoint refuses (400) a body that breaks its service's documented rules, like the
real one would, so a wrong shape shows as a failed delivery as well as a failed
assertion. Loopback only."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any

from e2e.local_http import LocalEndpoints


@dataclass(frozen=True)
class Received:
    path: str
    body: Any  # parsed JSON (None if not JSON)
    at: float  # monotonic
    wall: float = 0.0  # time.time(): to compare with timestamps the operator wrote


def slack_problem(doc: Any) -> str | None:
    """Slack: a JSON object whose `text` is a non-empty string (with `blocks`, it is
    the notification fallback); `blocks`, when given, a list of typed blocks."""
    if not isinstance(doc, dict):
        return "invalid_payload"
    if not isinstance(doc.get("text"), str) or not doc["text"]:
        return "no_text"
    blocks = doc.get("blocks")
    if blocks is not None and (
        not isinstance(blocks, list)
        or not all(isinstance(b, dict) and b.get("type") for b in blocks)
    ):
        return "invalid_blocks"
    return None


def teams_problem(doc: Any) -> str | None:
    """Teams (Adaptive Card through an incoming webhook): `type` must be "message",
    `attachments` a list of cards, each `contentType`
    "application/vnd.microsoft.card.adaptive" with the card (type AdaptiveCard,
    a version, a body) in `content`."""
    if not isinstance(doc, dict) or doc.get("type") != "message":
        return 'the "type" field must be "message"'
    attachments = doc.get("attachments")
    if not isinstance(attachments, list) or not attachments:
        return "attachments must be a non-empty list"
    for a in attachments:
        if a.get("contentType") != "application/vnd.microsoft.card.adaptive":
            return "contentType must be application/vnd.microsoft.card.adaptive"
        card = a.get("content") or {}
        if card.get("type") != "AdaptiveCard" or not card.get("version"):
            return "content must be an AdaptiveCard with a version"
        if not isinstance(card.get("body"), list) or not card["body"]:
            return "the card needs a body"
    return None


class ChatEndpoints(LocalEndpoints):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[Received] = []
        self._closing = threading.Event()

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        with self._lock:
            self.received.append(Received(request.path, doc, time.monotonic(), time.time()))
        kind = request.path.strip("/").split("/")[0]
        if kind == "hang":
            self._closing.wait()
            return
        if kind == "broken":
            status, text = 500, "internal error"
        elif kind == "slack":
            problem = slack_problem(doc)
            status, text = (400, problem) if problem else (200, "ok")
        elif kind == "teams":
            problem = teams_problem(doc)
            status, text = (400, problem) if problem else (200, "1")
        else:
            status, text = 200, "ok"
        self.answer(request, status, text.encode(), "text/plain")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()  # the hanging requests end (unanswered)
        super().__exit__(exc_type, exc, tb)

    def to(self, prefix: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path.lstrip("/").startswith(prefix)]
