"""Unit tests of the pure rollout state machine (`engine/machine.py`).

A small simulated world (`World`) plays the cluster: it executes the actions a plan
asks for (EnsureCanary creates ready canary pods, ResetRoute sets the weight to 0, ...)
and produces the next `Observed`. `Sim` feeds each returned status back in, as the
reconciler does, and checks the design's invariants on every single plan.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from canary_operator.api.models import (
    CanaryRolloutSpec,
    CanaryRolloutStatus,
    CleanupStatus,
    Condition,
    ImageOverride,
    MeasurementStatus,
    Phase,
    Result,
    StepPhase,
)
from canary_operator.api.timestamps import iso, parse_time
from canary_operator.engine import machine
from canary_operator.engine.annotations import RESUME_ANNOTATION, RETRY_ANNOTATION
from canary_operator.engine.cleanup_failures import cleanup_failed
from canary_operator.engine.context import POLL_RUNNING, POLL_WAITING
from canary_operator.engine.labels import job_name
from canary_operator.engine.machine import (
    action_failed,
    blamed_status,
    plan,
    retrying,
)
from canary_operator.engine.types import (
    Action,
    AddFinalizer,
    CallWebhook,
    CheckResult,
    DeleteCanaryObjects,
    DeleteJob,
    Emit,
    EnsureCanary,
    EnsureJob,
    JobView,
    LockView,
    Measure,
    Need,
    Observed,
    Plan,
    PromoteStable,
    ReleaseLock,
    RemoveFinalizer,
    ResetRoute,
    Rollout,
    RouteView,
    SetRouteWeight,
    UndoPromotion,
    WorkloadView,
)
from canary_operator.engine.weights import replicas_weight

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
ME = "web-v2"
OTHER = "web-v1"
UID = "1f2e3d4c-0000-4000-8000-000000000001"
LOCK = "cro-lock-web"
JOB: dict[str, Any] = {
    "spec": {"template": {"spec": {"containers": [{"name": "t", "image": "busybox"}]}}}
}
# Everything a step or a cleanup does to the world (or asks of it): needs the lock.
SIDE_EFFECTS = (
    CallWebhook,
    Measure,
    EnsureCanary,
    SetRouteWeight,
    PromoteStable,
    EnsureJob,
    DeleteJob,
    ResetRoute,
    DeleteCanaryObjects,
    UndoPromotion,
)
# A run in progress never takes the lock again (only one about to start, or owing a
# cleanup, does): the reconciler's rule, mirrored by the simulated world.
WANTS_LOCK = {Phase.QUEUED, Phase.CLEANING_UP}
# An observation that answers every need: what the reconciler plans from in the end.
EVERYTHING = frozenset(Need)
RUNNING = {Phase.PROGRESSING, Phase.PAUSED}

# ------------------------------------------------------------------ spec factories

CANARY: dict[str, Any] = {"canary": {"replicas": 2}}
PROMOTE: dict[str, Any] = {"promote": {}}


def weight(percent: int) -> dict[str, Any]:
    return {"setWeight": percent}


def pause(duration: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"pause": {"duration": duration} if duration else {}, **extra}


def job_test(name: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"test": {"job": JOB}, **({"name": name} if name else {}), **extra}


def parallel(*items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"parallel": list(items), **extra}


def cleanup_job(name: str) -> dict[str, Any]:
    return {"name": name, "job": JOB}


def make_spec(*steps: dict[str, Any], router: str = "replicas", **fields: Any) -> CanaryRolloutSpec:
    body: dict[str, Any] = {
        "target": {"deployment": "web", "service": "web"},
        "images": [{"container": "app", "image": "web:2"}],
        "steps": list(steps) or [CANARY],
    }
    if router == "gatewayAPI":
        body["trafficRouting"] = {"gatewayAPI": {"httpRoute": "web"}}
    else:
        # The simulated World below models mode Add (the stable is never scaled); mode
        # Shift, the default of a new rollout, has its own World in test_machine_shift.py.
        body["trafficRouting"] = {"replicas": {"mode": "Add"}}
    body.update(fields)
    return CanaryRolloutSpec.model_validate(body)


def make_rollout(spec: CanaryRolloutSpec | None = None, **fields: Any) -> Rollout:
    values: dict[str, Any] = {
        "name": ME,
        "namespace": "ns",
        "uid": UID,
        "generation": 1,
        "spec": spec or make_spec(),
        "status": CanaryRolloutStatus(),
        **fields,
    }
    return Rollout(**values)


def workload(replicas: int, ready: int | None = None, **fields: Any) -> WorkloadView:
    up = replicas if ready is None else ready
    values: dict[str, Any] = {
        "replicas": replicas,
        "ready": up,
        "available": up,
        "updated": up,
        "current": True,
        **fields,
    }
    return WorkloadView(**values)


def observe(lock: LockView | None = None, seconds: float = 0, **fields: Any) -> Observed:
    values: dict[str, Any] = {
        "now": NOW + timedelta(seconds=seconds),
        "lock": lock or LockView(LOCK),
        "target": workload(4),
        "answered": EVERYTHING,
        **fields,
    }
    return Observed(**values)


def held(token: int = 1, **fields: Any) -> LockView:
    return LockView(LOCK, held=True, token=token, holder=ME, **fields)


# ---------------------------------------------------------------- status queries


def condition(status: CanaryRolloutStatus, type_: str) -> Condition:
    found = status.condition(type_)
    assert found is not None, f"no condition {type_} in {status.conditions}"
    return found


def is_true(status: CanaryRolloutStatus, type_: str) -> bool:
    found = status.condition(type_)
    return found is not None and found.status == "True"


def effects(actions: Sequence[Action]) -> list[Action]:
    return [a for a in actions if isinstance(a, SIDE_EFFECTS)]


def of_type(actions: Sequence[Action], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def reasons(actions: Sequence[Action]) -> list[str]:
    return [a.reason for a in of_type(actions, Emit)]


# ------------------------------------------------------------------------ world


@dataclass
class World:
    """The cluster as the machine sees it, and what its actions do to it."""

    router: str = "replicas"
    now: datetime = NOW
    holder: str | None = None  # ME, another rollout, or None (free)
    token: int = 0
    recovered_from: str | None = None
    superseded_by: str | None = None
    stable: int = 4
    target_exists: bool = True
    promoted_by: str | None = None
    stable_rolled_out: bool = True
    canary: int | None = None  # the canary Deployment's replicas; None: absent
    canary_ready: bool = True
    service: bool = False
    pods: int = 0
    pods_linger: bool = False  # deleted canary pods are still terminating
    gateway_weight: int = 0
    route_names_canary: bool = False  # the route still has a canary backend (even at 0 %)
    route_error: str | None = None
    route_stuck: bool = False  # route writes do not take effect
    jobs: dict[str, JobView] = field(default_factory=dict)
    # Job outcome by name suffix ("s2", "s3-1", "c1-a0"): True/False, None = keeps running.
    results: dict[str, bool | None] = field(default_factory=dict)
    # Background calls (webhooks, measurements) by key: None while in flight, then the
    # answer; `started` lists every call made, `cancelled` every call cancelled.
    calls: dict[str, CheckResult | MeasurementStatus | None] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    # Need.LOCK answered by taking a free lock at once, as the reconciler does. Off, a
    # new run queues first and takes the lock a reconcile later: the step-by-step
    # sequences most tests here assert were written against that.
    lock_at_once: bool = False

    def answer(self, key: str, ok: bool = True, message: str = "HTTP 200") -> None:
        assert key in self.calls and self.calls[key] is None, f"{key} not in flight"
        self.calls[key] = CheckResult(ok, message)

    def measured(self, key: str, value: float | None) -> None:
        assert key in self.calls and self.calls[key] is None, f"{key} not in flight"
        values = {} if value is None else {"m": {"canary": value}}
        self.calls[key] = MeasurementStatus(at=iso(self.now), values=values)

    def route(self) -> RouteView:
        if self.router == "gatewayAPI":
            return RouteView(self.gateway_weight, self.route_error, self.route_names_canary)
        if self.canary is None:
            return RouteView(0, self.route_error)
        ready = self.canary if self.canary_ready else 0
        share = replicas_weight(self.stable, ready) or replicas_weight(self.stable, self.canary)
        return RouteView(share, self.route_error)

    def result_of(self, name: str) -> bool | None:
        suffix = next((s for s in self.results if name.endswith("-" + s)), None)
        return True if suffix is None else self.results[suffix]

    def lock(self) -> LockView:
        if self.holder == ME:
            return held(self.token, recovered_from=self.recovered_from)
        if self.holder is not None:
            return LockView(
                LOCK,
                holder=self.holder,
                holder_phase="Progressing",
                position=1,
                waiting=1,
                busy=True,
                superseded_by=self.superseded_by,
            )
        return LockView(LOCK, position=1, waiting=1, superseded_by=self.superseded_by)

    def observe(self, wants_lock: bool) -> Observed:
        if wants_lock and self.holder is None and self.superseded_by is None:
            self.holder, self.token = ME, self.token + 1
        for name, job in list(self.jobs.items()):
            outcome = self.result_of(name)
            if not (job.succeeded or job.failed) and outcome is not None:
                self.jobs[name] = replace(
                    job, succeeded=outcome, failed=not outcome, message="" if outcome else "exit 1"
                )
        if self.canary is None and not self.pods_linger:
            self.pods = 0
        target = workload(
            self.stable,
            None if self.stable_rolled_out else 0,
            promoted_by=self.promoted_by,
        )
        canary = None
        if self.canary is not None:
            canary = workload(self.canary, None if self.canary_ready else 0)
        return Observed(
            now=self.now,
            lock=self.lock(),
            target=target if self.target_exists else None,
            canary=canary,
            canary_service=self.service,
            route=self.route(),
            jobs=dict(self.jobs),
            canary_pods=self.pods,
            checks={k: v for k, v in self.calls.items() if isinstance(v, CheckResult)},
            measurements={k: v for k, v in self.calls.items() if isinstance(v, MeasurementStatus)},
            in_flight=frozenset(k for k, v in self.calls.items() if v is None),
            answered=EVERYTHING,
        )

    def answer_need(self, obs: Observed, need: Need) -> Observed:
        """What the reconciler does for a provisional plan: observe what it asks (the
        World's caches are never stale, so only the lock changes), and say so."""
        if need == Need.LOCK and self.lock_at_once:  # the head of a free lock takes it
            if self.holder is None and self.superseded_by is None:
                self.holder, self.token = ME, self.token + 1
            obs = replace(obs, lock=self.lock())
        return replace(obs, answered=obs.answered | {need})

    def checks_answered(self) -> set[str]:
        return {k for k, v in self.calls.items() if v is not None}

    def retain(self, wanted: set[str]) -> None:
        """What the reconciler does after a status write (checks/inflight.py)."""
        for key in list(self.calls):
            if key not in wanted:
                if self.calls[key] is None:
                    self.cancelled.append(key)
                del self.calls[key]

    def apply(self, actions: Sequence[Action]) -> None:
        for action in actions:
            match action:
                case EnsureCanary(replicas=n):
                    self.canary, self.service, self.pods = n, True, n
                case SetRouteWeight(weight=w) if not self.route_stuck:
                    self.gateway_weight, self.route_names_canary = w, True
                case ResetRoute() if not self.route_stuck:
                    self.gateway_weight, self.route_names_canary = 0, False
                    if self.router == "replicas" and self.canary is not None:
                        self.canary, self.pods = 0, 0
                case DeleteCanaryObjects():
                    self.canary, self.service = None, False
                    self.pods = self.pods if self.pods_linger else 0
                    self.jobs = {n: j for n, j in self.jobs.items() if j.cleanup}
                case EnsureJob(name=name, step_label=label):
                    self.jobs.setdefault(name, JobView(name, cleanup=label.startswith("cleanup")))
                case DeleteJob(name=name):
                    self.jobs.pop(name, None)
                case PromoteStable(run_id=rid):
                    self.promoted_by = rid
                case ReleaseLock() if self.holder == ME:
                    self.holder = None
                case CallWebhook(key=key) | Measure(key=key) if key not in self.calls:
                    self.calls[key] = None
                    self.started.append(key)

    @property
    def clean(self) -> bool:
        test_jobs = [j for j in self.jobs.values() if not j.cleanup]
        return (
            self.route().weight == 0
            and self.canary is None
            and not self.service
            and self.pods == 0
            and not test_jobs
        )


# ------------------------------------------------------------------- invariants


def checked_plan(rollout: Rollout, obs: Observed) -> Plan:
    """plan(), asserting purity, idempotence and the per-plan invariants."""
    before = rollout.status.model_copy(deep=True)
    result = plan(rollout, obs)
    again = plan(rollout, obs)
    assert rollout.status == before, "plan() mutated its input"
    assert (again.status, again.actions, again.requeue_after, again.observe_next) == (
        result.status,
        result.actions,
        result.requeue_after,
        result.observe_next,
    ), "plan() is not deterministic"
    if result.observe_next is not None:  # provisional: nothing to act on, nothing to write
        assert result.status is rollout.status and not result.actions
        assert result.observe_next not in obs.answered, "a need asked again once answered"
        return result
    check_plan(rollout, obs, result)
    return result


def answered_plan(world: World, rollout: Rollout, obs: Observed) -> tuple[Plan, Observed]:
    """plan() until it needs nothing more observed, the World answering each need as
    the reconciler does; the final plan and the observation it was made from."""
    obs = replace(obs, answered=frozenset())
    for _ in range(len(Need) + 1):
        result = checked_plan(rollout, obs)
        if result.observe_next is None:
            return result, obs
        obs = world.answer_need(obs, result.observe_next)
    raise AssertionError("plan() asked for more needs than there are")


def check_plan(rollout: Rollout, obs: Observed, result: Plan) -> None:
    status, actions, was = result.status, result.actions, rollout.status.phase
    if effects(actions):
        assert obs.lock.held, f"side effects without the lock: {actions}"
        if not rollout.has_finalizer:
            assert isinstance(actions[0], AddFinalizer), "finalizer must come first"
    if of_type(actions, ReleaseLock):
        assert status.phase.terminal or status.started_at is None, status
        assert was not in RUNNING, "a running rollout released the lock without cleanup"
    if of_type(actions, RemoveFinalizer):
        assert status.phase.terminal and isinstance(actions[-1], RemoveFinalizer)
    if of_type(actions, AddFinalizer):
        assert not rollout.deleting and not status.phase.terminal
    if was in RUNNING:
        assert not status.phase.terminal, "ended a run without cleanup"
    if status.phase == Phase.CLEANING_UP:
        assert status.outcome is not None and status.cleanup is not None
    assert status.observed_generation == rollout.generation
    completed, failed = is_true(status, "Completed"), is_true(status, "Failed")
    if status.phase.terminal:
        assert completed != failed
        assert completed == (status.phase == Phase.SUCCEEDED)
        assert status.outcome is not None and status.queue is None
    else:
        assert not completed and not failed, f"terminal condition on {status.phase}"
    for c in status.conditions or []:
        assert c.observed_generation is not None


# -------------------------------------------------------------------------- sim


class Sim:
    """Drives plan() against a World, feeding each status back in like the reconciler."""

    def __init__(self, spec: CanaryRolloutSpec, world: World | None = None, **fields: Any):
        self.world = world or World(router=spec.router_kind)
        self.rollout = make_rollout(spec, **fields)
        self.plans: list[Plan] = []
        self.phases: list[Phase] = [self.rollout.status.phase]
        self.started_runs: set[int] = set()
        self.gone = False

    @property
    def status(self) -> CanaryRolloutStatus:
        return self.rollout.status

    def phase(self) -> Phase:
        return self.rollout.status.phase

    def observe(self) -> Observed:
        return self.world.observe(self.phase() in WANTS_LOCK)

    def tick(self, seconds: float = 0, fail: str | None = None, crash: bool = False) -> Plan:
        """One reconcile. `fail`: the first side effect fails for good (action_failed);
        `crash`: the operator dies after the side effects, before writing the status."""
        assert not self.gone, "the rollout was deleted"
        self.world.now += timedelta(seconds=seconds)
        rollout = self.rollout
        result, obs = answered_plan(self.world, rollout, self.observe())
        pre = [a for a in result.actions if not isinstance(a, ReleaseLock | RemoveFinalizer)]
        if fail is not None and effects(result.actions):
            first = next(i for i, a in enumerate(pre) if isinstance(a, SIDE_EFFECTS))
            self.world.apply(pre[:first])
            blamed = blamed_status(rollout, obs, result, pre[first])
            result = action_failed(rollout, obs, blamed, fail)
            assert not effects(result.actions)
            check_plan(rollout, obs, result)
            pre = []
        self.world.apply(pre)
        if of_type(pre, AddFinalizer):  # written to the API at once, status or not
            self.update(has_finalizer=True)
        self.plans.append(result)
        if crash:
            return result
        self._commit(self.rollout, result)
        return result

    def _commit(self, rollout: Rollout, result: Plan) -> None:
        was, now = rollout.status, result.status
        if now.phase in RUNNING:
            self.started_runs.add(now.run)
        ended = now.phase.terminal or now.run != was.run
        if was.run in self.started_runs and ended and not was.phase.terminal:
            # Invariant 2: a started run ends only after a verified cleanup.
            assert was.phase == Phase.CLEANING_UP, f"run {was.run} ended from {was.phase}"
            # ...unless a human forced the lock free (the documented escape hatch).
            forced = rollout.annotations.get("canary-operator.dev/force-release") == "true"
            assert is_true(now, "CleanupVerified") or (
                forced and condition(now, "CleanupVerified").reason == "ForceReleased"
            )
        self.world.retain({a.key for a in result.actions if isinstance(a, CallWebhook | Measure)})
        post = [a for a in result.actions if isinstance(a, ReleaseLock | RemoveFinalizer)]
        self.world.apply(post)
        if was.run in self.started_runs and ended and not was.phase.terminal:
            assert self.world.clean, f"invariant 3: leftovers after cleanup: {self.world}"
            assert self.world.holder != ME
        finalizer = rollout.has_finalizer
        if of_type(result.actions, RemoveFinalizer):
            finalizer = False
            self.gone = rollout.deleting
        self.rollout = replace(rollout, status=now, has_finalizer=finalizer)
        if now.phase != self.phases[-1]:
            self.phases.append(now.phase)

    def run_until(
        self, goal: Phase | Callable[[Sim], bool], limit: int = 200, seconds: float = 1
    ) -> Plan:
        def done(sim: Sim) -> bool:
            return bool(goal(sim)) if callable(goal) else sim.phase() == goal

        for _ in range(limit):
            result = self.tick(seconds)
            if self.gone or done(self):
                return result
        raise AssertionError(f"not reached after {limit} ticks: {self.status}")

    def finish(self, limit: int = 200) -> Plan:
        return self.run_until(lambda s: s.phase().terminal, limit)

    def at_step(self, index: int) -> Sim:
        """Run until step `index` (0-based) has started."""
        self.run_until(lambda s: s.status.current_step == index and bool(_step(s).started_at))
        return self

    def update(self, **fields: Any) -> None:
        self.rollout = replace(self.rollout, **fields)

    def restart(self) -> None:
        """The operator process restarts: calls in flight are lost with it."""
        self.world.calls.clear()

    def delete(self) -> None:
        self.update(deleting=True)
        if not self.rollout.has_finalizer:  # the API server deletes it at once
            assert self.world.clean, "deleted without a finalizer after touching the target"
            self.gone = True

    def annotate(self, key: str, value: str) -> None:
        self.update(annotations={**self.rollout.annotations, key: value})

    def change_spec(self, **changes: Any) -> None:
        spec = self.rollout.spec.model_copy(update=changes)
        self.update(spec=spec, generation=self.rollout.generation + 1)

    def new_image(self, image: str = "web:3") -> None:
        self.change_spec(images=[ImageOverride(container="app", image=image)])

    def job(self, suffix: str) -> str:
        return job_name(self.rollout, suffix)

    def all_actions(self) -> list[Action]:
        return [a for p in self.plans for a in p.actions]

    def events(self) -> list[str]:
        return reasons(self.all_actions())


def _step(sim: Sim, index: int | None = None) -> Any:
    steps = sim.status.steps
    assert steps is not None
    return steps[sim.status.current_step or 0 if index is None else index]


def started(*steps: dict[str, Any], world: World | None = None, **spec_fields: Any) -> Sim:
    """A queued rollout whose next tick starts its run (lock taken, target clean, no
    step run yet): the plan that starts a run also starts its first step."""
    sim = Sim(make_spec(*steps, **spec_fields), world)

    def starts_next(s: Sim) -> bool:
        return (
            s.phase() == Phase.QUEUED and plan(s.rollout, s.observe()).status.phase != Phase.QUEUED
        )

    sim.run_until(starts_next)
    return sim


def cleaning(decide: Callable[[Sim], None], *steps: dict[str, Any], **kw: Any) -> Sim:
    """A rollout paused at a pause step whose outcome was just decided by `decide`."""
    sim = started(*(steps or (CANARY, pause())), **kw)
    sim.run_until(Phase.PAUSED)
    decide(sim)
    sim.tick()
    assert sim.phase() == Phase.CLEANING_UP
    return sim


def abort(sim: Sim) -> None:
    sim.change_spec(abort=True)


# ===================================================================== Pending


def test_pending_queues_and_adds_the_finalizer_first() -> None:
    sim = Sim(make_spec(), has_finalizer=False)
    result = sim.tick()
    status = result.status
    assert status.phase == Phase.QUEUED
    assert (status.run, status.observed_generation) == (1, 1)
    assert status.fingerprint == sim.rollout.spec.run_fingerprint()
    assert isinstance(result.actions[0], AddFinalizer)
    assert effects(result.actions) == [] and not of_type(result.actions, ReleaseLock)
    assert condition(status, "Progressing").reason == "Queued"
    assert "Queued" in reasons(result.actions)
    assert result.requeue_after == 0


def test_finalizer_not_added_again_or_while_deleting() -> None:
    assert not of_type(plan(make_rollout(make_spec()), observe()).actions, AddFinalizer)
    deleting = make_rollout(make_spec(), has_finalizer=False, deleting=True)
    assert not of_type(plan(deleting, observe()).actions, AddFinalizer)


def test_pending_with_missing_target_fails_without_touching_anything() -> None:
    result = plan(make_rollout(make_spec(), has_finalizer=False), observe(target=None))
    status = result.status
    assert status.phase == Phase.FAILED
    assert status.outcome is not None and status.outcome.result == Result.TARGET_NOT_FOUND
    assert "'web'" in status.outcome.message
    assert effects(result.actions) == []
    assert not of_type(result.actions, ReleaseLock) and not of_type(result.actions, AddFinalizer)
    assert not is_true(status, "Completed") and is_true(status, "Failed")
    assert condition(status, "Failed").reason == "TargetNotFound"
    assert status.cleanup is None


@pytest.mark.parametrize(
    ("fields", "result"),
    [({"deleting": True}, Result.DELETED), ({"spec": make_spec(abort=True)}, Result.ABORTED)],
)
def test_pending_deleted_or_aborted_ends_at_once(fields: dict[str, Any], result: Result) -> None:
    out = plan(make_rollout(**fields), observe())
    assert out.status.phase == Phase.ABORTED
    assert out.status.outcome is not None and out.status.outcome.result == result
    assert effects(out.actions) == [] and not of_type(out.actions, ReleaseLock)
    assert isinstance(out.actions[-1], RemoveFinalizer)


# ====================================================================== Queued


def queued(policy: str = "Queue", **world: Any) -> Sim:
    sim = Sim(make_spec(concurrency={"policy": policy}), World(holder=OTHER, **world))
    sim.tick()
    assert sim.phase() == Phase.QUEUED
    return sim


def test_queued_waits_behind_the_holder_and_says_so() -> None:
    sim = queued()
    result = sim.tick()
    status = result.status
    assert status.phase == Phase.QUEUED
    assert result.actions == [] and result.requeue_after == POLL_WAITING
    assert f"held by {OTHER} (Progressing)" in (status.message or "")
    assert "position 1" in (status.message or "")
    assert status.queue_label == f"#1 behind {OTHER}"
    assert status.queue is not None
    assert (status.queue.lock, status.queue.holder, status.queue.position) == (LOCK, OTHER, 1)
    assert condition(status, "Progressing").message == status.message


def test_queued_on_a_free_lock_shows_its_position() -> None:
    lock = LockView(LOCK, position=2, waiting=3)
    result = plan(make_rollout(make_spec(), status=queued().status), observe(lock))
    assert result.status.queue_label == "#2"
    assert result.status.queue is not None and result.status.queue.waiting == 3
    assert "free" in (result.status.message or "")


def test_reject_policy_fails_at_once_when_the_lock_is_busy() -> None:
    sim = queued("Reject")
    result = sim.tick()
    assert sim.phase() == Phase.FAILED
    assert sim.status.outcome is not None and sim.status.outcome.result == Result.REJECTED
    assert OTHER in sim.status.outcome.message
    assert effects(result.actions) == [] and not of_type(result.actions, ReleaseLock)


def test_reject_policy_takes_a_free_lock() -> None:
    sim = queued("Reject")
    sim.world.holder = None
    sim.run_until(Phase.PROGRESSING, limit=2)


def test_superseded_rollout_ends_without_any_side_effect() -> None:
    sim = queued("Supersede", superseded_by="web-v3")
    result = sim.tick()
    assert sim.phase() == Phase.SUPERSEDED
    assert sim.status.outcome is not None and sim.status.outcome.result == Result.SUPERSEDED
    assert sim.status.outcome.message.endswith("web-v3")
    assert effects(result.actions) == [] and not of_type(result.actions, ReleaseLock)
    assert sim.status.started_at is None and sim.status.cleanup is None
    assert is_true(sim.status, "Failed")


def test_a_holder_is_never_superseded() -> None:
    status = queued().status
    result = plan(make_rollout(make_spec(), status=status), observe(held(superseded_by="web-v3")))
    assert result.status.phase == Phase.PROGRESSING


def test_queue_status_while_holding() -> None:
    result = plan(make_rollout(make_spec(), status=queued().status), observe(held(waiting=2)))
    assert result.status.queue_label == "holding (+2 waiting)"
    assert result.status.queue is not None and result.status.queue.position == 0


@pytest.mark.parametrize(
    ("router", "world", "first"),
    [
        ("gatewayAPI", {"gateway_weight": 30, "canary": 2, "service": True}, ResetRoute),
        ("replicas", {"canary": 2, "service": True, "pods": 2}, ResetRoute),
        ("gatewayAPI", {"canary": 0}, DeleteCanaryObjects),
        ("gatewayAPI", {"service": True}, DeleteCanaryObjects),
        ("gatewayAPI", {"pods": 1, "pods_linger": True}, DeleteCanaryObjects),
    ],
)
def test_recovery_cleans_leftovers_before_the_first_step(
    router: str, world: dict[str, Any], first: type
) -> None:
    sim = Sim(make_spec(router=router), World(router=router, recovered_from=OTHER, **world))
    sim.tick()  # Pending -> Queued
    result = sim.tick()
    assert sim.phase() == Phase.QUEUED
    assert [type(a) for a in effects(result.actions)] == [first]
    assert "recovery" in (sim.status.message or "")
    assert sim.status.lock is not None and sim.status.lock.recovered_from == OTHER
    sim.world.pods_linger = False
    # The plan that starts the run also starts step 1: what it saw must be clean.
    clean_when_planned: list[bool] = []
    for _ in range(3):
        sim.observe()  # what the next tick's plan sees (lingering pods gone or not)
        clean_when_planned.append(sim.world.clean)
        sim.tick(1)
        if sim.phase() == Phase.PROGRESSING:
            break
    assert sim.phase() == Phase.PROGRESSING
    assert of_type(sim.all_actions(), DeleteCanaryObjects)
    assert clean_when_planned[-1]
    assert sim.status.current_step == 0


def test_a_new_run_holding_its_lock_at_once_starts_in_the_same_plan() -> None:
    """The reconciler asks for the lock in a new run's first round once the plan
    queues it; holding it, Pending -> Queued -> Progressing and step 1 in one plan. It
    never waited, so no Queued Event says it does (status.queuedAt records the moment);
    step 1 (the canary) moves a level, so only its end will be an Event."""
    sim = Sim(make_spec(CANARY, job_test()), has_finalizer=False)
    result = checked_plan(sim.rollout, sim.world.observe(True))
    status = result.status
    assert status.phase == Phase.PROGRESSING and status.started_at is not None
    assert status.lock is not None and status.lock.token == 1
    assert status.queued_at is not None
    assert (status.steps or [])[0].phase == StepPhase.RUNNING
    assert reasons(result.actions) == ["LockAcquired", "Progressing"]
    # The finalizer first, then step 1's canary: nothing else touches anything.
    assert [type(a) for a in result.actions if not isinstance(a, Emit)] == [
        AddFinalizer,
        EnsureCanary,
    ]


@pytest.mark.parametrize(
    ("change", "result"),
    [
        ({"abort": True}, Result.ABORTED),
        ({"deleting": True}, Result.DELETED),
        ({"spec_problems": ("images[0]: no container 'app'",)}, Result.INVALID),
        ({"target": None}, Result.TARGET_NOT_FOUND),
    ],
)
def test_a_new_run_holding_its_lock_that_ends_before_starting_gives_it_back(
    change: dict[str, Any], result: Result
) -> None:
    spec = make_spec(CANARY, abort=True) if change.get("abort") else make_spec(CANARY)
    sim = Sim(spec, deleting=bool(change.get("deleting")))
    obs = sim.world.observe(True)
    if "spec_problems" in change:
        obs = replace(obs, spec_problems=change["spec_problems"])
    if "target" in change:
        obs = replace(obs, target=None)
    planned = checked_plan(sim.rollout, obs)
    assert planned.status.outcome is not None and planned.status.outcome.result == result
    assert of_type(planned.actions, ReleaseLock) and not effects(planned.actions)


def test_queued_to_progressing_records_lock_start_and_deadline() -> None:
    sim = Sim(make_spec(CANARY, job_test(), progressDeadlineSeconds=600))
    sim.tick()
    sim.world.token = 6
    result = sim.tick(seconds=3)
    status = result.status
    start = NOW + timedelta(seconds=3)
    assert status.phase == Phase.PROGRESSING
    assert status.lock is not None
    assert (status.lock.name, status.lock.token, status.lock.acquired_at) == (LOCK, 7, iso(start))
    assert status.started_at == iso(start)
    assert status.deadline_at == iso(start + timedelta(seconds=600))
    assert status.stable_replicas == 4 and status.current_step == 0
    # The same plan starts step 1 (its actions are the plan's only side effects).
    assert [s.phase for s in status.steps or []] == [StepPhase.RUNNING, StepPhase.PENDING]
    assert (status.steps or [])[0].started_at == iso(start)
    assert status.step_label == "1/2 canary"
    assert status.queue_label == "holding"
    assert condition(status, "Progressing").reason == "Started"
    events = of_type(result.actions, Emit)
    # Step 1 (the canary) moves a level: its start is in status, its end will be an Event.
    assert [e.reason for e in events] == ["LockAcquired", "Progressing"]
    assert "token 7" in events[0].message
    assert effects(result.actions) == [EnsureCanary(2)]


@pytest.mark.parametrize("holding", [False, True])
@pytest.mark.parametrize(
    ("change", "result"),
    [({"deleting": True}, Result.DELETED), ({"abort": True}, Result.ABORTED)],
)
def test_queued_deleted_or_aborted_ends_without_cleanup(
    holding: bool, change: dict[str, Any], result: Result
) -> None:
    sim = queued()
    rollout = sim.rollout
    if "abort" in change:
        rollout = replace(rollout, spec=make_spec(abort=True))
    else:
        rollout = replace(rollout, deleting=True)
    out = plan(rollout, observe(held() if holding else sim.world.lock()))
    assert out.status.phase == Phase.ABORTED
    assert out.status.outcome is not None and out.status.outcome.result == result
    assert out.status.cleanup is None
    assert effects(out.actions) == []
    assert bool(of_type(out.actions, ReleaseLock)) == holding


def test_queued_target_gone_fails_and_gives_the_lock_back() -> None:
    out = plan(make_rollout(make_spec(), status=queued().status), observe(held(), target=None))
    assert out.status.phase == Phase.FAILED
    assert out.status.outcome is not None
    assert out.status.outcome.result == Result.TARGET_NOT_FOUND
    assert of_type(out.actions, ReleaseLock) and not effects(out.actions)


def test_unreadable_route_is_refused_before_the_first_step() -> None:
    world = World("gatewayAPI", route_error="HTTPRoute web has no rule to web")
    sim = Sim(make_spec(CANARY, router="gatewayAPI"), world)
    sim.tick()
    result = sim.tick()
    assert sim.phase() == Phase.FAILED and effects(result.actions) == []
    assert sim.status.outcome is not None and sim.status.outcome.result == Result.INVALID
    assert "no rule to web" in sim.status.outcome.message
    assert of_type(result.actions, ReleaseLock) and sim.world.holder is None


def test_spec_change_while_queued_is_taken_as_is() -> None:
    sim = queued()
    sim.new_image()
    sim.tick()
    assert sim.phase() == Phase.QUEUED and sim.status.run == 1
    assert sim.status.fingerprint == sim.rollout.spec.run_fingerprint()
    assert sim.status.observed_generation == 2


# ======================================================================= steps


def test_canary_step_waits_for_the_requested_ready_pods() -> None:
    sim = started(CANARY, job_test())
    sim.world.canary_ready = False
    result = sim.tick()
    assert effects(result.actions) == [EnsureCanary(2)]
    assert _step(sim, 0).phase == StepPhase.RUNNING and sim.status.current_step == 0
    assert _step(sim, 0).started_at is not None
    assert "StepStarted" not in reasons(result.actions)  # a level step: its end only
    assert result.requeue_after == POLL_RUNNING
    sim.world.canary = 1  # someone scaled it: the wrong size is not done either
    sim.world.canary_ready = True
    sim.tick()
    assert sim.status.current_step == 0
    result = sim.tick()
    assert EnsureCanary(2) in result.actions
    assert _step(sim, 0).phase == StepPhase.SUCCEEDED and sim.status.current_step == 1
    assert "StepSucceeded" in reasons(result.actions)
    assert sim.status.step_label == "2/2 test"


@pytest.mark.parametrize(
    ("stable", "percent", "pods", "read_back"),
    [(4, 20, 1, 20), (10, 10, 2, 17), (3, 50, 3, 50), (1, 90, 9, 90)],
)
def test_set_weight_with_the_replicas_router_scales_the_canary(
    stable: int, percent: int, pods: int, read_back: int
) -> None:
    sim = started(weight(percent), world=World(stable=stable))
    sim.world.canary_ready = False
    result = sim.tick()
    assert effects(result.actions) == [EnsureCanary(pods)]
    assert not of_type(result.actions, SetRouteWeight)
    assert sim.status.current_step == 0
    sim.world.canary_ready = True
    result = sim.tick()
    assert sim.status.current_step == 1
    assert f"weight {read_back}%" in (_step(sim, 0).message or "")


def test_set_weight_with_the_replicas_router_waits_for_the_read_back() -> None:
    sim = started(weight(20), world=World(stable=4))
    sim.tick()  # the run starts (stable 4 recorded) and creates the canary
    sim.world.stable = 8  # stable scaled meanwhile: the router reads 11 %, not 20 %
    result = sim.tick()
    assert sim.status.current_step == 0 and result.requeue_after == 1
    assert sim.status.weight == 11


def test_set_weight_with_gateway_api_sets_and_reads_back_the_route() -> None:
    sim = started(CANARY, weight(25), router="gatewayAPI")
    sim.world.route_stuck = True  # route writes take no effect until said
    sim.run_until(lambda s: s.status.current_step == 1)  # setWeight starts at once
    sim.world.canary_ready = False
    result = sim.tick()
    # The canary keeps the size its step asked for (2 >= 25 % of 4): no traffic before ready.
    assert effects(result.actions) == [EnsureCanary(2)]
    sim.world.canary_ready = True
    for _ in range(2):
        result = sim.tick()
        assert effects(result.actions) == [EnsureCanary(2), SetRouteWeight(25)]
        assert sim.status.current_step == 1, "done only once the route reads back 25"
    sim.world.route_stuck = False
    sim.tick()
    assert sim.world.gateway_weight == 25 and sim.status.current_step == 1
    sim.tick()
    assert sim.status.current_step == 2 and sim.status.weight == 25


def test_gateway_api_weight_sizes_the_canary_for_its_share() -> None:
    sim = started(weight(50), router="gatewayAPI", world=World(router="gatewayAPI", stable=10))
    result = sim.tick()
    assert EnsureCanary(5) in result.actions


def test_set_weight_100_with_the_replicas_router_fails_the_step_instead_of_crashing() -> None:
    # The CRD's CEL rule refuses this; a spec that got past it must not crash plan().
    sim = started(CANARY, weight(100))
    sim.run_until(Phase.CLEANING_UP)
    outcome = sim.status.outcome
    assert outcome is not None and outcome.result == Result.STEP_FAILED
    assert outcome.failed_step == 2 and "100%" in outcome.message


def test_timed_pause_requeues_until_its_duration_passed() -> None:
    sim = started(pause("30s"), job_test())
    result = sim.tick()
    assert sim.phase() == Phase.PAUSED and result.requeue_after == 30
    assert condition(sim.status, "Paused").reason == "PauseStep"
    result = sim.tick(seconds=29)
    assert sim.phase() == Phase.PAUSED and result.requeue_after == 1
    sim.tick(seconds=1)
    assert sim.phase() == Phase.PROGRESSING and sim.status.current_step == 1
    assert _step(sim, 0).message == "paused 30s"
    assert condition(sim.status, "Paused").status == "False"


def test_a_timed_pause_longer_than_the_deadline_does_not_fail_the_run() -> None:
    sim = started(pause("2h"), job_test(), progressDeadlineSeconds=60)
    sim.world.results["s2"] = None
    sim.tick()
    sim.tick(seconds=7200)
    assert sim.phase() == Phase.PROGRESSING and sim.status.current_step == 1
    sim.tick(seconds=59)
    assert sim.phase() == Phase.PROGRESSING, "the 59 s after the pause are within 60 s"
    sim.tick(seconds=2)
    assert sim.status.outcome is not None
    assert sim.status.outcome.result == Result.DEADLINE_EXCEEDED


def test_pause_without_duration_waits_for_the_resume_annotation() -> None:
    sim = started(CANARY, pause(), job_test())
    sim.run_until(Phase.PAUSED)
    since, deadline = sim.status.paused_at, sim.status.deadline_at
    assert since == iso(sim.world.now)
    result = sim.tick(seconds=7200)  # far past the deadline: paused time does not count
    assert sim.phase() == Phase.PAUSED and result.requeue_after is None
    assert effects(result.actions) == []
    assert (sim.status.paused_at, sim.status.deadline_at) == (since, deadline)
    sim.annotate(RESUME_ANNOTATION, "1")  # another step's number: not this one
    sim.tick()
    assert sim.phase() == Phase.PAUSED
    sim.annotate(RESUME_ANNOTATION, "2@7")  # this step, but of another run
    sim.tick()
    assert sim.phase() == Phase.PAUSED
    sim.annotate(RESUME_ANNOTATION, f"2@{sim.status.run}")
    sim.tick(seconds=5)
    assert sim.phase() == Phase.PROGRESSING and sim.status.current_step == 2
    assert _step(sim, 1).message == "resumed"
    assert sim.status.paused_at is None
    extended = parse_time(deadline or "") + timedelta(seconds=7205)
    assert sim.status.deadline_at == iso(extended)


def test_test_job_uses_a_deterministic_name_and_passes() -> None:
    sim = started(CANARY, job_test("smoke"), world=World(results={"s2": None}))
    sim.at_step(1)
    name = sim.job("s2")
    assert name == "web-v2-1f2e3-r1-s2"
    ensure = of_type(sim.plans[-1].actions, EnsureJob)
    assert [(e.name, e.step_label) for e in ensure] == [(name, "step 2")]
    assert _step(sim).job == name
    sim.tick()
    assert sim.status.current_step == 1, "still running"
    sim.world.results["s2"] = True
    sim.tick()
    assert sim.status.current_step == 2
    assert _step(sim, 1).message == f"Job {name} succeeded"


def test_failed_test_job_fails_the_step_and_names_it() -> None:
    sim = started(CANARY, job_test("smoke"), PROMOTE, world=World(results={"s2": False}))
    sim.run_until(Phase.CLEANING_UP)
    outcome = sim.status.outcome
    assert outcome is not None and outcome.result == Result.STEP_FAILED
    assert outcome.failed_step == 2
    assert "step 2" in outcome.message and "smoke" in outcome.message
    assert "exit 1" in outcome.message
    assert _step(sim, 1).phase == StepPhase.FAILED
    assert _step(sim, 2).phase == StepPhase.PENDING
    assert not of_type(sim.all_actions(), PromoteStable)
    sim.finish()
    assert sim.phase() == Phase.FAILED
    assert "step 2" in condition(sim.status, "Failed").message


def test_step_timeout_fails_the_step() -> None:
    sim = started(job_test(timeout="10s"), world=World(results={"s1": None}))
    result = sim.tick()
    assert result.requeue_after == POLL_RUNNING
    result = sim.tick(seconds=8)
    assert result.requeue_after == 2
    sim.tick(seconds=2)
    assert sim.phase() == Phase.CLEANING_UP
    assert sim.status.outcome is not None
    assert "timed out after 10s" in sim.status.outcome.message
    assert sim.status.outcome.failed_step == 1


def test_parallel_group_passes_when_all_items_pass() -> None:
    group = parallel(job_test("smoke"), job_test("api"), pause("5s"))
    sim = started(group, world=World(results={"s1-2": None}))
    first = sim.tick()
    names = [sim.job("s1-1"), sim.job("s1-2")]
    assert [e.name for e in of_type(first.actions, EnsureJob)] == names
    assert [c.name for c in _step(sim).children] == ["smoke", "api", "pause-3"]
    sim.tick(seconds=5)
    children = _step(sim).children
    done, running = StepPhase.SUCCEEDED, StepPhase.RUNNING
    assert [c.phase for c in children] == [done, running, done]
    assert sim.status.current_step == 0
    sim.world.results["s1-2"] = True
    sim.tick()
    assert sim.status.current_step == 1
    assert _step(sim, 0).message == "all 3 passed"


def test_parallel_first_failure_cancels_the_others() -> None:
    group = parallel(job_test("smoke"), job_test("ui"), job_test("api"))
    sim = started(group, world=World(results={"s1-1": None, "s1-2": False, "s1-3": None}))
    sim.tick()
    result = sim.tick()
    children = _step(sim, 0).children
    assert [c.phase for c in children] == [
        StepPhase.CANCELLED,
        StepPhase.FAILED,
        StepPhase.CANCELLED,
    ]
    cancelled = [sim.job("s1-1"), sim.job("s1-3")]
    assert [d.name for d in of_type(result.actions, DeleteJob)] == cancelled
    assert not of_type(result.actions, EnsureJob), "no Job is (re)created to be deleted"
    assert all("cancelled" in (c.message or "") for c in (children[0], children[2]))
    outcome = sim.status.outcome
    assert outcome is not None and outcome.failed_step == 1
    assert "ui" in outcome.message
    assert sim.world.jobs.keys() == {sim.job("s1-2")}


def test_parallel_item_timeout_fails_the_group() -> None:
    group = parallel(job_test("slow", timeout="5s"), pause("1h"))
    sim = started(group, world=World(results={"s1-1": None}))
    sim.tick()
    sim.tick(seconds=5)
    outcome = sim.status.outcome
    assert outcome is not None and "slow: timed out after 5s" in outcome.message
    assert [c.phase for c in _step(sim, 0).children] == [StepPhase.FAILED, StepPhase.CANCELLED]


def test_promote_waits_for_the_stable_then_resets_the_route() -> None:
    sim = started(CANARY, weight(20), PROMOTE, router="gatewayAPI")
    sim.world.stable_rolled_out = False
    # The promotion starts in the plan that finishes step 2.
    result = sim.run_until(lambda s: s.status.current_step == 2)
    rid = f"{UID}/1"
    since = sim.status.version_since
    assert since is not None
    assert of_type(result.actions, PromoteStable) == [PromoteStable(rid, version_since=since)]
    assert effects(result.actions)[-1] == PromoteStable(rid, version_since=since)
    assert sim.world.promoted_by == rid
    result = sim.tick()
    assert effects(result.actions) == [] and "promoting" in (sim.status.message or "")
    sim.world.stable_rolled_out = True
    result = sim.tick()
    assert effects(result.actions) == [ResetRoute()]
    assert sim.status.current_step == 2, "done only when the route reads back 0"
    sim.tick()
    assert sim.status.current_step == 3 and sim.status.weight == 0
    sim.finish()
    assert sim.phase() == Phase.SUCCEEDED
    assert of_type(sim.all_actions(), PromoteStable) == [
        PromoteStable(rid, version_since=sim.status.version_since or "")
    ]


# =============================================================== manual control


def test_spec_paused_holds_the_rollout_and_extends_the_deadline() -> None:
    sim = started(CANARY, job_test(), progressDeadlineSeconds=100)
    sim.world.results["s2"] = None
    sim.at_step(1)
    deadline = sim.status.deadline_at
    assert deadline is not None
    sim.change_spec(paused=True)
    result = sim.tick(seconds=10)
    assert sim.phase() == Phase.PAUSED and effects(result.actions) == []
    assert condition(sim.status, "Paused").reason == "UserPaused"
    sim.tick(seconds=500)  # far past the original deadline, but paused
    assert sim.phase() == Phase.PAUSED
    sim.change_spec(paused=False)
    sim.tick()
    assert sim.phase() == Phase.PROGRESSING
    assert sim.status.paused_at is None
    extended = parse_time(deadline) + timedelta(seconds=500)
    assert sim.status.deadline_at == iso(extended)
    sim.run_until(lambda s: s.world.now > extended, limit=200, seconds=5)
    assert sim.phase() == Phase.CLEANING_UP
    assert sim.status.outcome is not None
    assert sim.status.outcome.result == Result.DEADLINE_EXCEEDED


def test_abort_while_progressing_cleans_up_then_ends_aborted() -> None:
    sim = cleaning(abort)
    assert sim.status.outcome is not None and sim.status.outcome.result == Result.ABORTED
    assert condition(sim.status, "CleanupVerified").reason == "CleanupRunning"
    sim.finish()
    assert sim.phase() == Phase.ABORTED
    assert sim.phases[-3:] == [Phase.PAUSED, Phase.CLEANING_UP, Phase.ABORTED]
    assert is_true(sim.status, "CleanupVerified") and is_true(sim.status, "Failed")
    assert sim.world.clean and sim.world.holder is None


def test_deletion_while_progressing_cleans_up_before_the_finalizer_goes() -> None:
    sim = cleaning(lambda s: s.update(deleting=True))
    assert sim.status.outcome is not None and sim.status.outcome.result == Result.DELETED
    last = sim.finish()
    assert sim.gone and sim.phase() == Phase.ABORTED
    kinds = [type(a) for a in last.actions if not isinstance(a, Emit)]
    assert kinds == [ReleaseLock, RemoveFinalizer]
    assert not any(of_type(p.actions, RemoveFinalizer) for p in sim.plans[:-1])


def test_deleted_while_queued_ends_without_cleanup() -> None:
    sim = queued()
    sim.update(deleting=True)
    result = sim.tick()
    assert sim.gone and sim.phase() == Phase.ABORTED and sim.status.cleanup is None
    assert effects(result.actions) == []


def test_spec_change_during_a_run_cleans_up_then_queues_a_new_run() -> None:
    sim = started(CANARY, pause())
    sim.run_until(Phase.PAUSED)
    sim.new_image()
    sim.tick()
    assert sim.phase() == Phase.CLEANING_UP
    assert sim.status.outcome is not None
    assert sim.status.outcome.result == Result.SPEC_CHANGED
    sim.run_until(lambda s: s.status.run == 2)
    assert sim.phase() == Phase.QUEUED
    assert sim.world.clean and sim.world.holder is None
    assert "NewRun" in sim.events()
    assert sim.status.fingerprint == sim.rollout.spec.run_fingerprint()
    assert sim.status.outcome is None and sim.status.steps is None
    sim.run_until(Phase.PAUSED)
    assert sim.status.lock is not None and sim.status.lock.token == 2
    assert sim.world.canary == 2


def test_new_run_does_not_inherit_terminal_conditions() -> None:
    sim = started(CANARY)
    sim.finish()
    assert is_true(sim.status, "Completed")
    sim.new_image()
    sim.tick()
    assert sim.status.run == 2 and sim.phase() == Phase.QUEUED
    assert not is_true(sim.status, "Completed") and not is_true(sim.status, "Failed")


@pytest.mark.parametrize(
    "trigger",
    [lambda s: s.new_image(), lambda s: s.annotate(RETRY_ANNOTATION, "2")],
    ids=["spec-change", "retry"],
)
def test_terminal_rollout_starts_a_new_run(trigger: Callable[[Sim], None]) -> None:
    sim = started(CANARY, job_test(), world=World(results={"s2": False}))
    sim.finish()
    assert sim.phase() == Phase.FAILED
    trigger(sim)
    result = sim.tick()
    assert (sim.status.run, sim.phase()) == (2, Phase.QUEUED)
    assert "NewRun" in reasons(result.actions)
    sim.world.results.clear()
    sim.finish()
    assert sim.phase() == Phase.SUCCEEDED and sim.status.run == 2
    assert sim.job("s2").endswith("-r2-s2")
    sim.tick()
    assert sim.status.run == 2, "a terminal run stays terminal"


@pytest.mark.parametrize("value", ["1", "0", "x", ""])
def test_retry_annotation_not_above_the_current_run_does_nothing(value: str) -> None:
    sim = started(CANARY)
    sim.finish()
    sim.annotate(RETRY_ANNOTATION, value)
    sim.tick()
    assert (sim.status.run, sim.phase()) == (1, Phase.SUCCEEDED)


def test_a_stale_retry_annotation_does_not_loop_after_a_spec_change() -> None:
    sim = started(CANARY)
    sim.finish()
    sim.annotate(RETRY_ANNOTATION, "2")
    sim.finish()
    assert sim.status.run == 2
    sim.new_image()  # run 3, while the retry annotation still says 2
    sim.finish()
    assert sim.status.run == 3
    for _ in range(3):
        sim.tick()
    assert sim.status.run == 3 and sim.phase() == Phase.SUCCEEDED


def test_retry_annotation_names_the_next_run() -> None:
    sim = started(CANARY)
    sim.finish()
    sim.annotate(RETRY_ANNOTATION, "7")
    sim.finish()
    sim.tick()
    assert sim.status.run == 7 and sim.phase() == Phase.SUCCEEDED


def test_progress_deadline_fails_the_run() -> None:
    sim = started(job_test(), progressDeadlineSeconds=60, world=World(results={"s1": None}))
    sim.tick()  # the run starts, and its Job
    sim.tick(seconds=60)
    assert sim.phase() == Phase.PROGRESSING
    sim.tick(seconds=1)
    assert sim.phase() == Phase.CLEANING_UP
    assert sim.status.outcome is not None
    assert sim.status.outcome.result == Result.DEADLINE_EXCEEDED
    assert "60" in sim.status.outcome.message


def test_lost_lock_decides_the_outcome_and_cleanup_waits_for_the_lock() -> None:
    sim = started(CANARY, pause())
    sim.run_until(Phase.PAUSED)
    sim.world.holder = OTHER
    sim.tick()
    assert sim.phase() == Phase.CLEANING_UP
    assert sim.status.outcome is not None and sim.status.outcome.result == Result.LOCK_LOST
    result = sim.tick(seconds=60)
    assert effects(result.actions) == [] and not of_type(result.actions, ReleaseLock)
    assert "cleanup waiting for lock" in (sim.status.message or "")
    assert result.requeue_after == POLL_WAITING
    sim.world.holder = None
    sim.finish()
    assert sim.phase() == Phase.FAILED and is_true(sim.status, "CleanupVerified")


@pytest.mark.parametrize("phase", [Phase.PROGRESSING, Phase.PAUSED])
def test_target_disappearing_mid_run_is_cleaned_up(phase: Phase) -> None:
    sim = started(CANARY, pause())
    sim.run_until(phase)
    sim.world.target_exists = False
    sim.tick()
    assert sim.status.outcome is not None
    assert sim.status.outcome.result == Result.TARGET_NOT_FOUND
    sim.finish()
    assert sim.phase() == Phase.FAILED


# =================================================================== CleaningUp


def test_cleanup_resets_the_route_until_it_reads_back_zero() -> None:
    sim = cleaning(abort, CANARY, weight(30), pause(), router="gatewayAPI")
    sim.world.route_stuck = True
    for _ in range(2):
        result = sim.tick()
        assert effects(result.actions) == [ResetRoute()]
        assert cleanup_of(sim).stage == "Routing"
        assert sim.status.weight == 30
    sim.world.route_stuck = False
    result = sim.tick()
    assert effects(result.actions) == [ResetRoute()]
    result = sim.tick()
    assert effects(result.actions) == [DeleteCanaryObjects()]


def test_cleanup_deletes_canary_objects_and_test_jobs_but_keeps_cleanup_jobs() -> None:
    sim = cleaning(abort, router="gatewayAPI")
    sim.world.jobs["left-test"] = JobView("left-test", succeeded=True)
    sim.world.jobs["old-cleanup"] = JobView("old-cleanup", succeeded=True, cleanup=True)
    result = sim.tick()
    assert effects(result.actions) == [DeleteCanaryObjects()]
    assert cleanup_of(sim).stage == "Deleting"
    sim.tick()
    assert sim.phase() == Phase.ABORTED
    assert list(sim.world.jobs) == ["old-cleanup"]


def test_user_cleanup_jobs_run_in_order_after_the_built_in_cleanup() -> None:
    steps = [cleanup_job("notify"), cleanup_job("purge")]
    sim = cleaning(abort, cleanup=steps, world=World(results={"c1-a0": None}))
    result = sim.run_until(lambda s: bool(of_type(s.plans[-1].actions, EnsureJob)))
    assert sim.world.clean, "user steps run after the built-in cleanup"
    assert [(e.name, e.step_label) for e in of_type(result.actions, EnsureJob)] == [
        (sim.job("c1-a0"), "cleanup 1/2 notify")
    ]
    assert cleanup_of(sim).stage == "UserSteps"
    sim.tick()
    assert cleanup_of(sim).user_step == 0
    sim.world.results["c1-a0"] = True
    result = sim.tick()
    assert "CleanupStepSucceeded" in reasons(result.actions)
    assert [e.name for e in of_type(result.actions, EnsureJob)] == [sim.job("c2-a0")]
    sim.finish()
    assert sim.phase() == Phase.ABORTED
    assert sorted(sim.world.jobs) == sorted([sim.job("c1-a0"), sim.job("c2-a0")])


def attempts(sim: Sim) -> int:
    return sim.status.cleanup.attempts if sim.status.cleanup else 0


def cleanup_of(sim: Sim) -> CleanupStatus:
    assert sim.status.cleanup is not None
    return sim.status.cleanup


def test_failed_cleanup_job_backs_off_and_keeps_the_lock() -> None:
    policy = {"retryBackoffSeconds": 5, "maxBackoffSeconds": 12}
    sim = cleaning(
        abort,
        cleanup=[cleanup_job("notify")],
        cleanupPolicy=policy,
        world=World(results={"c1-a0": False, "c1-a1": False}),
    )
    result = sim.run_until(lambda s: attempts(s) == 1)
    cleanup = sim.status.cleanup
    assert cleanup is not None and "notify" in (cleanup.last_error or "")
    assert cleanup.next_attempt_at == iso(sim.world.now + timedelta(seconds=5))
    verified = condition(sim.status, "CleanupVerified")
    assert (verified.status, verified.reason) == ("False", "CleanupBlocked")
    blocked = [e for e in of_type(result.actions, Emit) if e.reason == "CleanupBlocked"]
    assert blocked and blocked[0].warning and "lock kept" in blocked[0].message
    assert not of_type(result.actions, ReleaseLock) and result.requeue_after == 5
    waiting = sim.tick(seconds=4)
    assert effects(waiting.actions) == [] and waiting.requeue_after == 1
    retry = sim.tick(seconds=1)
    assert [e.name for e in of_type(retry.actions, EnsureJob)] == [sim.job("c1-a1")]
    sim.tick()
    assert cleanup_of(sim).attempts == 2
    assert cleanup_of(sim).next_attempt_at == iso(sim.world.now + timedelta(seconds=10))
    sim.world.results["c1-a2"] = False
    sim.run_until(lambda s: attempts(s) == 3)
    assert cleanup_of(sim).next_attempt_at == iso(sim.world.now + timedelta(seconds=12))
    assert sim.phase() == Phase.CLEANING_UP and sim.world.holder == ME
    sim.world.results.clear()
    sim.finish(limit=40)
    assert sim.phase() == Phase.ABORTED and is_true(sim.status, "CleanupVerified")
    assert cleanup_of(sim).last_error is None


def test_force_release_ends_a_blocked_cleanup_and_frees_the_lock() -> None:
    sim = cleaning(
        abort,
        cleanup=[cleanup_job("notify")],
        world=World(results={"c1-a0": False}),
    )
    sim.run_until(lambda s: attempts(s) == 1)
    assert sim.world.holder == ME
    sim.annotate("canary-operator.dev/force-release", "true")
    result = sim.tick()
    assert sim.phase() == Phase.ABORTED
    assert of_type(result.actions, ReleaseLock)
    verified = condition(sim.status, "CleanupVerified")
    assert (verified.status, verified.reason) == ("False", "ForceReleased")
    forced = [e for e in of_type(result.actions, Emit) if e.reason == "ForceReleased"]
    assert forced and forced[0].warning and "notify" in forced[0].message
    assert sim.world.holder is None


def test_unreadable_route_blocks_the_cleanup() -> None:
    sim = cleaning(abort, router="gatewayAPI")
    sim.world.route_error = "HTTPRoute web has no rule to web"
    result = sim.tick()
    assert effects(result.actions) == [] and sim.phase() == Phase.CLEANING_UP
    assert cleanup_of(sim).attempts == 1
    assert "cannot read the route" in (cleanup_of(sim).last_error or "")


def test_cleanup_verification_waits_for_the_canary_pods_to_go() -> None:
    sim = cleaning(abort, router="gatewayAPI", world=World("gatewayAPI", pods_linger=True))
    for _ in range(3):  # the Deployment is gone, its pods still terminate
        result = sim.tick()
        assert effects(result.actions) == [DeleteCanaryObjects()]
        assert sim.phase() == Phase.CLEANING_UP and result.requeue_after == 1
        assert not is_true(sim.status, "CleanupVerified")
    assert sim.world.canary is None and sim.world.pods == 2
    sim.world.pods_linger = False
    result = sim.tick()
    assert sim.phase() == Phase.ABORTED
    assert condition(sim.status, "CleanupVerified").reason == "Verified"
    assert cleanup_of(sim).stage == "Done" and cleanup_of(sim).finished_at
    assert reasons(result.actions) == ["CleanupFinished", "LockReleased", "Aborted"]
    assert of_type(result.actions, ReleaseLock)


def test_cleanup_already_verified_is_not_redone() -> None:
    sim = cleaning(abort)
    sim.finish()
    result = sim.tick()
    assert effects(result.actions) == [] and sim.phase() == Phase.ABORTED


@pytest.mark.parametrize(
    ("result", "phase"),
    [
        (Result.SUCCEEDED, Phase.SUCCEEDED),
        (Result.STEP_FAILED, Phase.FAILED),
        (Result.ABORTED, Phase.ABORTED),
        (Result.DELETED, Phase.ABORTED),
        (Result.DEADLINE_EXCEEDED, Phase.FAILED),
        (Result.LOCK_LOST, Phase.FAILED),
        (Result.TARGET_NOT_FOUND, Phase.FAILED),
    ],
)
def test_terminal_phase_and_conditions_follow_the_outcome(result: Result, phase: Phase) -> None:
    sim = cleaning(abort)
    assert sim.status.outcome is not None
    sim.status.outcome.result = result
    sim.update(generation=5)
    final = sim.finish()
    assert sim.phase() == phase
    assert reasons(final.actions)[-1] == phase.value
    succeeded = phase == Phase.SUCCEEDED
    assert is_true(sim.status, "Completed") == succeeded
    assert is_true(sim.status, "Failed") == (not succeeded)
    assert condition(sim.status, "Progressing").status == "False"
    for type_ in ("Completed", "Failed", "Progressing", "CleanupVerified"):
        assert condition(sim.status, type_).observed_generation == 5
        assert condition(sim.status, type_).reason in (result.value, "Verified")
    assert sim.status.weight == 0 and sim.status.completed_at == iso(sim.world.now)
    assert sim.status.queue is None and sim.status.queue_label is None


def test_full_rollout_passes_every_phase_and_emits_events() -> None:
    steps = (
        CANARY,
        parallel(job_test("smoke"), job_test("api")),
        weight(25),
        pause("30s"),
        job_test("at-25"),
        PROMOTE,
    )
    sim = Sim(make_spec(*steps, cleanup=[cleanup_job("notify")]), has_finalizer=False)
    sim.finish()
    assert sim.phases == [
        Phase.PENDING,
        Phase.QUEUED,
        Phase.PROGRESSING,
        Phase.PAUSED,
        Phase.PROGRESSING,
        Phase.CLEANING_UP,
        Phase.SUCCEEDED,
    ]
    assert [s.phase for s in sim.status.steps or []] == [StepPhase.SUCCEEDED] * 6
    assert sim.status.step_label == "6/6 done"
    events = sim.events()
    for reason in ("Queued", "LockAcquired", "StepStarted", "StepSucceeded", "CleanupStarted"):
        assert reason in events
    assert events[-4:] == ["CleanupStepSucceeded", "CleanupFinished", "LockReleased", "Succeeded"]
    assert events.count("StepSucceeded") == 6
    # The holder's phase in its own queue record is the phase the plan leaves it in (the
    # lock as observed before the plan would make the next reconcile write it again).
    holding = [p.status for p in sim.plans if p.status.queue and p.status.queue.position == 0]
    assert {s.phase for s in holding} >= {Phase.PROGRESSING, Phase.PAUSED, Phase.CLEANING_UP}
    for status in holding:
        assert status.queue is not None and status.queue.holder_phase == status.phase.value
    assert sim.world.clean and sim.world.holder is None and not sim.rollout.has_finalizer
    assert sim.world.promoted_by == f"{UID}/1"


# ================================================================ action_failed


def _fail_in(sim: Sim) -> Plan:
    return sim.tick(fail="HTTPRoute web not found")


def test_action_failed_while_progressing_fails_the_current_step() -> None:
    sim = started(CANARY, weight(20), pause(), router="gatewayAPI")
    sim.run_until(lambda s: s.status.current_step == 1)
    _fail_in(sim)
    assert sim.phase() == Phase.CLEANING_UP
    outcome = sim.status.outcome
    assert outcome is not None and outcome.result == Result.STEP_FAILED
    assert outcome.failed_step == 2 and "HTTPRoute web not found" in outcome.message
    assert _step(sim, 1).phase == StepPhase.FAILED
    assert _step(sim, 1).message == "HTTPRoute web not found"
    sim.finish()
    assert sim.phase() == Phase.FAILED


def test_action_failed_while_paused_fails_the_pause_step() -> None:
    sim = started(CANARY, pause())
    sim.run_until(Phase.PAUSED)
    result = action_failed(sim.rollout, sim.observe(), sim.status, "lost")
    assert result.status.phase == Phase.CLEANING_UP
    assert result.status.outcome is not None and result.status.outcome.failed_step == 2
    assert not of_type(result.actions, ReleaseLock) and not effects(result.actions)


def test_action_failed_in_the_plan_that_starts_the_run_fails_step_1() -> None:
    sim = started(CANARY, pause())
    result = _fail_in(sim)  # the run's start and step 1's EnsureCanary: one plan
    assert result.status.phase == Phase.CLEANING_UP
    outcome = sim.status.outcome
    assert outcome is not None and outcome.result == Result.STEP_FAILED
    assert outcome.failed_step == 1 and sim.status.started_at is not None
    assert _step(sim, 0).phase == StepPhase.FAILED
    sim.finish()
    assert sim.phase() == Phase.FAILED


def test_retrying_the_plan_that_starts_the_run_keeps_the_start_and_the_lock() -> None:
    sim = started(CANARY, pause())
    planned = plan(sim.rollout, sim.observe())
    said = retrying(sim.rollout, sim.observe(), planned.status, "connection refused")
    assert said.status.phase == Phase.PROGRESSING and said.status.started_at is not None
    assert said.status.steps is not None and said.status.steps[0].phase == StepPhase.RUNNING
    assert not of_type(said.actions, ReleaseLock) and not effects(said.actions)


def test_a_finished_step_is_followed_by_the_next_in_the_same_plan() -> None:
    sim = started(CANARY, job_test(), pause())
    sim.tick()  # the run starts; step 1 asks for its canary (ready at once here)
    result = sim.tick()  # the canary is ready: step 1 ends, step 2 starts
    assert _step(sim, 0).phase == StepPhase.SUCCEEDED
    assert _step(sim, 1).phase == StepPhase.RUNNING and sim.status.current_step == 1
    assert reasons(result.actions) == ["StepSucceeded", "StepStarted"]
    assert [type(a) for a in effects(result.actions)] == [EnsureCanary, EnsureJob]
    assert result.owner(effects(result.actions)[0]) == 0
    assert result.owner(effects(result.actions)[1]) == 1
    # Steps that end on what they observe all end in one plan: the Job passed, the
    # pause (until resumed) holds.
    sim.world.results["s2"] = True
    result = sim.tick()
    assert _step(sim, 1).phase == StepPhase.SUCCEEDED and sim.phase() == Phase.PAUSED
    assert reasons(result.actions)[-3:] == ["StepSucceeded", "StepStarted", "Paused"]


def test_steps_that_run_something_record_their_start_and_level_steps_only_their_end() -> None:
    """StepStarted for a pause, a test, a parallel step; a canary, weight or promote
    step's Events are its end alone (its start is status.steps[].startedAt)."""
    sim = started(CANARY, weight(30), job_test(), parallel(pause("1s")), PROMOTE,
                  router="gatewayAPI")  # fmt: skip
    sim.world.results["s3"] = True
    started_steps: list[str] = []
    for _ in range(40):
        result = sim.tick(seconds=1)
        started_steps += [e.message for e in of_type(result.actions, Emit)
                          if e.reason == "StepStarted"]  # fmt: skip
        if sim.phase().terminal:
            break
    assert sim.phase() == Phase.SUCCEEDED
    assert [m.split()[1] for m in started_steps] == ["3/5", "4/5"]
    assert sim.events().count("StepSucceeded") == 5
    assert all(s.started_at for s in sim.status.steps or [])


def test_a_level_set_anew_by_the_next_step_is_not_written_twice() -> None:
    sim = started(CANARY, weight(30), weight(60), pause(), router="gatewayAPI")
    sim.tick()  # step 1: the canary (2 pods)
    result = sim.tick()  # step 1 ends; step 2 sizes the canary and sets the route
    assert sim.status.current_step == 1
    assert effects(result.actions) == [EnsureCanary(2), SetRouteWeight(30)]
    result = sim.tick()  # 30 % read back: step 2 ends; step 3 grows the canary first
    assert sim.status.current_step == 2
    # Step 2's canary size is set anew by step 3 (dropped); its weight is not (kept
    # until step 3 sets 60 %, once the canary is ready).
    assert effects(result.actions) == [SetRouteWeight(30), EnsureCanary(3)]
    assert [result.owner(a) for a in effects(result.actions)] == [1, 2]


def test_the_last_step_ending_decides_the_run_in_the_same_plan() -> None:
    sim = started(job_test())
    sim.tick()  # the run starts; its Job is created
    sim.world.results["s1"] = True
    result = sim.tick()
    assert sim.phase() == Phase.CLEANING_UP
    assert sim.status.outcome is not None and sim.status.outcome.result == Result.SUCCEEDED
    assert not effects(result.actions), "the cleanup starts in the next plan"


def test_a_failed_action_fails_the_step_that_asked_for_it() -> None:
    sim = started(CANARY, job_test(), pause())
    sim.tick()
    planned = plan(sim.rollout, sim.observe())
    ensure_canary, ensure_job = effects(planned.actions)
    assert planned.status.current_step == 1
    # Step 2's Job is refused: step 2 fails.
    failed = action_failed(
        sim.rollout,
        sim.observe(),
        blamed_status(sim.rollout, sim.observe(), planned, ensure_job),
        "x",
    )
    assert failed.status.outcome is not None and failed.status.outcome.failed_step == 2
    # Step 1's canary, re-asserted as it ended, is refused: step 1 fails, and step 2,
    # which no action of had run, never started.
    blamed = blamed_status(sim.rollout, sim.observe(), planned, ensure_canary)
    failed = action_failed(sim.rollout, sim.observe(), blamed, "x")
    assert failed.status.outcome is not None and failed.status.outcome.failed_step == 1
    steps = failed.status.steps or []
    assert steps[0].phase == StepPhase.FAILED and steps[1].phase == StepPhase.PENDING
    assert steps[1].started_at is None


def test_action_failed_after_the_last_step_blames_that_step() -> None:
    sim = started(CANARY)
    sim.tick()  # the run starts; step 1 creates its canary (ready at once here)
    assert sim.world.canary == 2 and sim.status.current_step == 0
    _fail_in(sim)  # the step finishes in the same plan as its (re-asserted) action
    outcome = sim.status.outcome
    assert outcome is not None and outcome.failed_step == 1
    assert _step(sim, 0).phase == StepPhase.FAILED


def test_action_failed_during_cleanup_backs_off_and_keeps_the_lock() -> None:
    sim = cleaning(abort)
    result = _fail_in(sim)
    assert sim.phase() == Phase.CLEANING_UP and not of_type(result.actions, ReleaseLock)
    assert cleanup_of(sim).attempts == 1
    assert condition(sim.status, "CleanupVerified").reason == "CleanupBlocked"
    assert sim.world.holder == ME
    sim.finish()
    assert sim.phase() == Phase.ABORTED


def test_action_failed_during_recovery_ends_the_rollout_and_releases_the_lock() -> None:
    sim = Sim(make_spec(router="gatewayAPI"), World(router="gatewayAPI", gateway_weight=10))
    sim.tick()
    result = _fail_in(sim)
    assert sim.phase() == Phase.FAILED
    assert sim.status.outcome is not None and sim.status.outcome.result == Result.INVALID
    assert of_type(result.actions, ReleaseLock) and sim.world.holder is None


@pytest.mark.parametrize("phase", [Phase.PENDING, Phase.QUEUED])
def test_action_failed_before_the_lock_ends_without_release(phase: Phase) -> None:
    status = CanaryRolloutStatus(phase=phase, run=1)
    result = action_failed(make_rollout(make_spec()), observe(), status, "bad")
    assert result.status.phase == Phase.FAILED
    assert result.status.outcome is not None and result.status.outcome.message == "bad"
    assert not of_type(result.actions, ReleaseLock)


def test_action_failed_on_a_terminal_status_changes_nothing() -> None:
    sim = started(CANARY)
    sim.finish()
    result = action_failed(sim.rollout, sim.observe(), sim.status, "late")
    assert result.status == sim.status and effects(result.actions) == []


def test_cleanup_failed_backoff_is_exponential_and_capped() -> None:
    status = CanaryRolloutStatus(phase=Phase.CLEANING_UP)
    spec = make_spec(cleanupPolicy={"retryBackoffSeconds": 3, "maxBackoffSeconds": 20})
    delays = []
    for _ in range(5):
        cleanup_failed(status, spec, "boom", NOW, 1)
        assert status.cleanup is not None and status.cleanup.next_attempt_at is not None
        delays.append((parse_time(status.cleanup.next_attempt_at) - NOW).seconds)
    assert delays == [3, 6, 12, 20, 20]
    assert status.cleanup is not None and status.cleanup.attempts == 5
    assert [c.type for c in status.conditions or []] == ["CleanupVerified"]


def test_cleanup_failed_keeps_the_transition_time_of_a_false_condition() -> None:
    status = CanaryRolloutStatus(phase=Phase.CLEANING_UP)
    spec = make_spec()
    cleanup_failed(status, spec, "boom", NOW, 1)
    cleanup_failed(status, spec, "boom again", NOW + timedelta(seconds=30), 2)
    verified = condition(status, "CleanupVerified")
    assert verified.last_transition_time == iso(NOW)
    assert verified.observed_generation == 2 and "boom again" in verified.message


def test_observed_generation_follows_control_field_changes() -> None:
    sim = started(CANARY, pause())
    sim.run_until(Phase.PAUSED)
    sim.change_spec(paused=True)  # not a new run, but a new generation to answer
    sim.tick()
    assert (sim.rollout.generation, sim.status.observed_generation) == (2, 2)
    sim.change_spec(paused=False)
    sim.tick()
    assert sim.status.observed_generation == 3 and sim.status.run == 1


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("web-v2", "web-v2-1f2e3-r1-s2"),
        ("web.v2", "web.v2-1f2e3-r1-s2"),
        ("a" * 29 + ".b", "a" * 29 + "-1f2e3-r1-s2"),  # cut at the dot: no ".-"
        ("a" * 29 + "-b", "a" * 29 + "-1f2e3-r1-s2"),
    ],
)
def test_job_names_are_valid_and_bounded(name: str, expected: str) -> None:
    job = job_name(make_rollout(name=name, status=CanaryRolloutStatus(run=1)), "s2")
    assert job == expected
    many = job_name(make_rollout(name="x" * 253), "s12-20-c20-a99999")
    for value in (job, many):
        assert len(value) <= 63
        assert re.fullmatch(
            r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", value
        )


# ============================================================ crash and replay


def test_replaying_a_plan_whose_status_was_lost_repeats_the_same_actions() -> None:
    sim = started(CANARY, job_test(), world=World(results={"s2": None}))
    sim.run_until(lambda s: s.status.current_step == 1)
    saved = sim.rollout
    crashed = sim.tick(crash=True)
    assert sim.rollout is saved
    replayed = sim.tick()
    assert of_type(crashed.actions, EnsureJob) == of_type(replayed.actions, EnsureJob)
    assert len(sim.world.jobs) == 1


def test_resuming_from_a_status_saved_mid_step_does_not_redo_finished_steps() -> None:
    sim = started(job_test("first"), parallel(job_test("a"), job_test("b")))
    sim.world.results["s2-2"] = None
    sim.run_until(lambda s: s.status.current_step == 1 and _step(s).children)
    sim.tick()  # child a finished
    saved = sim.status.model_copy(deep=True)
    for _ in range(3):  # operator restarts: the same saved status, again and again
        sim.update(status=saved)
        result = sim.tick()
        assert "StepStarted" not in reasons(result.actions)
        ensured = [e.name for e in of_type(result.actions, EnsureJob)]
        assert ensured == [sim.job("s2-2")], "finished step/child re-run"
        assert [c.phase for c in _step(sim, 1).children] == [
            StepPhase.SUCCEEDED,
            StepPhase.RUNNING,
        ]
        assert _step(sim, 0).phase == StepPhase.SUCCEEDED


def test_a_lost_release_is_repeated_from_the_terminal_status() -> None:
    sim = started(CANARY)
    sim.finish()
    sim.world.holder = ME  # the release after the status write did not go through
    result = sim.tick()
    assert of_type(result.actions, ReleaseLock) and sim.world.holder is None


# ============================================================ property tests


def _disturb(sim: Sim, rng: random.Random) -> str | None:
    """Something happens in the cluster or to the resource."""
    world = sim.world
    choices: dict[str, Callable[[], Any]] = {
        "steal": lambda: setattr(world, "holder", OTHER if world.holder == ME else world.holder),
        "free": lambda: setattr(world, "holder", None if world.holder == OTHER else world.holder),
        "route-error": lambda: setattr(world, "route_error", None if world.route_error else "x"),
        "linger": lambda: setattr(world, "pods_linger", not world.pods_linger),
        "not-ready": lambda: setattr(world, "canary_ready", not world.canary_ready),
        "stable-slow": lambda: setattr(world, "stable_rolled_out", not world.stable_rolled_out),
        "target": lambda: setattr(world, "target_exists", not world.target_exists),
        "job-fails": lambda: world.results.update({rng.choice(["s3-1", "s5", "c1-a0"]): False}),
        "job-hangs": lambda: world.results.update({rng.choice(["s3-2", "s5"]): None}),
        "jobs-pass": world.results.clear,
        "pause": lambda: sim.change_spec(paused=not sim.rollout.spec.paused),
        "resume": lambda: sim.annotate(RESUME_ANNOTATION, str((sim.status.current_step or 0) + 1)),
        "retry": lambda: sim.annotate(RETRY_ANNOTATION, str(sim.status.run + 1)),
        "new-image": lambda: sim.new_image(f"web:{rng.randint(3, 9)}"),
        "abort": lambda: sim.change_spec(abort=True),
        "delete": sim.delete,
    }
    if rng.random() > 0.25:
        return None
    name = rng.choice(list(choices))
    if name in ("abort", "delete") and rng.random() < 0.7:
        return None  # rarer: they end the walk early
    choices[name]()
    return name


def _calm(sim: Sim) -> None:
    world = sim.world
    world.holder = None if world.holder == OTHER else world.holder
    world.route_error, world.pods_linger = None, False
    world.canary_ready = world.stable_rolled_out = world.target_exists = True
    world.results.clear()
    sim.change_spec(abort=True)


@pytest.mark.parametrize("seed", range(150))
def test_invariants_hold_on_random_walks(seed: int) -> None:
    rng = random.Random(seed)
    router = rng.choice(["replicas", "gatewayAPI"])
    steps = (
        CANARY,
        weight(20),
        parallel(job_test("a"), job_test("b", timeout="30s")),
        pause(rng.choice([None, "20s"])),
        job_test("c", timeout="1m"),
        PROMOTE,
    )
    spec = make_spec(*steps, router=router, cleanup=[cleanup_job("notify")])
    world = World(router=router, stable=rng.randint(1, 6))
    sim = Sim(spec, world, has_finalizer=rng.random() < 0.5)
    for _ in range(120):
        _disturb(sim, rng)
        if sim.gone:
            break
        mode = rng.random()
        if mode < 0.05:
            sim.tick(crash=True)  # the operator dies before writing the status
        sim.tick(rng.choice([0, 1, 1, 5, 30]), fail="boom" if mode > 0.97 else None)
        if sim.gone:
            break
    if not sim.gone:
        _calm(sim)
        _settle(sim)
    assert sim.phase().terminal or sim.gone  # gone: deleted before it got its finalizer
    assert sim.world.clean and sim.world.holder != ME


def _settle(sim: Sim) -> None:
    """Run to a terminal phase that stays put (a pending retry or spec change may
    start one more run first)."""
    for _ in range(4):
        sim.run_until(lambda s: s.phase().terminal, limit=300, seconds=10)
        if sim.gone:
            return
        settled = (sim.status.run, sim.phase())
        sim.tick(60)
        if (sim.status.run, sim.phase()) == settled:
            assert not sim.rollout.has_finalizer
            return
    raise AssertionError(f"runs keep starting: {sim.status}")


FLAGS: list[dict[str, Any]] = [{}, {"deleting": True}, {"spec": make_spec(abort=True)}]


def test_no_side_effect_is_ever_planned_without_the_lock() -> None:
    """Exhaustive over phases x lock views x observations, not just reachable walks."""
    sim = started(CANARY, weight(20), job_test(), pause(), cleanup=[cleanup_job("n")])
    statuses = []
    while not sim.phase().terminal:
        statuses.append(sim.status)
        if sim.phase() == Phase.PAUSED:
            abort(sim)
        sim.tick(5)
    not_held = [
        LockView(LOCK),
        LockView(LOCK, holder=OTHER, busy=True, position=2),
        LockView(LOCK, superseded_by="web-v3"),
    ]
    worlds: list[dict[str, Any]] = [
        {},
        {"route": RouteView(40)},
        {"canary": workload(2), "canary_service": True, "canary_pods": 2},
        {"target": None},
        {"jobs": {"j": JobView("j", failed=True)}},
    ]
    for status in statuses:
        for lock in not_held:
            for extra in worlds:
                for flags in FLAGS:
                    rollout = make_rollout(sim.rollout.spec, status=status)
                    rollout = replace(rollout, **flags)
                    result = plan(rollout, observe(lock, seconds=3600, **extra))
                    assert effects(result.actions) == [], (status.phase, lock, extra)
                    if not (result.status.phase.terminal or status.started_at is None):
                        assert not of_type(result.actions, ReleaseLock)


# ============================================ checks in flight (webhooks, measurements)

HOOK: dict[str, Any] = {"url": "http://tests.example/run", "timeout": "10s", "retries": 2}


def hook_test(name: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"test": {"webhook": HOOK}, **({"name": name} if name else {}), **extra}


def calls_asked(result: Plan) -> list[str]:
    return [a.key for a in result.actions if isinstance(a, CallWebhook | Measure)]


def test_a_webhook_runs_in_the_background_and_is_asked_for_until_it_answers() -> None:
    sim = started(CANARY, hook_test(), PROMOTE)
    sim.at_step(1)
    result = sim.tick()
    assert calls_asked(result) == ["s2"] and sim.world.started == ["s2"]
    for _ in range(3):  # in flight: asked for again (idempotent), never started twice
        result = sim.tick(seconds=4)
        assert calls_asked(result) == ["s2"] and _step(sim).phase == StepPhase.RUNNING
        assert result.requeue_after is not None
        assert result.requeue_after <= POLL_WAITING
    assert sim.world.started == ["s2"]
    sim.world.answer("s2", True, "POST http://tests.example/run: HTTP 200")
    result = sim.tick()
    assert _step(sim, 1).phase == StepPhase.SUCCEEDED
    assert "HTTP 200" in (_step(sim, 1).message or "")
    assert calls_asked(result) == [] and "s2" not in sim.world.calls  # recorded, dropped
    assert sim.world.cancelled == []
    sim.finish()
    assert sim.phase() == Phase.SUCCEEDED


def test_a_failing_webhook_fails_its_step_and_cleanup_follows() -> None:
    sim = started(CANARY, hook_test(), PROMOTE)
    sim.at_step(1)
    sim.tick()
    sim.world.answer("s2", False, "POST http://tests.example/run: HTTP 500")
    sim.tick()
    assert sim.phase() == Phase.CLEANING_UP
    assert sim.status.outcome is not None and sim.status.outcome.result == Result.STEP_FAILED
    assert "HTTP 500" in sim.status.outcome.message
    sim.finish()
    assert sim.phase() == Phase.FAILED and sim.world.promoted_by is None


@pytest.mark.parametrize(
    ("interrupt", "result"),
    [
        (abort, Result.ABORTED),
        (lambda sim: sim.delete(), Result.DELETED),
        (lambda sim: sim.new_image(), Result.SPEC_CHANGED),
    ],
)
def test_a_call_in_flight_holds_up_no_abort_delete_or_spec_change(
    interrupt: Callable[[Sim], None], result: Result
) -> None:
    sim = started(CANARY, hook_test(), PROMOTE)
    sim.at_step(1)
    sim.tick()
    assert sim.world.calls == {"s2": None}
    interrupt(sim)
    decided = sim.tick()  # the very next reconcile, the call still hanging
    assert sim.phase() == Phase.CLEANING_UP
    assert sim.status.outcome is not None and sim.status.outcome.result == result
    assert calls_asked(decided) == [] and sim.world.cancelled == ["s2"]
    assert reasons(decided.actions).count("CleanupStarted") == 1
    if result == Result.SPEC_CHANGED:  # cleaned up (the Sim checks it), then run 2 queues
        sim.run_until(lambda s: s.status.run == 2)
    else:
        sim.finish()
    assert sim.world.clean and sim.events().count("CleanupStarted") == 1


def test_a_hanging_call_is_cancelled_by_its_step_timeout() -> None:
    sim = started(CANARY, hook_test(timeout="30s"), PROMOTE)
    sim.at_step(1)
    sim.tick()
    result = sim.tick(seconds=20)
    assert result.requeue_after is not None and result.requeue_after <= 10
    sim.tick(seconds=10)
    assert sim.phase() == Phase.CLEANING_UP
    assert "timed out after 30s" in (_step(sim, 1).message or "")
    assert sim.world.cancelled == ["s2"]


def test_the_progress_deadline_is_enforced_while_a_call_hangs() -> None:
    sim = started(CANARY, hook_test(), PROMOTE, progressDeadlineSeconds=60)
    sim.at_step(1)
    result = sim.tick()
    assert result.requeue_after is not None and result.requeue_after <= 61
    sim.tick(seconds=61)
    assert sim.phase() == Phase.CLEANING_UP
    assert sim.status.outcome is not None
    assert sim.status.outcome.result == Result.DEADLINE_EXCEEDED
    assert sim.world.cancelled == ["s2"]


def test_a_call_lost_with_a_restarted_operator_is_made_again_and_recorded_once() -> None:
    sim = started(CANARY, hook_test(), PROMOTE)
    sim.at_step(1)
    sim.tick()
    sim.restart()
    result = sim.tick()
    assert calls_asked(result) == ["s2"] and sim.world.started == ["s2", "s2"]
    sim.world.answer("s2")
    sim.tick()
    assert _step(sim, 1).phase == StepPhase.SUCCEEDED
    assert sim.events().count("StepSucceeded") == 2  # canary, then the test: once each


def test_an_answer_whose_status_write_was_lost_is_offered_again() -> None:
    sim = started(CANARY, hook_test(), PROMOTE)
    sim.at_step(1)
    sim.tick()
    sim.world.answer("s2")
    sim.tick(crash=True)  # planned the step's success, but the write never happened
    assert _step(sim, 1).phase == StepPhase.RUNNING and "s2" in sim.world.checks_answered()
    sim.tick()
    assert _step(sim, 1).phase == StepPhase.SUCCEEDED and sim.world.started == ["s2"]


def test_a_failing_parallel_webhook_cancels_its_siblings_calls() -> None:
    sim = started(CANARY, parallel(hook_test("a"), hook_test("b"), job_test("c")), PROMOTE)
    sim.at_step(1)
    sim.world.results = {"s2-3": None}
    sim.tick()
    assert sorted(sim.world.calls) == ["s2-1", "s2-2"]
    sim.world.answer("s2-1", False, "HTTP 503")
    sim.tick()
    assert sim.phase() == Phase.CLEANING_UP
    assert sim.world.cancelled == ["s2-2"]
    children = {c.name: c.phase for c in _step(sim, 1).children}
    assert children == {"a": StepPhase.FAILED, "b": StepPhase.CANCELLED, "c": StepPhase.CANCELLED}


def test_a_webhook_cleanup_step_runs_in_the_background_too() -> None:
    sim = started(CANARY, pause(), cleanup=[{"name": "notify", "webhook": HOOK}])
    sim.run_until(Phase.PAUSED)
    abort(sim)
    sim.run_until(lambda s: "c1-a0" in s.world.calls)
    sim.tick(seconds=30)
    assert sim.phase() == Phase.CLEANING_UP and sim.world.calls == {"c1-a0": None}
    sim.world.answer("c1-a0", False, "HTTP 502")
    sim.tick()
    assert sim.status.cleanup is not None and sim.status.cleanup.attempts == 1
    sim.run_until(lambda s: "c1-a1" in s.world.calls, seconds=5)
    sim.world.answer("c1-a1")
    sim.finish()
    assert sim.phase() == Phase.ABORTED and is_true(sim.status, "CleanupVerified")


ANALYSIS: dict[str, Any] = {
    "analysis": {
        "provider": {"prometheus": {"address": "http://prometheus.example:9090"}},
        "interval": "10s",
        "count": 3,
        "metrics": [{"name": "m", "query": "x", "successCondition": "result < 1"}],
    }
}


def test_a_slow_measurement_delays_the_series_and_is_recorded_once() -> None:
    sim = started(CANARY, ANALYSIS, PROMOTE)
    sim.at_step(1)
    result = sim.tick()
    assert calls_asked(result) == ["s2-m0"]
    for _ in range(5):  # far past the interval: no second measurement while one is out
        assert calls_asked(sim.tick(seconds=10)) == ["s2-m0"]
    assert sim.world.started == ["s2-m0"]
    sim.world.measured("s2-m0", 0.5)
    result = sim.tick()
    analysis = _step(sim, 1).analysis
    assert analysis is not None and len(analysis.measurements) == 1
    assert calls_asked(result) == ["s2-m1"]  # overdue: the next one at once
    sim.world.measured("s2-m1", 0.2)
    sim.tick()
    sim.tick(seconds=10)
    sim.world.measured("s2-m2", 0.1)
    sim.tick()
    assert _step(sim, 1).phase == StepPhase.SUCCEEDED
    analysis = _step(sim, 1).analysis
    assert analysis is not None
    assert [m.values["m"]["canary"] for m in analysis.measurements] == [0.5, 0.2, 0.1]
    assert sim.world.started == ["s2-m0", "s2-m1", "s2-m2"]


def test_a_late_duplicate_measurement_is_not_counted_twice() -> None:
    sim = started(CANARY, ANALYSIS, PROMOTE)
    sim.at_step(1)
    sim.tick()
    sim.world.measured("s2-m0", 0.5)
    sim.tick()
    # The same answer again (e.g. adopted after a lost write): no key asks for it now.
    rollout = sim.rollout
    obs = replace(
        sim.observe(),
        measurements={"s2-m0": MeasurementStatus(at=iso(NOW), values={"m": {"canary": 9.0}})},
    )
    again = checked_plan(rollout, obs)
    assert again.status.steps is not None
    analysis = again.status.steps[1].analysis
    assert analysis is not None and len(analysis.measurements) == 1


# ================================================================ lock continuity


def test_a_run_never_takes_the_lock_again_after_losing_it() -> None:
    sim = started(CANARY, pause(), PROMOTE)
    sim.run_until(Phase.PAUSED)
    token = sim.world.token
    sim.world.holder = None  # released behind its back (a human, a foreign writer)
    result = sim.tick()
    assert sim.phase() == Phase.CLEANING_UP and effects(result.actions) == []
    assert sim.status.outcome is not None and sim.status.outcome.result == Result.LOCK_LOST
    assert "no longer held" in sim.status.outcome.message
    sim.finish()
    # The cleanup took the lock anew (first in line) and recorded it.
    assert sim.world.token == token + 1
    assert sim.status.lock is not None and sim.status.lock.token == token + 1
    assert "acquired lock cro-lock-web for cleanup (token 2)" in [
        a.message for a in of_type(sim.all_actions(), Emit)
    ]
    assert sim.phase() == Phase.FAILED and sim.world.promoted_by is None


def test_a_lock_held_with_another_token_than_the_run_started_with_is_lost() -> None:
    sim = started(CANARY, pause(), PROMOTE)
    sim.run_until(Phase.PAUSED)
    sim.world.token += 2  # someone else held it in between; now it is ours again
    result = sim.tick()
    assert sim.phase() == Phase.CLEANING_UP and effects(result.actions) == []
    assert sim.status.outcome is not None and sim.status.outcome.result == Result.LOCK_LOST
    assert "token 1, now 3" in sim.status.outcome.message


def test_renewal_failures_are_shown_and_cleared() -> None:
    sim = started(CANARY, pause())
    sim.run_until(Phase.PAUSED)
    rollout, obs = sim.rollout, sim.observe()
    failing = replace(obs, lock=replace(obs.lock, renew_error="lease renewal failed: timed out"))
    result = checked_plan(rollout, failing)
    found = condition(result.status, "LockRenewed")
    assert (found.status, found.reason) == ("False", "RenewalFailing")
    assert "timed out" in found.message
    healed = checked_plan(replace(rollout, status=result.status), obs)
    assert condition(healed.status, "LockRenewed").status == "True"
    assert checked_plan(rollout, obs).status.condition("LockRenewed") is None


def test_an_error_a_retry_may_cure_is_said_once_and_cleared() -> None:
    sim = started(CANARY, pause())
    rollout, obs = sim.rollout, sim.observe()
    planned = checked_plan(rollout, obs)
    first = machine.retrying(rollout, obs, planned.status, "API error 500 Internal")
    assert first.status.phase == Phase.PROGRESSING
    assert condition(first.status, "ReconcileError").status == "True"
    assert first.status.message == "retrying: API error 500 Internal"
    assert reasons(first.actions) == ["RetryingAfterError"]
    again = machine.retrying(
        replace(rollout, status=first.status), obs, first.status, "API error 500 Internal"
    )
    assert reasons(again.actions) == []  # the same error again: no new Event
    other = machine.retrying(rollout, obs, first.status, "API error 503 Unavailable")
    assert reasons(other.actions) == ["RetryingAfterError"]
    healed = first.status.model_copy(deep=True)
    machine.recovered(healed, NOW, 1)
    assert condition(healed, "ReconcileError").status == "False"
    assert condition(healed, "ReconcileError").reason == "Recovered"


# ==================================================================== policy


@pytest.mark.parametrize("phase", [Phase.PENDING, Phase.QUEUED])
def test_a_spec_the_operators_policy_forbids_is_refused_before_anything(phase: Phase) -> None:
    problem = "spec.steps[0].test.job: the Job may not run as ServiceAccount 'admin'"
    sim = Sim(make_spec(job_test(), CANARY))
    if phase == Phase.QUEUED:
        sim.run_until(Phase.QUEUED)
    sim.world.holder = ME if phase == Phase.QUEUED else None
    sim.world.token = 1
    result = checked_plan(sim.rollout, replace(sim.observe(), policy_problems=(problem,)))
    status = result.status
    assert status.phase == Phase.FAILED and effects(result.actions) == []
    assert status.outcome is not None and status.outcome.result == Result.INVALID
    assert problem in status.outcome.message
    assert bool(of_type(result.actions, ReleaseLock)) == (phase == Phase.QUEUED)


def test_a_spec_made_invalid_while_queued_is_refused_before_it_starts() -> None:
    sim = Sim(make_spec(CANARY))
    sim.world.holder = OTHER
    sim.run_until(Phase.QUEUED)
    sim.tick()
    bad = {"analysis": {"metrics": [{"name": "m", "query": "{{nope}}"}]}}
    sim.change_spec(steps=make_spec(bad).steps)
    sim.world.holder = None
    result = sim.tick()
    assert sim.phase() == Phase.FAILED and effects(result.actions) == []
    assert sim.status.outcome is not None and sim.status.outcome.result == Result.INVALID
    assert "nope" in sim.status.outcome.message


# ============================================ a route naming the canary at 0 %


@pytest.mark.parametrize("ending", ["abort", "succeed"])
def test_a_route_still_naming_the_canary_at_0_percent_is_reset_before_verifying(
    ending: str,
) -> None:
    """A header match or a 0-weight backend still reaches the canary: 0 % is not clean."""
    steps = [CANARY, weight(0), pause()] + ([{"promote": {}}] if ending == "succeed" else [])
    sim = started(*steps, world=World(router="gatewayAPI"), router="gatewayAPI")
    sim.run_until(Phase.PAUSED)
    assert sim.world.gateway_weight == 0 and sim.world.route_names_canary
    if ending == "abort":
        abort(sim)
    else:
        sim.annotate(RESUME_ANNOTATION, f"3@{sim.status.run}")
    sim.run_until(lambda s: s.phase().terminal)
    assert sim.phase() == (Phase.ABORTED if ending == "abort" else Phase.SUCCEEDED)
    assert of_type(sim.all_actions(), ResetRoute)
    assert not sim.world.route_names_canary
    assert is_true(sim.status, "CleanupVerified")


def test_cleanup_is_not_verified_while_the_route_names_the_canary() -> None:
    sim = cleaning(
        abort,
        CANARY,
        weight(0),
        pause(),
        world=World(router="gatewayAPI", route_stuck=True),
        router="gatewayAPI",
    )
    sim.world.route_names_canary = True
    for _ in range(20):
        sim.tick(1)
    assert sim.phase() == Phase.CLEANING_UP
    assert not is_true(sim.status, "CleanupVerified")
