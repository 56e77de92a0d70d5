"""An undo run (`kubectl canary undo`, issue 25 item 3), as the pure machine decides it.

The simulated World of test_outcome_rules.py, whose target carries a promotion record:
an undo is a rollout annotated canary-operator.dev/undo=<the run whose promotion it
puts back>, with the earlier version as spec.template and one promote step. It is the
user's explicit choice (never refused as older than the live version), it starts only
while that promotion is still the one the target carries, and its promotion puts the
whole template back exactly."""

from __future__ import annotations

from typing import Any

import pytest

from canary_operator.api.models import Phase, Result
from canary_operator.engine.annotations import UNDO_ANNOTATION
from canary_operator.engine.types import PromoteStable, PromotionRecord, ReleaseLock
from tests.unit.test_machine import PROMOTE, Sim, effects, make_spec, of_type
from tests.unit.test_outcome_rules import CREATED, NEWER, PromotingWorld

UNDONE = "b-uid/1"  # the run that promoted NEWER (web:4.0)
TEMPLATE: dict[str, Any] = {"spec": {"containers": [{"name": "app", "image": "web:1.0"}]}}
LATER = PromotionRecord(
    rollout="web-c",
    uid="c-uid",
    run=2,
    fingerprint="f-c",
    images={"app": "web:5.0"},
    version_since="2024-05-01T12:50:00Z",
    promoted_at="2024-05-01T12:55:00.000000Z",
)


def undo(world: PromotingWorld, annotated: bool = True) -> Sim:
    """The undo rollout of NEWER's promotion; created before NEWER's spec was first
    seen, so that a rollout of the same spec that is no undo is older than live."""
    spec = make_spec(PROMOTE, images=None, template=TEMPLATE)
    annotations = {UNDO_ANNOTATION: UNDONE} if annotated else {}
    return Sim(spec, world, created=CREATED, annotations=annotations)


def live_world(**fields: Any) -> PromotingWorld:
    return PromotingWorld(promotion=NEWER, promoted_by=UNDONE, lock_at_once=True, **fields)


def test_an_undo_is_not_refused_as_older_than_live_and_puts_the_template_back_exactly() -> None:
    sim = undo(live_world())
    sim.finish()
    outcome = sim.status.outcome
    assert outcome is not None and outcome.result == Result.SUCCEEDED, outcome
    assert sim.phase() == Phase.SUCCEEDED
    promotes = of_type(sim.all_actions(), PromoteStable)
    assert promotes and all(p.exact for p in promotes)
    steps = sim.status.steps
    assert steps is not None
    assert steps[0].message == (
        "undone: deployment web back on web:1.0 (the promotion by run b-uid/1 undone)"
    )
    events = sim.events()
    assert events.index("UndoStarted") < events.index("Undone")
    started = next(
        a.message for p in sim.plans for a in p.actions if getattr(a, "reason", "") == "UndoStarted"
    )
    assert started == (
        "undoing the promotion by run b-uid/1: deployment web goes from web:4.0 back to web:1.0"
    )


def test_the_same_rollout_without_the_undo_annotation_is_refused_as_older() -> None:
    sim = undo(live_world(), annotated=False)
    sim.finish()
    outcome = sim.status.outcome
    assert outcome is not None and outcome.result == Result.OLDER_THAN_LIVE
    assert not of_type(sim.all_actions(), PromoteStable)


@pytest.mark.parametrize(
    ("promoted_by", "promotion", "now"),
    [
        ("c-uid/2", LATER, "it was promoted since by web-c run 2 (web:5.0)"),
        (None, None, "it carries no promotion"),
    ],
)
def test_an_undo_whose_promotion_is_no_longer_live_ends_without_touching_the_target(
    promoted_by: str | None, promotion: PromotionRecord | None, now: str
) -> None:
    world = PromotingWorld(promotion=promotion, promoted_by=promoted_by, lock_at_once=True)
    sim = undo(world)
    result = sim.finish()
    outcome = sim.status.outcome
    assert outcome is not None and outcome.result == Result.UNDO_OUTDATED
    assert sim.phase() == Phase.SUPERSEDED
    assert outcome.message == (
        f"deployment web no longer runs the promotion this undo was asked for (run "
        f"{UNDONE}): {now}; nothing was changed. To undo what is live now: kubectl canary "
        "undo web"
    )
    assert effects(sim.all_actions()) == [], "the target is never touched"
    assert world.promoted_by == promoted_by
    assert result.status.phase == Phase.SUPERSEDED


def test_an_undo_queued_while_another_run_promotes_is_refused_once_it_holds_the_lock() -> None:
    world = live_world(holder="web-c")  # web-c runs: the undo waits behind it
    world.lock_at_once = False
    sim = undo(world)
    sim.tick()
    sim.tick()
    assert sim.phase() == Phase.QUEUED, sim.status.message
    # web-c promotes web:5.0 and ends; the lock is free.
    world.promoted_by, world.promotion, world.holder = "c-uid/2", LATER, None
    sim.finish()
    outcome = sim.status.outcome
    assert outcome is not None and outcome.result == Result.UNDO_OUTDATED
    assert effects(sim.all_actions()) == []
    assert of_type(sim.all_actions(), ReleaseLock), "the lock it took is given back"
    assert world.holder is None
