"""Read-only views of a CanaryRollout body for its users (plugin, waiter, status endpoint).

Pure functions over the raw dict the API returns, so every surface answers the same
questions the same way: has the operator seen the current spec, is this run over,
and how did it end.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself is not imported on the fast path
if TYPE_CHECKING:
    from typing import Any

    JsonObj = dict[str, Any]

# Spelled out rather than imported from api.models and engine.machine: this module is
# on the plugin's fast path (`kubectl canary list`), which must not pay for importing
# pydantic. tests/unit/test_plugin_fast.py checks they equal the originals.
RESUME_ANNOTATION = "canary-operator.dev/resume"
RETRY_ANNOTATION = "canary-operator.dev/retry"
PROMOTE_ANNOTATION = "canary-operator.dev/promote"
RESET_LABEL = "canary-operator.dev/reset"
UNDO_LABEL = "canary-operator.dev/undo"  # = "true": an undo rollout (kubectl canary undo)
TERMINAL = frozenset({"Succeeded", "Failed", "Aborted", "Superseded"})

__all__ = [
    "PROMOTE_ANNOTATION",
    "RESET_LABEL",
    "RESUME_ANNOTATION",
    "RETRY_ANNOTATION",
    "TERMINAL",
    "UNDO_LABEL",
    "effective_phase",
    "observed_generation",
    "outcome_properties",
    "retry_pending",
    "settled",
]


def _status(body: JsonObj) -> JsonObj:
    status: JsonObj = body.get("status") or {}
    return status


def observed_generation(body: JsonObj) -> int:
    """The newest generation the operator has acted on.

    `status.observedGeneration` is set when a run starts; the conditions carry the
    generation of every later decision (an abort, a pause, the end of a run)."""
    status = _status(body)
    seen = [int(status.get("observedGeneration") or 0)]
    seen += [int(c.get("observedGeneration") or 0) for c in status.get("conditions") or []]
    return max(seen)


def retry_pending(body: JsonObj) -> bool:
    """A retry was asked for (annotation) and the operator has not started it yet."""
    annotations = body.get("metadata", {}).get("annotations") or {}
    retry = annotations.get(RETRY_ANNOTATION)
    run = _status(body).get("run") or 0
    # The operator honours retry=N only for N above the current run (engine/machine.py).
    return (
        retry is not None
        and retry.isascii()
        and retry.isdigit()
        and int(retry) > int(run)
        and _status(body).get("phase") in TERMINAL
    )


def effective_phase(body: JsonObj) -> str:
    """The phase of the *current* spec: `Pending` until the operator has seen it."""
    generation = int(body.get("metadata", {}).get("generation") or 1)
    if observed_generation(body) < generation or retry_pending(body):
        return "Pending"
    return str(_status(body).get("phase") or "Pending")


def settled(body: JsonObj) -> bool:
    """The current spec's run is over (a terminal phase the operator reached for it)."""
    return effective_phase(body) in TERMINAL


def outcome_properties(body: JsonObj) -> dict[str, str]:
    """How the run ended, as flat strings (Spinnaker properties, webhook JSON)."""
    status = _status(body)
    outcome = status.get("outcome") or {}
    failed = outcome.get("failedStep")
    failed_name = ""
    steps = status.get("steps") or []
    if isinstance(failed, int) and 0 < failed <= len(steps):
        failed_name = str(steps[failed - 1].get("name") or "")
    return {
        "PHASE": effective_phase(body),
        "REASON": str(outcome.get("result") or ""),
        "FAILED_STEP": str(failed or ""),
        "FAILED_STEP_NAME": failed_name,
        "MESSAGE": str(outcome.get("message") or status.get("message") or "").replace("\n", " "),
        "RUN": str(status.get("run") or ""),
    }
