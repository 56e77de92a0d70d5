"""index.parse_spec: one parse per generation of a rollout's spec."""

from __future__ import annotations

from typing import Any

import pytest

from canary_operator import index


def body(uid: str | None, generation: int | None, deployment: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "r"}
    if uid is not None:
        meta["uid"] = uid
    if generation is not None:
        meta["generation"] = generation
    return {
        "metadata": meta,
        "spec": {"target": {"deployment": deployment}, "steps": [{"promote": {}}]},
    }


def test_the_same_generation_is_parsed_once() -> None:
    first = index.parse_spec(body("u-once", 1, "web"))
    assert index.parse_spec(body("u-once", 1, "web")) is first


def test_a_new_generation_or_another_rollout_is_parsed_anew() -> None:
    one = index.parse_spec(body("u-gen", 1, "web"))
    two = index.parse_spec(body("u-gen", 2, "api"))
    other = index.parse_spec(body("u-other", 1, "db"))
    assert one.target.deployment == "web" and two.target.deployment == "api"
    assert other.target.deployment == "db"


@pytest.mark.parametrize(("uid", "generation"), [(None, 1), ("u-x", None)])
def test_a_body_without_identity_is_never_taken_from_the_memo(
    uid: str | None, generation: int | None
) -> None:
    a = index.parse_spec(body(uid, generation, "web"))
    b = index.parse_spec(body(uid, generation, "api"))
    assert (a.target.deployment, b.target.deployment) == ("web", "api")


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index, "PARSED_SPECS", 3)
    monkeypatch.setattr(index, "_parsed_specs", {})
    first = index.parse_spec(body("u-0", 1, "web"))
    for i in range(1, 5):
        index.parse_spec(body(f"u-{i}", 1, "web"))
    assert len(index._parsed_specs) == 3
    assert index.parse_spec(body("u-0", 1, "web")) is not first  # the oldest went
