"""The Argo CD health check and resource actions for CanaryRollout, run in Argo CD's
own Lua sandbox: gopher-lua with only the libraries argo-cd's util/lua/lua.go
(VM.runLua) opens for argocd-cm scripts (package, base, table, a safe os; no
string or math), built from Go modules by tests/harness/argocd_lua.py.

Bodies are built from the operator's own status model (dump_status), so the
field names the scripts read are the ones the operator writes. Action results
are turned into the merge patch Argo CD sends (argo-cd server/application:
jsonpatch.CreateMergePatch of the live and the returned object), and the tests
assert that exact patch; e2e/test_argocd_actions.py applies those patches to
rollouts on a real API server and watches the operator act on them."""

from __future__ import annotations

import copy
import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from canary_operator.api.models import (
    CanaryRolloutStatus,
    CleanupStatus,
    Condition,
    Phase,
    dump_status,
)
from canary_operator.engine.annotations import (
    PROMOTE_ANNOTATION,
    RESUME_ANNOTATION,
    RETRY_ANNOTATION,
)
from canary_operator.rollout_view import effective_phase, retry_pending
from tests.harness import argocd_lua

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "manifests" / "argocd"
SOURCES = ARGOCD / "canary-operator.dev" / "CanaryRollout"
HEALTH = (SOURCES / "health.lua").read_text()
DISCOVERY = (SOURCES / "actions" / "discovery.lua").read_text()
ACTIONS = {
    name: (SOURCES / "actions" / name / "action.lua").read_text()
    for name in ("resume", "abort", "promote", "retry")
}
# gitops-engine's health codes; Argo CD turns anything else into Unknown.
HEALTH_CODES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
T = "2026-01-01T00:00:00Z"

STEPS: list[dict[str, Any]] = [
    {"name": "start", "canary": {"replicas": 1}},
    {"name": "hold", "pause": {}},
    {"name": "soak", "pause": {"duration": "5m"}},
    {"name": "checks", "parallel": [{"name": "wait", "pause": {}}, {"name": "t", "test": {}}]},
    {"promote": {}},
]


def condition(type_: str, status: str, reason: str, generation: int = 1) -> Condition:
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        last_transition_time=T,
        observed_generation=generation,
    )


def rollout(
    status: CanaryRolloutStatus | None,
    generation: int = 1,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "canary-operator.dev/v1alpha1",
        "kind": "CanaryRollout",
        "metadata": {"name": "web-v001", "namespace": "apps", "generation": generation},
        "spec": {"target": {"deployment": "web"}, "steps": copy.deepcopy(STEPS), **spec},
    }
    if annotations:
        body["metadata"]["annotations"] = annotations
    if status is not None:
        body["status"] = dump_status(status)
    return body


def status(phase: Phase, observed: int = 1, run: int = 1, **fields: Any) -> CanaryRolloutStatus:
    return CanaryRolloutStatus(
        phase=phase, observed_generation=observed, run=run, message=f"{phase} message", **fields
    )


def health(body: dict[str, Any]) -> tuple[str, str]:
    result = argocd_lua.run(HEALTH, body)
    assert result["status"] in HEALTH_CODES, result
    return str(result["status"]), str(result.get("message", ""))


# ------------------------------------------------------------------ the sandbox


def test_the_sandbox_has_no_string_library() -> None:
    """What broke the previous health.lua: Argo CD opens no string library for
    argocd-cm scripts unless useOpenLibs is set."""
    script = 'return {status = string.match("12", "^%d+$")}'
    with pytest.raises(argocd_lua.LuaError, match="non-table object\\(nil\\) with key 'match'"):
        argocd_lua.run(script, {})
    assert argocd_lua.run(script, {}, open_libs=True) == {"status": "12"}


def test_the_sandbox_has_no_math_library_but_a_safe_os() -> None:
    with pytest.raises(argocd_lua.LuaError, match="key 'floor'"):
        argocd_lua.run("return {n = math.floor(1.5)}", {})
    with pytest.raises(argocd_lua.LuaError, match="attempt to call a non-function object"):
        argocd_lua.run('return {n = os.execute("true")}', {})
    assert isinstance(argocd_lua.run("return {t = os.time()}", {})["t"], int)


def test_a_script_must_return_a_table() -> None:
    with pytest.raises(argocd_lua.LuaError, match="expect table output"):
        argocd_lua.run('return "Healthy"', {})


# --------------------------------------------------------------------- health

PHASE_HEALTH = {
    Phase.PENDING: "Progressing",
    Phase.QUEUED: "Progressing",
    Phase.PROGRESSING: "Progressing",
    Phase.PAUSED: "Suspended",
    Phase.CLEANING_UP: "Progressing",
    Phase.SUCCEEDED: "Healthy",
    Phase.SUPERSEDED: "Healthy",
    Phase.FAILED: "Degraded",
    Phase.ABORTED: "Degraded",
}
CONDITION_SETS: dict[str, list[Condition]] = {
    "none": [],
    "progressing": [condition("Progressing", "True", "Started")],
    "paused": [condition("Paused", "True", "UserPaused")],
    "completed": [
        condition("Completed", "True", "Succeeded"),
        condition("CleanupVerified", "True", "Verified"),
    ],
    "failed": [
        condition("Failed", "True", "StepFailed"),
        condition("CleanupVerified", "True", "Verified"),
    ],
    "cleanup-blocked": [condition("CleanupVerified", "False", "CleanupBlocked")],
    "new-run": [condition("Completed", "False", "NewRun"), condition("Failed", "False", "NewRun")],
}


def test_every_phase_is_covered() -> None:
    assert set(PHASE_HEALTH) == set(Phase)


@pytest.mark.parametrize(
    ("phase", "conditions"),
    list(itertools.product(PHASE_HEALTH, CONDITION_SETS)),
    ids=lambda v: str(v),
)
def test_phase_and_conditions(phase: Phase, conditions: str) -> None:
    body = rollout(status(phase, conditions=CONDITION_SETS[conditions] or None))
    expected = PHASE_HEALTH[phase]
    if phase == Phase.CLEANING_UP and conditions == "cleanup-blocked":
        expected = "Degraded"  # the lock is kept and a human may be needed
    assert health(body) == (expected, f"{phase} message")


def test_an_unknown_phase_is_unknown() -> None:
    body = rollout(None)
    body["status"] = {"phase": "Exploded", "observedGeneration": 1, "run": 1}
    assert health(body) == ("Unknown", "Exploded")


def test_no_status_yet_is_progressing() -> None:
    assert health(rollout(None))[0] == "Progressing"


def test_a_cleanup_that_keeps_failing_is_degraded() -> None:
    stuck = status(Phase.CLEANING_UP, cleanup=CleanupStatus(attempts=3, last_error="refused"))
    assert health(rollout(stuck))[0] == "Degraded"
    fine = status(Phase.CLEANING_UP, cleanup=CleanupStatus(attempts=0))
    assert health(rollout(fine))[0] == "Progressing"


@pytest.mark.parametrize("phase", list(PHASE_HEALTH))
def test_a_generation_the_operator_has_not_seen_is_progressing(phase: Phase) -> None:
    body = rollout(status(phase, observed=2), generation=3)
    assert effective_phase(body) == "Pending"  # what the waiter and /status say
    state, message = health(body)
    assert state == "Progressing"
    assert message == "Waiting for the operator to observe generation 3"


@pytest.mark.parametrize(
    ("phase", "expected"), [(Phase.ABORTED, "Degraded"), (Phase.SUCCEEDED, "Healthy")]
)
def test_conditions_carry_the_observed_generation(phase: Phase, expected: str) -> None:
    """An abort or the end of a run is recorded in the conditions' generation, not in
    status.observedGeneration (set when a run starts)."""
    conditions = [condition("Failed" if phase == Phase.ABORTED else "Completed", "True", "x", 2)]
    body = rollout(status(phase, observed=1, conditions=conditions), generation=2)
    assert health(body)[0] == expected


@pytest.mark.parametrize(
    ("phase", "run", "retry", "expected"),
    [
        (Phase.FAILED, 1, "2", "Progressing"),  # asked for, not started yet
        (Phase.ABORTED, 1, "5", "Progressing"),
        (Phase.SUCCEEDED, 1, "2", "Progressing"),
        (Phase.FAILED, 2, "2", "Degraded"),  # run 2 started and failed
        (Phase.FAILED, 3, "2", "Degraded"),  # a stale, lower value is ignored
        (Phase.FAILED, 1, "two", "Degraded"),  # not a number: the operator ignores it
        (Phase.FAILED, 1, "1.5", "Degraded"),
        (Phase.FAILED, 1, "-2", "Degraded"),
        (Phase.PROGRESSING, 2, "2", "Progressing"),  # the retried run is running
        (Phase.PAUSED, 2, "2", "Suspended"),
    ],
)
def test_retry_requests(phase: Phase, run: int, retry: str, expected: str) -> None:
    body = rollout(status(phase, run=run), annotations={RETRY_ANNOTATION: retry})
    state, message = health(body)
    assert state == expected
    if state == "Progressing" and phase != Phase.PROGRESSING:
        assert message == f"Retry requested: run {retry} is starting"


# -------------------------------------------------------------------- actions


def discover(body: dict[str, Any]) -> set[str]:
    """The enabled actions (Argo CD lists only those and refuses disabled ones)."""
    found = argocd_lua.run(DISCOVERY, body)
    assert set(found) == set(ACTIONS)
    return {name for name, action in found.items() if not action.get("disabled", False)}


@pytest.mark.parametrize(
    ("phase", "spec", "enabled"),
    [
        (Phase.PENDING, {}, {"abort", "promote"}),
        (Phase.QUEUED, {}, {"abort", "promote"}),
        (Phase.PROGRESSING, {}, {"abort", "promote"}),
        (Phase.PROGRESSING, {"paused": True}, {"resume", "abort", "promote"}),
        (Phase.PAUSED, {}, {"resume", "abort", "promote"}),
        (Phase.PAUSED, {"abort": True}, {"resume", "promote"}),
        (Phase.CLEANING_UP, {}, {"abort"}),
        (Phase.SUCCEEDED, {}, {"retry"}),
        (Phase.FAILED, {}, {"retry"}),
        (Phase.ABORTED, {"abort": True}, {"retry"}),
        (Phase.SUPERSEDED, {}, {"retry"}),
    ],
)
def test_discovery(phase: Phase, spec: dict[str, Any], enabled: set[str]) -> None:
    assert discover(rollout(status(phase), **spec)) == enabled


def test_discovery_before_the_operator_wrote_a_status() -> None:
    assert discover(rollout(None)) == {"abort", "promote"}


def act(name: str, body: dict[str, Any]) -> dict[str, Any]:
    assert name in discover(body), f"{name} is not offered for this rollout"
    return argocd_lua.action_patch(ACTIONS[name], body)


def at_step(index: int, phase: Phase = Phase.PAUSED, run: int = 3) -> CanaryRolloutStatus:
    return status(phase, run=run, current_step=index)


def test_abort_sets_spec_abort() -> None:
    assert act("abort", rollout(at_step(0, Phase.PROGRESSING))) == {"spec": {"abort": True}}


def test_resume_releases_the_current_indefinite_pause_of_this_run() -> None:
    """resume = "<1-based step>@<run>": the operator's _resumed() matches the
    current step (0-based currentStep + 1) and the run."""
    body = rollout(at_step(1))
    assert act("resume", body) == {"metadata": {"annotations": {RESUME_ANNOTATION: "2@3"}}}


def test_resume_releases_a_pause_inside_a_parallel_step() -> None:
    body = rollout(at_step(3), annotations={"team": "web"})
    assert act("resume", body) == {"metadata": {"annotations": {RESUME_ANNOTATION: "4@3"}}}


def test_resume_clears_spec_paused_and_leaves_a_timed_pause_alone() -> None:
    body = rollout(at_step(2, Phase.PROGRESSING), paused=True)
    assert act("resume", body) == {"spec": {"paused": False}}


def test_promote_names_the_current_run_and_unpauses() -> None:
    body = rollout(at_step(1), paused=True)
    assert act("promote", body) == {
        "metadata": {"annotations": {PROMOTE_ANNOTATION: "3"}},
        "spec": {"paused": False},
    }


def test_retry_asks_for_the_next_run_and_drops_a_stale_resume() -> None:
    body = rollout(
        status(Phase.ABORTED, run=3),
        annotations={RESUME_ANNOTATION: "2@3", "team": "web"},
        abort=True,
    )
    patch = act("retry", body)
    assert patch == {
        "metadata": {"annotations": {RETRY_ANNOTATION: "4", RESUME_ANNOTATION: None}},
        "spec": {"abort": False},
    }
    annotations = {"team": "web", RETRY_ANNOTATION: "4"}
    retried = rollout(status(Phase.ABORTED, run=3), annotations=annotations, abort=False)
    assert retry_pending(retried)  # the waiter and /status now wait for run 4
    assert health(retried)[0] == "Progressing"


@pytest.mark.parametrize(("retry", "pending"), [("4", True), ("3", False), ("2", False)])
def test_retry_pending_agrees_with_the_operator(retry: str, pending: bool) -> None:
    """The operator starts run N only for retry=N above the current run: a stale or
    lower value is not a retry the waiter or /status should wait for."""
    body = rollout(status(Phase.FAILED, run=3), annotations={RETRY_ANNOTATION: retry})
    assert retry_pending(body) is pending


def test_retry_of_a_rollout_without_annotations() -> None:
    patch = act("retry", rollout(status(Phase.FAILED, run=1)))
    assert patch == {"metadata": {"annotations": {RETRY_ANNOTATION: "2"}}}


# ------------------------------------------------------------- install files


def test_install_files_carry_these_scripts() -> None:
    """argocd-cm-patch.yaml, helm-values.yaml and argocd-operator-patch.yaml are
    generated from the scripts above and must not drift from them."""
    check = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "argocd-customizations.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    cm = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text())["data"]
    assert cm["resource.customizations.health.canary-operator.dev_CanaryRollout"] == HEALTH
    actions = yaml.safe_load(
        cm["resource.customizations.actions.canary-operator.dev_CanaryRollout"]
    )
    assert actions["discovery.lua"] == DISCOVERY
    assert {d["name"]: d["action.lua"] for d in actions["definitions"]} == ACTIONS
    helm = yaml.safe_load((ARGOCD / "helm-values.yaml").read_text())
    assert helm["configs"]["cm"] == cm
    operator = yaml.safe_load((ARGOCD / "argocd-operator-patch.yaml").read_text())["spec"]
    assert operator["resourceHealthChecks"] == [
        {"group": "canary-operator.dev", "kind": "CanaryRollout", "check": HEALTH}
    ]
    [action] = operator["resourceActions"]
    assert yaml.safe_load(action["action"]) == actions


def test_empty_objects_survive_an_action_only_through_argo_cds_repair() -> None:
    """gopher-json writes an empty table as []; Argo CD puts the live {} back
    (cleanReturnedObj), or every action would rewrite `pause: {}` steps."""
    body = rollout(at_step(1))
    raw = argocd_lua.run(ACTIONS["abort"], body)
    assert raw["spec"]["steps"][1]["pause"] == []
    repaired = argocd_lua.run(ACTIONS["abort"], body, action=True)
    assert repaired["spec"]["steps"][1]["pause"] == {}
