"""The replicas router reports the weight of READY pods: a canary whose pods cannot
start takes no traffic, and the WEIGHT shown must not say it does (issue 10)."""

from __future__ import annotations

from typing import Any, cast

from canary_operator.kube.api import Kube
from canary_operator.traffic.replicas import ReplicasRouter


class Deployments:
    """Just enough of Kube for the router's reads."""

    def __init__(self, **ready: tuple[int, int]) -> None:
        self.bodies = {
            name: {"spec": {"replicas": want}, "status": {"readyReplicas": up}}
            for name, (want, up) in ready.items()
        }

    async def get(self, resource_path: str) -> dict[str, Any] | None:
        return self.bodies.get(resource_path.rsplit("/", 1)[-1])


def router(kube: Deployments) -> ReplicasRouter:
    return ReplicasRouter(cast(Kube, kube), "ns", "web", "web_canary")


async def test_requested_but_not_ready_canary_pods_take_no_traffic() -> None:
    read = await router(Deployments(web=(3, 3), web_canary=(1, 0))).read()
    assert read.weight == 0


async def test_ready_canary_pods_take_their_share() -> None:
    assert (await router(Deployments(web=(3, 3), web_canary=(1, 1))).read()).weight == 25
    # Half ready: only the ready one counts.
    assert (await router(Deployments(web=(2, 2), web_canary=(2, 1))).read()).weight == 33


async def test_no_canary_no_weight() -> None:
    assert (await router(Deployments(web=(3, 3))).read()).weight == 0
