"""Operator metrics (prometheus_client), computed from status changes and the watch.

`Metrics.record` is the reconciler's `on_status_written` hook: it compares the status
before and after each write, so every number comes from what the rollout itself
says (step start/finish times, cleanup attempts, lock acquisition), not from timers
kept around the work. `Metrics.observe` follows the watch, so the per-phase gauges
also count rollouts whose status did not change since this process started. The work
queue and the lease renewer report through `queue_depth`, `queue_latency`,
`reconcile_retry` and `lease_renewal`.

Every `Metrics` has its own CollectorRegistry (tests and a process may hold several).
Per-rollout series (`canary_operator_rollout_*`) are bounded: every rollout that has
not ended, plus the `recent_terminal` most recently ended ones; a deleted rollout
loses its series at once.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from canary_operator.api.models import (
    TERMINAL_PHASES,
    CanaryRolloutStatus,
    ChildStepStatus,
    Phase,
)
from canary_operator.api.timestamps import parse_any_time, parse_time
from canary_operator.metrics.gauges import Key, RolloutGauges, StateCollector

log = logging.getLogger(__name__)

# No `_created` series: they double the exposition and nothing here queries them.
disable_created_metrics()  # type: ignore[no-untyped-call]

DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
# A handoff is event-driven (watch), so it is normally well under a second.
HANDOFF_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
QUEUE_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RECENT_TERMINAL = 20
_FINISHED = ("Succeeded", "Failed", "Cancelled")


class Metrics:
    """Counters, gauges and histograms of one operator process."""

    def __init__(
        self, clock: Callable[[], float] = time.time, recent_terminal: int = RECENT_TERMINAL
    ) -> None:
        self.clock = clock
        self.recent_terminal = recent_terminal
        self.registry = CollectorRegistry()
        self._rollouts: dict[Key, RolloutGauges] = {}
        self._ended: OrderedDict[Key, None] = OrderedDict()  # terminal ones, oldest first
        self._queued_since: dict[Key, float] = {}
        self._released: dict[tuple[str, str], float] = {}  # (namespace, lock) -> when
        self._leader_value = 0.0
        self._writes = 0
        r = self.registry
        self._leader = Gauge(
            "canary_operator_leader",
            "1 if this process runs the controller (leader or no election), else 0.",
            registry=r,
        )
        self.completed = Counter(
            "canary_operator_rollouts_completed_total",
            "Runs that ended, by outcome.",
            ["namespace", "result"],
            registry=r,
        )
        self.cleanup_failures = Counter(
            "canary_operator_cleanup_failures_total",
            "Cleanup attempts that failed (each is retried with backoff, keeping the lock).",
            ["namespace"],
            registry=r,
        )
        self._status_writes = Counter(
            "canary_operator_status_writes_total", "Status writes by this process.", registry=r
        )
        self.step_duration = Histogram(
            "canary_operator_step_duration_seconds",
            "Step durations.",
            ["kind", "result"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.cleanup_duration = Histogram(
            "canary_operator_cleanup_duration_seconds",
            "From the decided outcome to the verified cleanup.",
            ["result"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.lock_wait = Histogram(
            "canary_operator_lock_wait_seconds",
            "Time from queuing to acquiring the target's lock.",
            ["namespace"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.lock_handoff = Histogram(
            "canary_operator_lock_handoff_seconds",
            "From a lock's release by one run to its acquisition by a run that was waiting.",
            ["namespace"],
            buckets=HANDOFF_BUCKETS,
            registry=r,
        )
        self._workqueue_depth = Gauge(
            "canary_operator_workqueue_depth", "Keys waiting in the work queue.", registry=r
        )
        self._workqueue_latency = Histogram(
            "canary_operator_workqueue_latency_seconds",
            "Time a key waited in the work queue before its reconcile started.",
            buckets=QUEUE_LATENCY_BUCKETS,
            registry=r,
        )
        self._reconcile_duration = Histogram(
            "canary_operator_reconcile_duration_seconds",
            "Time one reconcile took (API round trips only: checks to user endpoints run "
            "apart), by result.",
            ["result"],
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self._reconcile_retries = Counter(
            "canary_operator_reconcile_retries_total",
            "Reconciles scheduled again after an error.",
            registry=r,
        )
        self._lease_renewals = Counter(
            "canary_operator_lease_renewals_total",
            "Renewals of the per-target Leases this process holds, by result.",
            ["result"],
            registry=r,
        )
        for result in ("ok", "failed"):  # both series exist from the start, for rate()
            self._lease_renewals.labels(result=result)
        self._notifications = Counter(
            "canary_operator_notifications_total",
            "Notification delivery attempts by service (ConfigMap name), trigger and result: "
            "sent, failed (an attempt; retried with backoff), abandoned, invalid (config), "
            "dropped (past an endpoint's bound of held messages).",
            ["service", "trigger", "result"],
            registry=r,
        )
        self._notifications_in_flight = Gauge(
            "canary_operator_notifications_in_flight",
            "Notifications being delivered or waiting for their next attempt.",
            registry=r,
        )
        self._api_requests = Counter(
            "canary_operator_api_requests_total",
            "Requests this process's client sent to the API server (kopf's watch of the "
            "rollouts apart), by verb, resource and HTTP status. Reads of cached kinds are "
            "answered from watch-fed caches and do not appear here.",
            ["verb", "resource", "code"],
            registry=r,
        )
        r.register(StateCollector(self._rollouts, self._shown))

    # ------------------------------------------------------- plain values (web.py)

    @property
    def leader(self) -> float:
        return self._leader_value

    @leader.setter
    def leader(self, value: float) -> None:
        self._leader_value = value
        self._leader.set(value)

    @property
    def status_writes(self) -> int:
        return self._writes

    # ------------------------------------------------ work queue and lease renewer

    def queue_depth(self, n: int) -> None:
        self._workqueue_depth.set(n)

    def queue_latency(self, seconds: float) -> None:
        self._workqueue_latency.observe(max(0.0, seconds))

    def reconcile_retry(self) -> None:
        self._reconcile_retries.inc()

    def reconciled(self, seconds: float, ok: bool) -> None:
        """One reconcile, as the work queue timed it (a failed one is retried)."""
        self._reconcile_duration.labels(result="ok" if ok else "error").observe(max(0.0, seconds))
        if not ok:
            self.reconcile_retry()

    def api_request(self, verb: str, resource: str, code: int) -> None:
        self._api_requests.labels(verb=verb, resource=resource, code=str(code)).inc()

    def lease_renewal(self, ok: bool) -> None:
        self._lease_renewals.labels(result="ok" if ok else "failed").inc()

    def notification(self, service: str, trigger: str, result: str) -> None:
        self._notifications.labels(service=service, trigger=trigger, result=result).inc()

    def notifications_in_flight(self, n: int) -> None:
        self._notifications_in_flight.set(n)

    # ----------------------------------------------------------------- inputs

    def observe(self, namespace: str, name: str, phase: str | None) -> None:
        """A rollout as the watch sees it (`phase` None: it was deleted)."""
        key = (namespace, name)
        if phase is None:
            self._rollouts.pop(key, None)
            self._ended.pop(key, None)
            self._queued_since.pop(key, None)
            return
        rollout = self._rollouts.get(key)
        if rollout is None:
            rollout = self._rollouts[key] = RolloutGauges(phase=phase or Phase.PENDING.value)
        else:
            rollout.phase = phase or Phase.PENDING.value
        self._track_end(key, rollout)

    def record(
        self,
        namespace: str,
        name: str,
        old: CanaryRolloutStatus | None,
        new: CanaryRolloutStatus,
    ) -> None:
        """The reconciler wrote `new` over `old` (the `on_status_written` hook).

        Never raises: a metric must not fail the reconcile that called it."""
        self._writes += 1
        self._status_writes.inc()
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
        same_run = old is not None and old.run == new.run
        before = old if same_run else None
        rollout = self._rollouts.setdefault(key, RolloutGauges(phase=new.phase.value))
        rollout.phase = new.phase.value
        rollout.weight = new.weight
        rollout.queue = (new.queue.lock, new.queue.waiting) if new.queue is not None else None
        cleanup = new.cleanup
        rollout.cleanup_blocked = bool(
            new.phase == Phase.CLEANING_UP
            and cleanup is not None
            and (cleanup.attempts > 0 or cleanup.blocked_by)
            and not cleanup.finished_at
        )
        self._steps(before, new)
        self._cleanup(namespace, old, new, same_run, now)
        self._lock(key, namespace, old, new, same_run, now)
        if new.lock is not None and not new.phase.terminal:
            rollout.lock = new.lock.name
            rollout.lock_acquired = parse_time(new.lock.acquired_at).timestamp()
        else:
            rollout.lock, rollout.lock_acquired = None, None
        was_terminal = old is not None and same_run and old.phase in TERMINAL_PHASES
        if new.phase in TERMINAL_PHASES and not was_terminal:
            result = new.outcome.result.value if new.outcome else new.phase.value
            self.completed.labels(namespace=namespace, result=result).inc()
        self._track_end(key, rollout)

    def _track_end(self, key: Key, rollout: RolloutGauges) -> None:
        if not rollout.terminal:
            self._ended.pop(key, None)
            return
        self._ended[key] = None
        self._ended.move_to_end(key)

    def _shown(self) -> Iterator[tuple[Key, RolloutGauges]]:
        """Rollouts with per-rollout series: the unfinished and the recently ended."""
        recent = set(list(self._ended)[-self.recent_terminal :]) if self.recent_terminal else set()
        for key, rollout in sorted(self._rollouts.items()):
            if not rollout.terminal or key in recent:
                yield key, rollout

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
        self.step_duration.labels(kind=new.kind, result=new.phase.value).observe(max(0.0, seconds))

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
                self.cleanup_failures.labels(namespace=namespace).inc(failed)
            if (
                cleanup.finished_at
                and cleanup.started_at
                and not (old_cleanup and old_cleanup.finished_at)
            ):
                seconds = (
                    parse_time(cleanup.finished_at) - parse_time(cleanup.started_at)
                ).total_seconds()
                result = new.outcome.result.value if new.outcome else "Unknown"
                self.cleanup_duration.labels(result=result).observe(max(0.0, seconds))
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
            self.cleanup_duration.labels(result=result).observe(max(0.0, now - started))

    def _lock(
        self,
        key: Key,
        namespace: str,
        old: CanaryRolloutStatus | None,
        new: CanaryRolloutStatus,
        same_run: bool,
        now: float,
    ) -> None:
        self._note_release(namespace, old, new, same_run, now)
        if new.phase == Phase.QUEUED and key not in self._queued_since:
            self._queued_since[key] = now
        old_token = old.lock.token if old is not None and old.lock and same_run else None
        if new.lock is None or new.lock.token == old_token:
            return
        since = self._queued_since.pop(key, None)
        queued_at = parse_any_time(new.queued_at) if new.queued_at else None
        if since is None and queued_at is not None:
            # Queued and started in one status write (a free lock taken at once), or
            # queued before this process started: the run's own record of it.
            since = queued_at.timestamp()
        if since is None and old is not None:
            queued = old.condition("Progressing")
            if queued is not None and queued.reason == "Queued":
                since = parse_time(queued.last_transition_time).timestamp()
        acquired = parse_time(new.lock.acquired_at).timestamp()
        if since is not None:
            self.lock_wait.labels(namespace=namespace).observe(max(0.0, acquired - since))
        released = self._released.pop((namespace, new.lock.name), None)
        # A handoff only if this run was already waiting when the lock was released.
        if released is not None and since is not None and since <= released:
            self.lock_handoff.labels(namespace=namespace).observe(max(0.0, acquired - released))

    def _note_release(
        self,
        namespace: str,
        old: CanaryRolloutStatus | None,
        new: CanaryRolloutStatus,
        same_run: bool,
        now: float,
    ) -> None:
        """Remember when a run let go of its lock: it ended, or a new run replaced it."""
        if old is None or old.lock is None or old.phase in TERMINAL_PHASES:
            return
        if same_run and new.phase not in TERMINAL_PHASES:
            return  # still holding it
        finished = new.cleanup.finished_at if new.cleanup is not None and same_run else None
        when = parse_time(finished).timestamp() if finished else now
        self._released[(namespace, old.lock.name)] = when

    # ----------------------------------------------------------------- output

    def render(self) -> str:
        """The exposition (text format 0.0.4)."""
        return generate_latest(self.registry).decode()
