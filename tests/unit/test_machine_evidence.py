"""The state machine's part of issue 10 (evidence and bad input): log tails of failed
test Jobs recorded before cleanup deletes them, failed Jobs kept under
keepFailedJobs, problems found by the start-of-run validation ending the run
InvalidSpec untouched, and a canary whose pods cannot start failing its step at once.

Runs on the simulated world of test_machine.py, with every invariant it checks."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from canary_operator.api.models import ContainerLogTail, Phase, Result, StepPhase
from canary_operator.engine import evidence, machine, start
from canary_operator.engine.annotations import RETRY_ANNOTATION
from canary_operator.engine.start import wants_validation
from canary_operator.engine.types import (
    DeleteCanaryObjects,
    Emit,
    JobView,
    Observed,
    ReleaseLock,
    Rollout,
)
from tests.unit.test_machine import (
    CANARY,
    PROMOTE,
    Sim,
    World,
    _step,
    effects,
    held,
    job_test,
    make_rollout,
    make_spec,
    observe,
    of_type,
    parallel,
    pause,
    started,
    weight,
    workload,
)

TAIL = "assertion failed: GET / answered 500\n"


@dataclass
class EvidenceWorld(World):
    """A world whose failed Jobs have logs, and where kept Jobs stay (relabelled)."""

    canary_failure: str | None = None

    def observe(self, wants_lock: bool) -> Observed:
        obs = super().observe(wants_lock)
        if self.canary_failure and obs.canary is not None:
            obs = replace(obs, canary=replace(obs.canary, failure=self.canary_failure, ready=0))
        return obs

    def apply(self, actions: Any) -> None:
        for action in actions:
            if isinstance(action, DeleteCanaryObjects):
                keep = {
                    n: replace(j, kept=True) for n, j in self.jobs.items() if n in action.keep_jobs
                }
                super().apply([action])
                self.jobs.update(keep)
            else:
                super().apply([action])

    @property
    def clean(self) -> bool:
        kept = {n for n, j in self.jobs.items() if j.kept}
        jobs, self.jobs = self.jobs, {n: j for n, j in self.jobs.items() if n not in kept}
        try:
            return super().clean
        finally:
            self.jobs = jobs


class EvidenceSim(Sim):
    """The reconciler's part: read the tails of the Jobs the machine wants logs of."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log_reads: list[str] = []

    def observe(self) -> Observed:
        obs = super().observe()
        wanted = machine.jobs_wanting_logs(self.status, obs.jobs)
        self.log_reads += wanted
        tails = {j: (ContainerLogTail(pod=f"{j}-x", container="t", tail=TAIL),) for j in wanted}
        return replace(obs, job_logs=tails)


def evidence_sim(*steps: dict[str, Any], world: World, **fields: Any) -> EvidenceSim:
    sim = EvidenceSim(make_spec(*steps, **fields), world)
    sim.run_until(Phase.PROGRESSING)
    return sim


def first_plan_with(sim: Sim, predicate: Any) -> int:
    return next(i for i, p in enumerate(sim.plans) if predicate(p))


def test_a_failed_jobs_log_tail_is_recorded_and_announced_before_cleanup_deletes_it() -> None:
    sim = evidence_sim(
        CANARY, job_test("smoke"), PROMOTE, world=EvidenceWorld(results={"s2": False})
    )
    sim.finish()
    assert sim.phase() == Phase.FAILED
    step = _step(sim, 1)
    assert step.phase == StepPhase.FAILED and step.logs is not None
    assert [(t.container, t.tail) for t in step.logs] == [("t", TAIL)]
    recorded = first_plan_with(sim, lambda p: p.status.steps and p.status.steps[1].logs)
    deleted = first_plan_with(sim, lambda p: of_type(p.actions, DeleteCanaryObjects))
    assert recorded <= deleted, "the Job was deleted before its logs were kept"
    warnings = [a for p in sim.plans for a in of_type(p.actions, Emit) if a.reason == "TestLogs"]
    assert len(warnings) == 1 and warnings[0].warning
    assert "smoke" in warnings[0].message and TAIL.strip() in warnings[0].message
    assert sim.log_reads == [step.job], "logs are read once, not on every reconcile"


def test_a_timed_out_jobs_logs_are_kept_too() -> None:
    world = EvidenceWorld(results={"s1": None})  # the Job never finishes
    sim = evidence_sim(job_test("slow", timeout="10s"), world=world)
    sim.tick()  # the step starts, its Job is created
    sim.tick(seconds=11)
    assert sim.phase() == Phase.CLEANING_UP and _step(sim, 0).logs is None
    sim.finish()
    assert _step(sim, 0).logs is not None and _step(sim, 0).logs[0].tail == TAIL
    recorded = first_plan_with(sim, lambda p: p.status.steps and p.status.steps[0].logs)
    deleted = first_plan_with(sim, lambda p: of_type(p.actions, DeleteCanaryObjects))
    assert recorded <= deleted


def test_cancelled_siblings_and_passed_jobs_want_no_logs() -> None:
    group = parallel(job_test("bad"), job_test("slow"), job_test("good"))
    world = EvidenceWorld(results={"s1-1": False, "s1-2": None})
    sim = evidence_sim(group, world=world)
    sim.finish()
    children = _step(sim, 0).children
    assert [c.phase for c in children] == [
        StepPhase.FAILED,
        StepPhase.CANCELLED,
        StepPhase.SUCCEEDED,
    ]
    assert children[0].logs is not None
    assert children[1].logs is None and children[2].logs is None
    assert sim.log_reads == [children[0].job]


def test_keep_failed_jobs_keeps_only_the_failed_job_and_still_verifies_cleanup() -> None:
    world = EvidenceWorld(results={"s2": False})
    sim = evidence_sim(
        CANARY, job_test("smoke"), PROMOTE, world=world, cleanupPolicy={"keepFailedJobs": True}
    )
    sim.finish()
    assert sim.phase() == Phase.FAILED
    failed_job = _step(sim, 1).job
    deletes = [a for p in sim.plans for a in of_type(p.actions, DeleteCanaryObjects)]
    assert deletes and all(d.keep_jobs == (failed_job,) for d in deletes)
    assert sim.world.jobs[failed_job].kept
    assert sim.status.condition("CleanupVerified").status == "True"


def test_without_keep_failed_jobs_nothing_is_kept() -> None:
    sim = evidence_sim(CANARY, job_test("smoke"), world=EvidenceWorld(results={"s2": False}))
    sim.finish()
    deletes = [a for p in sim.plans for a in of_type(p.actions, DeleteCanaryObjects)]
    assert deletes and all(d.keep_jobs == () for d in deletes)
    assert sim.world.jobs == {}


def test_jobs_wanting_logs_skips_cleanup_jobs_and_recorded_ones() -> None:
    rollout = make_rollout(make_spec(job_test("a"), job_test("b")))
    status = rollout.status.model_copy(deep=True)
    status.steps = [start.fresh_step_status(s) for s in rollout.spec.steps]
    status.steps[0].job, status.steps[0].phase = "j-a", StepPhase.FAILED
    status.steps[1].job, status.steps[1].phase = "j-b", StepPhase.RUNNING
    jobs = {"j-a": JobView("j-a", failed=True), "j-b": JobView("j-b")}
    assert machine.jobs_wanting_logs(status, jobs) == ["j-a"]
    jobs["j-b"] = JobView("j-b", failed=True)  # failed, its step not yet decided
    assert machine.jobs_wanting_logs(status, jobs) == ["j-a", "j-b"]
    status.steps[0].logs = []
    assert machine.jobs_wanting_logs(status, jobs) == ["j-b"]
    jobs["j-b"] = JobView("j-b", failed=True, cleanup=True)
    assert machine.jobs_wanting_logs(status, jobs) == []
    assert machine.jobs_wanting_logs(status, {}) == []  # gone: nothing to read


def test_evidence_message_bounds_each_tail() -> None:
    long = "x" * 5000 + "THE END"
    tails = [
        ContainerLogTail(pod="p", container="a", tail=long),
        ContainerLogTail(pod="p", container="b", error="container not found"),
    ]
    message = evidence.evidence_message("smoke", "job-1", tails)
    assert "THE END" in message and len(message) < 1024
    assert "p/b: logs unavailable (container not found)" in message
    assert "left no pod logs" in evidence.evidence_message("smoke", "job-1", [])


# ----------------------------------------------------------- start-of-run validation


def test_validation_problems_end_a_pending_rollout_invalid_without_touching_anything() -> None:
    rollout = make_rollout()
    problem = "spec.images[0].container: the target Deployment web has no container 'x'"
    result = machine.plan(rollout, observe(spec_problems=(problem,)))
    assert result.status.phase == Phase.FAILED
    assert result.status.outcome is not None and result.status.outcome.result == Result.INVALID
    assert result.status.outcome.message == problem
    assert effects(result.actions) == [] and not of_type(result.actions, ReleaseLock)
    failed = result.status.condition("Failed")
    assert failed is not None and failed.reason == "InvalidSpec" and problem in failed.message


def test_validation_again_right_before_the_first_step_gives_the_lock_back() -> None:
    sim = Sim(make_spec(CANARY))
    sim.tick()  # Pending -> Queued
    assert sim.phase() == Phase.QUEUED
    rollout = sim.rollout
    problem = "spec.target.service: Service 'web' not found in namespace ns"
    result = machine.plan(rollout, observe(lock=held(), spec_problems=(problem,)))
    assert result.status.phase == Phase.FAILED and result.status.started_at is None
    assert of_type(result.actions, ReleaseLock) and effects(result.actions) == []
    # Problems found while only waiting for the lock are not looked at (not read then).
    waiting = machine.plan(rollout, observe(spec_problems=(problem,)))
    assert waiting.status.phase == Phase.QUEUED


def _at(phase: Phase, **fields: Any) -> Rollout:
    rollout = make_rollout()
    status = rollout.status.model_copy(update={"phase": phase, **fields})
    status.fingerprint = status.fingerprint or rollout.spec.run_fingerprint()
    return replace(rollout, status=status)


def test_wants_validation_only_when_a_run_may_start() -> None:
    assert wants_validation(make_rollout(), lock_held=False)
    assert not wants_validation(_at(Phase.QUEUED), lock_held=False)
    assert wants_validation(_at(Phase.QUEUED), lock_held=True)
    assert not wants_validation(_at(Phase.QUEUED, started_at="x"), lock_held=True)
    assert not wants_validation(_at(Phase.PROGRESSING), lock_held=True)
    assert not wants_validation(_at(Phase.CLEANING_UP), lock_held=True)
    assert not wants_validation(_at(Phase.FAILED), lock_held=False)
    assert wants_validation(_at(Phase.FAILED, fingerprint="old"), lock_held=False)
    retried = replace(_at(Phase.FAILED, run=1), annotations={RETRY_ANNOTATION: "2"})
    assert wants_validation(retried, lock_held=False)
    assert not wants_validation(replace(make_rollout(), deleting=True), lock_held=False)


# -------------------------------------------------------------------- fail fast


def test_a_canary_whose_pods_cannot_start_fails_the_canary_step_at_once() -> None:
    why = 'ReplicaFailure FailedCreate: pods "web-canary-x" is forbidden: exceeded quota'
    sim = started(CANARY, pause(), PROMOTE, world=EvidenceWorld(canary_failure=why))
    sim.tick()  # asks for the canary
    sim.tick()  # sees it failing
    assert sim.phase() == Phase.CLEANING_UP
    assert sim.status.outcome is not None and sim.status.outcome.failed_step == 1
    assert "cannot run its pods" in sim.status.outcome.message and why in sim.status.outcome.message
    sim.finish()
    assert sim.phase() == Phase.FAILED


def test_a_canary_failing_during_a_weight_step_fails_that_step() -> None:
    world = EvidenceWorld()
    sim = started(CANARY, weight(50), PROMOTE, world=world)
    sim.at_step(1)
    world.canary_failure = "pod web-canary-y container app: ErrImagePull: not found"
    sim.tick()
    sim.tick()
    assert sim.status.outcome is not None and sim.status.outcome.failed_step == 2
    assert "ErrImagePull" in sim.status.outcome.message


def test_a_baseline_failure_fails_the_canary_step() -> None:
    rollout = make_rollout(make_spec(CANARY, baseline=True))
    sim = Sim(rollout.spec)
    sim.run_until(Phase.PROGRESSING)
    obs = replace(
        sim.observe(),
        canary=workload(2),
        baseline=workload(2, 0, failure="pod b container app: InvalidImageName"),
    )
    result = machine.plan(sim.rollout, obs)
    assert result.status.phase == Phase.CLEANING_UP
    assert result.status.outcome is not None and "baseline" in result.status.outcome.message
