"""The rollback window: the versions a target ran before its promotions, kept on the
target for `kubectl canary undo` (issue 25, item 3).

A promotion writes, in the same write as the new version, the annotation
canary-operator.dev/rollback-window: a JSON list, newest first, of the pod templates
it and the promotions before it replaced, each with the Deployment revision it ran as,
its images, who had promoted it, and until when it may be put back. The promoting
rollout's spec.rollbackWindow bounds it (how many, how long); a byte bound keeps the
annotation well inside the API server's limit. It costs no pods and no ReplicaSets.

Pure: the caller reads and writes the annotation, and gives the time."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from canary_operator.api.models import RollbackWindow, parse_duration
from canary_operator.api.timestamps import iso, parse_any_time
from canary_operator.engine.versions import image_label

WINDOW_ANNOTATION = "canary-operator.dev/rollback-window"
# All of an object's annotations together may not exceed 256 KiB; the window keeps to
# a part of that (the pre-promotion record holds one template too).
MAX_BYTES = 96 * 1024
DEFAULT = RollbackWindow()

Entry = dict[str, Any]


class WindowError(ValueError):
    """Why no kept version can be put back: the message names what to change."""


def read(raw: str | None) -> list[Entry]:
    """The window as written (newest first); an absent or unreadable one is empty."""
    try:
        data = json.loads(raw) if raw else []
    except ValueError:
        return []
    if not isinstance(data, list):
        return []
    return [e for e in data if isinstance(e, dict) and isinstance(e.get("template"), dict)]


def replaced(
    template: Mapping[str, Any],
    revision: str | None,
    promoted_by: str | None,
    replaced_by: str,
    now: datetime,
    window: RollbackWindow | None,
) -> Entry:
    """The entry of the version a promotion by run `replaced_by` replaces: the target's
    pod template, Deployment revision and promoted-by, as read right before it."""
    containers = (template.get("spec") or {}).get("containers") or []
    max_age = (window or DEFAULT).max_age
    return {
        "revision": revision,
        "template": dict(template),
        "images": {str(c.get("name")): str(c.get("image", "")) for c in containers},
        "promotedBy": promoted_by,
        "replacedBy": replaced_by,
        "replacedAt": iso(now),
        "expiresAt": iso(now + parse_duration(max_age)) if max_age else None,
    }


def expired(entry: Entry, now: datetime) -> bool:
    until = entry.get("expiresAt")
    when = parse_any_time(until) if isinstance(until, str) else None
    return when is not None and when <= now


def after_promotion(
    kept: list[Entry], entry: Entry, window: RollbackWindow | None, now: datetime
) -> list[Entry]:
    """The window a promotion writes: `entry` first, then what was kept, without the
    expired, at most spec.rollbackWindow.revisions of them and MAX_BYTES in all
    (the oldest go first)."""
    revisions = (window or DEFAULT).revisions
    fresh = [e for e in [entry, *kept] if not expired(e, now)][:revisions]
    while fresh and len(json.dumps(fresh, sort_keys=True)) > MAX_BYTES:
        fresh.pop()
    return fresh


def after_undo_of_promotion(kept: list[Entry], run_id: str) -> list[Entry]:
    """The window once the promotion by `run_id` was undone mid-way (the target is back
    on the version that promotion replaced: not a previous version any more)."""
    if kept and kept[0].get("replacedBy") == run_id:
        return kept[1:]
    return kept


def describe(entry: Entry) -> str:
    revision = entry.get("revision")
    label = image_label(entry.get("images") or {})
    return f"revision {revision} ({label})" if revision else label


def choose(kept: list[Entry], revision: str | None, now: datetime, target: str) -> Entry:
    """The kept version an undo of deployment `target` puts back: the newest, or the
    one that ran as `revision` (--to-revision). WindowError when there is none."""
    if not kept:
        raise WindowError(
            f"deployment {target} has no previous version kept (annotation "
            f"{WINDOW_ANNOTATION}): a promotion by canary-operator keeps the version it "
            "replaces unless the promoting rollout's spec.rollbackWindow.revisions is 0; "
            "nothing was changed"
        )
    if revision is None:
        entry = kept[0]
    else:
        found = [e for e in kept if str(e.get("revision")) == revision]
        if not found:
            listed = ", ".join(describe(e) for e in kept)
            raise WindowError(
                f"--to-revision {revision}: deployment {target} keeps no such revision "
                f"(kept: {listed}); nothing was changed"
            )
        entry = found[0]
    if expired(entry, now):
        raise WindowError(
            f"the rollback window of {describe(entry)} on deployment {target} expired at "
            f"{entry.get('expiresAt')} (spec.rollbackWindow.maxAge of the rollout that "
            "replaced it); nothing was changed"
        )
    return entry
