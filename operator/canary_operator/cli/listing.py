"""The `kubectl canary list` table, from raw rollout bodies (no heavy imports: the
plugin's fast path renders it too)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from canary_operator.rollout_view import effective_phase

JsonObj = dict[str, Any]
HEADER = ["NAME", "TARGET", "PHASE", "STEP", "WEIGHT", "QUEUE", "AGE"]


def age(timestamp: str | None, now: datetime | None = None) -> str:
    if not timestamp:
        return "-"
    then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def row(body: JsonObj, with_namespace: bool, now: datetime | None = None) -> list[str]:
    meta, status = body["metadata"], body.get("status") or {}
    weight = status.get("weight")
    cells = [
        meta["name"],
        str((body.get("spec") or {}).get("target", {}).get("deployment", "?")),
        effective_phase(body),
        str(status.get("stepLabel") or "-"),
        f"{weight}%" if weight is not None else "-",
        str(status.get("queueLabel") or "-"),
        age(meta.get("creationTimestamp"), now),
    ]
    return [meta["namespace"], *cells] if with_namespace else cells


def render(items: list[JsonObj], namespace: str | None, now: datetime | None = None) -> str:
    """The table (namespace None: all namespaces, with a NAMESPACE column)."""
    if not items:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        return f"No canaryrollouts in {where}."
    header = ["NAMESPACE", *HEADER] if namespace is None else list(HEADER)
    ordered = sorted(items, key=lambda b: (b["metadata"]["namespace"], b["metadata"]["name"]))
    return table([header, *(row(b, namespace is None, now) for b in ordered)])
