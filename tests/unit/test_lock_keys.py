"""lock/keys.py: which Leases a run takes. One per target (keyed by the name base its
canary objects derive from), plus its group's; in Lease-name order."""

from __future__ import annotations

import random
from typing import Any

import pytest

from canary_operator.api.models import CanaryRolloutSpec
from canary_operator.kube import objects
from canary_operator.lock.keys import lock_keys, target_key
from canary_operator.lock.lease import lease_name


def spec(deployment: str, group: str | None = None) -> CanaryRolloutSpec:
    body: dict[str, Any] = {
        "target": {"deployment": deployment, "service": "web"},
        "images": [{"container": "app", "image": "web:2"}],
        "steps": [{"canary": {"replicas": 1}}, {"promote": {}}],
    }
    if group is not None:
        body["lockGroup"] = group
    return CanaryRolloutSpec.model_validate(body)


def derived_names(deployment: str) -> set[str]:
    made = spec(deployment)
    return {objects.canary_name(made), objects.baseline_name(made)}


def test_a_plain_rollout_takes_its_target_s_lock_only() -> None:
    assert lock_keys(spec("web")) == ("web",)


@pytest.mark.parametrize(
    ("group", "keys"),
    [
        ("frontend", ("frontend", "web")),  # cro-lock-frontend < cro-lock-web
        ("zeta", ("web", "zeta")),
        ("web", ("web",)),  # a group named like the target: one Lease, taken once
    ],
)
def test_a_grouped_rollout_takes_its_target_s_lock_and_its_group_s_in_lease_name_order(
    group: str, keys: tuple[str, ...]
) -> None:
    made = spec("web", group)
    assert lock_keys(made) == keys
    names = [lease_name(key) for key in lock_keys(made)]
    assert names == sorted(names)
    assert target_key("web") in lock_keys(made)  # a group never skips the target's lock


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("web.v1", "web-v1"),  # both get web-v1-canary
        ("1web", "c-1web"),  # a name not starting with a letter gets "c-"
        ("a" * 54 + "x", "a" * 54 + "y"),  # names cut to fit: the same canary names
        ("a" * 53 + "-x", "a" * 53),
    ],
)
def test_targets_whose_canary_objects_collide_share_one_key(one: str, other: str) -> None:
    assert derived_names(one) & derived_names(other), "the case collides"
    assert target_key(one) == target_key(other)
    assert lock_keys(spec(one)) == lock_keys(spec(other))
    assert lease_name(target_key(one)) == lease_name(target_key(other))


def test_targets_that_do_not_collide_keep_their_own_keys() -> None:
    assert target_key("web") != target_key("web-v1")
    assert target_key("web.v1") != target_key("web.v2")
    assert lease_name(target_key("web.v1")) == "cro-lock-web-v1"


def _deployments(rng: random.Random) -> list[str]:
    """Target names around one stem, many of them colliding: dots for dashes, a "c-"
    before a stem starting with a digit, tails past the length names are cut to."""
    size = rng.choice([3, 50, 52, 53, 54, 55, 56, 60])
    stem = rng.choice("a1") + "".join(rng.choice("ab-") for _ in range(size - 2)) + "b"
    names = []
    for _ in range(12):
        chars = list(stem)
        for i in range(1, len(chars) - 1):
            if chars[i] == "-" and chars[i - 1].isalnum() and chars[i + 1].isalnum():
                chars[i] = rng.choice("-.")
        name = "".join(chars) + rng.choice(["", "b", "-b", "-ab", ".b", "ab" * 5])
        if name[0].isdigit() and rng.random() < 0.5:
            name = f"c-{name}"
        names.append(name)
    return names


@pytest.mark.parametrize("seed", range(40))
def test_targets_share_a_key_exactly_when_their_derived_names_can_collide(seed: int) -> None:
    names = _deployments(random.Random(seed))
    derived = {name: derived_names(name) for name in names}
    for one in names:
        for other in names:
            if derived[one] & derived[other]:
                assert target_key(one) == target_key(other), (one, other)
            if target_key(one) == target_key(other):
                # The baseline's name is the key itself with a suffix.
                assert objects.baseline_name(spec(one)) == objects.baseline_name(spec(other))
