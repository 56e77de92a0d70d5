"""A rollout's steps as the plugin shows them, read from the raw spec (so that a plugin
older or newer than the operator still shows every step). Shared by the status screen
(cli/status_view.py) and the live tree (cli/live.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from canary_operator.rollout_view import JsonObj

STEP_KINDS = (
    "canary",
    "setWeight",
    "pause",
    "test",
    "parallel",
    "analysis",
    "promote",
    "preview",
    "switch",
)


def step_kind(step: JsonObj) -> str:
    return next((k for k in STEP_KINDS if k in step), "?")


def describe_step(step: JsonObj) -> str:
    """A short text for one spec step (its kind and main parameter), from the raw spec
    so that a plugin older or newer than the operator still shows every step."""
    kind = step_kind(step)
    if kind == "canary":
        replicas = int((step["canary"] or {}).get("replicas", 1))
        return f"canary {replicas} pod{'s' if replicas != 1 else ''}"
    if kind == "setWeight":
        return f"setWeight {step['setWeight']}%"
    if kind == "pause":
        duration = (step["pause"] or {}).get("duration")
        return f"pause {duration}" if duration else "pause (until resumed)"
    if kind == "parallel":
        return f"parallel ({len(step['parallel'] or [])})"
    if kind == "test":
        return "test job" if (step["test"] or {}).get("job") else "test webhook"
    return kind


def raw_steps(body: JsonObj) -> list[JsonObj]:
    """The steps the run goes through: spec.steps, or a blue-green's as its strategy
    makes them (api/models.py blue_green_steps)."""
    spec = body.get("spec") or {}
    blue_green = (spec.get("strategy") or {}).get("blueGreen")
    if blue_green is None:
        steps: list[JsonObj] = spec.get("steps") or []
        return steps
    made: list[JsonObj] = [{"name": "preview", "preview": {}}]
    made += blue_green.get("beforeSwitch") or []
    if blue_green.get("autoPromotionEnabled") is False:
        made.append({"name": "await-switch", "pause": {}})
    made.append({"name": "switch", "switch": {}})
    made += blue_green.get("afterSwitch") or []
    made.append({"name": "promote", "promote": {}})
    return made
