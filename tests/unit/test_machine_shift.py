"""The state machine with the replicas router in mode Shift (`engine/machine.py`).

A small simulated cluster plays both Deployments: new pods become ready one reconcile
after they are asked for (removed ones go at once), and ResetRoute does what the
reconciler's `RestoresStable` does (traffic/replicas.py; tested apart in
test_replicas_router.py): with a record on the target, first the stable's replicas,
then wait for its pods, then the record goes and the canary is scaled to zero.

Checked after every single plan, for every stable size, floor and weight sequence:
ready pods never fewer than the stable's original replicas N (whatever grows is ready
before the other side shrinks), the stable never below its floor; at each step the
split of `plan_shift`; at the end the stable at N, no canary, no record.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest

from canary_operator.api.models import CanaryRolloutSpec, Phase, Result
from canary_operator.engine.types import (
    Action,
    DeleteCanaryObjects,
    EnsureCanary,
    EnsureJob,
    JobView,
    Need,
    Observed,
    PromoteStable,
    ReleaseLock,
    ResetRoute,
    Rollout,
    RouteView,
    ScaleStable,
    StableRecord,
    WorkloadView,
)
from canary_operator.engine.weights import (
    original_replicas,
    plan_shift,
    plan_shift_canary,
    plan_weight,
    replicas_weight,
    shift_reach,
    stable_floor,
)
from tests.unit.test_machine import NOW, checked_plan, held, job_test, make_rollout, make_spec


def shift_spec(
    *steps: dict[str, Any], floor: int | None = None, **fields: Any
) -> CanaryRolloutSpec:
    routing: dict[str, Any] = {"mode": "Shift"}
    if floor is not None:
        routing["minStableReplicas"] = floor
    return make_spec(*steps, trafficRouting={"replicas": routing}, **fields)


@dataclass
class Pods:
    """One Deployment: its spec.replicas and its ready pods."""

    replicas: int
    ready: int

    def scale(self, replicas: int) -> int:
        """Returns the pods created."""
        created = max(0, replicas - self.replicas)
        self.replicas = replicas
        self.ready = min(self.ready, replicas)  # removed pods stop serving at once
        return created

    def view(self, **fields: Any) -> WorkloadView:
        return WorkloadView(
            replicas=self.replicas,
            ready=self.ready,
            available=self.ready,
            updated=self.ready,
            current=True,
            **fields,
        )


@dataclass
class World:
    n: int
    stable: Pods = field(init=False)
    canary: Pods | None = None
    record: StableRecord | None = None
    promoted_by: str | None = None
    canary_pods_start: bool = True  # False: canary pods never become ready
    jobs: dict[str, JobView] = field(default_factory=dict)
    failing_jobs: set[str] = field(default_factory=set)  # name suffixes
    created: dict[str, int] = field(default_factory=lambda: {"stable": 0, "canary": 0})
    released: bool = False

    def __post_init__(self) -> None:
        self.stable = Pods(self.n, self.n)

    def route(self) -> RouteView:
        weight = 0 if self.canary is None else replicas_weight(self.stable.ready, self.canary.ready)
        return RouteView(weight, restoring="restoring" if self.record else None)

    def observe(self, seconds: int) -> Observed:
        return Observed(
            now=NOW + timedelta(seconds=seconds),
            lock=held(1),
            target=self.stable.view(promoted_by=self.promoted_by, stable_record=self.record),
            canary=self.canary.view() if self.canary else None,
            canary_service=self.canary is not None,
            route=self.route(),
            jobs=dict(self.jobs),
            canary_pods=self.canary.replicas if self.canary else 0,
            answered=frozenset(Need),  # final observations: this world's reads are never stale
        )

    def scale_stable(self, replicas: int) -> None:
        self.created["stable"] += self.stable.scale(replicas)

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case EnsureCanary(replicas=n):
                    self.canary = self.canary or Pods(0, 0)
                    self.created["canary"] += self.canary.scale(n)
                case ScaleStable(replicas=n, original=original, floor=floor):
                    self.record = StableRecord(original, n, floor)
                    self.scale_stable(n)
                case ResetRoute():
                    self.reset()
                case DeleteCanaryObjects():
                    self.canary = None
                    self.jobs = {}
                case EnsureJob(name=name):
                    failed = any(name.endswith("-" + s) for s in self.failing_jobs)
                    self.jobs[name] = JobView(name, succeeded=not failed, failed=failed)
                case PromoteStable(run_id=rid):
                    self.promoted_by = rid
                    self.created["stable"] += self.stable.replicas  # a new ReplicaSet
                case ReleaseLock():
                    self.released = True

    def reset(self) -> None:
        """As RestoresStable.reset, then the replicas router's reset."""
        if self.record is not None:
            want = original_replicas(
                self.stable.replicas, self.record.original, self.record.written
            )
            if self.stable.replicas != want:
                self.record = StableRecord(want, want, self.record.floor)
                self.scale_stable(want)
                return
            if self.stable.ready < want:
                return
            self.record = None
        if self.canary is not None:
            self.canary.scale(0)

    def settle(self) -> None:
        """A reconcile later: the pods asked for are ready."""
        self.stable.ready = self.stable.replicas
        if self.canary is not None and self.canary_pods_start:
            self.canary.ready = self.canary.replicas

    @property
    def ready(self) -> int:
        return self.stable.ready + (self.canary.ready if self.canary else 0)


@dataclass
class Run:
    rollout: Rollout
    world: World
    floor: int
    steps_done: list[tuple[int, int, int]] = field(default_factory=list)  # canary, stable, weight
    ticks: int = 0

    def drive(self, limit: int = 400, capacity: int | None = None, **during: Any) -> Rollout:
        """Reconcile until the rollout ends, checking the invariants after each plan."""
        expected_capacity = self.world.n if capacity is None else capacity
        for _ in range(limit):
            self.ticks += 1
            obs = self.world.observe(self.ticks)
            result = checked_plan(self.rollout, obs)
            before = self.rollout.status
            # The split this plan judged its steps by (a step ends on what it observed).
            seen = (
                self.world.canary.replicas if self.world.canary else 0,
                self.world.stable.replicas,
            )
            self.world.apply(list(result.actions))
            # the moment of truth: removals are immediate, additions not ready yet
            assert self.world.ready >= expected_capacity, (
                f"ready pods {self.world.ready} < {expected_capacity} after {result.actions}"
            )
            assert self.world.stable.replicas >= self.floor, "stable below its floor"
            for hook_tick, hook in during.items():
                if int(hook_tick.removeprefix("t")) == self.ticks:
                    hook(self)
            self._record_steps(before, result.status, seen)
            self.rollout = replace(self.rollout, status=result.status)
            if result.status.phase.terminal:
                return self.rollout
            self.world.settle()
        raise AssertionError(f"not finished after {limit} reconciles: {self.rollout.status}")

    def until(self, reached: Any, limit: int = 200) -> None:
        """Reconcile (pods ready a reconcile later) until `reached(self)`."""
        for _ in range(limit):
            self.ticks += 1
            obs = self.world.observe(self.ticks)
            result = checked_plan(self.rollout, obs)
            self.world.apply(list(result.actions))
            self.rollout = replace(self.rollout, status=result.status)
            if reached(self):
                return
            self.world.settle()
        raise AssertionError(f"not reached after {limit} reconciles: {self.rollout.status}")

    def _record_steps(self, before: Any, after: Any, seen: tuple[int, int]) -> None:
        """Each step that finished in this plan (a plan may finish several: a step that
        is done is followed by the next at once), with the split it was judged by."""
        for index in range(before.current_step or 0, after.current_step or 0):
            if after.steps and after.steps[index].kind in ("setWeight", "canary"):
                self.steps_done.append((*seen, after.weight or 0))


def start(spec: CanaryRolloutSpec, n: int, floor: int) -> Run:
    return Run(make_rollout(spec), World(n), stable_floor(n, floor))


def assert_restored(run: Run, n: int) -> None:
    world = run.world
    assert world.stable.replicas == n and world.stable.ready == n
    assert world.canary is None, "no canary left"
    assert world.record is None, "the record is removed"
    assert world.released


WEIGHT_LISTS = [
    [10, 30, 50, 90],
    [90, 50, 10],  # shrinking the canary again: the stable grows first
    [1, 99, 33],
]


@pytest.mark.parametrize("n", range(1, 8))
@pytest.mark.parametrize("weights", WEIGHT_LISTS, ids=lambda w: "-".join(map(str, w)))
def test_each_step_has_the_planned_split_and_promotion_restores_the_stable(
    n: int, weights: list[int]
) -> None:
    for floor in range(1, n + 2):
        steps = [{"canary": {"replicas": 1}}, *({"setWeight": w} for w in weights)]
        run = start(shift_spec(*steps, {"promote": {}}, floor=floor), n, floor)
        end = run.drive()
        unreachable = [w for w in weights if shift_reach(n, w, floor)]
        if unreachable:
            # A floor that keeps a weight more than a pod away is refused before the
            # run touches anything (it used to run, reaching the floor's closest share).
            assert end.status.outcome is not None, f"N={n} floor={floor}"
            assert end.status.outcome.result == Result.INVALID, end.status
            assert f"setWeight: {unreachable[0]} % reaches" in (end.status.outcome.message or "")
            assert run.world.created == {"canary": 0, "stable": 0}
            assert run.world.stable.replicas == n and run.world.record is None
            continue
        assert end.status.phase == Phase.SUCCEEDED, end.status
        first = plan_shift_canary(n, 1, floor)
        expected = [(first.canary_replicas, first.stable_replicas, first.expected_weight)]
        for w in weights:
            p = plan_shift(n, w, floor)
            expected.append((p.canary_replicas, p.stable_replicas, p.expected_weight))
        assert run.steps_done == expected, f"N={n} floor={floor}"
        assert_restored(run, n)
        assert run.world.promoted_by is not None
        # pods created: the canary's largest size at most, and the stable's promotion
        # (plus one per pod it had to grow back when the canary shrank)
        most = max(c for c, _, _ in expected)
        assert run.world.created["canary"] == most
        assert run.world.created["stable"] >= n


def test_three_replicas_at_90_percent_uses_3_canary_pods_not_27() -> None:
    steps = [{"canary": {"replicas": 1}}, *({"setWeight": w} for w in (10, 50, 90))]
    shift = start(shift_spec(*steps, {"promote": {}}), 3, 1)
    shift.drive()
    assert shift.steps_done == [(1, 3, 25), (1, 3, 25), (2, 2, 50), (3, 1, 75)]
    # the stable: 1 pod on the new version by promotion, then 2 more to get back to 3
    assert shift.world.created == {"canary": 3, "stable": 3}
    assert plan_weight("replicas", 3, 90, 1).canary_replicas == 27  # mode Add, same steps


@pytest.mark.parametrize("n", [1, 3, 5])
@pytest.mark.parametrize("how", ["failed test", "abort", "deletion"])
def test_a_failed_or_ended_run_restores_the_stable_before_the_canary_goes(n: int, how: str) -> None:
    steps = [{"canary": {"replicas": 1}}, {"setWeight": 60}, job_test("t"), {"pause": {}}]
    run = start(shift_spec(*steps), n, 1)
    if how == "failed test":
        run.world.failing_jobs.add("s3")
        end = run.drive()
        assert end.status.phase == Phase.FAILED
    else:
        run.until(lambda r: r.rollout.status.phase == Phase.PAUSED)
        assert run.rollout.status.phase == Phase.PAUSED
        shifted = plan_shift(n, 60, 1)
        assert run.world.stable.replicas == shifted.stable_replicas
        scaled_down = shifted.stable_replicas < n
        assert run.world.record == (
            StableRecord(n, shifted.stable_replicas, 1) if scaled_down else None
        )
        if how == "abort":
            run.rollout = replace(
                run.rollout, spec=run.rollout.spec.model_copy(update={"abort": True})
            )
        else:
            run.rollout = replace(run.rollout, deleting=True)
        end = run.drive()
        assert end.status.phase == Phase.ABORTED  # deletion ends Aborted too
    assert_restored(run, n)
    assert run.world.promoted_by is None


def test_cleanup_waits_for_the_stables_pods_before_the_canary_loses_its_own() -> None:
    run = start(shift_spec({"canary": {"replicas": 1}}, {"setWeight": 75}, job_test("t")), 4, 1)
    run.world.failing_jobs.add("s3")
    seen: list[tuple[int, int, int | None]] = []
    original_reset = run.world.reset

    def watched_reset() -> None:
        original_reset()
        canary = run.world.canary
        seen.append((run.world.stable.replicas, run.world.stable.ready, canary and canary.replicas))

    run.world.reset = watched_reset  # type: ignore[method-assign]
    run.drive()
    # first the stable's replicas, then (its pods ready) the canary to zero
    assert seen[0][0] == 4 and seen[0][1] < 4 and seen[0][2] not in (0, None)
    assert any(stable == ready == 4 and canary == 0 for stable, ready, canary in seen)
    assert_restored(run, 4)


def test_a_replica_change_by_someone_else_during_the_run_is_kept() -> None:
    steps = [{"canary": {"replicas": 1}}, {"setWeight": 50}, {"pause": {"duration": "30s"}}]
    steps += [{"setWeight": 80}]
    run = start(shift_spec(*steps), 4, 1)

    def user_scales(r: Run) -> None:
        # `kubectl scale deploy web --replicas=6` (or an HPA) while the pause runs
        r.world.stable.scale(6)

    run.until(lambda r: r.rollout.status.current_step == 2)  # the pause
    user_scales(run)
    run.world.settle()
    end = run.drive(capacity=6)
    assert end.status.phase == Phase.SUCCEEDED
    # the 80 % step was planned from the user's 6, and the stable ends at 6
    last = plan_shift(6, 80, 1)
    assert run.steps_done[-1][:2] == (last.canary_replicas, last.stable_replicas)
    assert_restored(run, 6)


def test_canary_pods_that_never_start_never_cost_a_stable_pod() -> None:
    run = start(shift_spec({"canary": {"replicas": 2}}, {"setWeight": 50}), 3, 1)
    run.world.canary_pods_start = False
    seen_stable: list[int] = []

    def count(r: Run) -> bool:
        seen_stable.append(r.world.stable.replicas)
        return len(seen_stable) == 30

    run.until(count)
    assert set(seen_stable) == {3}
    assert run.rollout.status.current_step == 0  # still waiting for the canary's pods


def test_a_record_left_by_an_earlier_run_is_restored_before_the_next_run_starts() -> None:
    # A run that was force-released (or whose cleanup never finished) left the stable at
    # 1 of 4 with its record; the next rollout, in mode Add, takes the lock.
    run = start(make_spec({"canary": {"replicas": 1}}), 4, 1)
    run.world.stable.scale(1)
    run.world.record = StableRecord(4, 1, 1)
    run.world.canary = Pods(3, 3)
    end = run.drive(capacity=4)
    assert end.status.phase == Phase.SUCCEEDED
    assert_restored(run, 4)


def test_promotion_rolls_the_shifted_stable_then_restores_it_before_the_canary_goes() -> None:
    run = start(shift_spec({"canary": {"replicas": 1}}, {"setWeight": 70}, {"promote": {}}), 5, 2)
    at_promotion: list[tuple[int, int]] = []
    resets: list[tuple[int, int, int]] = []
    original_apply = run.world.apply

    def watched_apply(actions: list[Action]) -> None:
        if any(isinstance(a, PromoteStable) for a in actions):
            at_promotion.append((run.world.stable.replicas, run.world.canary.replicas))  # type: ignore[union-attr]
        original_apply(actions)
        if any(isinstance(a, ResetRoute) for a in actions) and run.world.canary:
            resets.append(
                (run.world.stable.replicas, run.world.stable.ready, run.world.canary.replicas)
            )

    run.world.apply = watched_apply  # type: ignore[method-assign]
    end = run.drive()
    assert end.status.phase == Phase.SUCCEEDED
    shifted = plan_shift(5, 70, 2)
    assert at_promotion == [(shifted.stable_replicas, shifted.canary_replicas)]
    # first the stable back to 5 (its new pods not ready yet), later the canary to 0
    assert resets[0] == (5, shifted.stable_replicas, shifted.canary_replicas)
    assert resets[-1] == (5, 5, 0)
    assert_restored(run, 5)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_a_step_seeing_its_own_writes_land_has_nothing_new_to_write(n: int) -> None:
    """What a step in progress says is what it asked for, not what each side has at the
    moment: seeing its own scaling land (pods not ready yet) changes neither the message
    nor the queue (each change would be one more status write per step)."""
    steps = [{"canary": {"replicas": 1}}, {"setWeight": 30}, {"setWeight": 80}, {"promote": {}}]
    run = start(shift_spec(*steps, floor=1), n, 1)
    replans = 0
    for tick in range(1, 200):
        result = checked_plan(run.rollout, run.world.observe(tick))
        run.world.apply(list(result.actions))
        run.rollout = replace(run.rollout, status=result.status)
        if result.status.phase.terminal:
            break
        # The same moment, once the writes landed: the reconcile their watch events wake.
        again = checked_plan(run.rollout, run.world.observe(tick)).status
        same_step = (again.phase, again.current_step) == (
            Phase.PROGRESSING,
            result.status.current_step,
        )
        if same_step and result.status.phase == Phase.PROGRESSING:
            replans += 1
            assert again.message == result.status.message, (tick, result.actions)
            assert again.queue == result.status.queue
        run.world.settle()
    assert run.rollout.status.phase == Phase.SUCCEEDED
    assert replans >= 2  # the check above ran
