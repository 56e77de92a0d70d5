"""A cleanup whose objects will not go (engine/cleanup_blocked.py), on the simulated
World of test_machine.py: a canary pod held by someone else's finalizer, or stranded
on a node that went away. The rollout says so (CleanupVerified=False/CleanupBlocked,
status.cleanup.blockedBy, one Warning Event), keeps its lock, checks again with a
growing delay, and finishes once a human let the objects go."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pytest

from canary_operator.api.models import Phase
from canary_operator.engine.cleanup_blocked import (
    BLOCKED_AFTER,
    RECHECK_MAX,
    RECHECK_MIN,
    recheck_after,
)
from canary_operator.engine.types import (
    Action,
    DeleteCanaryObjects,
    Emit,
    Lingering,
    Observed,
    ReleaseLock,
)
from tests.unit.test_machine import (
    ME,
    NOW,
    Sim,
    World,
    abort,
    checked_plan,
    cleaning,
    cleanup_job,
    condition,
    effects,
    held,
    is_true,
    observe,
    of_type,
    reasons,
)

POD = "web-canary-5d8f7-x2x9q"
HOLD = "example.com/hold"


@dataclass
class StuckWorld(World):
    """A World whose canary pods, once deleted, stay: each held by `finalizers`, on
    `node` (whose trouble the pod's status may state in `node_problem`)."""

    finalizers: tuple[str, ...] = (HOLD,)
    node: str | None = "node-1"
    node_problem: str | None = None
    grace: float = 0  # seconds from the deletion request to the deletionTimestamp
    deleted_at: datetime | None = None
    deployment_waits: bool = False  # the canary Deployment waits in foreground deletion

    def __post_init__(self) -> None:
        self.pods_linger = True

    def apply(self, actions: list[Action]) -> None:  # type: ignore[override]
        if any(isinstance(a, DeleteCanaryObjects) for a in actions) and self.pods:
            self.deleted_at = self.deleted_at or self.now
        super().apply(actions)

    def let_go(self) -> None:
        """What the documented way out does: the pods go."""
        self.pods_linger = False
        self.deleted_at = None

    def observe(self, wants_lock: bool) -> Observed:
        obs = super().observe(wants_lock)
        if self.deleted_at is None or not self.pods:
            return obs
        due = self.deleted_at + timedelta(seconds=self.grace)
        going = [
            Lingering(
                "pod",
                f"{POD}{n or ''}",
                due,
                self.finalizers,
                self.node,
                self.node_problem,
            )
            for n in range(self.pods)
        ]
        if self.deployment_waits:
            going.append(
                Lingering("deployment", "web-canary", self.deleted_at, ("foregroundDeletion",))
            )
        return replace(obs, lingering=tuple(going))


def stuck(**world: object) -> Sim:
    """A rollout aborted while paused, its cleanup about to delete the canary."""
    return cleaning(abort, world=StuckWorld("gatewayAPI", **world), router="gatewayAPI")  # type: ignore[arg-type]


def world_of(sim: Sim) -> StuckWorld:
    assert isinstance(sim.world, StuckWorld)
    return sim.world


def blocked_reason(sim: Sim) -> str:
    return condition(sim.status, "CleanupVerified").reason


def run_blocked(sim: Sim) -> None:
    """Tick a second at a time until the cleanup says it is blocked."""
    sim.run_until(lambda s: blocked_reason(s) == "CleanupBlocked", limit=60)


# ================================================================ blocked, said once


def test_a_pod_held_by_a_finalizer_blocks_the_cleanup_after_the_bounded_wait() -> None:
    sim = stuck()
    sim.tick()  # deletes the canary objects; the pods stay
    deleted_at = sim.world.now
    while (sim.world.now - deleted_at).total_seconds() < BLOCKED_AFTER - 1:
        sim.tick(seconds=1)
        assert blocked_reason(sim) == "CleanupRunning", sim.world.now - deleted_at
        assert sim.status.cleanup is not None and sim.status.cleanup.blocked_by is None
    sim.tick(seconds=1)
    assert (sim.world.now - deleted_at).total_seconds() == BLOCKED_AFTER
    verified = condition(sim.status, "CleanupVerified")
    assert (verified.status, verified.reason) == ("False", "CleanupBlocked")
    # It names the object, why it stays, and the way out (a finalizer is its owner's).
    assert f"pod/{POD}" in verified.message and f"held by finalizers {HOLD}" not in verified.message
    assert f"held by finalizer {HOLD}" in verified.message
    assert "lock cro-lock-web is kept" in verified.message
    assert "never forces a deletion" in verified.message
    assert f"kubectl patch pod {POD} -n ns --type=json" in verified.message
    assert '"op":"test","path":"/metadata/finalizers/0","value":"example.com/hold"' in (
        verified.message
    )
    assert "docs/troubleshooting.md#" in verified.message
    assert "--force" not in verified.message  # not a pod stranded on a node
    cleanup = sim.status.cleanup
    assert cleanup is not None and cleanup.blocked_by is not None
    assert [b.split(":")[0] for b in cleanup.blocked_by] == [f"pod/{POD}", f"pod/{POD}1"]
    assert cleanup.last_error and cleanup.last_error.startswith("2 objects will not go")
    assert cleanup.attempts == 0  # nothing failed: it waits
    assert sim.status.message and sim.status.message.startswith("cleanup blocked: 2 objects")
    assert sim.phase() == Phase.CLEANING_UP and sim.world.holder == ME


def test_the_warning_event_is_said_once_per_blocked_episode() -> None:
    sim = stuck()
    run_blocked(sim)
    first = [e for e in of_type(sim.plans[-1].actions, Emit) if e.reason == "CleanupBlocked"]
    assert len(first) == 1 and first[0].warning
    assert f"pod/{POD}" in first[0].message and "lock cro-lock-web kept" in first[0].message
    for _ in range(20):
        sim.tick(seconds=sim.plans[-1].requeue_after or 1)
    assert sim.events().count("CleanupBlocked") == 1
    assert sim.phase() == Phase.CLEANING_UP


def test_while_blocked_the_status_does_not_change_from_check_to_check() -> None:
    """Each check that finds nothing new writes nothing (no status write per check)."""
    sim = stuck()
    run_blocked(sim)
    before = sim.status.model_copy(deep=True)
    for seconds in (1, 10, 30, 300):
        sim.tick(seconds=seconds)
        assert sim.status == before


def test_the_lock_is_kept_and_nothing_is_forced() -> None:
    sim = stuck()
    run_blocked(sim)
    for _ in range(30):
        result = sim.tick(seconds=sim.plans[-1].requeue_after or 1)
        assert not of_type(result.actions, ReleaseLock)
        assert effects(result.actions) in ([], [DeleteCanaryObjects()])
    assert sim.world.holder == ME and sim.phase() == Phase.CLEANING_UP


# ====================================================================== backoff


def test_checks_back_off_from_every_second_to_every_30_seconds() -> None:
    sim = stuck()
    sim.tick()
    deleted_at = sim.world.now
    delays = []
    while (sim.world.now - deleted_at).total_seconds() < 600:
        delay = sim.plans[-1].requeue_after
        assert delay is not None
        delays.append(delay)
        sim.tick(seconds=delay)
    assert all(RECHECK_MIN <= d <= RECHECK_MAX for d in delays)
    assert delays[:3] == [RECHECK_MIN] * 3
    assert _grows_but_for_the_blocked_moment(delays), delays
    assert delays[-1] == RECHECK_MAX
    # Ten minutes of waiting cost a few dozen looks, not six hundred.
    assert len(delays) < 40, delays


def _grows_but_for_the_blocked_moment(delays: list[float]) -> bool:
    """Non-decreasing, except once: the check shortened to land on the moment the wait
    counts as blocked."""
    drops = [i for i in range(1, len(delays)) if delays[i] < delays[i - 1]]
    return len(drops) <= 1


def test_no_check_lands_later_than_the_blocked_moment() -> None:
    sim = stuck()
    sim.tick()
    deleted_at = sim.world.now
    while blocked_reason(sim) != "CleanupBlocked":
        sim.tick(seconds=sim.plans[-1].requeue_after or 1)
    assert (sim.world.now - deleted_at).total_seconds() == BLOCKED_AFTER


@pytest.mark.parametrize(
    ("overdue", "expected"),
    [
        (None, RECHECK_MIN),  # just deleted: nothing lingers yet
        (-12.0, 12.0),  # in its grace period: look again when it ends
        (-300.0, RECHECK_MAX),
        (0.0, RECHECK_MIN),
        (4.0, 2.0),
        (16.0, 4.0),  # half its age would be 8: not past the blocked moment
        (20.0, 10.0),
        (40.0, 20.0),
        (100.0, RECHECK_MAX),
    ],
)
def test_recheck_after(overdue: float | None, expected: float) -> None:
    lingering = (
        () if overdue is None else (Lingering("pod", POD, NOW - timedelta(seconds=overdue)),)
    )
    assert recheck_after(observe(held(), lingering=lingering)) == expected


def test_a_pod_in_its_grace_period_is_not_blocked() -> None:
    sim = stuck(grace=30)
    sim.tick()
    for _ in range(5):
        sim.tick(seconds=sim.plans[-1].requeue_after or 1)
        assert blocked_reason(sim) == "CleanupRunning"
    # Blocked only BLOCKED_AFTER past its deletionTimestamp (request + grace).
    run_blocked(sim)
    assert sim.status.cleanup is not None and sim.status.cleanup.blocked_by


# ====================================================================== way out


def test_once_the_finalizer_is_removed_the_cleanup_finishes_and_the_condition_clears() -> None:
    sim = stuck()
    run_blocked(sim)
    sim.tick(seconds=30)
    world_of(sim).let_go()
    result = sim.tick(seconds=sim.plans[-1].requeue_after or 1)
    assert sim.phase() == Phase.ABORTED
    assert is_true(sim.status, "CleanupVerified")
    assert condition(sim.status, "CleanupVerified").reason == "Verified"
    assert reasons(result.actions)[:3] == ["CleanupUnblocked", "CleanupFinished", "LockReleased"]
    assert of_type(result.actions, ReleaseLock) and sim.world.holder is None
    cleanup = sim.status.cleanup
    assert cleanup is not None and cleanup.blocked_by is None and cleanup.last_error is None


def test_objects_gone_before_the_user_steps_clear_the_condition_at_once() -> None:
    sim = cleaning(
        abort,
        cleanup=[cleanup_job("notify")],
        world=StuckWorld("gatewayAPI", results={"c1-a0": None}),
        router="gatewayAPI",
    )
    run_blocked(sim)
    world_of(sim).let_go()
    result = sim.tick()
    assert "CleanupUnblocked" in reasons(result.actions)
    verified = condition(sim.status, "CleanupVerified")
    assert (verified.status, verified.reason) == ("False", "CleanupRunning")
    assert f"gone now: pod/{POD}" in verified.message
    assert sim.status.cleanup is not None and sim.status.cleanup.stage == "UserSteps"
    sim.world.results["c1-a0"] = True
    sim.finish()
    assert sim.phase() == Phase.ABORTED and is_true(sim.status, "CleanupVerified")


def test_a_second_episode_is_said_again() -> None:
    sim = stuck()
    run_blocked(sim)
    world_of(sim).let_go()
    sim.world.pods_linger = True
    sim.world.pods = 1
    world_of(sim).deleted_at = sim.world.now  # another pod, deleted now, stays too
    sim.tick()
    assert blocked_reason(sim) == "CleanupRunning"
    run_blocked(sim)
    assert sim.events().count("CleanupBlocked") == 2
    assert sim.events().count("CleanupUnblocked") == 1


def test_a_pod_on_a_node_that_went_away_suggests_a_force_delete_after_checking() -> None:
    problem = "evicted because node node-7 is not ready or unreachable"
    sim = stuck(finalizers=(), node="node-7", node_problem=problem)
    run_blocked(sim)
    message = condition(sim.status, "CleanupVerified").message
    assert problem in message
    assert "confirm the node is gone or the pod stopped (kubectl get node node-7)" in message
    assert f"kubectl delete pod {POD} -n ns --grace-period=0 --force" in message
    assert "kubectl patch" not in message


def test_a_pod_its_node_never_confirmed_is_suspected_of_a_lost_node() -> None:
    sim = stuck(finalizers=(), node="node-3")
    run_blocked(sim)
    message = condition(sim.status, "CleanupVerified").message
    assert "node node-3 has not confirmed it stopped (unreachable or gone?)" in message


def test_a_deployment_in_foreground_deletion_is_named_after_its_pods_and_needs_no_patch() -> None:
    sim = stuck(deployment_waits=True)
    sim.world.pods = 1
    run_blocked(sim)
    cleanup = sim.status.cleanup
    assert cleanup is not None and cleanup.blocked_by is not None
    assert [b.split(":")[0] for b in cleanup.blocked_by] == [f"pod/{POD}", "deployment/web-canary"]
    assert "waiting for its dependents (foreground deletion)" in cleanup.blocked_by[1]
    message = condition(sim.status, "CleanupVerified").message
    assert "kubectl patch deployment" not in message and f"kubectl patch pod {POD}" in message


def test_force_release_of_a_blocked_cleanup_says_what_was_left() -> None:
    sim = stuck()
    run_blocked(sim)
    sim.annotate("canary-operator.dev/force-release", "true")
    # Planned, not applied: the simulated world holds the end of a run to a clean target.
    result = checked_plan(sim.rollout, replace(sim.observe(), now=sim.world.now))
    assert result.status.phase == Phase.ABORTED and of_type(result.actions, ReleaseLock)
    verified = condition(result.status, "CleanupVerified")
    assert verified.reason == "ForceReleased" and f"pod/{POD}" in verified.message


def test_replayed_after_a_restart_the_verdict_is_the_same_and_not_said_again() -> None:
    """Stateless: the verdict comes from the deletionTimestamps, so an operator that
    restarts (or replays a plan whose status was written) decides the same."""
    sim = stuck()
    run_blocked(sim)
    status = sim.status.model_copy(deep=True)
    sim.restart()
    result = sim.tick(seconds=5)
    assert sim.status == status and "CleanupBlocked" not in reasons(result.actions)


@pytest.mark.parametrize("seed", range(20))
def test_random_waits_and_a_late_way_out_keep_the_promises(seed: int) -> None:
    """Looks at random moments (a wake-up, a timer), the way out at a random one: the
    lock is held until the pods are gone, every look plans the next within [1 s, 30 s],
    the Event is said once if and only if the cleanup was blocked, and it ends verified."""
    rng = random.Random(seed)
    sim = stuck(grace=rng.choice([0, 5, 30]))
    let_go_after = rng.uniform(0, 120)
    started = sim.world.now
    was_blocked = False
    while sim.phase() == Phase.CLEANING_UP:
        planned = sim.plans[-1].requeue_after or 1
        sim.tick(seconds=rng.choice([planned, rng.uniform(0, planned)]))
        if sim.phase() != Phase.CLEANING_UP:
            break
        result = sim.plans[-1]
        assert not of_type(result.actions, ReleaseLock) and sim.world.holder == ME
        assert result.requeue_after is not None
        assert RECHECK_MIN <= result.requeue_after <= RECHECK_MAX, result.requeue_after
        was_blocked = was_blocked or blocked_reason(sim) == "CleanupBlocked"
        if (sim.world.now - started).total_seconds() >= let_go_after and sim.world.pods_linger:
            world_of(sim).let_go()
    assert sim.phase() == Phase.ABORTED and is_true(sim.status, "CleanupVerified")
    assert sim.events().count("CleanupBlocked") == (1 if was_blocked else 0)
    assert sim.events().count("CleanupUnblocked") == (1 if was_blocked else 0)
