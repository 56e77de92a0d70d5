"""Webhook tests (checks/webhook.py) against scripted HTTP servers on 127.0.0.1."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from canary_operator.api.models import WebhookHeader, WebhookSpec
from canary_operator.checks.webhook import MAX_BACKOFF, resolve_headers, run_webhook
from tests.harness.fake_http import HANG, FakeServer, Reply
from tests.harness.prometheus import free_port

CONTEXT: dict[str, Any] = {
    "rollout": "web-v2",
    "namespace": "shop",
    "step": "3/7 test",
    "weight": 5,
    "canaryService": "web-canary.shop.svc",
}
FAST = 0.01  # backoff for tests that do not measure it


def spec(url: str, timeout: str = "5s", retries: int = 2, **fields: Any) -> WebhookSpec:
    return WebhookSpec(url=url, timeout=timeout, retries=retries, **fields)


async def test_2xx_passes_and_posts_the_context_with_headers() -> None:
    async with FakeServer(Reply(204, "")) as server:
        ok, message = await run_webhook(
            spec(server.url + "/hooks/smoke"), CONTEXT, {"Authorization": "Bearer s3"}
        )
    assert ok is True
    assert message == f"POST {server.url}/hooks/smoke: HTTP 204"
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/hooks/smoke")
    assert request.json() == CONTEXT
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == "Bearer s3"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_4xx_fails_at_once(status: int) -> None:
    body = "no such check: " + "x" * 300
    async with FakeServer(Reply(status, body)) as server:
        ok, message = await run_webhook(spec(server.url), CONTEXT, {}, backoff=FAST)
    assert ok is False
    assert len(server.requests) == 1
    assert message == f"POST {server.url}: HTTP {status}: {body[:200]}..."


async def test_redirects_are_not_followed() -> None:
    redirect = Reply(302, "", headers={"Location": "/elsewhere"})
    async with FakeServer(redirect, Reply(200)) as server:
        ok, message = await run_webhook(spec(server.url), CONTEXT, {}, backoff=FAST)
    assert (ok, len(server.requests)) == (False, 1)
    assert "HTTP 302" in message


async def test_5xx_is_retried_then_passes() -> None:
    async with FakeServer(Reply(503, "warming up"), Reply(500, "oops"), Reply(200, "ok")) as server:
        ok, message = await run_webhook(spec(server.url, retries=2), CONTEXT, {}, backoff=FAST)
    assert ok is True
    assert message == f"POST {server.url}: HTTP 200 (attempt 3 of 3)"
    assert len(server.requests) == 3
    assert all(r.json() == CONTEXT for r in server.requests)


async def test_5xx_until_retries_run_out_fails_with_the_last_answer() -> None:
    async with FakeServer(Reply(502, "bad gateway")) as server:
        ok, message = await run_webhook(spec(server.url, retries=1), CONTEXT, {}, backoff=FAST)
    assert ok is False
    assert len(server.requests) == 2
    assert message == f"POST {server.url}: HTTP 502: bad gateway (2 attempts)"


@pytest.mark.parametrize("status", [408, 429])
async def test_transient_4xx_are_retried(status: int) -> None:
    async with FakeServer(Reply(status, "slow down"), Reply(200)) as server:
        ok, _ = await run_webhook(spec(server.url), CONTEXT, {}, backoff=FAST)
    assert ok is True
    assert len(server.requests) == 2


async def test_without_retries_one_attempt() -> None:
    async with FakeServer(Reply(500, "")) as server:
        ok, message = await run_webhook(spec(server.url, retries=0), CONTEXT, {})
    assert (ok, len(server.requests)) == (False, 1)
    assert message.endswith("HTTP 500: (empty body) (1 attempt)")


async def test_timeouts_are_retried_and_bounded() -> None:
    async with FakeServer(HANG) as server:
        started = time.monotonic()
        ok, message = await run_webhook(
            spec(server.url, timeout="200ms", retries=2), CONTEXT, {}, backoff=FAST
        )
        elapsed = time.monotonic() - started
    assert ok is False
    assert message == f"POST {server.url}: timed out after 0.2s (3 attempts)"
    assert len(server.requests) == 3
    assert 3 * 0.2 <= elapsed < 3 * 0.2 + 2.0


async def test_a_timeout_then_success_passes() -> None:
    async with FakeServer(HANG, Reply(200)) as server:
        ok, message = await run_webhook(
            spec(server.url, timeout="200ms", retries=1), CONTEXT, {}, backoff=FAST
        )
    assert ok is True
    assert message.endswith("HTTP 200 (attempt 2 of 2)")


async def test_unreachable_is_retried_and_reported() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    ok, message = await run_webhook(spec(url, retries=1), CONTEXT, {}, backoff=FAST)
    assert ok is False
    assert message.startswith(f"POST {url}: unreachable: ")
    assert message.endswith("(2 attempts)")


async def test_backoff_doubles_between_retries() -> None:
    async with FakeServer(Reply(503)) as server:
        started = time.monotonic()
        await run_webhook(spec(server.url, retries=3), CONTEXT, {}, backoff=0.05)
        elapsed = time.monotonic() - started
    assert len(server.requests) == 4
    assert elapsed >= 0.05 + 0.1 + 0.2
    assert MAX_BACKOFF <= 5  # a retry never waits long


async def test_values_json_cannot_hold_are_sent_as_strings() -> None:
    at = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with FakeServer(Reply(200)) as server:
        ok, _ = await run_webhook(spec(server.url), {"at": at}, {})
    assert ok is True
    assert server.requests[0].json() == {"at": str(at)}


async def test_invalid_header_value_fails_without_retry() -> None:
    async with FakeServer(Reply(200)) as server:
        ok, message = await run_webhook(spec(server.url), CONTEXT, {"X-Token": "a\nb"})
    assert ok is False
    assert "invalid request" in message
    assert server.requests == []


async def test_credentials_in_the_url_stay_out_of_messages() -> None:
    async with FakeServer(Reply(404, "")) as server:
        url = server.url.replace("http://", "http://user:hunter2@")
        ok, message = await run_webhook(spec(url), CONTEXT, {})
    assert ok is False
    assert "hunter2" not in message
    assert message.startswith(f"POST {server.url}: HTTP 404")


# ------------------------------------------------------------------- resolve_headers


def header(
    name: str, value: str | None = None, secret: tuple[str, str] | None = None
) -> WebhookHeader:
    if secret is None:
        return WebhookHeader(name=name, value=value)
    return WebhookHeader.model_validate(
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret[0], "key": secret[1]}}}
    )


class Secrets:
    def __init__(self, data: dict[tuple[str, str], str]) -> None:
        self.data = data
        self.reads: list[tuple[str, str]] = []

    async def __call__(self, name: str, key: str) -> str | None:
        self.reads.append((name, key))
        return self.data.get((name, key))


async def test_resolve_headers_literal_and_from_secret() -> None:
    secrets = Secrets({("hook-auth", "token"): "Bearer abc\n"})
    headers = [header("X-Env", "prod"), header("Authorization", secret=("hook-auth", "token"))]
    resolved = await resolve_headers(headers, secrets)
    assert resolved == {"X-Env": "prod", "Authorization": "Bearer abc"}
    assert secrets.reads == [("hook-auth", "token")]


async def test_resolve_headers_without_headers() -> None:
    assert await resolve_headers(None, Secrets({})) == {}
    assert await resolve_headers([], Secrets({})) == {}


async def test_resolve_headers_names_the_missing_secret_and_key() -> None:
    headers = [header("Authorization", secret=("hook-auth", "token"))]
    with pytest.raises(ValueError) as info:
        await resolve_headers(headers, Secrets({("hook-auth", "other"): "x"}))
    assert str(info.value) == (
        "header Authorization: Secret 'hook-auth' has no key 'token' (or the Secret does not exist)"
    )


async def test_resolve_headers_refuses_line_breaks_and_empty_headers() -> None:
    with pytest.raises(ValueError, match="line break"):
        await resolve_headers([header("X-A", secret=("s", "k"))], Secrets({("s", "k"): "a\nb"}))
    with pytest.raises(ValueError, match="set value or valueFrom"):
        await resolve_headers([WebhookHeader(name="X-B")], Secrets({}))


async def test_resolved_secret_header_reaches_the_server() -> None:
    secrets = Secrets({("hook-auth", "token"): "Bearer xyz"})
    async with FakeServer(Reply(200)) as server:
        webhook = spec(
            server.url,
            headers=[header("Authorization", secret=("hook-auth", "token"))],
        )
        ok, _ = await run_webhook(webhook, CONTEXT, await resolve_headers(webhook.headers, secrets))
    assert ok is True
    assert server.requests[0].headers["Authorization"] == "Bearer xyz"


async def test_a_url_given_apart_from_the_spec_is_called_and_never_shown() -> None:
    """urlFrom: the reconciler reads the URL from a Secret and passes it in; the
    message shows it redacted."""
    async with FakeServer(Reply(400, "no")) as server:
        secret_url = f"{server.url}/hooks/T0AB12CD/s3cr3tT0k3nV4lu3x"
        hook = WebhookSpec.model_validate(
            {"urlFrom": {"secretKeyRef": {"name": "s", "key": "url"}}, "retries": 0}
        )
        ok, message = await run_webhook(hook, CONTEXT, {}, backoff=FAST, url=secret_url)
    assert not ok and "HTTP 400" in message
    assert "s3cr3tT0k3nV4lu3x" not in message and "T0AB12CD" not in message
    assert (
        len(server.requests) == 1 and server.requests[0].path == "/hooks/T0AB12CD/s3cr3tT0k3nV4lu3x"
    )


async def test_a_body_template_is_sent_as_the_body() -> None:
    async with FakeServer(Reply(200)) as server:
        hook = WebhookSpec.model_validate(
            {"url": server.url + "/chat", "body": '{"text": "{{rollout}} in {{namespace}}"}'}
        )
        ok, _ = await run_webhook(hook, {"rollout": "web", "namespace": "prod"}, {}, backoff=FAST)
    assert ok
    request = server.requests[0]
    assert request.json() == {"text": "web in prod"}
    assert request.headers["Content-Type"] == "application/json"
