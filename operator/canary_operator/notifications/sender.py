"""One HTTP attempt at a chat endpoint, and the backoff between attempts."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from canary_operator.notifications import payloads
from canary_operator.notifications.config import Service


@dataclass(frozen=True)
class Backoff:
    """Delays between attempts: initial * factor**n, at most `cap`; give up after
    `give_up_after` seconds of trying."""

    initial: float = 2.0
    factor: float = 2.0
    cap: float = 120.0
    give_up_after: float = 3600.0

    def delay(self, attempt: int) -> float:
        # min() first: factor**attempt overflows a float long before a day of attempts.
        grown = self.initial * float(self.factor) ** min(attempt, 64)
        return float(min(self.cap, grown))


DEFAULT_BACKOFF = Backoff()


async def post(
    session: aiohttp.ClientSession, service: Service, data: bytes, content_type: str
) -> tuple[bool, bool, str]:
    """(delivered, worth retrying, what happened)."""
    headers = {"Content-Type": content_type, **service.headers}
    try:
        async with session.request(
            service.method,
            service.url,
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=service.timeout_seconds),
            allow_redirects=False,
        ) as response:
            text = (await response.text(errors="replace"))[:300]
            ok, retry = payloads.accepted(service, response.status, text)
            return ok, retry, f"HTTP {response.status} {text.strip()[:120]}".strip()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return False, True, f"{type(exc).__name__}: {exc}"[:200]
