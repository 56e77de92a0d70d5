"""A blue-green run through the state machine (`engine/blue_green.py`; its steps made
by api/models.py `blue_green_steps`).

The simulated World of test_machine.py, with the active Service's switch: SetRouteWeight
(100) points it at the preview's pods (the router's read-back then says 100 and names the
preview), ResetRoute (or a weight below 100) puts its selector back. Checked on every
action, whatever the run does: traffic is switched only to a preview at the target's
full size with all its pods ready; the preview is never deleted nor shrunk while it has
the traffic; the target takes the new version only after the switch, the steps after
it and scaleDownDelaySeconds. Checked at the end of every run: the Service back on the
target's pods, nothing of the preview left, the lock free (test_machine.Sim).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import pytest

from canary_operator.api.models import CanaryRolloutSpec, Phase, Result, StepPhase
from canary_operator.engine.annotations import PROMOTE_ANNOTATION, RESUME_ANNOTATION
from canary_operator.engine.types import (
    Action,
    DeleteCanaryObjects,
    EnsureCanary,
    Observed,
    PrePromotion,
    PromoteStable,
    ResetRoute,
    RouteView,
    SetRouteWeight,
    UndoPromotion,
)
from tests.unit.test_machine import (
    JOB,
    Sim,
    World,
    of_type,
)

STABLE = 4  # the target's replicas (World.stable)
DELAY = 30


def bg_spec(
    before: Sequence[dict[str, Any]] = (),
    after: Sequence[dict[str, Any]] = (),
    **blue_green: Any,
) -> CanaryRolloutSpec:
    body: dict[str, Any] = {
        "target": {"deployment": "web", "service": "web"},
        "images": [{"container": "app", "image": "web:2"}],
        "strategy": {
            "blueGreen": {
                "beforeSwitch": list(before),
                "afterSwitch": list(after),
                "scaleDownDelaySeconds": DELAY,
                **blue_green,
            }
        },
    }
    return CanaryRolloutSpec.model_validate(body)


def job(name: str) -> dict[str, Any]:
    """A test step running a Job (its result: World.results by suffix s<step>)."""
    return {"name": name, "test": {"job": JOB}}


@dataclass
class BlueGreenWorld(World):
    switched: bool = False  # the active Service selects the preview's pods
    recorded: bool = False  # its original selector is recorded on it (not switched back)
    switched_at: datetime | None = None
    ever_switched: bool = False
    promoted_at: datetime | None = None
    pre: PrePromotion | None = None  # what the promotion replaced, on the target
    log: list[str] = field(default_factory=list)

    def observe(self, wants_lock: bool) -> Observed:
        obs = super().observe(wants_lock)
        if obs.target is None:
            return obs
        return replace(obs, target=replace(obs.target, pre_promotion=self.pre))

    def route(self) -> RouteView:
        if self.route_error:
            return RouteView(0, self.route_error)
        return RouteView(100 if self.switched else 0, None, self.switched or self.recorded)

    def _preview_full(self) -> bool:
        return self.canary == self.stable and self.canary_ready and self.pods == self.stable

    def apply(self, actions: Sequence[Action]) -> None:
        for action in actions:
            match action:
                case SetRouteWeight(weight=w) if not self.route_stuck:
                    if w >= 100:
                        assert self._preview_full(), f"switched to a preview short of pods: {self}"
                        self.switched = self.recorded = self.ever_switched = True
                        self.switched_at = self.switched_at or self.now
                        self.log.append("switch")
                    else:
                        self._switch_back()
                    continue
                case ResetRoute() if not self.route_stuck:
                    self._switch_back()  # the preview keeps its pods: the switch back is all
                    continue
                case DeleteCanaryObjects():
                    assert not self.switched, "the preview deleted while it has the traffic"
                    self.log.append("delete")
                case EnsureCanary(replicas=n):
                    assert not self.switched or n == self.stable, "preview shrunk while live"
                case PromoteStable(run_id=rid):
                    assert self.switched_at is not None, "target promoted before the switch"
                    assert (self.now - self.switched_at).total_seconds() >= DELAY, "too soon"
                    self.promoted_at = self.now
                    self.pre = PrePromotion(rid, {"app": "web:1"}, "h1")
                    self.log.append("promote")
                case UndoPromotion():
                    self.promoted_by, self.pre = None, None
                    self.log.append("undo")
                    continue
            super().apply([action])

    def _switch_back(self) -> None:
        if self.switched or self.recorded:
            self.log.append("back")
        self.switched = self.recorded = False

    @property
    def clean(self) -> bool:
        return super().clean and not self.switched and not self.recorded


def bg_sim(spec: CanaryRolloutSpec | None = None, **world: Any) -> Sim:
    return Sim(spec or bg_spec(), BlueGreenWorld(stable=STABLE, **world))


def bg_world(sim: Sim) -> BlueGreenWorld:
    assert isinstance(sim.world, BlueGreenWorld)
    return sim.world


def kinds(sim: Sim) -> list[str]:
    return [s.kind for s in sim.status.steps or []]


# ------------------------------------------------------------------------ the spec


def test_the_steps_of_a_blue_green() -> None:
    spec = bg_spec([job("smoke")], [job("after")])
    assert [s.kind for s in spec.steps] == ["preview", "test", "switch", "test", "promote"]
    manual = bg_spec([job("smoke")], autoPromotionEnabled=False)
    assert [s.name for s in manual.steps] == [
        "preview",
        "smoke",
        "await-switch",
        "switch",
        "promote",
    ]
    # Parsed again from its own dump (made steps and all), the same spec.
    again = CanaryRolloutSpec.model_validate(spec.model_dump(by_alias=True, exclude_none=True))
    assert again.steps == spec.steps and again.run_fingerprint() == spec.run_fingerprint()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"steps": [{"promote": {}}]}, "spec.steps: a blue-green has no spec.steps"),
        ({"target": {"deployment": "web"}}, "spec.strategy.blueGreen: needs spec.target.service"),
        (
            {"trafficRouting": {"gatewayAPI": {"httpRoute": "web"}}},
            "spec.strategy.blueGreen: only the replicas router",
        ),
        ({"bg": {"beforeSwitch": [{"setWeight": 10}]}}, "spec.strategy.blueGreen.beforeSwitch[0]"),
        ({"bg": {"afterSwitch": [{"promote": {}}]}}, "spec.strategy.blueGreen.afterSwitch[0]"),
        (
            {"bg": {"afterSwitch": [{"name": "switch", "pause": {}}]}},
            "spec.strategy.blueGreen.afterSwitch[0].name",
        ),
        ({"bg": {"previewService": "web"}}, "spec.strategy.blueGreen.previewService"),
        (
            {"bg": {"beforeSwitch": [job("a")], "afterSwitch": [job("a")]}},
            "spec.strategy.blueGreen.afterSwitch[0].name: 'a' is also a step before",
        ),
    ],
)
def test_a_wrong_blue_green_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    body: dict[str, Any] = {
        "target": {"deployment": "web", "service": "web"},
        "images": [{"container": "app", "image": "web:2"}],
        "strategy": {"blueGreen": change.pop("bg", {})},
        **change,
    }
    with pytest.raises(
        ValueError, match=f"^(?s:.*){field}".replace("[", r"\[").replace("]", r"\]")
    ):
        CanaryRolloutSpec.model_validate(body)


@pytest.mark.parametrize("kind", ["preview", "switch"])
def test_a_canary_may_not_use_the_blue_green_steps(kind: str) -> None:
    body = {
        "target": {"deployment": "web"},
        "images": [{"container": "app", "image": "web:2"}],
        "steps": [{kind: {}}],
    }
    with pytest.raises(ValueError, match=rf"spec.steps\[0\].{kind}"):
        CanaryRolloutSpec.model_validate(body)


# ------------------------------------------------------------------------- a run


def test_preview_at_full_size_then_switch_then_promotion_after_the_delay() -> None:
    sim = bg_sim(bg_spec([job("before")], [job("after")]))
    world = bg_world(sim)
    sim.run_until(lambda s: s.world.canary is not None)
    # The preview at the target's size, and no traffic of the active Service.
    assert world.canary == STABLE and not world.switched
    sim.run_until(lambda s: bg_world(s).switched)
    # The test before the switch ran, against the preview, before it.
    assert sim.status.steps is not None and sim.status.steps[1].phase == StepPhase.SUCCEEDED
    assert world.promoted_by is None
    sim.finish(limit=400)
    assert sim.phase() == Phase.SUCCEEDED, sim.status
    assert kinds(sim) == ["preview", "test", "switch", "test", "promote"]
    assert world.promoted_by is not None and world.promoted_at is not None
    assert world.switched_at is not None
    assert (world.promoted_at - world.switched_at).total_seconds() >= DELAY
    # Traffic back on the target (now the new version) before the preview goes.
    assert world.log == ["switch", "promote", "back", "delete"]
    assert len(of_type(sim.all_actions(), SetRouteWeight)) >= 1
    assert world.clean and world.holder is None


def test_the_promotion_waits_for_the_delay_after_the_switch() -> None:
    sim = bg_sim(bg_spec(scaleDownDelaySeconds=600))
    world = bg_world(sim)
    sim.run_until(lambda s: bg_world(s).switched)
    sim.run_until(lambda s: "previous version kept up" in (s.status.message or ""))
    assert world.promoted_by is None
    plan = sim.tick(1)
    assert plan.requeue_after is not None and plan.requeue_after > 500
    sim.tick(600)
    sim.finish()
    assert sim.phase() == Phase.SUCCEEDED and world.promoted_by is not None


def test_a_failed_step_before_the_switch_leaves_the_traffic_and_the_target_alone() -> None:
    sim = bg_sim(bg_spec([job("before")], [job("after")]), results={"s2": False})
    sim.finish()
    world = bg_world(sim)
    assert sim.status.outcome is not None and sim.status.outcome.result == Result.STEP_FAILED
    assert sim.status.outcome.failed_step == 2
    assert not world.ever_switched and world.promoted_by is None
    assert world.log == ["delete"] and world.clean


def test_a_failed_step_after_the_switch_switches_back_first() -> None:
    sim = bg_sim(bg_spec([job("before")], [job("after")]), results={"s4": False})
    sim.finish()
    world = bg_world(sim)
    assert sim.status.outcome is not None and sim.status.outcome.result == Result.STEP_FAILED
    assert sim.status.outcome.failed_step == 4
    assert world.promoted_by is None
    assert world.log == ["switch", "back", "delete"] and world.clean


def test_a_preview_that_cannot_start_fails_before_any_switch() -> None:
    sim = bg_sim(canary_ready=False)
    sim.run_until(lambda s: s.world.canary is not None)
    for _ in range(5):
        sim.tick(1)
    assert not bg_world(sim).ever_switched
    sim.change_spec(abort=True)
    sim.finish()
    assert sim.phase() == Phase.ABORTED and bg_world(sim).clean


def test_without_auto_promotion_the_run_pauses_before_the_switch() -> None:
    sim = bg_sim(bg_spec([job("before")], autoPromotionEnabled=False))
    sim.run_until(Phase.PAUSED)
    assert sim.status.current_step == 2 and not bg_world(sim).switched
    for _ in range(3):
        sim.tick(60)
    assert sim.phase() == Phase.PAUSED and not bg_world(sim).ever_switched
    sim.annotate(RESUME_ANNOTATION, "3")
    sim.finish()
    assert sim.phase() == Phase.SUCCEEDED and bg_world(sim).ever_switched


def test_promote_by_the_user_skips_to_the_switch_not_past_it() -> None:
    sim = bg_sim(bg_spec([{"pause": {}}], [job("after")], autoPromotionEnabled=False))
    sim.run_until(Phase.PAUSED)
    sim.annotate(PROMOTE_ANNOTATION, str(sim.status.run))
    sim.finish()
    world = bg_world(sim)
    assert sim.phase() == Phase.SUCCEEDED
    steps = sim.status.steps or []
    assert [s.phase for s in steps] == [
        StepPhase.SUCCEEDED,
        StepPhase.CANCELLED,
        StepPhase.CANCELLED,
        StepPhase.SUCCEEDED,
        StepPhase.SUCCEEDED,  # the step after the switch still ran
        StepPhase.SUCCEEDED,
    ]
    assert world.log == ["switch", "promote", "back", "delete"]


# ---------------------------------------------- an end at every moment of the run


def _ticks_of_a_run() -> int:
    sim = bg_sim(bg_spec([job("before")], [job("after")]))
    sim.finish(limit=400)
    return len(sim.plans)


TICKS = _ticks_of_a_run()


def _ended_at(tick: int, how: str) -> Sim:
    sim = bg_sim(bg_spec([job("before")], [job("after")]))
    for _ in range(tick):
        if sim.phase().terminal:
            break
        sim.tick(1)
    if not sim.phase().terminal:
        if how == "abort":
            sim.change_spec(abort=True)
        elif how == "delete":
            sim.delete()
        elif how == "spec":
            sim.new_image()
        elif how == "target":
            sim.world.target_exists = False
    if not sim.gone:
        sim.run_until(lambda s: s.phase().terminal or s.status.run > 1, limit=400)
    return sim


@pytest.mark.parametrize("how", ["abort", "delete", "spec", "target"])
@pytest.mark.parametrize("tick", range(TICKS + 1))
def test_a_run_ended_at_any_moment_switches_back_and_leaves_nothing(tick: int, how: str) -> None:
    sim = _ended_at(tick, how)
    world = bg_world(sim)
    assert not world.switched and not world.recorded, world
    assert world.canary is None and not world.service and world.pods == 0
    assert world.holder is None or sim.status.run > 1
    if "back" in world.log:  # a switch back comes before the preview goes
        assert world.log.index("back") < world.log.index("delete")
    if world.promoted_by is not None:  # promoted: only once the whole run was through
        assert sim.phase() == Phase.SUCCEEDED or how == "target", sim.status
    elif "promote" in world.log:  # an incomplete promotion is undone
        assert "undo" in world.log and how != "target"
