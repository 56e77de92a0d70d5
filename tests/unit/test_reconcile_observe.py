"""reconcile/observe.py: an observation from the cluster's objects (through the Kube it
is given), and the lock, taken only when the phase takes it and the rollout is next."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from canary_operator.api.job_policy import AllowedServiceAccounts
from canary_operator.kube import objects
from canary_operator.kube.api import ReadOnce
from canary_operator.kube.rollouts import FINALIZER
from canary_operator.reconcile.observe import observe, read_targets
from tests.harness.reconcile_fixtures import (
    DEPLOYMENTS,
    JOBS,
    PODS,
    SERVICES,
    UID,
    Cluster,
    fake_cluster,
    rollout_body,
    spec,
    target,
)

WEB = {objects.TARGET_LABEL: "web"}


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with fake_cluster() as made:
        yield made


def role_deployment(name: str, role: str, ready: int) -> Any:
    body = target(replicas=2)
    body["metadata"] = {"name": name, "labels": {**WEB, objects.ROLE_LABEL: role}}
    body["status"]["readyReplicas"] = ready
    return body


def pod(name: str, role: str, waiting: str | None = None) -> Any:
    states = [{"name": "app", "state": {"waiting": {"reason": waiting}}}] if waiting else []
    return {
        "metadata": {"name": name, "labels": {**WEB, objects.ROLE_LABEL: role}},
        "status": {"containerStatuses": states},
    }


def job(name: str, purpose: str, owner: str | None) -> Any:
    labels = {objects.MANAGED_BY: objects.OPERATOR, **WEB, objects.PURPOSE_LABEL: purpose}
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if owner is not None:
        meta["ownerReferences"] = [{"uid": owner, "name": "x", "kind": "CanaryRollout"}]
    return {"metadata": meta, "status": {}}


def fill(cluster: Cluster) -> None:
    kube = cluster.kube
    cluster.with_target()
    kube.put(f"{DEPLOYMENTS}/web-canary", role_deployment("web-canary", "canary", 1))
    kube.put(f"{DEPLOYMENTS}/web-baseline", role_deployment("web-baseline", "baseline", 2))
    kube.put(f"{SERVICES}/web-canary", {"metadata": {"name": "web-canary"}, "spec": {}})
    kube.put(f"{PODS}/c1", pod("c1", "canary", waiting="ImagePullBackOff"))
    kube.put(f"{PODS}/b1", pod("b1", "baseline"))
    kube.put(f"{PODS}/b2", pod("b2", "baseline"))
    kube.put(f"{PODS}/stable", {"metadata": {"name": "stable", "labels": {"app": "web"}}})
    kube.put(f"{JOBS}/mine-test", job("mine-test", "test", UID))
    kube.put(f"{JOBS}/mine-cleanup", job("mine-cleanup", "cleanup", UID))
    kube.put(f"{JOBS}/other-test", job("other-test", "test", "uid-other"))
    kube.put(f"{JOBS}/other-cleanup", job("other-cleanup", "cleanup", "uid-other"))
    kube.put(f"{JOBS}/unmanaged", {"metadata": {"name": "unmanaged", "labels": WEB}})


async def test_an_observation_of_the_rollouts_objects(cluster: Cluster) -> None:
    fill(cluster)
    ctx = await cluster.observed(cluster.add_rollout(rollout_body()))
    obs = ctx.obs
    assert obs.target is not None and obs.target.replicas == 3 and obs.target.ready == 3
    assert obs.canary is not None and obs.canary.ready == 1
    assert obs.canary.failure == "pod c1 container app: ImagePullBackOff"
    assert obs.baseline is None  # the spec asks for none: not even read
    assert obs.canary_service
    assert obs.canary_pods == 3  # every pod of a role
    # Jobs of this rollout, and test Jobs of any rollout of the target (cleanup
    # deletes them); another rollout's cleanup Job is its own.
    assert sorted(obs.jobs) == ["mine-cleanup", "mine-test", "other-test"]
    assert obs.jobs["mine-cleanup"].cleanup
    assert obs.route.weight == 25  # canary ready 1 of 1 + 3
    assert "GET deployments/web-baseline" not in cluster.kube.requests
    assert cluster.fresh.requests == []


async def test_the_baseline_is_read_when_the_spec_asks_for_one(cluster: Cluster) -> None:
    fill(cluster)
    ctx = await cluster.observed(cluster.add_rollout(rollout_body(spec(baseline=True))))
    assert ctx.obs.baseline is not None and ctx.obs.baseline.ready == 2
    assert ctx.obs.baseline.failure is None  # its pods are fine
    assert "GET deployments/web-baseline" in cluster.kube.requests


async def test_nothing_of_a_canary_yet(cluster: Cluster) -> None:
    cluster.with_target()
    ctx = await cluster.observed(cluster.add_rollout(rollout_body()))
    obs = ctx.obs
    assert obs.canary is None and not obs.canary_service and obs.canary_pods == 0
    assert obs.jobs == {} and obs.route.weight == 0
    assert obs.checks == {} and obs.measurements == {} and obs.in_flight == frozenset()


async def test_the_reads_go_through_the_kube_given(cluster: Cluster) -> None:
    fill(cluster)
    ctx = await cluster.observed(cluster.add_rollout(rollout_body()))
    cluster.clear()
    await observe(ctx, ReadOnce(cluster.fresh), lock=ctx.obs.lock)
    # Each object once (the router's read of the canary shares the observation's).
    assert sorted(cluster.fresh.requests) == [
        "GET deployments/web",
        "GET deployments/web-canary",
        "GET jobs",
        "GET pods",
        "GET services/web-canary",
    ]
    assert cluster.kube.requests == []  # and the lock as given, not read again


async def test_targets_come_from_the_cache(cluster: Cluster) -> None:
    cluster.with_target()
    ctx = cluster.context(cluster.add_rollout(rollout_body()))
    targets = await read_targets(ctx)
    assert targets.target is not None and targets.service is not None and not targets.fresh
    assert sorted(cluster.kube.requests) == ["GET deployments/web", "GET services/web"]
    no_service = spec()
    no_service["target"] = {"deployment": "web"}
    cluster.clear()
    targets = await read_targets(cluster.context(rollout_body(no_service, uid="uid-2")))
    assert targets.service is None and cluster.kube.requests == ["GET deployments/web"]


async def test_jobs_naming_a_service_account_not_allowed_are_a_policy_problem(
    cluster: Cluster,
) -> None:
    cluster.with_target()
    job_spec = {"spec": {"template": {"spec": {"serviceAccountName": "admin", "containers": []}}}}
    body = rollout_body(spec(steps=[{"test": {"job": job_spec}}, {"promote": {}}]))
    ctx = await cluster.observed(cluster.add_rollout(body))
    assert ctx.obs.policy_problems and "admin" in ctx.obs.policy_problems[0]
    allowed = AllowedServiceAccounts(frozenset({"admin"}))
    cluster.deps = dataclasses.replace(cluster.deps, allowed_accounts=allowed)
    ctx = await cluster.observed(body)
    assert ctx.obs.policy_problems == ()


# ------------------------------------------------------------------------ the lock


async def test_a_pending_rollout_does_not_take_a_free_lock(cluster: Cluster) -> None:
    cluster.with_target()
    ctx = await cluster.observed(cluster.add_rollout(rollout_body()))
    assert not ctx.obs.lock.held and not ctx.obs.lock.busy
    assert not any("leases" in r and not r.startswith("GET") for r in cluster.kube.requests)
    assert "PATCH canaryrollouts/web-v2" not in cluster.kube.requests


@pytest.mark.parametrize("finalizer", [False, True])
async def test_a_queued_rollout_at_the_head_takes_the_free_lock(
    cluster: Cluster, finalizer: bool
) -> None:
    cluster.with_target()
    queued = rollout_body(status={"phase": "Queued", "run": 1}, finalizer=finalizer)
    ctx = await cluster.observed(cluster.add_rollout(queued))
    assert ctx.obs.lock.held and ctx.obs.lock.acquired and ctx.obs.lock.token == 1
    assert "POST leases" in cluster.kube.requests
    if finalizer:
        # The precondition of a free lock is a fresh read of the rollout as read.
        assert cluster.fresh.requests == ["GET canaryrollouts/web-v2"]
        assert "PATCH canaryrollouts/web-v2" not in cluster.kube.requests
    else:
        # ... or the finalizer's conditional write, which the run needs anyway.
        assert cluster.kube.requests.count("PATCH canaryrollouts/web-v2") == 1
        assert FINALIZER in ctx.body["metadata"]["finalizers"]
        assert cluster.fresh.requests == []


async def test_a_stale_view_of_the_rollout_never_takes_the_lock(cluster: Cluster) -> None:
    cluster.with_target()
    queued = cluster.add_rollout(rollout_body(status={"phase": "Queued", "run": 1}))
    # Someone wrote the rollout after the view this reconcile has.
    await cluster.kube.merge_patch(
        "/apis/canary-operator.dev/v1alpha1/namespaces/shop/canaryrollouts/web-v2",
        {"metadata": {"labels": {"x": "1"}}},
    )
    ctx = await cluster.observed(queued)
    assert not ctx.obs.lock.held
    assert "POST leases" not in cluster.kube.requests


async def test_a_queued_rollout_not_at_the_head_waits(cluster: Cluster) -> None:
    cluster.with_target()
    older = rollout_body(status={"phase": "Queued", "run": 1}, name="web-v1", uid="uid-1")
    older["metadata"]["creationTimestamp"] = "2026-12-07T09:00:00Z"
    older["status"]["queuedAt"] = "2026-12-07T09:00:00.000000Z"
    cluster.add_rollout(older)
    queued = rollout_body(status={"phase": "Queued", "run": 1, "queuedAt": "2026-12-07T10:00:00Z"})
    ctx = await cluster.observed(cluster.add_rollout(queued))
    assert not ctx.obs.lock.held and ctx.obs.lock.position == 2  # 1-based
    assert "POST leases" not in cluster.kube.requests


async def test_a_run_in_progress_never_takes_the_lock_again(cluster: Cluster) -> None:
    body = await cluster.progressing()
    await cluster.deps.lock.release("shop", "web", UID, 1)  # lost, say, to a human
    ctx = await cluster.observed(body)
    assert not ctx.obs.lock.held
    assert not any(r.startswith(("POST leases", "PUT leases")) for r in cluster.kube.requests[1:])


async def test_a_cleanup_takes_the_lock_back(cluster: Cluster) -> None:
    body = await cluster.cleaning_up()
    await cluster.deps.lock.release("shop", "web", UID, 1)
    cluster.clear()
    ctx = await cluster.observed(body)
    assert ctx.obs.lock.held and ctx.obs.lock.acquired and ctx.obs.lock.token == 2
    assert "PUT leases/cro-lock-web" in cluster.kube.requests
