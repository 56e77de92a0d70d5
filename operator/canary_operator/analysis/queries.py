"""Analysis queries as the user writes them: ``{{name}}`` placeholders for the
rollout's variables. Pure: the engine checks queries with it before a run starts, the
reconcile renders them before a measurement."""

from __future__ import annotations

import re
from collections.abc import Mapping

QUERY_VARIABLES = ("role", "deployment", "namespace", "rollout")
"""The variables an analysis query may use as ``{{name}}``."""

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


def render_query(template: str, variables: Mapping[str, str]) -> str:
    """Replace ``{{name}}`` (spaces inside the braces allowed) with ``variables[name]``.

    Raises :class:`ValueError` naming a placeholder that ``variables`` does not define.
    """

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            known = ", ".join("{{" + v + "}}" for v in variables) or "none"
            raise ValueError(f"unknown variable {{{{{name}}}}} in query (known: {known})")
        return str(variables[name])

    return _PLACEHOLDER.sub(substitute, template)
