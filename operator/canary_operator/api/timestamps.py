"""The operator's two timestamp formats, and their parsing.

Seconds (`SECONDS`) is what the API server writes (metav1.Time) and what the status
records; microseconds (`MICROSECONDS`, metav1.MicroTime) is for moments whose order
within one second matters (Events, Lease renewals, a spec's age).
"""

from __future__ import annotations

from datetime import UTC, datetime

SECONDS = "%Y-%m-%dT%H:%M:%SZ"
MICROSECONDS = "%Y-%m-%dT%H:%M:%S.%fZ"


def iso(t: datetime) -> str:
    """`t` to the second (metav1.Time)."""
    return t.strftime(SECONDS)


def parse_time(text: str) -> datetime:
    """A timestamp written by `iso`."""
    return datetime.strptime(text, SECONDS).replace(tzinfo=UTC)


def precise(t: datetime) -> str:
    """`t` to the microsecond (metav1.MicroTime)."""
    return t.strftime(MICROSECONDS)


def parse_any_time(text: str) -> datetime | None:
    """A timestamp in seconds (the API's) or microseconds (the operator's own)."""
    for form in (MICROSECONDS, SECONDS):
        try:
            return datetime.strptime(text, form).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None
