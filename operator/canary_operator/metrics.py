"""Operator metrics in the Prometheus text format, computed from status changes.

`Metrics.record` is the reconciler's `on_status_written` hook: it compares the status
before and after each write, so every number comes from what the rollout itself
says (step start/finish times, cleanup attempts, lock acquisition), not from timers
kept around the work. `Metrics.observe` follows the watch, so the per-phase gauge
also counts rollouts whose status did not change since this process started.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from canary_operator.api.models import (
    TERMINAL_PHASES,
    CanaryRolloutStatus,
    ChildStepStatus,
    Phase,
)
from canary_operator.engine.machine import parse_time

log = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_FINISHED = ("Succeeded", "Failed", "Cancelled")


def _labels(**values: str) -> Labels:
    return tuple(sorted(values.items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_labels(labels: Labels, extra: Iterable[tuple[str, str]] = ()) -> str:
    pairs = [*labels, *extra]
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if value != int(value) else str(int(value))


@dataclass
class _Histogram:
    buckets: tuple[float, ...] = DURATION_BUCKETS
    counts: dict[Labels, list[int]] = field(default_factory=dict)
    sums: dict[Labels, float] = field(default_factory=dict)

    def observe(self, labels: Labels, value: float) -> None:
        value = max(0.0, value)
        counts = self.counts.setdefault(labels, [0] * (len(self.buckets) + 1))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
        counts[-1] += 1  # +Inf
        self.sums[labels] = self.sums.get(labels, 0.0) + value

    def lines(self, name: str) -> list[str]:
        out = []
        for labels, counts in sorted(self.counts.items()):
            for bound, count in zip([*self.buckets, math.inf], counts, strict=True):
                le = _format_labels(labels, [("le", _number(bound))])
                out.append(f"{name}_bucket{le} {count}")
            out.append(f"{name}_sum{_format_labels(labels)} {_number(self.sums[labels])}")
            out.append(f"{name}_count{_format_labels(labels)} {counts[-1]}")
        return out


class Metrics:
    """Counters, gauges and histograms of one operator process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.leader = 0.0
        self._phases: dict[tuple[str, str], str] = {}
        self._queues: dict[tuple[str, str], tuple[str, int]] = {}
        self._queued_since: dict[tuple[str, str], float] = {}
        self.completed: dict[Labels, int] = {}
        self.cleanup_failures: dict[Labels, int] = {}
        self.status_writes = 0
        self.step_duration = _Histogram()
        self.cleanup_duration = _Histogram()
        self.lock_wait = _Histogram()
        self.reconcile_duration = _Histogram(RECONCILE_BUCKETS)
        self.lease_renewals: dict[Labels, int] = {}

    # ----------------------------------------------------------------- inputs

    def reconciled(self, seconds: float, ok: bool) -> None:
        """One reconcile, as the work queue timed it."""
        self.reconcile_duration.observe(_labels(result="ok" if ok else "error"), seconds)

    def lease_renewal(self, ok: bool) -> None:
        labels = _labels(result="ok" if ok else "failed")
        self.lease_renewals[labels] = self.lease_renewals.get(labels, 0) + 1

    def observe(self, namespace: str, name: str, phase: str | None) -> None:
        """A rollout as the watch sees it (`phase` None: it was deleted)."""
        key = (namespace, name)
        if phase is None:
            self._phases.pop(key, None)
            self._queues.pop(key, None)
            self._queued_since.pop(key, None)
            return
        self._phases[key] = phase or Phase.PENDING.value

    def record(
        self,
        namespace: str,
        name: str,
        old: CanaryRolloutStatus | None,
        new: CanaryRolloutStatus,
    ) -> None:
        """The reconciler wrote `new` over `old` (the `on_status_written` hook).

        Never raises: a metric must not fail the reconcile that called it."""
        try:
            self._record(namespace, name, old, new)
        except Exception:
            log.exception("metrics: could not record %s/%s", namespace, name)

    def _record(
        self,
        namespace: str,
        name: str,
        old: CanaryRolloutStatus | None,
        new: CanaryRolloutStatus,
    ) -> None:
        key = (namespace, name)
        now = self.clock()
        self.status_writes += 1
        self._phases[key] = new.phase.value
        same_run = old is not None and old.run == new.run
        before = old if same_run else None
        self._steps(before, new)
        self._cleanup(namespace, old, new, same_run, now)
        self._lock(key, namespace, old, new, now)
        if new.queue is not None:
            self._queues[key] = (new.queue.lock, new.queue.waiting)
        else:
            self._queues.pop(key, None)
        was_terminal = old is not None and same_run and old.phase in TERMINAL_PHASES
        if new.phase in TERMINAL_PHASES and not was_terminal:
            result = new.outcome.result.value if new.outcome else new.phase.value
            labels = _labels(namespace=namespace, result=result)
            self.completed[labels] = self.completed.get(labels, 0) + 1

    def _steps(self, old: CanaryRolloutStatus | None, new: CanaryRolloutStatus) -> None:
        old_steps = (old.steps if old else None) or []
        for i, step in enumerate(new.steps or []):
            previous = old_steps[i] if i < len(old_steps) else None
            self._step(previous, step)
            old_children = (previous.children if previous else None) or []
            for n, child in enumerate(step.children or []):
                self._step(old_children[n] if n < len(old_children) else None, child)

    def _step(self, old: ChildStepStatus | None, new: ChildStepStatus) -> None:
        if new.phase.value not in _FINISHED or (old is not None and old.phase == new.phase):
            return
        if not (new.started_at and new.finished_at):
            return
        seconds = (parse_time(new.finished_at) - parse_time(new.started_at)).total_seconds()
        self.step_duration.observe(_labels(kind=new.kind, result=new.phase.value), seconds)

    def _cleanup(
        self,
        namespace: str,
        old: CanaryRolloutStatus | None,
        new: CanaryRolloutStatus,
        same_run: bool,
        now: float,
    ) -> None:
        old_cleanup = old.cleanup if old is not None and same_run else None
        cleanup = new.cleanup
        if cleanup is not None:
            failed = cleanup.attempts - (old_cleanup.attempts if old_cleanup else 0)
            if failed > 0:
                labels = _labels(namespace=namespace)
                self.cleanup_failures[labels] = self.cleanup_failures.get(labels, 0) + failed
            if (
                cleanup.finished_at
                and cleanup.started_at
                and not (old_cleanup and old_cleanup.finished_at)
            ):
                seconds = (
                    parse_time(cleanup.finished_at) - parse_time(cleanup.started_at)
                ).total_seconds()
                result = new.outcome.result.value if new.outcome else "Unknown"
                self.cleanup_duration.observe(_labels(result=result), seconds)
        elif (
            old is not None
            and not same_run
            and old.phase == Phase.CLEANING_UP
            and old.cleanup
            and old.cleanup.started_at
        ):
            # A spec change: the old run's cleanup ended and the new run replaced the status.
            started = parse_time(old.cleanup.started_at).timestamp()
            result = old.outcome.result.value if old.outcome else "Unknown"
            self.cleanup_duration.observe(_labels(result=result), now - started)

    def _lock(
        self,
        key: tuple[str, str],
        namespace: str,
        old: CanaryRolloutStatus | None,
        new: CanaryRolloutStatus,
        now: float,
    ) -> None:
        if new.phase == Phase.QUEUED and key not in self._queued_since:
            self._queued_since[key] = now
        old_token = old.lock.token if old is not None and old.lock and old.run == new.run else None
        if new.lock is None or new.lock.token == old_token:
            return
        since = self._queued_since.pop(key, None)
        if since is None and old is not None:  # queued before this process started
            queued = old.condition("Progressing")
            if queued is not None and queued.reason == "Queued":
                since = parse_time(queued.last_transition_time).timestamp()
        if since is not None:
            acquired = parse_time(new.lock.acquired_at).timestamp()
            self.lock_wait.observe(_labels(namespace=namespace), max(0.0, acquired - since))

    # ----------------------------------------------------------------- output

    def render(self) -> str:
        """The exposition (text format 0.0.4)."""
        out: list[str] = []

        def family(name: str, kind: str, help_: str, lines: list[str]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(lines)

        by_phase: dict[Labels, int] = {}
        for (namespace, _), phase in self._phases.items():
            labels = _labels(namespace=namespace, phase=phase)
            by_phase[labels] = by_phase.get(labels, 0) + 1
        family(
            "canary_operator_rollouts",
            "gauge",
            "CanaryRollouts by phase.",
            [
                f"canary_operator_rollouts{_format_labels(k)} {v}"
                for k, v in sorted(by_phase.items())
            ],
        )
        queues: dict[Labels, int] = {}
        for (namespace, _), (lock, waiting) in self._queues.items():
            labels = _labels(namespace=namespace, lock=lock)
            queues[labels] = max(queues.get(labels, 0), waiting)
        family(
            "canary_operator_queue_length",
            "gauge",
            "Rollouts waiting for each lock.",
            [
                f"canary_operator_queue_length{_format_labels(k)} {v}"
                for k, v in sorted(queues.items())
            ],
        )
        family(
            "canary_operator_rollouts_completed_total",
            "counter",
            "Runs that ended, by outcome.",
            [
                f"canary_operator_rollouts_completed_total{_format_labels(k)} {v}"
                for k, v in sorted(self.completed.items())
            ],
        )
        family(
            "canary_operator_cleanup_failures_total",
            "counter",
            "Cleanup attempts that failed (each is retried with backoff, keeping the lock).",
            [
                f"canary_operator_cleanup_failures_total{_format_labels(k)} {v}"
                for k, v in sorted(self.cleanup_failures.items())
            ],
        )
        for name, histogram, help_ in (
            ("canary_operator_step_duration_seconds", self.step_duration, "Step durations."),
            (
                "canary_operator_cleanup_duration_seconds",
                self.cleanup_duration,
                "From the decided outcome to the verified cleanup.",
            ),
            (
                "canary_operator_lock_wait_seconds",
                self.lock_wait,
                "Time from queuing to acquiring the target's lock.",
            ),
            (
                "canary_operator_reconcile_duration_seconds",
                self.reconcile_duration,
                "Time one reconcile took (API round trips only: checks run apart).",
            ),
        ):
            family(name, "histogram", help_, histogram.lines(name))
        family(
            "canary_operator_lease_renewals_total",
            "counter",
            "Renewals of held per-target leases, by result.",
            [
                f"canary_operator_lease_renewals_total{_format_labels(k)} {v}"
                for k, v in sorted(self.lease_renewals.items())
            ],
        )
        family(
            "canary_operator_status_writes_total",
            "counter",
            "Status writes by this process.",
            [f"canary_operator_status_writes_total {self.status_writes}"],
        )
        family(
            "canary_operator_leader",
            "gauge",
            "1 if this process runs the controller (leader or no election), else 0.",
            [f"canary_operator_leader {_number(self.leader)}"],
        )
        return "\n".join(out) + "\n"
