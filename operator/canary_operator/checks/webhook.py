"""Webhook tests: POST the rollout's context as JSON to a URL; any 2xx answer passes.

Each call has the spec's ``timeout``. Connection errors, timeouts and 5xx answers (and
the transient 408 / 429) are retried up to ``retries`` times with a short doubling
backoff; any other answer (4xx, 3xx: redirects are not followed) fails at once.

Every call made for a run that holds its lock carries the lock's fencing token
(``lock_headers``): ``X-Canary-Lock-Lease: <namespace>/<Lease name>`` and
``X-Canary-Lock-Token: <the Lease's leaseTransitions when the run took it>``. A system
outside the cluster can fence on them: remember the highest token seen per Lease and
refuse a call with a lower one (a run that lost its lock, still calling).

Also the HTTP helpers shared with the webhook metric provider.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from canary_operator.api.models import WebhookHeader, WebhookSpec, parse_duration
from canary_operator.checks.render import render_body
from canary_operator.redact import redact_url, scrub

__all__ = [
    "LOCK_LEASE_HEADER",
    "LOCK_TOKEN_HEADER",
    "MAX_BACKOFF",
    "RETRY_BACKOFF",
    "describe_error",
    "display_url",
    "lock_headers",
    "post_json",
    "resolve_headers",
    "run_webhook",
    "snippet",
    "with_lock",
]

RETRY_BACKOFF = 0.5
"""Seconds before the first retry; doubled for each further one, up to MAX_BACKOFF."""
MAX_BACKOFF = 4.0
_RETRYABLE_4XX = frozenset({408, 429})
_SNIPPET = 200
LOCK_LEASE_HEADER = "X-Canary-Lock-Lease"
LOCK_TOKEN_HEADER = "X-Canary-Lock-Token"


def lock_headers(namespace: str, lease: str, token: int | None) -> dict[str, str]:
    """The headers that tell an endpoint which lock the call is made under, and with
    which fencing token (none when the run holds no lock)."""
    if token is None:
        return {}
    return {LOCK_LEASE_HEADER: f"{namespace}/{lease}", LOCK_TOKEN_HEADER: str(token)}


def with_lock(headers: Mapping[str, str], lock: Mapping[str, str]) -> dict[str, str]:
    """The spec's headers and the lock's; the lock's win over a header of the same
    name (in any case) that the spec sets."""
    names = {name.lower() for name in lock}
    return {**{k: v for k, v in headers.items() if k.lower() not in names}, **lock}


async def post_json(
    url: str,
    payload: Any,
    headers: Mapping[str, str],
    time_limit: float,
    content_type: str = "application/json",
) -> tuple[int, str]:
    """POST ``payload`` as JSON (values JSON cannot hold are sent as strings; a str is
    sent as it is: a rendered body template) and return the status and body.
    ``time_limit`` (seconds) bounds the whole call (connect, send, read).

    Raises :class:`TimeoutError` on timeout, :class:`aiohttp.ClientError` when the
    server cannot be reached or the connection breaks.
    """
    data = payload if isinstance(payload, str) else json.dumps(payload, default=str)
    sent = {"Content-Type": content_type, **headers}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=time_limit)) as session,
        session.post(url, data=data, headers=sent, allow_redirects=False) as response,
    ):
        return response.status, await response.text(errors="replace")


async def run_webhook(
    spec: WebhookSpec,
    context: Mapping[str, Any],
    headers: Mapping[str, str],
    *,
    backoff: float = RETRY_BACKOFF,
    url: str | None = None,
) -> tuple[bool, str]:
    """Call the webhook test ``spec`` with ``context``; return (passed, what happened).
    ``url``: the URL read from ``spec.urlFrom`` (else ``spec.url``). The message never
    shows the URL as written (see canary_operator.redact)."""
    target_url = url or spec.url or ""
    passed, message = await _run_webhook(spec, target_url, context, headers, backoff)
    return passed, scrub(message, [target_url])


async def _run_webhook(
    spec: WebhookSpec,
    url: str,
    context: Mapping[str, Any],
    headers: Mapping[str, str],
    backoff: float,
) -> tuple[bool, str]:
    timeout = parse_duration(spec.timeout).total_seconds()
    try:
        payload: Any = dict(context) if spec.body is None else render_body(spec.body, context)
    except ValueError as exc:
        return False, f"POST {display_url(url)}: body template: {exc}"
    attempts = spec.retries + 1
    target = f"POST {display_url(url)}"
    delay = backoff
    what = ""
    for attempt in range(1, attempts + 1):
        try:
            status, body = await post_json(url, payload, headers, timeout, spec.content_type)
        except TimeoutError:
            what = f"timed out after {timeout:g}s"
        except aiohttp.ClientError as exc:
            what = f"unreachable: {describe_error(exc)}"
        except ValueError as exc:  # e.g. an invalid header value: retrying cannot help
            return False, f"{target}: invalid request: {exc}"
        else:
            if 200 <= status < 300:
                tries = f" (attempt {attempt} of {attempts})" if attempt > 1 else ""
                return True, f"{target}: HTTP {status}{tries}"
            what = f"HTTP {status}: {snippet(body)}"
            if status < 500 and status not in _RETRYABLE_4XX:
                return False, f"{target}: {what}"
        if attempt < attempts:
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)
    return False, f"{target}: {what} ({attempts} attempt{'s' if attempts > 1 else ''})"


async def resolve_headers(
    headers: list[WebhookHeader] | None,
    read_secret: Callable[[str, str], Awaitable[str | None]],
) -> dict[str, str]:
    """The headers to send: literal values, and values read with
    ``read_secret(secret_name, key)`` (``None`` = no such Secret or key).

    A trailing line break in a Secret's value (files made with ``echo``) is dropped.
    Raises :class:`ValueError` naming the header and the Secret/key that is missing.
    """
    resolved: dict[str, str] = {}
    for header in headers or []:
        if header.value is not None:
            value = header.value
        elif header.value_from is not None:
            ref = header.value_from.secret_key_ref
            secret = await read_secret(ref.name, ref.key)
            if secret is None:
                raise ValueError(
                    f"header {header.name}: Secret {ref.name!r} has no key {ref.key!r} "
                    "(or the Secret does not exist)"
                )
            value = secret.rstrip("\r\n")
        else:
            raise ValueError(f"header {header.name}: set value or valueFrom")
        if "\n" in value or "\r" in value:
            raise ValueError(f"header {header.name}: the value contains a line break")
        resolved[header.name] = value
    return resolved


def display_url(url: str) -> str:
    """``url`` as messages may show it: without user, password, query values and
    token-like path segments (see canary_operator.redact)."""
    return redact_url(url)


def snippet(text: str, limit: int = _SNIPPET) -> str:
    """The first ``limit`` characters of ``text`` on one line, for messages."""
    flat = " ".join(text.split())
    if not flat:
        return "(empty body)"
    return flat if len(flat) <= limit else flat[:limit] + "..."


def describe_error(exc: BaseException) -> str:
    """A connection error in one line, for messages."""
    return snippet(str(exc)) if str(exc) else type(exc).__name__
