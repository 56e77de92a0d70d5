"""`{{ path.to.value }}` placeholders, filled from a rollout's notification context.

Deliberately small (no code, no loops): a template names values, it cannot run
anything. An unknown name is an error, so a typo shows up as a clear Event instead
of an empty field in chat. Inside a JSON body, values are escaped for a JSON string.
"""

from __future__ import annotations

import json
import re
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*\}\}")


class TemplateError(ValueError):
    """A template names a value the context does not have."""


def lookup(context: dict[str, Any], dotted: str) -> Any:
    value: Any = context
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise TemplateError(f"unknown placeholder {{{{ {dotted} }}}}")
        value = value[part]
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def render(template: str, context: dict[str, Any], json_string: bool = False) -> str:
    """Fill the placeholders; `json_string`: escape each value for the inside of a JSON
    string literal (the template supplies the quotes)."""

    def fill(match: re.Match[str]) -> str:
        text = _text(lookup(context, match[1]))
        return json.dumps(text)[1:-1] if json_string else text

    return PLACEHOLDER.sub(fill, template)


def names(template: str) -> list[str]:
    return [m[1] for m in PLACEHOLDER.finditer(template)]
