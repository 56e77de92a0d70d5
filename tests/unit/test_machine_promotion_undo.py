"""A promotion that does not complete is undone by the run's cleanup (issue 25, item 1).

The simulated World of test_machine.py, with a target that carries what a promotion
writes on it: its pod template (here, its image), the promotion record, promoted-by and
what the promotion replaced (PrePromotion). PromoteStable puts the new version on it;
UndoPromotion puts back what it replaced, as reconcile/stable.py does. Every plan is
checked by test_machine's invariants (purity, lock before side effects, a verified
cleanup before a run ends); here also: the undo is asked only with the lock, and a run
that ended leaves the target on the template the promotion replaced, unless its
promotion completed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta

import pytest

from canary_operator.api.models import Phase, Result, StepPhase
from canary_operator.engine.labels import run_id
from canary_operator.engine.types import (
    Action,
    Observed,
    PrePromotion,
    PromoteStable,
    PromotionRecord,
    UndoPromotion,
)
from tests.unit.test_machine import (
    CANARY,
    OTHER,
    PROMOTE,
    UID,
    Sim,
    World,
    abort,
    make_spec,
    of_type,
    reasons,
    weight,
)
from tests.unit.test_machine import SIDE_EFFECTS as RUN_EFFECTS

OLD, NEW = "web:1", "web:2"
RID = f"{UID}/1"


def effects(actions: list[Action]) -> list[Action]:
    """What a plan does to the cluster, the undo included."""
    return [a for a in actions if isinstance(a, (*RUN_EFFECTS, UndoPromotion))]


def _hash(image: str) -> str:
    return hashlib.sha256(image.encode()).hexdigest()[:16]


@dataclass
class PromotingWorld(World):
    """The World, with the target's template and what a promotion records on it."""

    image: str = OLD
    promotion: PromotionRecord | None = None
    pre: PrePromotion | None = None
    undos: int = 0  # UndoPromotion actions carried out

    def observe(self, wants_lock: bool) -> Observed:
        obs = super().observe(wants_lock)
        if obs.target is None:
            return obs
        target = replace(
            obs.target,
            images={"app": self.image},
            template_hash=_hash(self.image),
            promotion=self.promotion,
            pre_promotion=self.pre,
        )
        return replace(obs, target=target)

    def apply(self, actions: list[Action] | tuple[Action, ...]) -> None:  # type: ignore[override]
        for action in actions:
            if isinstance(action, UndoPromotion):
                assert self.holder == "web-v2", "the target written without the lock"
                self.undos += 1
                if self.promoted_by == action.run_id and self.pre is not None:
                    self.image = OLD
                    self.promoted_by, self.promotion, self.pre = None, None, None
        super().apply(actions)
        for action in actions:
            if isinstance(action, PromoteStable) and self.image != NEW:
                self.pre = PrePromotion(action.run_id, {"app": self.image}, _hash(self.image))
                self.image = NEW
                self.promotion = PromotionRecord(
                    "web-v2", UID, 1, "f", {"app": NEW}, action.version_since, "t"
                )


def promoting(*, router: str = "gatewayAPI", rolled_out: bool = False) -> Sim:
    """A run whose promote step has started: the target carries the new version, which
    is not yet rolled out (or is, with `rolled_out`, but the route not reset yet)."""
    world = PromotingWorld(router=router)
    sim = Sim(make_spec(CANARY, weight(50), PROMOTE, router=router), world)
    world.stable_rolled_out = rolled_out
    sim.run_until(lambda s: world.promoted_by == RID)
    world.route_stuck = rolled_out  # the promote step then waits on the route
    assert sim.status.current_step == 2 and world.image == NEW
    assert _promote_step(sim) != StepPhase.SUCCEEDED
    return sim


def _promote_step(sim: Sim) -> StepPhase:
    steps = sim.status.steps
    assert steps is not None
    return steps[2].phase


def _undo_actions(sim: Sim) -> list[UndoPromotion]:
    return of_type(sim.all_actions(), UndoPromotion)


def _ends_undone(sim: Sim, result: Result) -> None:
    world = sim.world
    assert isinstance(world, PromotingWorld)
    world.stable_rolled_out, world.route_stuck = True, False
    sim.finish()
    outcome = sim.status.outcome
    assert outcome is not None and outcome.result == result
    assert outcome.message.endswith(f"promotion to {NEW} undone, target back on {OLD}")
    assert sim.status.message and sim.status.message.endswith(f"target back on {OLD}")
    assert world.image == OLD and world.promoted_by is None and world.pre is None
    cleanup = sim.status.cleanup
    assert cleanup is not None and cleanup.promotion_undo is not None
    assert cleanup.promotion_undo.undone_at is not None
    assert (cleanup.promotion_undo.promoted, cleanup.promotion_undo.restores) == (NEW, OLD)
    assert sim.status.live is None, "status.live agrees with the target (no promotion)"
    assert {"PromotionUndoStarted", "PromotionUndone"} <= set(sim.events())


def _delete(sim: Sim) -> None:
    sim.delete()


def _deadline(sim: Sim) -> None:
    sim.world.now += sim.rollout.spec.progress_deadline_seconds * 2 * _SECOND


_SECOND = timedelta(seconds=1)

ENDINGS: dict[str, tuple[Callable[[Sim], None], Result]] = {
    "abort": (abort, Result.ABORTED),
    "delete": (_delete, Result.DELETED),
    "deadline": (_deadline, Result.DEADLINE_EXCEEDED),
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
@pytest.mark.parametrize("rolled_out", [False, True])
def test_a_run_ended_during_its_promotion_undoes_it(ending: str, rolled_out: bool) -> None:
    sim = promoting(rolled_out=rolled_out)
    end, result = ENDINGS[ending]
    end(sim)
    sim.tick()
    assert sim.phase() == Phase.CLEANING_UP
    # The undo is recorded before the target is written (a restart then knows it).
    plan = sim.tick()
    cleanup = sim.status.cleanup
    assert cleanup is not None and cleanup.promotion_undo is not None
    assert cleanup.stage == "UndoingPromotion" and not effects(plan.actions)
    assert "PromotionUndoStarted" in reasons(plan.actions)
    plan = sim.tick()
    assert of_type(plan.actions, UndoPromotion) == [UndoPromotion(RID)]
    _ends_undone(sim, result)


def test_the_undo_comes_before_the_route_reset_and_the_canary_deletion() -> None:
    sim = promoting()
    abort(sim)
    sim.tick()
    sim.tick()
    plan = sim.tick()
    assert effects(plan.actions) == [UndoPromotion(RID)], "only the undo, first"
    _ends_undone(sim, Result.ABORTED)


def test_a_lost_lock_during_the_promotion_waits_for_the_lock_then_undoes() -> None:
    sim = promoting()
    world = sim.world
    assert isinstance(world, PromotingWorld)
    world.holder = OTHER
    sim.tick()
    assert sim.status.outcome is not None
    assert sim.status.outcome.result == Result.LOCK_LOST
    for _ in range(5):
        plan = sim.tick(seconds=30)
        assert not effects(plan.actions) and world.undos == 0, "no write without the lock"
    assert world.image == NEW
    world.holder = None
    _ends_undone(sim, Result.LOCK_LOST)
    assert world.token == 2, "undone under the lock taken again"


def test_a_completed_promotion_stays() -> None:
    """The promote step succeeded (target rolled out, route reset): a later step that
    fails ends the run, and the new version stays live."""
    world = PromotingWorld(router="gatewayAPI")
    spec = make_spec(CANARY, PROMOTE, {"pause": {}}, router="gatewayAPI")
    sim = Sim(spec, world)
    sim.run_until(Phase.PAUSED)
    steps = sim.status.steps
    assert steps is not None and steps[1].phase == StepPhase.SUCCEEDED
    abort(sim)
    sim.finish()
    outcome = sim.status.outcome
    assert outcome is not None and outcome.result == Result.ABORTED
    assert "undone" not in outcome.message
    assert world.image == NEW and world.promoted_by == RID and not _undo_actions(sim)
    cleanup = sim.status.cleanup
    assert cleanup is not None and cleanup.promotion_undo is None
    assert sim.status.live is not None and sim.status.live.label == NEW


def test_a_successful_run_keeps_its_promotion() -> None:
    world = PromotingWorld(router="gatewayAPI")
    sim = Sim(make_spec(CANARY, weight(50), PROMOTE, router="gatewayAPI"), world)
    sim.finish()
    assert sim.phase() == Phase.SUCCEEDED
    assert world.image == NEW and not _undo_actions(sim)


def test_a_run_that_never_promoted_undoes_nothing() -> None:
    world = PromotingWorld(router="gatewayAPI")
    sim = Sim(make_spec(CANARY, weight(50), {"pause": {}}, PROMOTE, router="gatewayAPI"), world)
    sim.run_until(Phase.PAUSED)
    abort(sim)
    sim.finish()
    cleanup, outcome = sim.status.cleanup, sim.status.outcome
    assert cleanup is not None and cleanup.promotion_undo is None
    assert outcome is not None and "promotion" not in outcome.message
    assert world.image == OLD and not _undo_actions(sim)


def test_another_runs_promotion_is_not_undone() -> None:
    """The target names another run's promotion (the lock was lost and another rollout
    promoted since): this cleanup leaves it alone."""
    sim = promoting()
    world = sim.world
    assert isinstance(world, PromotingWorld)
    world.holder = OTHER
    sim.tick()
    world.promoted_by = f"{UID}-other/1"
    world.holder = None
    world.stable_rolled_out, world.route_stuck = True, False
    sim.finish()
    outcome = sim.status.outcome
    assert outcome is not None and "undone" not in outcome.message
    assert not _undo_actions(sim) and world.image == NEW


@pytest.mark.parametrize("crash_at", ["recorded", "written"])
def test_a_restart_in_the_middle_of_the_undo_replays_it(crash_at: str) -> None:
    """The operator dies after the plan that records the undo (its status lost), or
    after the undo's write (its status lost): the next plans undo once and say so."""
    sim = promoting()
    world = sim.world
    assert isinstance(world, PromotingWorld)
    abort(sim)
    sim.tick()
    if crash_at == "recorded":
        sim.tick(crash=True)
        sim.restart()
        cleanup = sim.status.cleanup
        assert cleanup is not None and cleanup.promotion_undo is None
    else:
        sim.tick()
        sim.tick(crash=True)  # the undo written, its status lost
        assert world.image == OLD and world.undos == 1
        sim.restart()
    _ends_undone(sim, Result.ABORTED)


def test_the_undo_is_verified_on_a_fresh_read() -> None:
    """The cache said the target is back; the API server (VERIFICATION) says it still
    carries the promotion (e.g. the write was lost): the undo is asked again, and only
    the target as the server has it ends the run."""
    sim = promoting()
    world = sim.world
    assert isinstance(world, PromotingWorld)
    abort(sim)
    world.stable_rolled_out, world.route_stuck = True, False
    sim.run_until(lambda s: world.undos == 1)
    # The write is lost: the target still carries the promotion.
    world.image, world.promoted_by = NEW, RID
    world.pre = PrePromotion(RID, {"app": OLD}, _hash(OLD))
    _ends_undone(sim, Result.ABORTED)
    assert world.undos == 2


def test_the_outcome_says_when_the_target_changed_after_the_undo() -> None:
    sim = promoting()
    world = sim.world
    assert isinstance(world, PromotingWorld)
    abort(sim)
    world.stable_rolled_out, world.route_stuck = True, False
    sim.run_until(lambda s: world.undos == 1)
    world.image = "web:3"  # someone edits the target during the cleanup
    sim.finish()
    outcome = sim.status.outcome
    assert outcome is not None
    assert outcome.message.endswith(
        f"promotion to {NEW} undone; the target was changed since and runs web:3"
    )


def test_run_id_names_the_run() -> None:
    sim = promoting()
    assert run_id(sim.rollout) == RID
