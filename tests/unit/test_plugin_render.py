"""What `kubectl canary status` and the waiter print, from rollout bodies (no cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from canary_operator.cli.kubectl_canary import build_parser
from canary_operator.cli.status_view import render_status
from canary_operator.cli.wait import properties, rollout_name
from canary_operator.rollout_view import effective_phase, settled

SPEC: dict[str, Any] = {
    "target": {"deployment": "web", "service": "web"},
    "images": [{"container": "app", "image": "web:2"}],
    "steps": [
        {"name": "start canary", "canary": {"replicas": 2}},
        {
            "name": "checks",
            "parallel": [
                {"name": "smoke", "test": {"job": {"spec": {"template": {"spec": {}}}}}},
                {"name": "judge", "analysis": {}},
            ],
        },
        {"setWeight": 10},
        {"pause": {"duration": "5m"}},
        {"promote": {}},
    ],
}


def body(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "web-v002", "namespace": "apps", "generation": 1},
        "spec": SPEC,
        "status": {"observedGeneration": 1, "run": 1, **status},
    }


RUNNING = body(
    phase="Progressing",
    currentStep=1,
    stepLabel="2/5 checks",
    weight=0,
    queue={"lock": "cro-lock-web", "holder": "web-v002", "position": 0, "waiting": 1},
    steps=[
        {"name": "start canary", "kind": "canary", "phase": "Succeeded", "message": "2 ready"},
        {
            "name": "checks",
            "kind": "parallel",
            "phase": "Running",
            "children": [
                {"name": "smoke", "kind": "test", "phase": "Failed", "message": "exit 1"},
                {
                    "name": "judge",
                    "kind": "analysis",
                    "phase": "Running",
                    "analysis": {
                        "phase": "Running",
                        "score": 62.5,
                        "classification": "Marginal",
                        "metrics": [
                            {
                                "name": "errors",
                                "verdict": "High",
                                "ratio": 1.8,
                                "lowerCI": 0.1,
                                "upperCI": 0.4,
                            },
                            {
                                "name": "latency",
                                "verdict": "Successful",
                                "successful": 3,
                                "failed": 0,
                                "lastValue": 0.21,
                            },
                        ],
                    },
                },
            ],
        },
        {"name": "setWeight", "kind": "setWeight", "phase": "Pending"},
        {"name": "pause", "kind": "pause", "phase": "Pending"},
        {"name": "promote", "kind": "promote", "phase": "Pending"},
    ],
)


def test_status_marks_steps_and_parallel_items() -> None:
    text = render_status(RUNNING, events=[])
    lines = [line.strip() for line in text.splitlines()]
    assert any(
        line.startswith("[x]  1. start canary") and "canary 2 pods" in line for line in lines
    )
    assert any(line.startswith("[>]  2. checks") and "parallel (2)" in line for line in lines)
    assert any(line.startswith("[!] smoke") and "exit 1" in line for line in lines)
    assert any(line.startswith("[>] judge") for line in lines)
    assert any(line.startswith("[ ]  3. setWeight") and "setWeight 10%" in line for line in lines)
    assert any(line.startswith("[ ]  4. pause") and "pause 5m" in line for line in lines)
    assert "Queue:       holding cro-lock-web (1 waiting)" in text
    assert "Weight:      0% to canary" in text
    assert "Events (last 0 of 0):" in text


def test_status_shows_analysis_verdicts() -> None:
    text = render_status(RUNNING)
    assert "step 2 judge: Running  score 62.5 (Marginal)" in text
    errors = next(line for line in text.splitlines() if line.strip().startswith("errors"))
    assert "High" in errors and "ratio 1.8" in errors and "CI [0.1, 0.4]" in errors
    latency = next(line for line in text.splitlines() if line.strip().startswith("latency"))
    assert "3 ok, 0 failed" in latency and "last 0.21" in latency


def test_status_of_a_waiting_rollout() -> None:
    waiting = body(
        phase="Queued",
        queue={
            "lock": "cro-lock-web",
            "holder": "web-v001",
            "holderPhase": "CleaningUp",
            "position": 2,
            "waiting": 3,
        },
    )
    text = render_status(waiting)
    assert "position 2 of 3 for cro-lock-web, held by web-v001 (CleaningUp)" in text
    assert text.count("[ ]") == 1 + 5 + 2  # the legend, five steps, two parallel items


def test_status_of_a_failed_rollout_names_the_step() -> None:
    failed = body(
        phase="Failed",
        outcome={"result": "StepFailed", "message": "smoke failed", "failedStep": 2},
        steps=[
            {"name": "start canary", "kind": "canary", "phase": "Succeeded"},
            {"name": "checks", "kind": "parallel", "phase": "Failed"},
        ],
    )
    text = render_status(failed)
    assert "Outcome:     StepFailed, failed step 2: smoke failed" in text
    assert "Queue:       -" in text
    props = properties(failed)
    assert "SPINNAKER_PROPERTY_FAILED_STEP=2\n" in props
    assert "SPINNAKER_PROPERTY_FAILED_STEP_NAME=checks\n" in props


def test_unseen_generation_is_pending_everywhere() -> None:
    changed = body(phase="Succeeded")
    changed["metadata"]["generation"] = 2
    assert effective_phase(changed) == "Pending"
    assert not settled(changed)
    assert "Pending (operator has not seen the spec)" in render_status(changed)
    assert properties(changed).startswith("SPINNAKER_PROPERTY_PHASE=Pending\n")


@pytest.mark.parametrize(
    ("given", "name"),
    [
        ("web-v001", "web-v001"),
        ("canaryrollout/web-v001", "web-v001"),
        ("canaryRollout web-v001", "web-v001"),
        ("canaryrollouts.canary-operator.dev/web-v001", "web-v001"),
        (" cro/web ", "web"),
    ],
)
def test_waiter_accepts_spinnaker_manifest_names(given: str, name: str) -> None:
    assert rollout_name(given) == name


def test_connection_flags_work_before_and_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["-n", "apps", "--context", "prod", "status", "web"])
    after = parser.parse_args(["status", "web", "-n", "apps", "--context", "prod"])
    for args in (before, after):
        assert (args.namespace, args.context, args.name) == ("apps", "prod", "web")
    waiting = parser.parse_args(["wait", "web", "-n", "apps", "--timeout", "5m"])
    assert (waiting.namespace, waiting.timeout) == ("apps", "5m")


def test_status_without_events_access_says_so_and_still_shows_the_status() -> None:
    text = render_status(RUNNING, None, events_unavailable="permission denied: events is forbidden")
    assert "Events:      unavailable (permission denied: events is forbidden)" in text
    assert "Events (last" not in text
    assert "Queue:       holding cro-lock-web (1 waiting)" in text
    assert "Weight:      0% to canary" in text


def test_status_shows_the_live_version_failed_best_effort_steps_and_event_counts() -> None:
    ended = body(
        phase="Succeeded",
        live={
            "rollout": "web-b",
            "run": 1,
            "version": "app=registry.example.com/web:4.0",
            "label": "web:4.0",
            "promotedAt": "2024-05-01T12:40:00.000000Z",
            "thisRollout": False,
            "drifted": "app=registry.example.com/web:1.0",
        },
        cleanup={
            "stage": "Done",
            "attempts": 0,
            "failedSteps": [
                {"step": 1, "name": "notify", "message": "HTTP 400", "at": "2024-05-01T12:41:00Z"}
            ],
        },
    )
    events = [
        {
            "type": "Warning",
            "reason": "CleanupBlocked",
            "message": "notify failed",
            "count": 5,
            "lastTimestamp": "2024-05-01T12:41:09Z",
        }
    ]
    text = render_status(ended, events)
    assert (
        "Live:        app=registry.example.com/web:4.0  promoted by web-b run 1 at "
        "2024-05-01T12:40:00.000000Z; DRIFTED: the target now runs "
        "app=registry.example.com/web:1.0"
    ) in text
    assert "best-effort step 1 notify failed: HTTP 400" in text
    assert "notify failed (x5)" in text
    assert "Live:        - (no promotion" in render_status(body(phase="Queued"))
