"""Offline entry for the Kayenta-style judge: JSON request in, JSON verdict out."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TextIO

from pydantic import ValidationError

from canary_operator.analysis.kayenta import JudgeRequest, judge

EXIT_OK = 0
EXIT_INVALID = 2


def _location(loc: Sequence[int | str]) -> str:
    """("metrics", 0, "direction") -> "metrics[0].direction"."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _describe(error: ValidationError) -> str:
    """One line naming the first offending field (and how many more problems there are)."""
    errors = error.errors()
    first = errors[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    where = _location(first["loc"])
    line = f"{where}: {message}" if where else message
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return line


def _fail(message: str) -> int:
    print(f"judge: {message}", file=sys.stderr)
    return EXIT_INVALID


def run(path: str, stdout: TextIO = sys.stdout) -> int:
    """Judge the request in ``path`` ("-" for stdin) and print the result as JSON.

    Returns 0 once a verdict is printed (whatever it is), 2 on unreadable or invalid
    input, with a one-line reason on stderr.
    """
    source = "stdin" if path == "-" else path
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        return _fail(f"cannot read {source}: {exc}")
    try:
        # json.loads accepts the NaN token, which metric exporters sometimes emit.
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return _fail(f"invalid JSON in {source}: {exc.msg} at line {exc.lineno} column {exc.colno}")
    try:
        request = JudgeRequest.model_validate(data)
    except ValidationError as exc:
        return _fail(f"invalid input in {source}: {_describe(exc)}")
    result = judge(request)
    stdout.write(result.model_dump_json(by_alias=True, indent=2) + "\n")
    return EXIT_OK
