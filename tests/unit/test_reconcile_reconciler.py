"""reconcile/reconciler.py: whole reconciles on the fake cluster, with the real engine:
observe, plan, act, write the status, announce it, then what must follow it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.api.models import CanaryRolloutStatus
from canary_operator.checks.inflight import RunRef
from canary_operator.kube.api import JsonObj
from canary_operator.kube.rollouts import FINALIZER, rollout_path
from canary_operator.reconcile.errors import RetryLater
from canary_operator.reconcile.reconciler import Reconciler
from tests.harness.reconcile_fixtures import (
    DEPLOYMENTS,
    EVENTS,
    LEASES,
    NAME,
    NS,
    UID,
    Cluster,
    fake_cluster,
    rollout_body,
)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with fake_cluster() as made:
        yield made


async def reasons(cluster: Cluster) -> list[str]:
    await cluster.deps.events.flush()
    return [e["reason"] for e in await cluster.kube.list(EVENTS)]


async def test_a_new_rollout_starts_its_first_step(cluster: Cluster) -> None:
    cluster.with_target()
    cluster.add_rollout(rollout_body())
    wait = await Reconciler(cluster.deps).reconcile(NS, NAME)
    assert wait is not None and wait > 0  # the canary is watched for
    stored = cluster.rollout()
    st = stored["status"]
    assert (st["phase"], st["run"], st["currentStep"]) == ("Progressing", 1, 0)
    assert st["steps"][0] == {**st["steps"][0], "name": "canary", "phase": "Running"}
    assert st["steps"][1]["phase"] == "Pending"
    assert st["lock"]["token"] == 1 and st["startedAt"]
    assert sorted(await reasons(cluster)) == ["LockAcquired", "Progressing"]
    # Everything it touched: the finalizer, the Lease, the canary, then the status.
    assert FINALIZER in stored["metadata"]["finalizers"]
    lease = cluster.kube.stored(f"{LEASES}/cro-lock-web")
    assert lease is not None and lease["spec"]["holderIdentity"] == f"{UID}/1"  # run 1
    canary = cluster.kube.stored(f"{DEPLOYMENTS}/web-canary")
    assert canary is not None and canary["spec"]["replicas"] == 1
    writes = [r for r in cluster.kube.requests if not r.startswith("GET")]
    assert writes == [
        f"PATCH canaryrollouts/{NAME}",
        "POST leases",
        "PATCH deployments/web-canary",
        "PATCH services/web-canary",
        f"PUT canaryrollouts/{NAME}/status",
        "POST events",
        "POST events",
    ]
    assert "POST deployments?dryRun" in cluster.fresh.requests  # the spec was checked
    # Known at once: the next reconcile plans from what was written.
    known = cluster.deps.index.body(NS, NAME)
    assert known is not None and known["status"]["phase"] == "Progressing"


async def test_a_reconcile_with_nothing_new_writes_nothing(cluster: Cluster) -> None:
    await cluster.progressing()
    await Reconciler(cluster.deps).reconcile(NS, NAME)
    assert [r for r in cluster.kube.store.requests if not r.startswith("GET")] == []
    assert cluster.fresh.requests == []  # the run holds its lock: nothing read fresh


async def test_the_hooks_hear_of_written_transitions_only(cluster: Cluster) -> None:
    written: list[tuple[str, str, Any, CanaryRolloutStatus]] = []
    transitions: list[tuple[JsonObj, Any, CanaryRolloutStatus]] = []
    cluster.deps = dataclasses.replace(
        cluster.deps,
        on_status_written=lambda ns, name, old, new: written.append((ns, name, old, new)),
        on_transition=lambda body, old, new: transitions.append((body, old, new)),
    )
    cluster.with_target()
    cluster.add_rollout(rollout_body())
    reconciler = Reconciler(cluster.deps)
    await reconciler.reconcile(NS, NAME)
    assert [(ns, name, new.phase.value) for ns, name, _, new in written] == [
        (NS, NAME, "Progressing")
    ]
    assert written[0][2].phase.value == "Pending"
    assert transitions[0][0]["status"]["phase"] == "Progressing"
    await reconciler.reconcile(NS, NAME)
    assert len(written) == 1 and len(transitions) == 1


async def test_a_rollout_gone_forgets_its_checks(cluster: Cluster) -> None:
    ref = RunRef(NS, "gone", "uid-gone", 1)
    cluster.deps.checks.ensure(ref, "s1", lambda: asyncio.sleep(60), lambda exc: None)
    assert await Reconciler(cluster.deps).reconcile(NS, "gone") is None
    assert not cluster.deps.checks.known(ref, "s1") and cluster.deps.checks.running() == 0
    assert cluster.fresh.requests == ["GET canaryrollouts/gone"]  # not in the index


async def test_a_rollout_the_index_has_not_seen_is_read_fresh(cluster: Cluster) -> None:
    cluster.with_target()
    cluster.kube.put(rollout_path(NS, NAME), rollout_body())
    await Reconciler(cluster.deps).reconcile(NS, NAME)
    assert cluster.fresh.requests[0] == f"GET canaryrollouts/{NAME}"
    assert cluster.rollout()["status"]["phase"] == "Progressing"


async def test_an_invalid_spec_fails_the_rollout(cluster: Cluster) -> None:
    body = rollout_body()
    body["spec"]["steps"] = []
    cluster.add_rollout(body)
    assert await Reconciler(cluster.deps).reconcile(NS, NAME) is None
    st = cluster.rollout()["status"]
    assert st["phase"] == "Failed" and st["outcome"]["result"] == "InvalidSpec"
    assert {(c["type"], c["status"]) for c in st["conditions"]} == {
        ("Failed", "True"),
        ("Completed", "False"),
    }
    assert cluster.kube.stored(f"{LEASES}/cro-lock-web") is None


async def test_a_lost_status_race_asks_for_another_reconcile_soon(cluster: Cluster) -> None:
    await cluster.progressing()
    canary = cluster.kube.stored(f"{DEPLOYMENTS}/web-canary")
    assert canary is not None
    canary["status"] = {
        "conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate"}]
    }
    cluster.kube.put(f"{DEPLOYMENTS}/web-canary", canary)
    # Someone wrote the rollout since the index saw it: the status write meets a 409.
    await cluster.fresh.merge_patch(rollout_path(NS, NAME), {"metadata": {"labels": {"x": "1"}}})
    cluster.clear()
    assert await Reconciler(cluster.deps).reconcile(NS, NAME) == 0.5
    assert cluster.rollout()["status"]["phase"] == "Progressing"
    assert "POST events" not in cluster.kube.requests  # a lost transition is not announced


async def test_a_failure_a_retry_may_cure_is_recorded_then_raised(cluster: Cluster) -> None:
    await cluster.progressing()
    canary = cluster.kube.stored(f"{DEPLOYMENTS}/web-canary")
    assert canary is not None
    canary["spec"]["replicas"] = 7
    cluster.kube.put(f"{DEPLOYMENTS}/web-canary", canary)
    cluster.kube.fail_next("PATCH", "deployments/web-canary", ApiException(500, "Oops"))
    with pytest.raises(RetryLater, match="API error 500 Oops"):
        await Reconciler(cluster.deps).reconcile(NS, NAME)
    st = cluster.rollout()["status"]
    assert st["phase"] == "Progressing" and st["message"] == "retrying: API error 500 Oops"


async def test_the_lock_and_the_finalizer_go_only_after_the_terminal_status(
    cluster: Cluster,
) -> None:
    await cluster.cleaning_up(deleted=True)
    await Reconciler(cluster.deps).reconcile(NS, NAME)
    writes = [r for r in cluster.kube.requests if not r.startswith(("GET", "POST events"))]
    assert writes == [
        f"PUT canaryrollouts/{NAME}/status",
        "PUT leases/cro-lock-web",
        f"PATCH canaryrollouts/{NAME}",
    ]
    stored = cluster.rollout()
    assert stored["status"]["phase"] == "Failed" and not stored["metadata"].get("finalizers")
    lease = cluster.kube.stored(f"{LEASES}/cro-lock-web")
    assert lease is not None and not lease["spec"].get("holderIdentity")
    known = cluster.deps.index.body(NS, NAME)
    assert known is not None and not known["metadata"].get("finalizers")
