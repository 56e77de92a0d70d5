"""URLs as they may be shown: in status, Events and logs.

Chat and incident webhooks carry their credential in the URL itself (Slack's
`/services/T…/B…/<secret>`, Teams' `/webhookb2/<guid>@<guid>/IncomingWebhook/<id>/<guid>`,
Discord's `/api/webhooks/<id>/<token>`, `?token=…`, `https://user:pass@host`). So a
URL is never shown as written: userinfo and fragment are dropped, every query value
becomes `***`, and each path segment that could be a credential becomes `***`. A
segment is kept only when it reads like a word: at most 24 characters of letters, `-`,
`_` and `.`, or a version such as `v1`, `v2beta1`. Everything else (ids, GUIDs, tokens,
anything with digits) is replaced.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit

MASK = "***"
_WORD = re.compile(r"^[A-Za-z._-]{1,24}$")
_VERSION = re.compile(r"^v[0-9]+([a-z]+[0-9]+)?$")


def _segment(text: str) -> str:
    plain = unquote(text)
    if plain == "" or _WORD.match(plain) or _VERSION.match(plain):
        return text
    return MASK


def redact_url(url: str) -> str:
    """`url` with anything that may be a credential replaced by ***."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK  # not a URL we can take apart: show none of it
    if not parts.scheme or not host:
        return MASK
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    path = "/".join(_segment(s) for s in parts.path.split("/"))
    shown = f"{parts.scheme}://{netloc}{path}"
    if parts.query:
        keys = [q.split("=", 1)[0] for q in parts.query.split("&") if q]
        shown += "?" + "&".join(f"{quote(unquote(k), safe='')}={MASK}" for k in keys)
    return shown


def scrub(text: str, urls: Iterable[str]) -> str:
    """`text` with every occurrence of one of `urls` (and of its credential-bearing
    parts: path, query, userinfo) replaced by its redacted form. For messages that
    may quote a URL, such as a client library's error."""
    for url in sorted({u for u in urls if u}, key=len, reverse=True):
        text = text.replace(url, redact_url(url))
        try:
            parts = urlsplit(url)
        except ValueError:
            continue
        secrets = [parts.query, parts.password or "", parts.username or ""]
        secrets += [s for s in parts.path.split("/") if _segment(s) == MASK]
        for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
            text = text.replace(secret, MASK)
    return text
