"""Two operator processes acting on one run (standalone, or a leader that resumes
after a stall): the run's lock is held by the run, so both pass the fence. A process
whose view of the rollout is behind (the run not yet started, as it last saw it) must
not take the run's own canary for a previous holder's leftovers and delete it: the
start reads the rollout fresh and decides again from it (reconcile/decide.py)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from canary_operator.index import RolloutIndex
from canary_operator.kube.api import JsonObj
from canary_operator.kube.rollouts import rollout_path
from canary_operator.reconcile import decide
from canary_operator.reconcile.reconciler import Reconciler
from tests.harness.reconcile_fixtures import DEPLOYMENTS, NAME, NS, SERVICES, Cluster, fake_cluster


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with fake_cluster() as made:
        yield made


async def test_a_stale_view_of_a_started_run_deletes_nothing_and_decides_again(
    cluster: Cluster,
) -> None:
    started = await cluster.progressing()  # process 1 started the run: its canary is up
    assert cluster.kube.stored(f"{DEPLOYMENTS}/web-canary") is not None
    stale = behind_by_one(started)
    behind = RolloutIndex()  # process 2's watch has not seen the run start
    behind.update(stale)
    process2 = Reconciler(dataclasses.replace(cluster.deps, index=behind))

    again = await process2.reconcile(NS, NAME)

    assert again == 0.5  # decides again, from the fresh rollout
    assert not [r for r in cluster.kube.requests if not r.startswith("GET")]
    assert cluster.kube.stored(f"{DEPLOYMENTS}/web-canary") is not None
    assert cluster.kube.stored(f"{SERVICES}/web-canary") is not None
    fresh = behind.body(NS, NAME)
    assert fresh is not None and fresh["status"]["phase"] == "Progressing"
    # From the fresh view, process 2 goes on with the run; it deletes nothing.
    await process2.reconcile(NS, NAME)
    assert not [r for r in cluster.kube.requests if r.startswith("DELETE")]
    assert cluster.rollout()["status"]["phase"] == "Progressing"


def behind_by_one(started: JsonObj) -> JsonObj:
    """The rollout as it was just before process 1's status write of its start."""
    stale = copy.deepcopy(started)
    stale["metadata"]["resourceVersion"] = str(int(started["metadata"]["resourceVersion"]) - 1)
    stale["status"] = {
        "phase": "Queued",
        "run": 1,
        "observedGeneration": 1,
        "fingerprint": started["status"]["fingerprint"],
        "versionSince": started["status"]["versionSince"],
        "queuedAt": started["status"]["queuedAt"],
    }
    return stale


async def test_a_start_whose_checks_were_slow_reads_the_rollout_again(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Process 2 reads the rollout fresh (not started), then its checks take long (slow
    dry-runs); process 1 starts the run meanwhile. Process 2 reads it again before it
    acts: nothing deleted, nothing applied; it decides again from the started run."""
    started = await cluster.progressing()
    stale = behind_by_one(started)
    rollout = rollout_path(NS, NAME)
    # The API server too: process 1 has not written yet.
    stale = cluster.kube.put(rollout, stale)
    behind = RolloutIndex()
    behind.update(stale)
    deps = cluster.deps
    checks = deps.validator.problems

    async def slow_checks(*args: Any, **kwargs: Any) -> list[str]:
        # The checks' wait: process 1's status write of the start lands meanwhile.
        cluster.kube.put(rollout, started)
        monkeypatch.setattr(decide.time, "monotonic", lambda: float("inf"))
        return await checks(*args, **kwargs)

    monkeypatch.setattr(deps.validator, "problems", slow_checks)
    process2 = Reconciler(dataclasses.replace(deps, index=behind))
    cluster.clear()

    again = await process2.reconcile(NS, NAME)

    assert again == 0.5
    assert not [r for r in cluster.kube.requests if not r.startswith(("GET", "LIST"))]
    assert [r for r in cluster.fresh.requests if "canaryrollouts" in r] == [
        f"GET canaryrollouts/{NAME}",
        f"GET canaryrollouts/{NAME}",
    ]
    fresh = behind.body(NS, NAME)
    assert fresh is not None and fresh["status"]["phase"] == "Progressing"


async def test_a_canary_of_the_run_about_to_start_is_no_leftover(cluster: Cluster) -> None:
    """Process 1 applied the run's canary; its status write of the start has not landed
    (or was lost). Process 2, whose fresh read shows the run not started, starts it
    over the canary as it is: it deletes nothing."""
    started = await cluster.progressing()
    stale = cluster.kube.put(rollout_path(NS, NAME), behind_by_one(started))
    behind = RolloutIndex()
    behind.update(stale)
    process2 = Reconciler(dataclasses.replace(cluster.deps, index=behind))
    cluster.clear()

    await process2.reconcile(NS, NAME)

    assert not [r for r in cluster.kube.requests if r.startswith("DELETE")]
    assert cluster.kube.stored(f"{DEPLOYMENTS}/web-canary") is not None
    assert cluster.kube.stored(f"{SERVICES}/web-canary") is not None
    assert cluster.rollout()["status"]["phase"] == "Progressing"
