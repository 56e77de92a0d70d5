"""The per-rollout gauges, computed at scrape time from the rollouts one `Metrics`
knows (by phase, queue lengths, each rollout's phase, weight, blocked cleanup and the
lock it holds), so they need no bookkeeping at each status write."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from canary_operator.api.models import TERMINAL_PHASES

Key = tuple[str, str]  # (namespace, name)


@dataclass
class RolloutGauges:
    """What the per-rollout gauges show of one rollout."""

    phase: str
    weight: int | None = None
    lock: str | None = None
    lock_acquired: float | None = None
    cleanup_blocked: bool = False
    queue: tuple[str, int] | None = None  # (lock, waiting)

    @property
    def terminal(self) -> bool:
        return self.phase in {p.value for p in TERMINAL_PHASES}


class StateCollector(Collector):
    """Gauges computed at scrape time from the rollouts this process knows."""

    def __init__(
        self,
        rollouts: Mapping[Key, RolloutGauges],
        shown: Callable[[], Iterator[tuple[Key, RolloutGauges]]],
    ) -> None:
        self.rollouts = rollouts  # every rollout known, by (namespace, name)
        self.shown = shown  # those with per-rollout series

    def collect(self) -> Iterator[Metric]:
        by_phase = GaugeMetricFamily(
            "canary_operator_rollouts", "CanaryRollouts by phase.", labels=["namespace", "phase"]
        )
        counts: dict[tuple[str, str], int] = {}
        for (namespace, _), rollout in self.rollouts.items():
            counts[(namespace, rollout.phase)] = counts.get((namespace, rollout.phase), 0) + 1
        for labels, count in sorted(counts.items()):
            by_phase.add_metric(list(labels), count)
        yield by_phase

        queues = GaugeMetricFamily(
            "canary_operator_queue_length",
            "Rollouts waiting for each lock.",
            labels=["namespace", "lock"],
        )
        waiting: dict[tuple[str, str], int] = {}
        for (namespace, _), rollout in self.rollouts.items():
            if rollout.queue is not None:
                lock, n = rollout.queue
                waiting[(namespace, lock)] = max(waiting.get((namespace, lock), 0), n)
        for labels, n in sorted(waiting.items()):
            queues.add_metric(list(labels), n)
        yield queues

        phase = GaugeMetricFamily(
            "canary_operator_rollout_phase",
            "1 for the current phase of each running or recently ended rollout.",
            labels=["namespace", "name", "phase"],
        )
        weight = GaugeMetricFamily(
            "canary_operator_rollout_weight_percent",
            "Observed share of traffic sent to the canary.",
            labels=["namespace", "name"],
        )
        blocked = GaugeMetricFamily(
            "canary_operator_cleanup_blocked",
            "1 while a rollout's cleanup retries after a failure, or waits for objects "
            "whose deletion is overdue (status.cleanup.blockedBy); its lock is kept.",
            labels=["namespace", "name"],
        )
        held = GaugeMetricFamily(
            "canary_operator_lock_held_since_seconds",
            "Unix time at which the holder of each lock acquired it.",
            labels=["namespace", "lock", "holder"],
        )
        for (namespace, name), rollout in self.shown():
            phase.add_metric([namespace, name, rollout.phase], 1)
            if rollout.weight is not None:
                weight.add_metric([namespace, name], rollout.weight)
            if rollout.terminal:
                continue
            if rollout.cleanup_blocked:
                blocked.add_metric([namespace, name], 1)
            if rollout.lock is not None and rollout.lock_acquired is not None:
                held.add_metric([namespace, rollout.lock, name], rollout.lock_acquired)
        yield phase
        yield weight
        yield blocked
        yield held
