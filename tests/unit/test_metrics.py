"""The metrics added with prometheus_client: per-rollout gauges (bounded), lock
handoff, the work queue and lease renewals; one registry per Metrics."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from canary_operator.api.models import (
    CanaryRolloutStatus,
    CleanupStatus,
    LockStatus,
    Outcome,
    Phase,
    QueueStatus,
    Result,
)
from canary_operator.metrics import Metrics
from tests.unit.test_web import T0, Clock, stamp


def sample(text: str, metric: str, **labels: str) -> float:
    """The value of one sample, by name and exact labels (`rollout=` is the `name` label)."""
    if "rollout" in labels:
        labels["name"] = labels.pop("rollout")
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)", line)
        assert match, f"not a valid sample line: {line!r}"
        found = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', match[3] or ""))
        if match[1] == metric and found == labels:
            return float(match[4])
    raise AssertionError(f"no sample {metric}{labels} in:\n{text}")


def has_sample(text: str, metric: str, **labels: str) -> bool:
    try:
        sample(text, metric, **labels)
    except AssertionError:
        return False
    return True


def status(phase: Phase, **fields: object) -> CanaryRolloutStatus:
    return CanaryRolloutStatus.model_validate({"phase": phase, "run": 1, **fields})


def holding(acquired: float, token: int = 1, **fields: object) -> CanaryRolloutStatus:
    lock = LockStatus(name="cro-lock-web", token=token, acquired_at=stamp(acquired))
    return status(Phase.PROGRESSING, lock=lock, **fields)


def ended(before: CanaryRolloutStatus, finished: float) -> CanaryRolloutStatus:
    done = before.model_copy(deep=True)
    done.phase = Phase.SUCCEEDED
    done.outcome = Outcome(result=Result.SUCCEEDED, message="ok", decided_at=stamp(finished))
    done.cleanup = CleanupStatus(started_at=stamp(finished - 1), finished_at=stamp(finished))
    return done


def test_phase_and_weight_per_rollout() -> None:
    metrics = Metrics()
    running = holding(0, weight=10)
    metrics.record("apps", "web-v1", None, running)
    text = metrics.render()
    phase = "canary_operator_rollout_phase"
    assert sample(text, phase, namespace="apps", rollout="web-v1", phase="Progressing") == 1
    weight = "canary_operator_rollout_weight_percent"
    assert sample(text, weight, namespace="apps", rollout="web-v1") == 10
    held = "canary_operator_lock_held_since_seconds"
    assert sample(text, held, namespace="apps", lock="cro-lock-web", holder="web-v1") == T0

    paused = running.model_copy(update={"phase": Phase.PAUSED, "weight": 50})
    metrics.record("apps", "web-v1", running, paused)
    text = metrics.render()
    assert sample(text, phase, namespace="apps", rollout="web-v1", phase="Paused") == 1
    assert not has_sample(text, phase, namespace="apps", rollout="web-v1", phase="Progressing")
    assert sample(text, weight, namespace="apps", rollout="web-v1") == 50

    done = ended(paused, 30)
    metrics.record("apps", "web-v1", paused, done)
    text = metrics.render()
    assert sample(text, phase, namespace="apps", rollout="web-v1", phase="Succeeded") == 1
    assert f"{held}{{" not in text  # released

    metrics.observe("apps", "web-v1", None)  # deleted: its series go at once
    text = metrics.render()
    assert f"{phase}{{" not in text and f"{weight}{{" not in text


def test_per_rollout_series_are_bounded_to_running_and_recently_ended() -> None:
    metrics = Metrics(recent_terminal=2)
    for i in range(5):
        metrics.record("apps", f"old-{i}", None, ended(holding(i), i + 1))
    metrics.record("apps", "live", None, holding(10))
    text = metrics.render()
    shown = {
        line.split('name="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("canary_operator_rollout_phase{")
    }
    assert shown == {"old-3", "old-4", "live"}
    # The by-phase count still counts every rollout it knows.
    assert sample(text, "canary_operator_rollouts", namespace="apps", phase="Succeeded") == 5


def test_blocked_cleanup_is_a_gauge_while_it_retries() -> None:
    metrics = Metrics()
    running = holding(0)
    cleaning = running.model_copy(
        update={
            "phase": Phase.CLEANING_UP,
            "cleanup": CleanupStatus(started_at=stamp(5), attempts=2, last_error="refused"),
        }
    )
    metrics.record("apps", "web-v1", running, cleaning)
    text = metrics.render()
    assert sample(text, "canary_operator_cleanup_blocked", namespace="apps", rollout="web-v1") == 1
    assert sample(text, "canary_operator_cleanup_failures_total", namespace="apps") == 2
    done = ended(cleaning, 60)
    metrics.record("apps", "web-v1", cleaning, done)
    assert "canary_operator_cleanup_blocked{" not in metrics.render()


def test_a_cleanup_waiting_for_objects_that_will_not_go_is_blocked_too() -> None:
    metrics = Metrics()
    running = holding(0)
    waiting = running.model_copy(
        update={"phase": Phase.CLEANING_UP, "cleanup": CleanupStatus(started_at=stamp(5))}
    )
    metrics.record("apps", "web-v1", running, waiting)
    assert "canary_operator_cleanup_blocked{" not in metrics.render()
    stuck = waiting.model_copy(deep=True)
    assert stuck.cleanup is not None
    stuck.cleanup.blocked_by = ["pod/web-canary-1: held by finalizer example.com/hold"]
    metrics.record("apps", "web-v1", waiting, stuck)
    text = metrics.render()
    assert sample(text, "canary_operator_cleanup_blocked", namespace="apps", rollout="web-v1") == 1
    # Not a failed attempt: the failure counter says nothing of it.
    assert not has_sample(text, "canary_operator_cleanup_failures_total", namespace="apps")
    going = stuck.model_copy(deep=True)
    assert going.cleanup is not None
    going.cleanup.blocked_by = None
    metrics.record("apps", "web-v1", stuck, going)
    assert "canary_operator_cleanup_blocked{" not in metrics.render()


def test_lock_handoff_from_release_to_the_waiting_runs_acquisition() -> None:
    clock = Clock()
    metrics = Metrics(clock=clock)
    first = holding(0)
    metrics.record("apps", "a", None, first)
    clock.now = T0 + 10
    queued = status(Phase.QUEUED, queue=QueueStatus(lock="cro-lock-web", position=1, waiting=1))
    metrics.record("apps", "b", None, queued)
    clock.now = T0 + 50
    metrics.record("apps", "a", first, ended(first, 50))
    clock.now = T0 + 51
    metrics.record("apps", "b", queued, holding(51, token=2))
    text = metrics.render()
    assert sample(text, "canary_operator_lock_wait_seconds_sum", namespace="apps") == 41
    assert sample(text, "canary_operator_lock_handoff_seconds_sum", namespace="apps") == 1
    assert sample(text, "canary_operator_lock_handoff_seconds_count", namespace="apps") == 1


def test_an_idle_lock_taken_later_is_not_a_handoff() -> None:
    clock = Clock()
    metrics = Metrics(clock=clock)
    first = holding(0)
    metrics.record("apps", "a", None, first)
    metrics.record("apps", "a", first, ended(first, 5))
    clock.now = T0 + 100  # b queues long after a let go
    queued = status(Phase.QUEUED, queue=QueueStatus(lock="cro-lock-web", position=1))
    metrics.record("apps", "b", None, queued)
    metrics.record("apps", "b", queued, holding(100, token=2))
    text = metrics.render()
    assert sample(text, "canary_operator_lock_wait_seconds_count", namespace="apps") == 1
    assert not has_sample(text, "canary_operator_lock_handoff_seconds_count", namespace="apps")


def test_a_run_queued_and_started_in_one_write_records_its_lock_wait() -> None:
    """A new run at the head of a free lock goes from Pending straight to Progressing:
    no Queued status is ever written, and its own queuedAt says when it queued."""
    clock = Clock()
    metrics = Metrics(clock=clock)
    pending = status(Phase.PENDING)
    metrics.record("apps", "b", None, pending)
    clock.now = T0 + 7
    queued_at = datetime.fromtimestamp(T0 + 4, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    metrics.record("apps", "b", pending, holding(7, queuedAt=queued_at))
    text = metrics.render()
    assert sample(text, "canary_operator_lock_wait_seconds_count", namespace="apps") == 1
    assert sample(text, "canary_operator_lock_wait_seconds_sum", namespace="apps") == 3


def test_work_queue_and_lease_renewal_methods() -> None:
    metrics = Metrics()
    metrics.queue_depth(7)
    metrics.queue_latency(0.02)
    metrics.queue_latency(3.0)
    metrics.reconcile_retry()
    metrics.reconcile_retry()
    metrics.lease_renewal(True)
    metrics.lease_renewal(True)
    metrics.lease_renewal(False)
    text = metrics.render()
    assert sample(text, "canary_operator_workqueue_depth") == 7
    assert sample(text, "canary_operator_workqueue_latency_seconds_count") == 2
    assert sample(text, "canary_operator_workqueue_latency_seconds_sum") == pytest.approx(3.02)
    assert sample(text, "canary_operator_workqueue_latency_seconds_bucket", le="0.05") == 1
    assert sample(text, "canary_operator_reconcile_retries_total") == 2
    assert sample(text, "canary_operator_lease_renewals_total", result="ok") == 2
    assert sample(text, "canary_operator_lease_renewals_total", result="failed") == 1
    metrics.queue_depth(0)
    assert sample(metrics.render(), "canary_operator_workqueue_depth") == 0


def test_each_metrics_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.reconcile_retry()
    one.leader = 1
    assert sample(one.render(), "canary_operator_reconcile_retries_total") == 1
    assert sample(two.render(), "canary_operator_reconcile_retries_total") == 0
    assert sample(two.render(), "canary_operator_leader") == 0
    assert one.leader == 1 and two.leader == 0


def test_the_exposition_has_no_created_series() -> None:
    metrics = Metrics()
    metrics.reconcile_retry()
    assert "_created" not in metrics.render()
