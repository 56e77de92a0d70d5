"""`kubectl canary logs`: what it prints from a rollout's status."""

from __future__ import annotations

from typing import Any

import pytest

from canary_operator.cli.client import CliError
from canary_operator.cli.commands_view import render_logs
from canary_operator.cli.kubectl_canary import build_parser


def body(steps: list[dict[str, Any]], run: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": "web-v2"}, "status": {"run": run, "steps": steps}}


FAILED = {
    "name": "smoke",
    "phase": "Failed",
    "message": "Job web-s2 failed: BackoffLimitExceeded",
    "job": "web-s2",
    "logs": [
        {"pod": "web-s2-abc", "container": "t", "tail": "line 1\nboom\n", "truncated": True},
        {"pod": "web-s2-abc", "container": "sidecar", "error": "container not found"},
    ],
}
GROUP = {
    "name": "checks",
    "phase": "Failed",
    "children": [
        {"name": "ok", "phase": "Succeeded"},
        {**FAILED, "name": "api", "job": "web-s3-2"},
    ],
}


def test_prints_each_tail_under_its_step() -> None:
    lines = render_logs(body([{"name": "canary", "phase": "Succeeded"}, FAILED]))
    assert lines == [
        "step 2 (smoke) Failed: Job web-s2 failed: BackoffLimitExceeded",
        "--- pod web-s2-abc, container t (log tail, earlier lines cut) ---",
        "line 1",
        "boom",
        "--- pod web-s2-abc, container sidecar: logs unavailable: container not found",
    ]


def test_selects_a_step_by_number_or_name_including_parallel_items() -> None:
    rollout = body([{"name": "canary", "phase": "Succeeded"}, FAILED, GROUP])
    assert render_logs(rollout, "3")[0].startswith("step 3.2 (api) Failed")
    assert render_logs(rollout, "3.2") == render_logs(rollout, "api")
    assert render_logs(rollout, "smoke")[0].startswith("step 2 (smoke)")
    assert render_logs(rollout, "1") == ["no log tails recorded: no test Job of step 1 failed"]


def test_says_so_when_nothing_failed_and_refuses_an_unknown_step() -> None:
    assert render_logs(body([{"name": "canary", "phase": "Succeeded"}], run=3)) == [
        "no log tails recorded: no test Job of run 3 failed"
    ]
    with pytest.raises(CliError, match="has no step '7'"):
        render_logs(body([FAILED]), "7")


def test_the_command_takes_a_name_and_an_optional_step() -> None:
    args = build_parser().parse_args(["logs", "web-v2", "2"])
    assert (args.name, args.step) == ("web-v2", "2")
    assert build_parser().parse_args(["logs", "web-v2"]).step is None
