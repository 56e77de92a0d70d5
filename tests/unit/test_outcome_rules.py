"""Issue 10's pure rules: runs older than the live version are refused (and only
those), the live version in status (with drift), best-effort cleanup steps, body
template checks, and the promotion's server-side apply configuration.

The simulated world of test_machine.py, extended with the target's promotion record.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from canary_operator.api.models import CanaryRolloutSpec, Phase, Result
from canary_operator.engine.annotations import ALLOW_OLDER_ANNOTATION, RETRY_ANNOTATION
from canary_operator.engine.machine import plan
from canary_operator.engine.types import (
    Emit,
    Observed,
    PromoteStable,
    PromotionRecord,
    ReleaseLock,
)
from canary_operator.kube.promotion import promotion
from tests.unit.test_machine import (
    CANARY,
    ME,
    PROMOTE,
    UID,
    Sim,
    World,
    abort,
    cleaning,
    condition,
    effects,
    is_true,
    make_rollout,
    make_spec,
    observe,
    of_type,
    pause,
    workload,
)

NEWER = PromotionRecord(
    rollout="web-b",
    uid="b-uid",
    run=1,
    fingerprint="f-b",
    images={"app": "registry.example.com/web:4.0"},
    version_since="2024-05-01T12:30:00Z",
    promoted_at="2024-05-01T12:40:00.000000Z",
)
CREATED = "2024-05-01T11:00:00Z"  # this rollout's creationTimestamp: older than NEWER


@dataclass
class PromotingWorld(World):
    """A World whose target carries a promotion record (and its current images)."""

    promotion: PromotionRecord | None = None
    images: dict[str, str] | None = None

    def observe(self, wants_lock: bool) -> Observed:
        obs = super().observe(wants_lock)
        if obs.target is None:
            return obs
        images = (
            self.images
            if self.images is not None
            else dict(self.promotion.images if self.promotion else {"app": "web:1"})
        )
        return replace(obs, target=replace(obs.target, promotion=self.promotion, images=images))

    def apply(self, actions: Any) -> None:
        super().apply(actions)
        for action in actions:
            if isinstance(action, PromoteStable):
                self.promotion = PromotionRecord(
                    rollout=ME,
                    uid=UID,
                    run=int(action.run_id.rsplit("/", 1)[1]),
                    fingerprint="mine",
                    images={"app": "web:2"},
                    version_since=action.version_since,
                    promoted_at="2024-05-01T13:00:00.000000Z",
                )
                self.images = None


def sim_with(world: PromotingWorld, *steps: dict[str, Any], **fields: Any) -> Sim:
    sim = Sim(make_spec(*steps), world, created=CREATED, **fields)
    return sim


# ------------------------------------------------------------- older than live


def test_a_run_older_than_the_live_version_is_refused_before_it_queues() -> None:
    sim = sim_with(PromotingWorld(promotion=NEWER), CANARY, PROMOTE)
    result = sim.tick()
    status = result.status
    assert status.phase == Phase.SUPERSEDED
    assert status.outcome is not None and status.outcome.result == Result.OLDER_THAN_LIVE
    message = status.outcome.message
    assert "app=registry.example.com/web:4.0" in message and "web-b run 1" in message
    assert "kubectl canary retry web-v2 --allow-older" in message
    assert effects(result.actions) == [] and not of_type(result.actions, ReleaseLock)
    assert condition(status, "Failed").reason == "OlderThanLive"
    assert not is_true(status, "Completed")
    assert status.version_since == CREATED
    assert status.live is not None and status.live.rollout == "web-b"
    assert status.live.label == "web:4.0" and status.live.this_rollout is False


def test_a_queued_run_is_refused_when_a_newer_version_is_promoted_meanwhile() -> None:
    world = PromotingWorld(holder="web-b")  # web-b runs; nothing promoted yet
    sim = sim_with(world, CANARY, PROMOTE)
    sim.tick()
    sim.tick()
    assert sim.phase() == Phase.QUEUED
    world.promotion = NEWER  # web-b promoted and ended: the lock is free again
    world.holder = None
    result = sim.tick()
    assert sim.phase() == Phase.SUPERSEDED
    assert effects(result.actions) == []
    # The lock taken in this very round went back at once: nothing ran under it.
    assert of_type(result.actions, ReleaseLock) and world.holder is None
    assert sim.status.started_at is None and sim.status.steps is None


def test_the_same_version_is_never_older_and_a_newer_spec_is_not_refused() -> None:
    # A retry of the spec that is live (same rollout, same fingerprint) runs.
    spec = make_spec(CANARY, PROMOTE)
    same = replace(NEWER, uid=UID, fingerprint=spec.run_fingerprint())
    sim = sim_with(PromotingWorld(promotion=same), CANARY, PROMOTE)
    sim.run_until(Phase.PROGRESSING)
    # A rollout created after the live version was: newer, runs.
    sim = Sim(spec, PromotingWorld(promotion=NEWER), created="2024-05-01T12:31:00Z")
    sim.run_until(Phase.PROGRESSING)


def test_a_retry_keeps_the_spec_age_and_is_refused_unless_allowed() -> None:
    world = PromotingWorld()
    sim = sim_with(world, CANARY, PROMOTE)
    sim.finish()
    assert sim.phase() == Phase.SUCCEEDED and sim.status.version_since == CREATED
    world.promotion = NEWER  # a newer rollout promoted after this one ended
    sim.annotate(RETRY_ANNOTATION, "2")
    sim.tick()
    assert (sim.status.run, sim.phase()) == (2, Phase.SUPERSEDED)
    assert sim.status.version_since == CREATED, "a retry is as old as its spec"
    # Allowed for run 3 only: run 3 runs and promotes.
    sim.annotate(RETRY_ANNOTATION, "3")
    sim.annotate(ALLOW_OLDER_ANNOTATION, "2")  # a stale allowance does not count
    sim.tick()
    assert (sim.status.run, sim.phase()) == (3, Phase.SUPERSEDED)
    sim.annotate(RETRY_ANNOTATION, "4")
    sim.annotate(ALLOW_OLDER_ANNOTATION, "4")
    sim.finish()
    assert (sim.status.run, sim.phase()) == (4, Phase.SUCCEEDED)
    assert world.promotion is not None and world.promotion.rollout == ME


def test_a_changed_spec_is_as_old_as_the_reconcile_that_saw_it() -> None:
    world = PromotingWorld()
    sim = sim_with(world, CANARY, PROMOTE)
    sim.finish()
    sim.new_image("web:9")
    sim.tick()
    assert sim.status.run == 2
    assert sim.status.version_since is not None and sim.status.version_since > CREATED
    assert sim.status.version_since.endswith("Z") and "." in sim.status.version_since


def test_live_version_shows_drift_when_the_target_no_longer_runs_it() -> None:
    world = PromotingWorld(promotion=replace(NEWER, version_since="2024-05-01T10:00:00Z"))
    sim = sim_with(world, CANARY, PROMOTE)
    sim.tick()
    assert sim.status.live is not None and sim.status.live.drifted is None
    world.images = {"app": "registry.example.com/web:1.0"}
    sim.tick()
    live = sim.status.live
    assert live is not None and live.drifted == "app=registry.example.com/web:1.0"
    assert live.label == "web:4.0 (drifted)" and live.version == "app=registry.example.com/web:4.0"


def test_promotion_carries_the_spec_age() -> None:
    sim = sim_with(PromotingWorld(), CANARY, PROMOTE)
    sim.finish()
    promotes = of_type(sim.all_actions(), PromoteStable)
    assert promotes and {p.version_since for p in promotes} == {CREATED}


# ------------------------------------------------------------ cleanup policy


HOOK_400 = {"url": "http://chat.example/services/T0AB12/B0CD34/s3cr3tT0k3nV4lu3"}


def test_a_best_effort_cleanup_step_failure_is_recorded_once_and_cleanup_goes_on() -> None:
    steps = [
        {"name": "notify", "required": False, "webhook": HOOK_400},
        {"name": "purge", "job": {"spec": {"template": {"spec": {"containers": []}}}}},
    ]
    sim = cleaning(abort, CANARY, pause(), cleanup=steps)
    sim.run_until(lambda s: "c1-a0" in s.world.calls)
    sim.world.answer("c1-a0", False, "POST http://chat.example/services/***: HTTP 400")
    result = sim.tick()
    failed = [e for e in of_type(result.actions, Emit) if e.reason == "CleanupStepFailed"]
    assert len(failed) == 1 and failed[0].warning and "notify" in failed[0].message
    cleanup = sim.status.cleanup
    assert cleanup is not None and cleanup.attempts == 0, "a best-effort failure is no retry"
    assert [(f.step, f.name) for f in cleanup.failed_steps or []] == [(1, "notify")]
    sim.finish()
    assert sim.phase() == Phase.ABORTED
    verified = condition(sim.status, "CleanupVerified")
    assert verified.status == "True" and "notify" in verified.message
    assert sim.events().count("CleanupStepFailed") == 1
    assert sim.world.holder != ME


def test_a_best_effort_cleanup_job_failure_does_not_block_either() -> None:
    steps = [{"name": "report", "required": False, "job": {"spec": {"template": {"spec": {}}}}}]
    sim = cleaning(abort, CANARY, pause(), cleanup=steps, world=World(results={"c1-a0": False}))
    sim.finish()
    assert sim.phase() == Phase.ABORTED and is_true(sim.status, "CleanupVerified")
    assert sim.status.cleanup is not None and sim.status.cleanup.failed_steps is not None


def test_a_required_cleanup_step_still_blocks() -> None:
    sim = cleaning(abort, CANARY, pause(), cleanup=[{"name": "notify", "webhook": HOOK_400}])
    sim.run_until(lambda s: "c1-a0" in s.world.calls)
    sim.world.answer("c1-a0", False, "HTTP 400")
    sim.tick()
    assert sim.phase() == Phase.CLEANING_UP and sim.world.holder == ME
    assert condition(sim.status, "CleanupVerified").reason == "CleanupBlocked"


def test_an_unknown_body_template_variable_refuses_the_run_before_anything() -> None:
    hook = {**HOOK_400, "body": '{"text": "{{rollout}} {{secret}}"}'}
    spec = make_spec(CANARY, cleanup=[{"name": "notify", "webhook": hook}])
    result = plan(make_rollout(spec), observe())
    assert result.status.phase == Phase.FAILED
    assert result.status.outcome is not None
    assert "spec.cleanup[0].webhook.body: unknown template variable {{secret}}" in (
        result.status.outcome.message
    )
    assert effects(result.actions) == []


# ----------------------------------------------------- promotion apply config


def _target(managed: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web",
            "namespace": "ns",
            "resourceVersion": "42",
            "managedFields": managed or [],
        },
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {"name": "app", "image": "web:1", "ports": [{"containerPort": 80}]},
                        {"name": "sidecar", "image": "proxy:1"},
                    ]
                },
            }
        },
    }


def _spec(**fields: Any) -> CanaryRolloutSpec:
    return make_spec(CANARY, **fields)


def test_promotion_applies_only_the_images_it_changes_with_a_precondition() -> None:
    body = promotion(_spec(), _target(), {"a": "b"})
    assert body["metadata"]["resourceVersion"] == "42"
    assert body["metadata"]["annotations"] == {"a": "b"}
    assert body["spec"] == {
        "template": {"spec": {"containers": [{"name": "app", "image": "web:2"}]}}
    }


def test_promotion_keeps_applying_images_an_earlier_promotion_owns() -> None:
    owned = {
        "manager": "canary-operator",
        "operation": "Apply",
        "fieldsV1": {
            "f:spec": {
                "f:template": {
                    "f:spec": {
                        "f:containers": {
                            'k:{"name":"sidecar"}': {".": {}, "f:name": {}, "f:image": {}}
                        }
                    }
                }
            }
        },
    }
    containers = promotion(_spec(), _target([owned]), {})["spec"]["template"]["spec"]["containers"]
    assert containers == [
        {"name": "app", "image": "web:2"},
        {"name": "sidecar", "image": "proxy:1"},
    ]
    # Another manager's ownership is not ours to keep applying.
    other = {**owned, "manager": "kubectl"}
    assert (
        len(promotion(_spec(), _target([other]), {})["spec"]["template"]["spec"]["containers"]) == 1
    )


def test_after_a_full_template_promotion_the_whole_template_stays_applied() -> None:
    owned = {
        "manager": "canary-operator",
        "operation": "Apply",
        "fieldsV1": {"f:spec": {"f:template": {"f:metadata": {"f:labels": {"f:app": {}}}}}},
    }
    template = promotion(_spec(), _target([owned]), {})["spec"]["template"]
    assert template["metadata"]["labels"] == {"app": "web"}
    assert template["spec"]["containers"][0]["ports"] == [{"containerPort": 80}]
    assert template["spec"]["containers"][0]["image"] == "web:2"


def test_a_template_promotion_applies_the_whole_new_template() -> None:
    spec = make_spec(
        CANARY,
        images=None,
        template={"spec": {"containers": [{"name": "app", "image": "web:3"}]}},
    )
    template = promotion(spec, _target(), {})["spec"]["template"]
    assert template["spec"]["containers"] == [{"name": "app", "image": "web:3"}]
    assert template["metadata"]["labels"] == {"app": "web"}, "the selector still matches"
    assert workload(1).promotion is None
