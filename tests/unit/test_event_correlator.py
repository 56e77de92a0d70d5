"""Event aggregation as client-go's recorder does it (kube/events.py EventCorrelator,
after tools/record/events_cache.go): the same event counts up on one Event; similar
events (differing by message only) are combined once 10 distinct messages came within
10 minutes; keys are per source, object, type and reason."""

from __future__ import annotations

import itertools

from canary_operator.kube.events import COMBINED_PREFIX, EventCorrelator, EventKey


def correlator() -> EventCorrelator:
    counter = itertools.count(1)
    return EventCorrelator(lambda name: f"{name}.{next(counter)}")


def key(message: str = "blocked", reason: str = "CleanupBlocked", **fields: str) -> EventKey:
    values = {
        "component": "canary-operator",
        "instance": "host-1",
        "namespace": "ns",
        "name": "web-a",
        "uid": "u1",
        "type": "Warning",
        "reason": reason,
        "message": message,
        **fields,
    }
    return EventKey(**values)


def test_the_same_event_is_counted_on_one_event() -> None:
    c = correlator()
    first = c.observe(key(), 0.0, "T0")
    assert (first.create, first.count, first.name) == (True, 1, "web-a.1")
    for n in range(2, 6):
        again = c.observe(key(), float(n), f"T{n}")
        assert (again.create, again.count, again.name) == (False, n, "web-a.1")
        assert again.first_timestamp == "T0" and again.message == "blocked"


def test_what_makes_events_different() -> None:
    c = correlator()
    c.observe(key(), 0.0, "T0")
    for other in (
        key(reason="Other"),
        key(type="Normal"),
        key(uid="u2"),
        key(name="web-b"),
        key(namespace="ns2"),
        key(instance="host-2"),
        key(message="another message"),
    ):
        assert c.observe(other, 1.0, "T1").create, other


def test_ten_similar_messages_within_ten_minutes_are_combined() -> None:
    c = correlator()
    for n in range(9):
        seen = c.observe(key(f"retry {n}"), float(n), "T")
        assert seen.create and seen.message == f"retry {n}"
    combined = c.observe(key("retry 9"), 9.0, "T9")
    assert combined.create and combined.message == COMBINED_PREFIX + "retry 9"
    later = c.observe(key("retry 10"), 10.0, "T10")
    assert (later.create, later.count, later.name) == (False, 2, combined.name)
    assert later.message == COMBINED_PREFIX + "retry 10"


def test_the_aggregation_window_starts_again_after_ten_quiet_minutes() -> None:
    c = correlator()
    for n in range(9):
        c.observe(key(f"retry {n}"), float(n), "T")
    fresh = c.observe(key("retry 9"), 9.0 + 601, "T")
    assert fresh.create and not fresh.message.startswith(COMBINED_PREFIX)


def test_a_forgotten_event_is_created_anew() -> None:
    c = correlator()
    first = c.observe(key(), 0.0, "T0")
    c.forget(key(), first.name)
    again = c.observe(key(), 1.0, "T1")
    assert again.create and again.count == 1 and again.name != first.name


def test_the_cache_is_bounded() -> None:
    c = EventCorrelator(lambda name: name + ".x", size=3)
    for n in range(5):
        c.observe(key(name=f"r{n}"), 0.0, "T")
    assert c.observe(key(name="r0"), 1.0, "T").create, "evicted: counts start again"
