"""Two operator processes acting on one run (standalone, or a leader that resumes
after a stall): the run's lock is held by the run, so both pass the fence. A process
whose view of the rollout is behind (the run not yet started, as it last saw it) must
not take the run's own canary for a previous holder's leftovers and delete it: the
start reads the rollout fresh and decides again from it (reconcile/decide.py)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import AsyncIterator

import pytest

from canary_operator.index import RolloutIndex
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
