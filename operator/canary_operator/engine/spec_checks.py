"""The checks of a spec that need neither the schema nor the cluster, made before a
run touches anything: analysis conditions and queries, webhook body templates; and,
given the target's replicas and the run's mode, the weights the replicas router can
reach (reach_problems).

Each problem starts with the field path it is about
(`spec.steps[1].analysis.metrics[0].successCondition: ...`), as the checks against the
cluster (validation/) do, so the user knows what to fix.
"""

from __future__ import annotations

from collections.abc import Iterator

from canary_operator.api.models import (
    ROUTER_REPLICAS,
    CanaryRolloutSpec,
    ParallelItem,
    ReplicasMode,
    Step,
)
from canary_operator.checks.render import template_problems
from canary_operator.engine import analysis
from canary_operator.engine.weights import shift_reach


def spec_items(spec: CanaryRolloutSpec) -> Iterator[tuple[str, Step | ParallelItem]]:
    """(field path, item) of every step and every parallel item, in order."""
    for n, step in enumerate(spec.steps):
        yield f"spec.steps[{n}]", step
        for m, item in enumerate(step.parallel or []):
            yield f"spec.steps[{n}].parallel[{m}]", item


def spec_problems(spec: CanaryRolloutSpec) -> list[str]:
    """Checks the schema cannot express, made before anything is touched."""
    problems: list[str] = []
    for field, item in spec_items(spec):
        if item.analysis is not None:
            problems += analysis.spec_errors(item.analysis, f"{field}.analysis")
        webhook = item.test.webhook if item.test is not None else None
        if webhook is not None and webhook.body is not None:
            problems += [f"{field}.test.webhook.body: {e}" for e in template_problems(webhook.body)]
    for k, user in enumerate(spec.cleanup or []):
        if user.webhook is not None and user.webhook.body is not None:
            where = f"spec.cleanup[{k}].webhook.body"
            problems += [f"{where}: {e}" for e in template_problems(user.webhook.body)]
    return problems


def reach_problems(spec: CanaryRolloutSpec, mode: ReplicasMode, replicas: int) -> list[str]:
    """The replicas router's steps that the run's pods cannot reach, on a target of
    `replicas` pods in `mode` (the run's: engine/weights.py run_mode). Mode Add reaches
    every weight below 100 % by adding canary pods; mode Shift moves at most the pods
    the floor lets go (weights.shift_reach)."""
    if spec.router_kind != ROUTER_REPLICAS:
        return []
    routing = spec.replicas_routing
    if mode == ReplicasMode.ADD:
        if routing is not None and routing.min_stable_replicas is not None:
            return [
                "spec.trafficRouting.replicas.minStableReplicas: applies to mode Shift only, "
                "and this rollout's runs use mode Add (status.replicasMode: it ran before "
                "Shift became the default); set spec.trafficRouting.replicas.mode: Shift"
            ]
        return []
    problems = []
    for n, step in enumerate(spec.steps):
        if step.set_weight is not None:
            why = shift_reach(replicas, step.set_weight, spec.stable_floor)
            if why:
                problems.append(f"spec.steps[{n}].setWeight: {why}")
    return problems
