"""Unit tests of the weight arithmetic (`traffic/base.py`)."""

from __future__ import annotations

import math

import pytest

from canary_operator.engine.weights import WeightPlan, plan_weight, replicas_weight

# ---------------------------------------------------------------- replicas_weight


@pytest.mark.parametrize(
    ("stable", "canary", "percent"),
    [
        (0, 0, 0),
        (5, 0, 0),
        (0, 3, 100),
        (1, 1, 50),
        (2, 1, 33),
        (1, 2, 67),
        (4, 1, 20),
        (10, 2, 17),
        (99, 1, 1),
        (199, 1, 0),  # 0.5 % rounds to even: 0
        (1, 199, 100),
    ],
)
def test_replicas_weight_is_the_canary_share_of_ready_pods(
    stable: int, canary: int, percent: int
) -> None:
    assert replicas_weight(stable, canary) == percent


# ------------------------------------------------------------ replicas router


@pytest.mark.parametrize(
    ("stable", "weight", "plan"),
    [
        (4, 20, WeightPlan(1, 20)),
        (10, 10, WeightPlan(2, 17)),
        (3, 50, WeightPlan(3, 50)),
        (1, 90, WeightPlan(9, 90)),
        (10, 1, WeightPlan(1, 9)),  # one pod is the least a canary can have
        (2, 99, WeightPlan(198, 99)),
    ],
)
def test_replicas_router_sizes_the_canary_for_at_least_the_weight(
    stable: int, weight: int, plan: WeightPlan
) -> None:
    assert plan_weight("replicas", stable, weight, minimum=3) == plan


@pytest.mark.parametrize("weight", [0, -5])
def test_replicas_router_zero_weight_means_no_canary_pod(weight: int) -> None:
    assert plan_weight("replicas", 4, weight, minimum=3) == WeightPlan(0, 0)


@pytest.mark.parametrize("weight", [100, 150])
def test_replicas_router_cannot_send_everything_to_the_canary(weight: int) -> None:
    with pytest.raises(ValueError, match="replicas router cannot send 100%"):
        plan_weight("replicas", 4, weight, minimum=1)


@pytest.mark.parametrize("stable", [0, -1])
def test_replicas_router_treats_an_empty_stable_as_one_pod(stable: int) -> None:
    assert plan_weight("replicas", stable, 50, 1) == plan_weight("replicas", 1, 50, 1)


@pytest.mark.parametrize("stable", range(1, 13))
def test_replicas_router_picks_the_fewest_pods_reaching_the_weight(stable: int) -> None:
    for weight in range(1, 100):
        plan = plan_weight("replicas", stable, weight, minimum=1)
        c = plan.canary_replicas
        assert c >= 1
        assert 100 * c / (stable + c) >= weight - 1e-9, (stable, weight, c)
        if c > 1:
            assert 100 * (c - 1) / (stable + c - 1) < weight, "not the fewest pods"
        assert plan.expected_weight == replicas_weight(stable, c)


# ---------------------------------------------------------- gatewayAPI router


@pytest.mark.parametrize(
    ("stable", "weight", "minimum", "plan"),
    [
        (4, 25, 1, WeightPlan(1, 25)),
        (4, 25, 2, WeightPlan(2, 25)),  # the canary step's size is kept
        (10, 50, 1, WeightPlan(5, 50)),
        (10, 33, 1, WeightPlan(4, 33)),  # rounded up: the canary can carry its share
        (3, 100, 1, WeightPlan(3, 100)),
        (3, 100, 5, WeightPlan(5, 100)),
        (0, 40, 1, WeightPlan(1, 40)),
        (4, 0, 2, WeightPlan(2, 0)),  # 0 % keeps the canary up, just without traffic
    ],
)
def test_gateway_api_weight_is_exact_and_sizes_the_canary(
    stable: int, weight: int, minimum: int, plan: WeightPlan
) -> None:
    assert plan_weight("gatewayAPI", stable, weight, minimum) == plan


def test_gateway_api_canary_share_never_below_the_weight() -> None:
    for stable in range(1, 15):
        for weight in range(1, 101):
            plan = plan_weight("gatewayAPI", stable, weight, minimum=1)
            assert plan.expected_weight == weight
            assert plan.canary_replicas == max(1, math.ceil(stable * weight / 100))
