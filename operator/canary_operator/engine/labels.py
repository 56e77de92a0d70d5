"""Names and labels derived from a rollout: its Jobs, its run, its steps."""

from __future__ import annotations

from canary_operator.api.models import CanaryRolloutSpec
from canary_operator.engine.types import Rollout


def step_label(spec: CanaryRolloutSpec, index: int | None) -> str | None:
    if index is None:
        return None
    if index >= len(spec.steps):
        return f"{len(spec.steps)}/{len(spec.steps)} done"
    step = spec.steps[index]
    return f"{index + 1}/{len(spec.steps)} {step.name or step.kind}"


def job_name(rollout: Rollout, suffix: str) -> str:
    """Deterministic, unique per rollout and run, at most 63 characters."""
    base = f"{rollout.name[:30].rstrip('-.')}-{rollout.uid[:5]}-r{rollout.status.run}-{suffix}"
    return base[:63].rstrip("-")


def run_id(rollout: Rollout) -> str:
    return f"{rollout.uid}/{rollout.status.run}"
