"""What a provisional plan asks to have observed (Need, Plan.observe_next), and that a
plan asks each need at most once: the reasons the reconciler used to keep to itself."""

from __future__ import annotations

from dataclasses import replace

import pytest

from canary_operator.api.models import CanaryRolloutStatus, Phase, StepPhase
from canary_operator.engine import machine
from canary_operator.engine.machine import blamed_status, plan, takes_lock
from canary_operator.engine.types import (
    EnsureCanary,
    JobView,
    LockView,
    Need,
    Observed,
    ReleaseLock,
    Rollout,
)
from tests.unit.test_machine import (
    CANARY,
    LOCK,
    ME,
    PROMOTE,
    Sim,
    World,
    answered_plan,
    held,
    job_test,
    make_rollout,
    make_spec,
    observe,
    of_type,
    started,
)

NOTHING: frozenset[Need] = frozenset()


def bare(lock: LockView | None = None, **fields: object) -> Observed:
    """An observation that answers no need yet (unless `answered` says otherwise)."""
    return observe(lock, **{"answered": NOTHING, **fields})


def asks(rollout: Rollout, obs: Observed) -> Need | None:
    return plan(rollout, obs).observe_next


def queued() -> Rollout:
    return make_rollout(make_spec(), status=CanaryRolloutStatus(phase=Phase.QUEUED, run=1))


# ------------------------------------------------------------------- takes_lock


@pytest.mark.parametrize("phase", list(Phase))
def test_only_a_queued_run_or_one_owing_a_cleanup_takes_the_lock(phase: Phase) -> None:
    status = CanaryRolloutStatus(phase=phase)
    assert takes_lock(status) == (phase in (Phase.QUEUED, Phase.CLEANING_UP))


# ------------------------------------------------------------------------ START


@pytest.mark.parametrize("phase", [Phase.PENDING, Phase.QUEUED])
def test_a_run_holding_its_lock_before_it_started_asks_for_start(phase: Phase) -> None:
    rollout = make_rollout(make_spec(), status=CanaryRolloutStatus(phase=phase, run=1))
    result = plan(rollout, bare(held()))
    assert result.observe_next == Need.START
    # Provisional: the input status itself, nothing to act on.
    assert result.status is rollout.status and result.actions == []


def test_start_is_not_asked_without_the_lock_once_answered_or_once_started() -> None:
    rollout = queued()
    assert asks(rollout, bare()) != Need.START
    assert asks(rollout, bare(held(), answered=frozenset({Need.START}))) != Need.START
    sim = running(CANARY, job_test())
    assert sim.status.started_at is not None
    assert asks(sim.rollout, replace(sim.observe(), answered=NOTHING)) != Need.START


# ------------------------------------------------------------------- VALIDATION


def test_a_new_rollout_asks_for_validation_before_anything_else() -> None:
    rollout = make_rollout(make_spec())
    result = plan(rollout, bare())
    assert result.observe_next == Need.VALIDATION and result.actions == []


def test_validation_needs_the_target_and_is_asked_once() -> None:
    rollout = make_rollout(make_spec())
    assert asks(rollout, bare(target=None)) is None  # refused TargetNotFound at once
    answered = bare(answered=frozenset({Need.VALIDATION}))
    assert asks(rollout, answered) != Need.VALIDATION


def test_a_queued_run_asks_for_validation_only_once_it_holds_its_lock() -> None:
    rollout = queued()
    assert asks(rollout, bare()) is None  # waiting in the queue: nothing to read
    start_answered = frozenset({Need.START})
    assert asks(rollout, bare(held(), answered=start_answered)) == Need.VALIDATION


def test_an_aborted_or_deleted_rollout_asks_for_no_validation() -> None:
    aborted = make_rollout(make_spec(abort=True))
    deleting = make_rollout(make_spec(), deleting=True)
    for rollout in (aborted, deleting):
        assert asks(rollout, bare()) is None


def test_the_validations_findings_end_a_pending_run_that_never_asks_for_its_lock() -> None:
    rollout = make_rollout(make_spec())
    invalid = bare(answered=frozenset({Need.VALIDATION}), spec_problems=("no such port",))
    result = plan(rollout, invalid)
    assert result.observe_next is None
    assert result.status.phase == Phase.FAILED


# ---------------------------------------------------------------------- JOB_LOGS


def failed_job_run() -> tuple[Sim, Observed]:
    """A run whose test Job just failed: the plan that fails its step."""
    world = World(results={"s2": False})
    sim = Sim(make_spec(CANARY, job_test("smoke"), PROMOTE), world)
    sim.run_until(lambda s: any(st.phase == StepPhase.FAILED for st in s.status.steps or []))
    return sim, replace(sim.observe(), answered=NOTHING)


def test_a_failed_test_job_without_logs_in_the_status_asks_for_job_logs() -> None:
    sim, obs = failed_job_run()
    assert machine.jobs_wanting_logs(sim.status, obs.jobs)
    assert asks(sim.rollout, obs) == Need.JOB_LOGS
    answered = replace(obs, answered=frozenset({Need.JOB_LOGS}))
    assert asks(sim.rollout, answered) is None


def test_a_run_in_progress_asks_for_nothing() -> None:
    sim = running(CANARY, job_test())
    for _ in range(3):
        obs = replace(sim.observe(), answered=NOTHING)
        assert plan(sim.rollout, obs).observe_next is None
        sim.tick()


def test_a_passed_job_asks_for_no_logs() -> None:
    rollout = queued()
    jobs = {"j": JobView("j", succeeded=True)}
    assert asks(rollout, bare(jobs=jobs)) is None


# -------------------------------------------------------------------------- LOCK


def test_a_pending_run_that_passed_its_checks_asks_for_its_lock() -> None:
    rollout = make_rollout(make_spec())
    result = plan(rollout, bare(answered=frozenset({Need.VALIDATION})))
    assert result.observe_next == Need.LOCK
    assert result.status is rollout.status and result.actions == []


def test_lock_is_asked_once_and_a_pending_run_then_queues() -> None:
    rollout = make_rollout(make_spec())
    obs = bare(answered=frozenset({Need.VALIDATION, Need.LOCK}))
    result = plan(rollout, obs)
    assert result.observe_next is None and result.status.phase == Phase.QUEUED


def test_an_invalid_aborted_or_holding_pending_run_never_asks_for_its_lock() -> None:
    answered = frozenset({Need.VALIDATION, Need.START})
    invalid = bare(answered=answered, spec_problems=("bad",))
    assert asks(make_rollout(make_spec()), invalid) is None
    assert asks(make_rollout(make_spec(abort=True)), bare(answered=answered)) is None
    holding = plan(make_rollout(make_spec()), bare(held(), answered=answered))
    assert holding.observe_next is None and holding.status.phase == Phase.PROGRESSING


def test_a_queued_run_asks_for_no_lock_its_observation_takes_it() -> None:
    assert asks(queued(), bare()) is None


# ------------------------------------------------------------------ VERIFICATION


def cleanup_sim(**world: object) -> Sim:
    sim = started(CANARY, job_test(), world=World(**world))  # type: ignore[arg-type]
    sim.tick()
    sim.change_spec(abort=True)
    sim.run_until(Phase.CLEANING_UP)
    return sim


def test_a_cleanup_about_to_be_verified_asks_for_verification_once() -> None:
    sim = cleanup_sim()
    sim.run_until(
        lambda s: of_type(plan(s.rollout, s.observe()).actions, ReleaseLock) != [], seconds=0
    )
    obs = replace(sim.observe(), answered=NOTHING)
    assert asks(sim.rollout, obs) == Need.VERIFICATION
    verified = plan(sim.rollout, replace(obs, answered=frozenset({Need.VERIFICATION})))
    assert verified.observe_next is None and of_type(verified.actions, ReleaseLock)


def test_a_cleanup_not_yet_verified_does_not_ask_for_verification() -> None:
    sim = cleanup_sim(pods_linger=True)
    sim.tick()
    obs = replace(sim.observe(), answered=NOTHING)
    result = plan(sim.rollout, obs)
    assert sim.phase() == Phase.CLEANING_UP
    assert result.observe_next is None and not of_type(result.actions, ReleaseLock)


# ---------------------------------------------------------------------- sequence


def test_a_new_rollout_on_a_free_lock_asks_validation_lock_start_then_starts_step_1() -> None:
    world = World(lock_at_once=True)
    rollout = make_rollout(make_spec(CANARY, PROMOTE))
    obs = replace(world.observe(False), answered=NOTHING)
    asked: list[Need] = []
    for _ in range(len(Need) + 1):
        result = plan(rollout, obs)
        if result.observe_next is None:
            break
        asked.append(result.observe_next)
        obs = world.answer_need(obs, result.observe_next)
    assert asked == [Need.VALIDATION, Need.LOCK, Need.START]
    assert world.holder == ME and obs.lock.held
    assert result.status.phase == Phase.PROGRESSING
    assert result.status.current_step == 0 and result.status.started_at is not None
    assert of_type(result.actions, EnsureCanary)


def test_a_busy_lock_leaves_the_new_run_queued_after_asking() -> None:
    world = World(holder="web-v1", lock_at_once=True)
    rollout = make_rollout(make_spec())
    result, obs = answered_plan(world, rollout, world.observe(False))
    assert result.status.phase == Phase.QUEUED and not obs.lock.held
    assert obs.answered == {Need.VALIDATION, Need.LOCK}
    assert LockView(LOCK).name == obs.lock.name


# ---------------------------------------------------- calls that must stay final


def running(*steps: dict[str, object]) -> Sim:
    sim = started(*steps)  # type: ignore[arg-type]
    sim.tick()
    assert sim.phase() == Phase.PROGRESSING
    return sim


def test_blamed_status_replans_for_real_when_an_earlier_step_asked_for_the_action() -> None:
    sim = running(CANARY, job_test())  # the canary is ready: step 1 ends, step 2 starts
    planned = plan(sim.rollout, sim.observe())
    ensure = next(a for a in planned.actions if isinstance(a, EnsureCanary))
    assert planned.owner(ensure) == 0 and planned.status.current_step == 1
    blamed = blamed_status(sim.rollout, replace(sim.observe(), answered=NOTHING), planned, ensure)
    assert blamed is not sim.rollout.status and blamed.phase == Phase.PROGRESSING
    assert blamed.steps is not None and blamed.steps[0].phase == StepPhase.SUCCEEDED


def test_action_failed_and_retrying_never_ask() -> None:
    rollout = make_rollout(make_spec())
    obs = bare()
    assert machine.action_failed(rollout, obs, rollout.status, "boom").observe_next is None
    assert machine.retrying(rollout, obs, rollout.status, "boom").observe_next is None
