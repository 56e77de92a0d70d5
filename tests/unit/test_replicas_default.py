"""The replicas router's default mode (issue 26): Shift for a new rollout, Add kept for
a rollout an older operator ran, the mode of a run fixed at its start, and the weights
its pods cannot reach refused before anything is touched. The weight table of
docs/traffic-routing.md is computed here, so the docs cannot go stale."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from canary_operator.api.models import (
    DEFAULT_REPLICAS_MODE,
    CanaryRolloutSpec,
    CanaryRolloutStatus,
    Phase,
    ReplicasMode,
    Result,
)
from canary_operator.engine.spec_checks import reach_problems
from canary_operator.engine.types import StableRecord
from canary_operator.engine.weights import plan_shift, run_mode, shift_reach
from tests.unit.test_machine import make_spec
from tests.unit.test_machine_shift import Pods, Run, World, make_rollout

DOCS = Path(__file__).resolve().parents[2] / "docs" / "traffic-routing.md"
TABLE_WEIGHTS = (1, 5, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 95, 99)
TABLE_REPLICAS = (3, 5, 10)
STEPS = [{"canary": {"replicas": 1}}, *({"setWeight": w} for w in (10, 50, 90)), {"promote": {}}]


def default_spec(*steps: dict, **fields: object) -> CanaryRolloutSpec:
    """A spec with no trafficRouting at all: the default router, its default mode."""
    spec = make_spec(*steps, **fields)
    return spec.model_copy(update={"traffic_routing": None})


def run(spec: CanaryRolloutSpec, n: int, status: CanaryRolloutStatus | None = None) -> Run:
    rollout = make_rollout(spec)
    if status is not None:
        rollout = replace(rollout, status=status)
    return Run(rollout, World(n), 1)


def test_the_default_is_shift() -> None:
    assert DEFAULT_REPLICAS_MODE == ReplicasMode.SHIFT
    assert default_spec().replicas_mode is None
    assert make_spec(trafficRouting={"replicas": {}}).replicas_mode is None


def test_a_new_rollout_with_the_default_settings_moves_pods_as_argo_does() -> None:
    r = run(default_spec(*STEPS), 3)
    end = r.drive()
    assert end.status.phase == Phase.SUCCEEDED, end.status
    assert end.status.replicas_mode == ReplicasMode.SHIFT
    assert r.steps_done == [(1, 3, 25), (1, 3, 25), (2, 2, 50), (3, 1, 75)]
    # at most the target's size in canary pods, plus the promotion's rolling update
    assert r.world.created == {"canary": 3, "stable": 3}


def test_a_rollout_an_older_operator_ran_keeps_mode_add_in_its_next_runs() -> None:
    # Ended before the upgrade: a run number, no recorded mode; its spec then changes.
    old = CanaryRolloutStatus(phase=Phase.SUCCEEDED, run=1, fingerprint="from-before")
    r = run(default_spec(*STEPS), 3, old)
    end = r.drive()
    assert end.status.phase == Phase.SUCCEEDED, end.status
    assert end.status.run == 2 and end.status.replicas_mode == ReplicasMode.ADD
    assert r.steps_done == [(1, 3, 25), (1, 3, 25), (3, 3, 50), (27, 3, 90)]


def test_a_run_started_by_an_older_operator_ends_in_mode_add() -> None:
    r = run(default_spec(*STEPS), 3)
    r.until(lambda r: r.rollout.status.started_at is not None)
    assert r.rollout.status.current_step == 0
    # As an older operator would have left it: no recorded mode in the status.
    r.rollout = replace(
        r.rollout, status=r.rollout.status.model_copy(update={"replicas_mode": None})
    )
    end = r.drive()
    assert end.status.phase == Phase.SUCCEEDED, end.status
    assert end.status.replicas_mode is None
    assert r.world.created["canary"] == 27 and r.world.record is None


def test_the_mode_recorded_at_a_run_start_is_kept_for_the_next_runs() -> None:
    assert run_mode(None, ReplicasMode.SHIFT) == ReplicasMode.SHIFT
    assert run_mode(None, ReplicasMode.ADD) == ReplicasMode.ADD
    assert run_mode(ReplicasMode.SHIFT, ReplicasMode.ADD) == ReplicasMode.SHIFT
    assert run_mode(None, None) == ReplicasMode.ADD  # a run that an older operator started
    explicit = make_spec(*STEPS, trafficRouting={"replicas": {"mode": "Add"}})
    r = run(explicit, 3)
    assert r.drive().status.replicas_mode == ReplicasMode.ADD


def test_the_fingerprint_is_as_before_so_the_upgrade_starts_no_run() -> None:
    """Before, `mode` defaulted to Add in the model, so it was part of the fingerprint
    of every spec that had `replicas:`; leaving it out would start a new run of every
    such rollout at the upgrade."""
    unset = make_spec(*STEPS, trafficRouting={"replicas": {}})
    add = make_spec(*STEPS, trafficRouting={"replicas": {"mode": "Add"}})
    shift = make_spec(*STEPS, trafficRouting={"replicas": {"mode": "Shift"}})
    assert unset.run_fingerprint() == add.run_fingerprint() != shift.run_fingerprint()
    assert (
        default_spec(*STEPS).run_fingerprint()
        == make_spec(*STEPS).model_copy(update={"traffic_routing": None}).run_fingerprint()
    )


def test_a_weight_the_floor_keeps_out_of_reach_is_refused_before_anything_is_touched() -> None:
    spec = make_spec(*STEPS, trafficRouting={"replicas": {"mode": "Shift", "minStableReplicas": 2}})
    assert reach_problems(spec, ReplicasMode.SHIFT, 3) == [
        "spec.steps[3].setWeight: 90 % reaches 50 % on 3 replicas (2 canary + 2 stable): "
        "minStableReplicas 2 keeps 2 of the 3 stable pods; 90 % needs minStableReplicas 1 "
        "at most"
    ]
    r = Run(make_rollout(spec), World(3), 2)
    end = r.drive()
    assert end.status.outcome is not None and end.status.outcome.result == Result.INVALID
    assert (end.status.outcome.message or "").startswith("spec.steps[3].setWeight: 90 %")
    assert r.world.created == {"canary": 0, "stable": 0} and r.world.record is None
    assert reach_problems(spec, ReplicasMode.SHIFT, 10) == []  # 10 replicas: 8 + 2


def test_the_reach_is_judged_on_the_size_a_previous_shift_run_recorded() -> None:
    """A target a previous run left shifted (3 of its 10 pods, the record on it) is
    judged at 10: the recovery restores it before the first step."""
    spec = make_spec(*STEPS, trafficRouting={"replicas": {"mode": "Shift", "minStableReplicas": 2}})
    world = World(10)
    world.stable = Pods(3, 3)
    world.record = StableRecord(10, 3, 2)
    end = Run(make_rollout(spec), world, 2).drive(capacity=3)
    assert end.status.phase == Phase.SUCCEEDED, end.status
    assert end.status.stable_replicas == 10


def test_min_stable_replicas_on_a_rollout_that_keeps_mode_add_is_refused() -> None:
    spec = make_spec(*STEPS, trafficRouting={"replicas": {"minStableReplicas": 2}})
    (problem,) = reach_problems(spec, ReplicasMode.ADD, 3)
    assert problem.startswith("spec.trafficRouting.replicas.minStableReplicas: applies to mode")


@pytest.mark.parametrize("n", range(1, 21))
def test_without_a_floor_every_weight_is_within_a_pod(n: int) -> None:
    assert [w for w in range(1, 100) if shift_reach(n, w, 1)] == []
    assert shift_reach(n, 100, 1) is not None


def weight_table() -> str:
    """docs/traffic-routing.md's table: canary + stable pods and the share they carry,
    in the default mode (Shift, no floor)."""
    head = "| setWeight | " + " | ".join(f"{n} replicas" for n in TABLE_REPLICAS) + " |"
    rows = [head, "|---" * (len(TABLE_REPLICAS) + 1) + "|"]
    for w in TABLE_WEIGHTS:
        cells = []
        for n in TABLE_REPLICAS:
            p = plan_shift(n, w, 1)
            cells.append(f"{p.canary_replicas} + {p.stable_replicas} = {p.expected_weight} %")
        rows.append(f"| {w} % | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def test_the_docs_weight_table_is_the_computed_one() -> None:
    text = DOCS.read_text()
    found = re.search(
        r"<!-- weight-table: tests/unit/test_replicas_default.py -->\n(.*?)\n<!-- end -->",
        text,
        re.S,
    )
    assert found, "the table's markers are missing from docs/traffic-routing.md"
    assert found.group(1) == weight_table(), "docs/traffic-routing.md:\n" + weight_table()
