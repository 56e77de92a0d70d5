"""Local stand-ins for chat webhooks that record what they receive, for end-to-end
tests of notifications. Paths: ``/slack/...`` answers 200 ``ok`` as Slack's incoming
webhooks do (https://api.slack.com/messaging/webhooks), ``/teams/...`` answers 200
``1`` as Teams incoming webhooks do (MicrosoftDocs/msteams-docs, msteams-platform/
webhooks-and-connectors/how-to/connectors-using.md, "Post a message to the webhook
using cURL"), ``/broken/...`` answers 500 for as long as the server lives. Each
endpoint refuses (400) a body that breaks its service's documented rules, like the
real one would, so a wrong shape shows as a failed delivery as well as a failed
assertion. Loopback only."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    body: Any  # parsed JSON (None if not JSON)
    at: float  # monotonic


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


class ChatEndpoints:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self._lock = threading.Lock()
        endpoints = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    doc = json.loads(raw)
                except ValueError:
                    doc = None
                with endpoints._lock:
                    endpoints.received.append(Received(self.path, doc, time.monotonic()))
                kind = self.path.strip("/").split("/")[0]
                if kind == "broken":
                    self._answer(500, "internal error")
                elif kind == "slack":
                    problem = slack_problem(doc)
                    self._answer(400 if problem else 200, problem or "ok")
                elif kind == "teams":
                    problem = teams_problem(doc)
                    self._answer(400 if problem else 200, problem or "1")
                else:
                    self._answer(200, "ok")

            def _answer(self, status: int, text: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/{path.lstrip('/')}"

    def to(self, prefix: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path.lstrip("/").startswith(prefix)]

    def __enter__(self) -> ChatEndpoints:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
