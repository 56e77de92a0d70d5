"""Webhook body templates: `{{name}}` replaced by a value of the rollout's context.

Values are escaped as the inside of a JSON string (quotes, backslashes, control
characters), so `{"text": "{{message}}"}` stays valid JSON whatever the message says.
Numbers are inserted as their decimal form. An unknown name is an error, found when
the spec is checked (before the run touches anything), not at call time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

VARIABLES = (
    "rollout",
    "namespace",
    "run",
    "target",
    "step",
    "weight",
    "phase",
    "outcome",
    "message",
    "version",
    "canaryService",
    "stableService",
)
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9]*)\s*\}\}")


def template_problems(template: str) -> list[str]:
    unknown = sorted({m.group(1) for m in _PLACEHOLDER.finditer(template)} - set(VARIABLES))
    if unknown:
        return [
            f"unknown template variable {', '.join('{{' + u + '}}' for u in unknown)} "
            f"(known: {', '.join(VARIABLES)})"
        ]
    return []


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return json.dumps(value, sort_keys=True, default=str)


def render_body(template: str, context: Mapping[str, Any]) -> str:
    """The template with each {{name}} replaced by context[name], JSON-string-escaped."""
    problems = template_problems(template)
    if problems:
        raise ValueError(problems[0])

    def one(match: re.Match[str]) -> str:
        return json.dumps(_text(context.get(match.group(1))))[1:-1]

    return _PLACEHOLDER.sub(one, template)
