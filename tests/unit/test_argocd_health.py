"""The Argo CD health check (manifests/argocd/health.lua) run by a Lua 5.1 interpreter,
the dialect of Argo CD's gopher-lua, on CanaryRollout bodies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

lua51 = pytest.importorskip("lupa.lua51")

ARGOCD = Path(__file__).resolve().parents[2] / "manifests" / "argocd"
SCRIPT = (ARGOCD / "health.lua").read_text()


def health(obj: dict[str, Any]) -> tuple[str, str]:
    runtime = lua51.LuaRuntime()
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    result = runtime.execute(SCRIPT)
    return str(result["status"]), str(result["message"])


def rollout(
    phase: str | None, generation: int = 1, observed: int = 1, **status: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": "web", "generation": generation}}
    if phase is not None:
        body["status"] = {
            "phase": phase,
            "observedGeneration": observed,
            "run": 1,
            "message": f"{phase} message",
            **status,
        }
    return body


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ("Pending", "Progressing"),
        ("Queued", "Progressing"),
        ("Progressing", "Progressing"),
        ("Paused", "Suspended"),
        ("CleaningUp", "Progressing"),
        ("Succeeded", "Healthy"),
        ("Superseded", "Healthy"),
        ("Failed", "Degraded"),
        ("Aborted", "Degraded"),
        ("Whatever", "Unknown"),
    ],
)
def test_phase_maps_to_health(phase: str, expected: str) -> None:
    status, message = health(rollout(phase))
    assert status == expected
    assert message == f"{phase} message"


def test_no_status_yet_is_progressing() -> None:
    assert health(rollout(None))[0] == "Progressing"


def test_a_spec_the_operator_has_not_seen_is_progressing() -> None:
    status, message = health(rollout("Succeeded", generation=3, observed=2))
    assert status == "Progressing"
    assert "generation 3" in message


def test_conditions_carry_the_observed_generation() -> None:
    body = rollout(
        "Aborted",
        generation=2,
        observed=1,
        conditions=[{"type": "Failed", "status": "True", "observedGeneration": 2}],
    )
    assert health(body)[0] == "Degraded"


def test_blocked_cleanup_is_degraded() -> None:
    body = rollout("CleaningUp", cleanup={"attempts": 3, "lastError": "route unreachable"})
    assert health(body)[0] == "Degraded"


def test_pending_retry_is_progressing() -> None:
    body = rollout("Failed")
    body["metadata"]["annotations"] = {"canary-operator.dev/retry": "2"}
    assert health(body) == ("Progressing", "Retry requested: run 2 is starting")


def test_configmap_patch_embeds_the_same_script() -> None:
    patch = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text())
    embedded = patch["data"]["resource.customizations.health.canary-operator.dev_CanaryRollout"]
    assert embedded.strip() == SCRIPT.strip()
