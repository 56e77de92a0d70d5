"""The API server's refusals in plain words, and which of its answers no retry can
change."""

from __future__ import annotations

import re

from kubernetes_asyncio.client.exceptions import ApiException

_INVALID_PREFIX = re.compile(r'^[A-Za-z.]+ "[^"]*" is invalid: ')
# What the API server says of a value of the wrong JSON type, in Go's words.
_WRONG_TYPE = re.compile(
    r"(?:[A-Za-z]+ in version \S+ cannot be handled as a [A-Za-z]+: )?"
    r"json: cannot unmarshal (?P<got>\w+) into Go struct field \w+\.(?P<field>\S+)"
    r" of type (?P<want>\S+)"
)


def _json_type(go_type: str) -> str:
    if go_type.startswith("[]"):
        return "a list"
    if go_type.startswith("map[") or "." in go_type:
        return "an object"
    if go_type.startswith(("int", "uint", "float")):
        return "a number"
    return {"string": "a string", "bool": "true or false"}.get(go_type, go_type)


def api_refusal(exc: ApiException) -> str:
    """The API server's reason in plain words: without the `Kind "name" is invalid:`
    preamble, and a value of the wrong type said as such."""
    reason = str(exc.reason or f"HTTP {exc.status}")
    wrong = _WRONG_TYPE.search(reason)
    if wrong:
        got = {"object": "an object", "array": "a list", "number": "a number"}.get(
            wrong["got"], f"a {wrong['got']}"
        )
        return f"{wrong['field']} must be {_json_type(wrong['want'])}, not {got}"
    return _INVALID_PREFIX.sub("", reason)[:600]


def refused_for_good(exc: BaseException) -> bool:
    """An answer that sending the same request again cannot change: the API refused
    the object itself (400, 422, 403), or could not even type it (a 500 from
    server-side apply "failed to create typed patch object")."""
    if not isinstance(exc, ApiException):
        return False
    if exc.status in (400, 403, 422):
        return True
    return exc.status == 500 and "typed" in str(exc.reason or "")
