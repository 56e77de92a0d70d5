"""The names a run gives its objects are free for it (validation/names.py): a user's
Deployment or Service of the canary's name, or a target that is itself another
target's canary, is refused before the run touches anything, the field named. An
object canary-operator made for this target (an earlier run's leftover) is the
recovery's to delete, not a refusal."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from canary_operator.api.models import CanaryRolloutStatus, Phase
from canary_operator.kube import objects
from canary_operator.kube.api import JsonObj, path
from canary_operator.validation import ClusterValidator
from tests.harness.reconcile_fixtures import NS, Cluster, fake_cluster, service, target
from tests.unit.test_upfront_checks import rollout

DEPLOYMENTS = path("apps", "v1", "deployments", NS)
SERVICES = path("", "v1", "services", NS)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with fake_cluster() as made:
        made.with_target()
        yield made


async def problems_of(cluster: Cluster, stable: JsonObj | None = None, **spec: Any) -> list[str]:
    validator = ClusterValidator(cluster.fresh, cached=cluster.kube)
    return await validator.problems(rollout(**spec), stable or target(), service())


def named(name: str, labels: dict[str, str] | None = None) -> JsonObj:
    return {"metadata": {"name": name, "namespace": NS, "labels": labels or {}}, "spec": {}}


async def test_free_names_pass(cluster: Cluster) -> None:
    assert await problems_of(cluster) == []


@pytest.mark.parametrize("collection", [DEPLOYMENTS, SERVICES])
async def test_a_users_object_of_the_canarys_name_is_refused(
    cluster: Cluster, collection: str
) -> None:
    cluster.kube.put(f"{collection}/web-canary", named("web-canary", {"app": "mine"}))
    kind = "Deployment" if collection == DEPLOYMENTS else "Service"
    assert await problems_of(cluster) == [
        f"spec.target.deployment: a run of 'web' names its {kind} 'web-canary', and a "
        f"{kind} of that name exists that canary-operator did not make for this target "
        "(rename it, or the target)"
    ]


async def test_the_baselines_name_is_checked_when_the_spec_asks_for_one(cluster: Cluster) -> None:
    cluster.kube.put(f"{DEPLOYMENTS}/web-baseline", named("web-baseline"))
    assert await problems_of(cluster) == []
    problems = await problems_of(cluster, baseline=True)
    assert len(problems) == 1 and "'web-baseline'" in problems[0]


async def test_an_earlier_runs_canary_of_this_target_is_not_a_refusal(cluster: Cluster) -> None:
    labels = {objects.TARGET_LABEL: "web", objects.ROLE_LABEL: "canary"}
    cluster.kube.put(f"{DEPLOYMENTS}/web-canary", named("web-canary", labels))
    cluster.kube.put(f"{SERVICES}/web-canary", named("web-canary", labels))
    assert await problems_of(cluster) == []


async def test_another_targets_canary_of_this_name_is_refused(cluster: Cluster) -> None:
    """An object of the canary's name that canary-operator made for another target (its
    labels name that target) is not this target's to take over or delete."""
    labels = {objects.TARGET_LABEL: "web-other", objects.ROLE_LABEL: "canary"}
    cluster.kube.put(f"{DEPLOYMENTS}/web-canary", named("web-canary", labels))
    problems = await problems_of(cluster)
    assert len(problems) == 1 and problems[0].startswith("spec.target.deployment: ")


async def test_a_target_that_is_another_targets_canary_is_refused(cluster: Cluster) -> None:
    stable = target()
    stable["metadata"]["labels"] = {objects.TARGET_LABEL: "web", objects.ROLE_LABEL: "canary"}
    problems = await problems_of(cluster, stable)
    assert (
        "spec.target.deployment: Deployment 'web' is the canary canary-operator made for "
        "target 'web', not a target of its own"
    ) in problems


async def test_a_colliding_targets_canary_waits_for_the_shared_lock_then_is_a_verdict(
    cluster: Cluster,
) -> None:
    """Targets `w-eb` and `w.eb` share `cro-lock-w-eb` (one name base): while
    this run has not the lock (Pending), the other target's canary is its run's, going
    on; it waits behind it. Once the lock is held, a canary of that target still there
    was left behind, and the recovery (by this target's labels) could not remove it."""
    labels = {objects.TARGET_LABEL: "w-eb", objects.ROLE_LABEL: "canary"}
    cluster.kube.put(f"{DEPLOYMENTS}/w-eb-canary", named("w-eb-canary", labels))
    dotted = rollout(target={"deployment": "w.eb"})
    validator = ClusterValidator(cluster.fresh, cached=cluster.kube)
    stable = target()
    assert await validator.problems(dotted, stable, service()) == []  # Pending: waits
    held = dataclasses.replace(dotted, status=CanaryRolloutStatus(phase=Phase.QUEUED))
    problems = await validator.problems(held, stable, service())
    assert len(problems) == 1 and "'w-eb-canary'" in problems[0]
