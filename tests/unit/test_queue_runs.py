"""The queue orders runs, not rollouts (issue: an edit jumps the queue): an edit made
while a run goes on is recorded when first seen (status.nextVersionSince), becomes the
next run's versionSince, and ranks that run among the waiting ones by when it was
applied; under Supersede the last applied version is the one that runs."""

from __future__ import annotations

from typing import Any

from canary_operator.api.models import ConcurrencyPolicy, Phase
from canary_operator.api.timestamps import precise
from canary_operator.engine.types import DeleteCanaryObjects, JobView
from canary_operator.index import candidate
from canary_operator.lock import queue
from canary_operator.lock.queue import UNSEEN, Candidate
from tests.unit.test_machine import CANARY, Sim, World, effects, make_spec, started
from tests.unit.test_machine import pause as pause_step


def test_an_edit_during_a_run_keeps_the_moment_it_was_first_seen() -> None:
    sim = started(CANARY, pause_step())
    sim.run_until(Phase.PAUSED)
    assert sim.status.next_version_since is None
    sim.new_image()
    sim.tick(seconds=1)
    seen = precise(sim.world.now)
    assert sim.status.next_version_since == seen  # recorded by the plan that saw it
    sim.tick(seconds=5)
    assert sim.status.next_version_since == seen  # kept while the run cleans up
    sim.run_until(lambda s: s.status.run == 2, seconds=3)
    # The new run is as old as the edit, not as the moment the old run ended.
    assert sim.status.version_since == seen
    assert sim.status.next_version_since is None


def test_no_edit_no_next_run() -> None:
    sim = started(CANARY, pause_step())
    sim.run_until(Phase.PAUSED)
    sim.change_spec(paused=True)  # not a new version: the run goes on
    sim.tick()
    assert sim.status.next_version_since is None


def body(
    name: str,
    phase: str,
    created: str = "2026-12-07T10:00:00Z",
    policy: str = "Queue",
    **status: Any,
) -> dict[str, Any]:
    generation = int(status.pop("generation", 1))
    observed = status.pop("observedGeneration", generation)
    return {
        "metadata": {
            "name": name,
            "namespace": "shop",
            # Specs are parsed once per (uid, generation): one uid per spec here.
            "uid": f"uid-{name}-{policy}",
            "generation": generation,
            "creationTimestamp": created,
        },
        "spec": {
            "target": {"deployment": "web"},
            "images": [{"container": "app", "image": "web:2"}],
            "steps": [{"canary": {"replicas": 1}}],
            "concurrency": {"policy": policy},
        },
        "status": {"phase": phase, "observedGeneration": observed, **status},
    }


def seen(b: dict[str, Any]) -> Candidate:
    found = candidate(b)
    assert found is not None
    return found


def test_a_new_rollout_arrives_at_its_creation_ordered_within_the_second_by_queuing() -> None:
    c = seen(body("b", "Queued", queuedAt="2026-12-07T10:00:00.400000Z"))
    assert c.arrival == ("2026-12-07T10:00:00Z", "2026-12-07T10:00:00.400000Z", "b")
    fresh = seen({**body("n", "Pending"), "status": {}})
    assert fresh.applied == "2026-12-07T10:00:00Z" and fresh.queued_at == UNSEEN


def test_an_edited_rollout_arrives_when_its_edit_was_seen() -> None:
    edited = body(
        "a",
        "Queued",
        created="2026-12-07T09:00:00Z",
        versionSince="2026-12-07T10:00:00.700000Z",
        queuedAt="2026-12-07T10:00:01.000000Z",
        run=2,
    )
    c = seen(edited)
    assert c.arrival == ("2026-12-07T10:00:00Z", "2026-12-07T10:00:00.700000Z", "a")
    assert c.run == 2
    unrecorded = seen(body("a", "Queued", generation=3, observedGeneration=2))
    assert unrecorded.applied == UNSEEN  # an edit not yet recorded: the latest of all


def test_queue_an_old_rollouts_edit_waits_behind_a_rollout_applied_before_it() -> None:
    """a (created at 9:00) runs; b is applied at 10:00:00.4 and waits; a's image is
    edited at 10:00:00.7: once a's run ends, b goes first, then a's run 2."""
    b = seen(body("b", "Queued", queuedAt="2026-12-07T10:00:00.400000Z"))
    a_run2 = seen(
        body(
            "a",
            "Queued",
            created="2026-12-07T09:00:00Z",
            versionSince="2026-12-07T10:00:00.700000Z",
            queuedAt="2026-12-07T10:00:02.000000Z",
            run=2,
        )
    )
    assert [c.name for c in queue.order([a_run2, b], None)] == ["b", "a"]
    assert queue.view(b, [a_run2, b], None, lock_free=True).may_acquire
    assert not queue.view(a_run2, [a_run2, b], None, lock_free=True).may_acquire


def test_supersede_the_next_run_of_a_running_rollout_supersedes_an_older_waiter() -> None:
    """Under Supersede, b (3.0) waits while a runs; a is edited to 4.0 after b was
    applied: b is superseded at once, whatever the moment a's run ends, so 4.0 (the
    last applied) is what ends on the target."""
    b = seen(body("b", "Queued", policy="Supersede", queuedAt="2026-12-07T10:00:00.400000Z"))
    a = seen(
        body(
            "a",
            "CleaningUp",
            created="2026-12-07T09:00:00Z",
            policy="Supersede",
            nextVersionSince="2026-12-07T10:00:00.700000Z",
        )
    )
    assert queue.newest_waiting([a, b]) == a
    view = queue.view(b, [a, b], a.uid, lock_free=False)
    assert view.superseded_by == "a"


def test_supersede_a_waiter_applied_after_the_edit_is_the_newest() -> None:
    b = seen(body("b", "Queued", policy="Supersede", queuedAt="2026-12-07T10:00:01.400000Z"))
    a = seen(
        body(
            "a",
            "Progressing",
            created="2026-12-07T09:00:00Z",
            policy="Supersede",
            nextVersionSince="2026-12-07T10:00:00.700000Z",
        )
    )
    assert queue.newest_waiting([a, b]) == b
    assert queue.view(b, [a, b], a.uid, lock_free=False).superseded_by is None


def test_an_ended_rollout_edited_as_its_run_ended_supersedes_an_older_waiter() -> None:
    """The edit came while a's run was ending (its outcome already decided): a ends
    Succeeded with the edit recorded, and its next run is about to start. b, applied
    before the edit, is superseded now, not after it took the lock."""
    ended = Candidate(
        name="a",
        uid="uid-a",
        applied="2026-12-07T09:00:00Z",
        phase=Phase.SUCCEEDED,
        policy=ConcurrencyPolicy.SUPERSEDE,
        next_applied="2026-12-07T10:00:00.700000Z",
    )
    b = seen(body("b", "Queued", policy="Supersede", queuedAt="2026-12-07T10:00:00.400000Z"))
    assert ended.next_arrival == ("2026-12-07T10:00:00Z", "2026-12-07T10:00:00.700000Z", "a")
    assert queue.newest_waiting([ended, b]) == ended
    view = queue.view(b, [ended, b], None, lock_free=True)
    assert view.superseded_by == "a" and not view.may_acquire
    deleting = Candidate(
        name="a",
        uid="uid-a",
        applied="2026-12-07T09:00:00Z",
        phase=Phase.SUCCEEDED,
        deleting=True,
        next_applied="2026-12-07T10:00:00.700000Z",
    )
    assert queue.newest_waiting([deleting, b]) == b  # a rollout going away runs no more


def test_a_previous_runs_leftover_test_job_is_recovered_before_the_run_starts() -> None:
    """A holder that died mid-test leaves its test Job: a run's own cleanup deletes only
    its own run's Jobs, so the recovery before the next run starts deletes it, and that
    run's cleanup later finds nothing of another run's to back off on."""
    left = "web-v1-x-r1-smoke"
    sim = Sim(make_spec(), World(recovered_from="web-v1", jobs={left: JobView(left)}))
    sim.tick()  # Pending -> Queued
    result = sim.tick()
    assert sim.phase() == Phase.QUEUED and "recovery" in (sim.status.message or "")
    assert [type(a) for a in effects(result.actions)] == [DeleteCanaryObjects]
    sim.run_until(Phase.PROGRESSING)
    assert left not in sim.world.jobs
