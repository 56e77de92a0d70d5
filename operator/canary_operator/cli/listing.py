"""The `kubectl canary list` table, from raw rollout bodies (no heavy imports: the
plugin's fast path renders it too)."""

from __future__ import annotations

import time

from canary_operator.rollout_view import effective_phase

TYPE_CHECKING = False  # typing itself is not imported on the fast path
if TYPE_CHECKING:
    from canary_operator.rollout_view import JsonObj

HEADER = ["NAME", "TARGET", "PHASE", "STEP", "WEIGHT", "QUEUE", "LIVE", "AGE"]


def epoch(timestamp: str) -> int:
    """Seconds since 1970 of an RFC 3339 UTC time (`2026-01-02T03:04:05Z`), without
    importing datetime (the fast path counts its imports)."""
    year, month, day = int(timestamp[0:4]), int(timestamp[5:7]), int(timestamp[8:10])
    hour, minute, second = int(timestamp[11:13]), int(timestamp[14:16]), int(timestamp[17:19])
    # Days from the civil date (proleptic Gregorian), H. Hinnant's algorithm.
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    days = era * 146097 + (yoe * 365 + yoe // 4 - yoe // 100 + doy) - 719468
    return days * 86400 + hour * 3600 + minute * 60 + second


def age(timestamp: str | None, now: float | None = None) -> str:
    """kubectl's AGE column: `42s`, `5m`, `3h`, `2d` (`now`: seconds since 1970)."""
    if not timestamp:
        return "-"
    seconds = int((time.time() if now is None else now) - epoch(timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def row(body: JsonObj, with_namespace: bool, now: float | None = None) -> list[str]:
    meta, status = body["metadata"], body.get("status") or {}
    weight = status.get("weight")
    cells = [
        meta["name"],
        str((body.get("spec") or {}).get("target", {}).get("deployment", "?")),
        effective_phase(body),
        str(status.get("stepLabel") or "-"),
        f"{weight}%" if weight is not None else "-",
        str(status.get("queueLabel") or "-"),
        str((status.get("live") or {}).get("label") or "-"),
        age(meta.get("creationTimestamp"), now),
    ]
    return [meta["namespace"], *cells] if with_namespace else cells


def render(items: list[JsonObj], namespace: str | None, now: float | None = None) -> str:
    """The table (namespace None: all namespaces, with a NAMESPACE column)."""
    if not items:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        return f"No canaryrollouts in {where}."
    header = ["NAMESPACE", *HEADER] if namespace is None else list(HEADER)
    ordered = sorted(items, key=lambda b: (b["metadata"]["namespace"], b["metadata"]["name"]))
    return table([header, *(row(b, namespace is None, now) for b in ordered)])
