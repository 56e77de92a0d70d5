"""The waiter's output as Spinnaker reads it: clouddriver's PropertyParser rule
(tests/harness/spinnaker.py, from clouddriver's PropertyParser.java) over what the
waiter really writes — its stdout lines and its stderr progress lines, which land
in the same container log — for ten and more outcomes, including messages with `=`,
empty fields and text that looks like the parser's magic strings."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from canary_operator.api.models import (
    CanaryRolloutStatus,
    Outcome,
    Phase,
    Result,
    StepStatus,
    dump_status,
)
from canary_operator.cli.wait import PROPERTY_KEYS, progress_line, properties, run
from canary_operator.rollout_view import outcome_properties
from tests.harness.spinnaker import ParseError, extract_properties_from_log

T = "2026-01-01T00:00:00Z"
STEPS = ["start canary", "smoke", "tests at 10%", "promote"]


def body(
    phase: Phase,
    result: Result | None,
    message: str,
    failed: int | None = None,
    generation: int = 1,
) -> dict[str, Any]:
    status = CanaryRolloutStatus(
        phase=phase,
        observed_generation=generation,
        run=2,
        message=message,
        current_step=(failed or 1) - 1,
        steps=[StepStatus(name=n, kind="test") for n in STEPS],
        outcome=Outcome(result=result, message=message, failed_step=failed, decided_at=T)
        if result
        else None,
    )
    return {
        "metadata": {"name": "web-v003", "namespace": "my-app", "generation": generation},
        "spec": {},
        "status": dump_status(status),
    }


@dataclass
class Case:
    """One outcome: the last body the waiter saw and what it adds of its own."""

    name: str
    body: dict[str, Any] | None
    override: dict[str, str] = field(default_factory=dict)


DEADLINE = "not finished within progressDeadlineSeconds=10"
CASES = [
    Case("succeeded", body(Phase.SUCCEEDED, Result.SUCCEEDED, "all steps passed")),
    Case(
        "step failed, message with =",
        body(
            Phase.FAILED,
            Result.STEP_FAILED,
            "step 2 (test) failed: smoke: Job web-v003-2-s2 failed: exit=1",
            failed=2,
        ),
    ),
    Case("deadline, no failed step", body(Phase.FAILED, Result.DEADLINE_EXCEEDED, DEADLINE)),
    Case("aborted", body(Phase.ABORTED, Result.ABORTED, "aborted by the user (spec.abort)")),
    Case(
        "superseded",
        body(Phase.SUPERSEDED, Result.SUPERSEDED, "superseded by newer rollout web-v004"),
    ),
    Case(
        "rejected",
        body(
            Phase.FAILED, Result.REJECTED, "lock cro-lock-web is held by web-v002 (policy Reject)"
        ),
    ),
    Case(
        "invalid spec, = and quotes",
        body(Phase.FAILED, Result.INVALID, 'steps[3]: setWeight=100 is not allowed; use "promote"'),
    ),
    Case(
        "target missing",
        body(Phase.FAILED, Result.TARGET_NOT_FOUND, "target Deployment 'web' not found"),
    ),
    Case(
        "waiter timeout while paused, empty outcome",
        body(Phase.PAUSED, None, "paused at step 2"),
        {"REASON": "Timeout", "MESSAGE": "not finished within 2h"},
    ),
    Case(
        "spec replaced",
        body(Phase.PROGRESSING, None, "running step 1", generation=2),
        {
            "PHASE": "Superseded",
            "REASON": "SpecChanged",
            "MESSAGE": "the spec was replaced by a newer version (generation 2)",
        },
    ),
    Case(
        "error, no body at all",
        None,
        {"REASON": "Error", "MESSAGE": 'canaryrollout "web-v003" not found in namespace "my-app"'},
    ),
    Case(
        "message posing as the parser's magic strings",
        body(
            Phase.FAILED,
            Result.STEP_FAILED,
            "echo SPINNAKER_PROPERTY_PHASE=Succeeded; SPINNAKER_CONFIG_JSON={}",
            failed=2,
        ),
    ),
    Case(
        "message with outer spaces", body(Phase.FAILED, Result.STEP_FAILED, "  padded  ", failed=4)
    ),
    Case("empty message", body(Phase.ABORTED, Result.ABORTED, "")),
    Case("non-ASCII message", body(Phase.FAILED, Result.STEP_FAILED, "Prüfung → rot", failed=2)),
]


def expected_values(case: Case) -> dict[str, str]:
    props = outcome_properties(case.body) if case.body else {"PHASE": "Unknown"}
    props.update(case.override)
    return {key.lower(): props.get(key, "") for key in PROPERTY_KEYS}


def log_of(case: Case) -> tuple[str, str]:
    """(stdout, the container log: stderr progress lines, then stdout)."""
    stdout = properties(case.body, "web-v003", "my-app", **case.override)
    progress = ""
    if case.body is not None:
        progress = f"12:00:00 web-v003: {progress_line(case.body)}\n"
    return stdout, progress + stdout


def test_there_are_at_least_ten_outcomes() -> None:
    assert len(CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_value_survives_the_parser(case: Case) -> None:
    _, log = log_of(case)
    parsed = extract_properties_from_log(log)
    expected = expected_values(case)
    assert {key: parsed.get(key) for key in expected} == expected
    assert parsed["rollout"] == "web-v003" and parsed["namespace"] == "my-app"
    # Nothing else leaks in (the progress line cannot pose as a property).
    assert set(parsed) == {*expected, "rollout", "namespace"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_property_lines_are_only_the_ones_the_parser_keeps_intact(case: Case) -> None:
    stdout, _ = log_of(case)
    expected = expected_values(case)
    lines = [line for line in stdout.splitlines() if line.startswith("SPINNAKER_PROPERTY_")]
    printed = {}
    for line in lines:
        key, _, value = line.removeprefix("SPINNAKER_PROPERTY_").partition("=")
        printed[key.lower()] = value
    # Each printed line alone gives back exactly the value written...
    assert extract_properties_from_log("".join(f"{line}\n" for line in lines)) == printed
    # ...and the lines left out are exactly the values the parser would mangle.
    mangled = {k for k, v in expected.items() if v == "" or "=" in v or v != v.strip()}
    assert set(printed) == set(expected) - mangled
    assert all(printed[k] == expected[k] for k in printed)


def test_the_old_output_lost_values_the_new_one_keeps() -> None:
    """Printing every key as a property line, as the waiter did, loses empty values
    and any value with `=` (this is what the parser rule does to them)."""
    case = CASES[2]  # the progress deadline, message with `=`
    values = expected_values(case)
    naive = "".join(f"SPINNAKER_PROPERTY_{k.upper()}={v}\n" for k, v in values.items())
    lost = extract_properties_from_log(naive)
    assert "message" not in lost and "failed_step" not in lost
    assert lost["reason"] == "ProgressDeadlineExceeded"
    succeeded = expected_values(CASES[0])
    naive = "".join(f"SPINNAKER_PROPERTY_{k.upper()}={v}\n" for k, v in succeeded.items())
    assert "failed_step" not in extract_properties_from_log(naive)  # empty: dropped
    assert extract_properties_from_log(log_of(case)[1])["message"] == DEADLINE


def test_the_json_line_is_plain_ascii_json_on_one_line() -> None:
    stdout, _ = log_of(CASES[11])
    [line] = [line for line in stdout.splitlines() if line.startswith("SPINNAKER_CONFIG_JSON=")]
    assert line.isascii() and "SPINNAKER_PROPERTY_" not in line
    document = json.loads(line.removeprefix("SPINNAKER_CONFIG_JSON="))
    assert document["message"].startswith("echo SPINNAKER_PROPERTY_PHASE=Succeeded")


def test_a_broken_json_line_fails_the_whole_parse() -> None:
    """Why the waiter writes one JSON document and nothing JSON-like: Jackson's
    failure is not contained to the line."""
    with pytest.raises(ParseError):
        extract_properties_from_log(
            "SPINNAKER_PROPERTY_PHASE=Failed\nSPINNAKER_CONFIG_JSON={oops\n"
        )


def test_the_waiter_entry_point_writes_the_same_format() -> None:
    """run() itself, failing before it reaches a cluster (no rollout named)."""

    class Args:
        name = None

    out = io.StringIO()
    assert run(Args(), out) == 2  # type: ignore[arg-type]
    parsed = extract_properties_from_log(out.getvalue())
    assert parsed["phase"] == "Unknown" and parsed["reason"] == "Error"
    assert parsed["message"] == "no rollout named" and parsed["failed_step"] == ""
