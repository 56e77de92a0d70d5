"""engine/rollback_window.py: what a promotion keeps of the versions it replaces (how
many, how long, how big) and which kept version an undo puts back, with the errors
that name what to change."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from canary_operator.api.models import RollbackWindow
from canary_operator.engine import rollback_window as rw

NOW = datetime(2026, 12, 8, 10, 0, 0, tzinfo=UTC)


def template(image: str, padding: int = 0) -> dict[str, Any]:
    env = [{"name": "PAD", "value": "x" * padding}] if padding else []
    return {"spec": {"containers": [{"name": "app", "image": image, "env": env}]}}


def entry(image: str, revision: str, window: RollbackWindow | None = None, **kw: Any) -> rw.Entry:
    at = kw.pop("at", NOW)
    return rw.replaced(template(image, **kw), revision, "u/1", f"u/{revision}", at, window)


def test_a_replaced_version_records_its_template_revision_images_and_who_replaced_it() -> None:
    kept = rw.replaced(template("reg/web:1.0"), "3", "a/1", "b/1", NOW, None)
    assert kept == {
        "revision": "3",
        "template": template("reg/web:1.0"),
        "images": {"app": "reg/web:1.0"},
        "promotedBy": "a/1",
        "replacedBy": "b/1",
        "replacedAt": "2026-12-08T10:00:00Z",
        "expiresAt": None,
    }
    timed = rw.replaced(template("web:1.0"), None, None, "b/1", NOW, RollbackWindow(maxAge="2h"))
    assert timed["expiresAt"] == "2026-12-08T12:00:00Z"


def test_by_default_one_previous_version_is_kept() -> None:
    window = rw.after_promotion([entry("web:1.0", "1")], entry("web:2.0", "2"), None, NOW)
    assert [e["revision"] for e in window] == ["2"]


def test_the_window_keeps_the_newest_revisions_asked_for() -> None:
    three = RollbackWindow(revisions=3)
    kept: list[rw.Entry] = []
    for n in range(1, 6):
        kept = rw.after_promotion(kept, entry(f"web:{n}.0", str(n)), three, NOW)
    assert [e["revision"] for e in kept] == ["5", "4", "3"]


def test_revisions_zero_keeps_nothing() -> None:
    off = RollbackWindow(revisions=0)
    assert rw.after_promotion([entry("web:1.0", "1")], entry("web:2.0", "2"), off, NOW) == []


def test_expired_versions_are_dropped_at_the_next_promotion() -> None:
    hour = RollbackWindow(revisions=5, maxAge="1h")
    old = entry("web:1.0", "1", hour, at=NOW - timedelta(hours=2))
    fresh = entry("web:2.0", "2", hour, at=NOW - timedelta(minutes=10))
    window = rw.after_promotion([fresh, old], entry("web:3.0", "3", hour), hour, NOW)
    assert [e["revision"] for e in window] == ["3", "2"]


def test_the_window_stays_within_its_byte_bound_dropping_the_oldest() -> None:
    ten = RollbackWindow(revisions=10)
    kept: list[rw.Entry] = []
    for n in range(1, 11):
        kept = rw.after_promotion(kept, entry(f"web:{n}", str(n), padding=30_000), ten, NOW)
    assert len(json.dumps(kept, sort_keys=True)) <= rw.MAX_BYTES
    assert [e["revision"] for e in kept] == ["10", "9", "8"]


def test_read_ignores_what_is_not_a_window() -> None:
    assert rw.read(None) == [] and rw.read("{nonsense") == [] and rw.read('{"a": 1}') == []
    assert rw.read(json.dumps([{"template": {}}, {"x": 1}, 3])) == [{"template": {}}]


def test_undoing_a_promotion_midway_takes_its_entry_out() -> None:
    kept = [entry("web:2.0", "2"), entry("web:1.0", "1")]
    assert rw.after_undo_of_promotion(kept, "u/2") == kept[1:]
    assert rw.after_undo_of_promotion(kept, "u/9") == kept


def test_undo_chooses_the_newest_or_the_revision_asked_for() -> None:
    kept = [entry("web:2.0", "2"), entry("web:1.0", "1")]
    assert rw.choose(kept, None, NOW, "web")["revision"] == "2"
    assert rw.choose(kept, "1", NOW, "web")["images"] == {"app": "web:1.0"}


def test_undo_without_a_kept_version_says_why_and_which_field() -> None:
    with pytest.raises(rw.WindowError) as err:
        rw.choose([], None, NOW, "web")
    assert str(err.value) == (
        "deployment web has no previous version kept (annotation "
        "canary-operator.dev/rollback-window): a promotion by canary-operator keeps the "
        "version it replaces unless the promoting rollout's spec.rollbackWindow.revisions "
        "is 0; nothing was changed"
    )


def test_undo_to_a_revision_not_kept_lists_those_kept() -> None:
    kept = [entry("reg/web:2.0", "2"), entry("reg/web:1.0", "1")]
    with pytest.raises(rw.WindowError) as err:
        rw.choose(kept, "7", NOW, "web")
    assert str(err.value) == (
        "--to-revision 7: deployment web keeps no such revision (kept: revision 2 "
        "(web:2.0), revision 1 (web:1.0)); nothing was changed"
    )


def test_undo_after_the_window_expired_says_when() -> None:
    hour = RollbackWindow(maxAge="1h")
    kept = [entry("web:1.0", "1", hour, at=NOW - timedelta(hours=1))]
    with pytest.raises(rw.WindowError) as err:
        rw.choose(kept, None, NOW, "web")
    assert str(err.value) == (
        "the rollback window of revision 1 (web:1.0) on deployment web expired at "
        "2026-12-08T10:00:00Z (spec.rollbackWindow.maxAge of the rollout that replaced it); "
        "nothing was changed"
    )
