"""Operator metrics (prometheus_client): `Metrics` (recorder.py) takes what the
reconciler, the watch, the work queue and the lease renewer report; gauges.py computes
the per-rollout gauges at scrape time."""

from canary_operator.metrics.recorder import Metrics

__all__ = ["Metrics"]
