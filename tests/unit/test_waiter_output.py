"""The waiter's output as Spinnaker reads it: clouddriver's PropertyParser rule
(tests/harness/spinnaker.py, from clouddriver's PropertyParser.java) over what the
waiter really writes — its stdout lines and its stderr progress lines, which land
in the same container log — for ten and more outcomes, including messages with `=`,
empty fields and text that looks like the parser's magic strings; and what each run
deployed (its images per container, its fingerprint) and, after a success, the live
version, including images and container names the parser would mangle."""

from __future__ import annotations

import asyncio
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from canary_operator.api.models import (
    CanaryRolloutSpec,
    CanaryRolloutStatus,
    LiveVersion,
    Outcome,
    Phase,
    Result,
    StepStatus,
    dump_status,
)
from canary_operator.cli import client, wait
from canary_operator.cli.wait import PROPERTY_KEYS, progress_line, properties, run
from canary_operator.rollout_view import outcome_properties
from tests.harness.spinnaker import ParseError, extract_properties_from_log

T = "2026-01-01T00:00:00Z"
STEPS = ["start canary", "smoke", "tests at 10%", "promote"]
IMAGE = "registry.example.com/web:2.0"
OLD_IMAGE = "registry.example.com/web:1.0"


def spec_of(**new_version: Any) -> dict[str, Any]:
    """A rollout spec as the API returns it, with `images` or `template`."""
    steps = [{"name": "start canary", "canary": {"replicas": 1}}, {"promote": {}}]
    return {"target": {"deployment": "web"}, "steps": steps, **new_version}


SPEC = spec_of(images=[{"container": "web", "image": IMAGE}])


def fingerprint(spec: dict[str, Any]) -> str:
    """What the operator records as status.fingerprint (and in the promotion record)."""
    return CanaryRolloutSpec.model_validate(spec).run_fingerprint()


NO_LIVE = {"live_version": "", "live_label": "", "live_rollout": "", "live_run": ""}
# What a run of SPEC deployed, written out by hand.
WEB2 = {
    "version": f"web={IMAGE}",
    "version_label": "web:2.0",
    "fingerprint": fingerprint(SPEC),
    "image_web": IMAGE,
}
NOTHING = {"version": "", "version_label": "", "fingerprint": ""}
LIVE_WEB2 = LiveVersion(
    rollout="web-v003", uid="u-3", run=2, version=f"web={IMAGE}", label="web:2.0"
)
LIVE_WEB1 = LiveVersion(
    rollout="web-v002", uid="u-2", run=1, version=f"web={OLD_IMAGE}", label="web:1.0"
)


def body(
    phase: Phase,
    result: Result | None,
    message: str,
    failed: int | None = None,
    generation: int = 1,
    spec: dict[str, Any] | None = None,
    live: LiveVersion | None = None,
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
        live=live,
    )
    return {
        "metadata": {"name": "web-v003", "namespace": "my-app", "generation": generation},
        "spec": SPEC if spec is None else spec,
        "status": dump_status(status),
    }


@dataclass
class Case:
    """One outcome: the last body the waiter saw and what it adds of its own, and
    what the outputs must say it deployed (and, after a success, what is live)."""

    name: str
    body: dict[str, Any] | None
    override: dict[str, str] = field(default_factory=dict)
    deployed: dict[str, str] = field(default_factory=lambda: {**WEB2, **NO_LIVE})


TEMPLATE = spec_of(
    template={
        "metadata": {"labels": {"app": "web"}},
        "spec": {
            "containers": [
                {"name": "web", "image": "registry.example.com/web:3.0"},
                {"name": "log-shipper", "image": "registry.example.com/ship:1.4"},
                # Not a Kubernetes container name: no key of its own, still in VERSION.
                {"name": "Sidecar", "image": "busybox:1.36"},
            ]
        },
    }
)
MANGLED = spec_of(
    images=[
        {"container": "web", "image": "registry.example.com/web:2.0\nSPINNAKER_PROPERTY_X"},
        {"container": "cfg", "image": "registry.example.com/cfg:v=2"},
        {"container": "pad", "image": " registry.example.com/pad:1 "},
    ]
)


DEADLINE = "not finished within progressDeadlineSeconds=10"
CASES = [
    Case(
        "succeeded, the live version",
        body(Phase.SUCCEEDED, Result.SUCCEEDED, "all steps passed", live=LIVE_WEB2),
        deployed={
            **WEB2,
            "live_version": f"web={IMAGE}",
            "live_label": "web:2.0",
            "live_rollout": "web-v003",
            "live_run": "2",
        },
    ),
    Case(
        "succeeded, the target drifted since",
        body(
            Phase.SUCCEEDED,
            Result.SUCCEEDED,
            "all steps passed",
            live=LIVE_WEB2.model_copy(
                update={"label": "web:2.0 (drifted)", "drifted": f"web={OLD_IMAGE}"}
            ),
        ),
        deployed={
            **WEB2,
            "live_version": f"web={IMAGE}",
            "live_label": "web:2.0 (drifted)",
            "live_rollout": "web-v003",
            "live_run": "2",
        },
    ),
    Case(
        "failed: the live version (the old one) is not reported",
        body(Phase.FAILED, Result.STEP_FAILED, "smoke failed", failed=2, live=LIVE_WEB1),
    ),
    Case(
        "a template with three containers",
        body(Phase.SUCCEEDED, Result.SUCCEEDED, "all steps passed", spec=TEMPLATE),
        deployed={
            "version": "Sidecar=busybox:1.36,log-shipper=registry.example.com/ship:1.4,"
            "web=registry.example.com/web:3.0",
            "version_label": "busybox:1.36,ship:1.4,web:3.0",
            "fingerprint": fingerprint(TEMPLATE),
            "image_log-shipper": "registry.example.com/ship:1.4",
            "image_web": "registry.example.com/web:3.0",
            **NO_LIVE,  # status.live not recorded (yet)
        },
    ),
    Case(
        "images with a newline, `=` and outer spaces",
        body(Phase.FAILED, Result.INVALID, "image refused", spec=MANGLED),
        deployed={
            "version": "cfg=registry.example.com/cfg:v=2,pad= registry.example.com/pad:1 ,"
            "web=registry.example.com/web:2.0\nSPINNAKER_PROPERTY_X",
            "version_label": "cfg:v=2,pad:1 ,web:2.0\nSPINNAKER_PROPERTY_X",
            "fingerprint": fingerprint(MANGLED),
            "image_cfg": "registry.example.com/cfg:v=2",
            "image_pad": " registry.example.com/pad:1 ",
            "image_web": "registry.example.com/web:2.0\nSPINNAKER_PROPERTY_X",
            **NO_LIVE,
        },
    ),
    Case(
        "a spec the model refuses: its images, no fingerprint",
        body(
            Phase.FAILED,
            Result.INVALID,
            "spec.steps: field required",
            spec={"images": [{"container": "web", "image": IMAGE}]},
        ),
        deployed={**WEB2, "fingerprint": "", **NO_LIVE},
    ),
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
        deployed={**NOTHING, **NO_LIVE},
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


def case_named(name: str) -> Case:
    [case] = [c for c in CASES if c.name == name]
    return case


def expected_values(case: Case) -> dict[str, str]:
    props = outcome_properties(case.body) if case.body else {"PHASE": "Unknown"}
    props.update(case.override)
    return {**{key.lower(): props.get(key, "") for key in PROPERTY_KEYS}, **case.deployed}


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
    # ...and the lines left out are exactly the values the parser would mangle (a
    # newline would also end the line early).
    mangled = {k for k, v in expected.items() if v == "" or "=" in v or "\n" in v or v != v.strip()}
    assert set(printed) == set(expected) - mangled
    assert all(printed[k] == expected[k] for k in printed)


def test_the_old_output_lost_values_the_new_one_keeps() -> None:
    """Printing every key as a property line, as the waiter did, loses empty values
    and any value with `=` (this is what the parser rule does to them)."""
    case = case_named("deadline, no failed step")  # message with `=`
    values = expected_values(case)
    naive = "".join(f"SPINNAKER_PROPERTY_{k.upper()}={v}\n" for k, v in values.items())
    lost = extract_properties_from_log(naive)
    assert "message" not in lost and "failed_step" not in lost
    assert lost["reason"] == "ProgressDeadlineExceeded"
    succeeded = expected_values(case_named("succeeded, the live version"))
    naive = "".join(f"SPINNAKER_PROPERTY_{k.upper()}={v}\n" for k, v in succeeded.items())
    assert "failed_step" not in extract_properties_from_log(naive)  # empty: dropped
    assert extract_properties_from_log(log_of(case)[1])["message"] == DEADLINE


def test_the_json_line_is_plain_ascii_json_on_one_line() -> None:
    stdout, _ = log_of(case_named("message posing as the parser's magic strings"))
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


KEY = re.compile(r"[a-z0-9_-]+")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_output_is_one_line_under_a_key_both_forms_spell_alike(case: Case) -> None:
    """Each line of stdout is one property line or the JSON line (no value breaks a
    line), and every key is lower-case letters, digits, `_` and `-`: the parser
    lower-cases a property line's key, so its JSON twin must already be lower-case."""
    stdout, _ = log_of(case)
    assert stdout.endswith("\n")
    lines = stdout.removesuffix("\n").split("\n")
    assert all(line.startswith("SPINNAKER_PROPERTY_") for line in lines[:-1])
    assert lines[-1].startswith("SPINNAKER_CONFIG_JSON=")
    document = json.loads(lines[-1].removeprefix("SPINNAKER_CONFIG_JSON="))
    assert all(KEY.fullmatch(key) for key in document), document
    for line in lines[:-1]:
        key = line.removeprefix("SPINNAKER_PROPERTY_").partition("=")[0]
        assert key == key.upper() and key.lower() in document


def test_the_images_of_a_template_and_of_containers_without_a_key() -> None:
    """A container whose name is no Kubernetes name gets no key of its own (the
    parser would lower-case it into another key than the JSON line's)."""
    parsed = extract_properties_from_log(log_of(case_named("a template with three containers"))[1])
    assert {k for k in parsed if k.startswith("image_")} == {"image_web", "image_log-shipper"}
    assert "Sidecar=busybox:1.36" in parsed["version"]


def following(*bodies: dict[str, Any]) -> Any:
    """A stand-in for client.follow: the rollout as the watch would yield it."""

    async def follow(session: object, name: str, namespace: str) -> Any:
        for item in bodies:
            yield item
        await asyncio.Event().wait()  # a watch never ends by itself

    return follow


def test_a_replaced_spec_reports_the_version_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without versioned mode a newer spec replaces the one the waiter follows: the
    outputs name the version it waited for (2.0), not the newer one (3.0), and no
    live version (nothing of the waited-for run was live)."""
    paused = body(Phase.PAUSED, None, "paused at step 2")
    newer_spec = spec_of(images=[{"container": "web", "image": "registry.example.com/web:3.0"}])
    newer = body(Phase.SUCCEEDED, Result.SUCCEEDED, "all steps passed", spec=newer_spec)
    newer["metadata"]["generation"] = 2
    newer["status"]["live"] = {"rollout": "web-v003", "version": "web=x", "label": "x"}
    monkeypatch.setattr(client, "follow", following(paused, newer))
    waited = asyncio.run(wait.wait_settled(None, "web-v003", "my-app", 5, None, pin_spec=True))  # type: ignore[arg-type]
    assert waited.replaced and waited.body is newer
    assert waited.deployed == SPEC
    stdout = properties(
        waited.body, "", "", waited.deployed, PHASE="Superseded", REASON="SpecChanged"
    )
    parsed = extract_properties_from_log(stdout)
    assert {k: parsed[k] for k in WEB2} == WEB2
    assert {k: parsed[k] for k in NO_LIVE} == NO_LIVE
    # The control: the newer body's own spec names 3.0.
    assert extract_properties_from_log(properties(newer))["image_web"].endswith("web:3.0")


def test_a_settled_run_reports_its_spec_and_live_version(monkeypatch: pytest.MonkeyPatch) -> None:
    progressing = body(Phase.PROGRESSING, None, "running step 1")
    done = body(Phase.SUCCEEDED, Result.SUCCEEDED, "all steps passed", live=LIVE_WEB2)
    monkeypatch.setattr(client, "follow", following(progressing, done))
    waited = asyncio.run(wait.wait_settled(None, "web-v003", "my-app", 5, None, pin_spec=True))  # type: ignore[arg-type]
    assert waited.done and not waited.replaced
    parsed = extract_properties_from_log(properties(waited.body, "", "", waited.deployed))
    assert parsed["image_web"] == IMAGE and parsed["version"] == parsed["live_version"]
    assert parsed["live_rollout"] == "web-v003" and parsed["live_run"] == "2"
