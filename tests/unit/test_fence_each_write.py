"""Fencing each write, not each action (issue 23): on the fake cluster, in the order the
requests reach it, a fresh read of the Lease comes right before every write to the
target (after a list, after another write, after a 409); cleanup deletes only the
objects as listed (their uid) and, outside a recovery, only this run's.

The cost is counted here too: `test_what_a_whole_run_costs` drives a run from its
start to Succeeded and counts the fencing reads beside the writes they fence (5 for
6 writes; one per action before: 4)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.api.models import Phase
from canary_operator.engine.types import (
    Action,
    DeleteCanaryObjects,
    Plan,
    ResetRoute,
    ScaleStable,
)
from canary_operator.kube import objects
from canary_operator.reconcile import act, canary
from canary_operator.reconcile.context import ReconcileContext
from canary_operator.reconcile.decide import decide
from tests.harness.reconcile_fixtures import (
    DEPLOYMENTS,
    JOBS,
    NAME,
    PODS,
    SERVICES,
    UID,
    Cluster,
    fake_cluster,
    rollout_body,
    spec,
)

CONFIRM = "GET leases/cro-lock-web"
TARGET_KINDS = ("deployments", "services", "jobs", "pods", "httproutes", "ingresses")
WEB = {objects.TARGET_LABEL: "web"}


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with fake_cluster() as made:
        yield made


def to_target(entry: str) -> bool:
    """A write to an object of the target (not a dry run)."""
    method, _, what = entry.partition(" ")
    return method != "GET" and what.startswith(TARGET_KINDS) and not what.endswith("?dryRun")


def issued_together(entry: str, before: str) -> bool:
    """Two writes of one action issued at once (one gather), which share one
    confirmation that started after both were issued: the canary's independent
    objects applied, or the objects of one kind a cleanup deletes."""
    canary_objects = ("deployments/web-canary", "services/web-canary")
    (method, what), (method_before, what_before) = entry.split(" "), before.split(" ")
    if method == method_before == "PATCH":
        return what in canary_objects and what_before in canary_objects
    return method == method_before == "DELETE" and what.split("/")[0] == what_before.split("/")[0]


def in_order(cluster: Cluster) -> list[str]:
    """Every request in the order the cluster got them; a read of the Lease from the
    API server itself (not the cache) is CONFIRM, any other read of it "cached"."""
    return [
        ("cached " + r if view is not cluster.fresh else r) if r == CONFIRM else r
        for view, r in cluster.kube.store.sent
    ]


def unfenced(requests: list[str]) -> list[tuple[int, str]]:
    """The writes to the target not right after a fencing read, in request order (the
    Events, written in the background, left out)."""
    seen = [r for r in requests if not r.startswith("POST events")]
    return [
        (i, r)
        for i, r in enumerate(seen)
        if to_target(r)
        and not (i > 0 and (seen[i - 1] == CONFIRM or issued_together(r, seen[i - 1])))
    ]


async def act_on(ctx: ReconcileContext, actions: list[Action]) -> None:
    await act.act(ctx, Plan(status=ctx.rollout.status, actions=actions))


def mark_ready(cluster: Cluster) -> None:
    """What the Deployment controller would do: every Deployment at its size, ready."""
    for key, body in list(cluster.kube.store.objects.items()):
        if key[1] != "deployments":
            continue
        want = int(body["spec"].get("replicas", 1))
        body["status"] = {
            "observedGeneration": body["metadata"].get("generation", 1),
            "replicas": want,
            "readyReplicas": want,
            "availableReplicas": want,
            "updatedReplicas": want,
        }


async def run_to_the_end(cluster: Cluster, steps: list[dict[str, object]]) -> str:
    cluster.with_target()
    cluster.add_rollout(rollout_body(spec(steps=steps)))
    phase = ""
    for _ in range(40):
        phase = (await cluster.reconcile())["status"]["phase"]
        if phase in ("Succeeded", "Failed"):
            break
        mark_ready(cluster)
    return phase


# ------------------------------------------------------------------- whole runs


async def test_a_whole_run_reads_the_lease_right_before_each_write_to_the_target(
    cluster: Cluster,
) -> None:
    steps = [{"canary": {"replicas": 1}}, {"setWeight": 50}, {"promote": {}}]
    assert await run_to_the_end(cluster, steps) == "Succeeded"
    requests = in_order(cluster)
    assert any(to_target(r) for r in requests)
    assert unfenced(in_order(cluster)) == []


async def test_what_a_whole_run_costs(cluster: Cluster) -> None:
    """The fencing reads of a run ([canary 1, promote], replicas router): one per write
    to the target, but writes issued together share one (the canary's Deployment and
    Service applied at once). Measured: 5 fencing reads for 6 writes to the target, 42
    requests to the API server in all (the cache's reads left out; one is the fresh read
    of the rollout when its run starts, reconcile/decide.py). Before each write was
    fenced on its own (one read per action), the same run made 4 and 40: the cleanup's
    deletions of the canary Deployment and Service are read for each."""
    steps: list[dict[str, object]] = [{"canary": {"replicas": 1}}, {"promote": {}}]
    assert await run_to_the_end(cluster, steps) == "Succeeded"
    requests = in_order(cluster)
    fencing = requests.count(CONFIRM)
    writes = [r for r in requests if to_target(r)]
    to_api = len(cluster.fresh.requests) + sum(
        not r.startswith("GET") for r in cluster.kube.requests
    )
    assert unfenced(requests) == []
    assert (fencing, len(writes), to_api) == (5, 6, 42), (fencing, writes, to_api)


# ------------------------------------------------------------------ one action


async def test_after_each_list_the_deletes_are_confirmed_and_name_the_uid_as_listed(
    cluster: Cluster,
) -> None:
    ctx = await cluster.observed(await cluster.cleaning_up())
    run = f"{UID}/{ctx.rollout.status.run}"
    cluster.kube.put(f"{PODS}/c1", pod("c1", run))
    cluster.kube.put(f"{PODS}/c2", pod("c2", run))
    uids = {
        name: (cluster.kube.stored(where) or {})["metadata"]["uid"]
        for name, where in (
            ("deployments/web-canary", f"{DEPLOYMENTS}/web-canary"),
            ("services/web-canary", f"{SERVICES}/web-canary"),
            ("pods/c1", f"{PODS}/c1"),
            ("pods/c2", f"{PODS}/c2"),
        )
    }
    cluster.clear()
    await act_on(ctx, [DeleteCanaryObjects()])
    writes = [r for r in in_order(cluster) if r == CONFIRM or to_target(r)]
    assert writes == [
        CONFIRM,
        "DELETE deployments/web-canary",
        CONFIRM,
        "DELETE services/web-canary",
        CONFIRM,
        "DELETE pods/c1",  # the pods deleted at once: one confirmation, started
        "DELETE pods/c2",  # after both deletions were issued
    ]
    assert unfenced(in_order(cluster)) == []
    sent = {entry.split(" ")[1]: body for entry, body in cluster.kube.bodies}
    assert {what: body["preconditions"] for what, body in sent.items()} == {
        what: {"uid": uid} for what, uid in uids.items()
    }


async def test_a_409_retry_is_preceded_by_a_new_fencing_read(cluster: Cluster) -> None:
    ctx = await cluster.running()
    cluster.kube.fail_next("PATCH", "deployments/web", ApiException(409, "Conflict"))
    await act_on(ctx, [ScaleStable(replicas=2, original=3, floor=1)])
    assert [r for r in in_order(cluster) if r == CONFIRM or "deployments/web" in r] == [
        "GET deployments/web",  # from the cache
        CONFIRM,
        "PATCH deployments/web",  # lost a race
        "GET deployments/web",  # read again, from the API server
        CONFIRM,  # and confirmed again
        "PATCH deployments/web",
    ]
    scaled = cluster.kube.stored(f"{DEPLOYMENTS}/web")
    assert scaled is not None and scaled["spec"]["replicas"] == 2


async def test_a_reset_after_a_409_is_confirmed_again(cluster: Cluster) -> None:
    ctx = await cluster.running()
    await act_on(ctx, [ScaleStable(replicas=2, original=3, floor=1)])
    cluster.clear()
    cluster.kube.fail_next("PATCH", "deployments/web", ApiException(409, "Conflict"))
    await act_on(ctx, [ResetRoute()])
    assert unfenced(in_order(cluster)) == []
    stable = [r for r in in_order(cluster) if r == CONFIRM or "deployments/web" in r]
    assert stable[:6] == [
        "GET deployments/web",
        CONFIRM,
        "PATCH deployments/web",  # lost a race
        "GET deployments/web",
        CONFIRM,
        "PATCH deployments/web",
    ]


async def test_a_reset_never_scales_a_canary_made_again_since_it_was_read(
    cluster: Cluster,
) -> None:
    ctx = await cluster.running()
    where = f"{DEPLOYMENTS}/web-canary"
    read = cluster.kube.stored(where)
    assert read is not None
    again = {**read, "metadata": {**read["metadata"], "uid": "uid-next-runs-canary"}}
    router = ctx.router(1, cluster.kube)

    class AsRead:
        """The cache, still showing the canary as this run read it."""

        async def get(self, resource_path: str) -> object:
            return read if resource_path == where else await cluster.kube.get(resource_path)

        def __getattr__(self, name: str) -> object:
            return getattr(cluster.kube, name)

    cluster.kube.put(where, again)  # the next run's, under the same name
    router.inner.kube = AsRead()  # type: ignore[attr-defined]
    with pytest.raises(ApiException) as refused:
        await router.reset()
    assert refused.value.status == 422
    now = cluster.kube.stored(where)
    assert now is not None and now["spec"]["replicas"] == read["spec"]["replicas"]


# ------------------------------------------------------------- whose objects


def pod(name: str, run: str) -> dict[str, object]:
    labels = {**WEB, objects.ROLE_LABEL: "canary"}
    return {
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {canary.RUN_ANNOTATION: run},
        }
    }


def another_runs_job(cluster: Cluster) -> str:
    labels = {objects.MANAGED_BY: objects.OPERATOR, **WEB, objects.PURPOSE_LABEL: "test"}
    meta = {
        "name": "b-r1-smoke",
        "labels": labels,
        "annotations": {canary.RUN_ANNOTATION: "uid-b/1"},
        "ownerReferences": [{"uid": "uid-b"}],
    }
    cluster.kube.put(f"{JOBS}/b-r1-smoke", {"metadata": meta})
    return f"{JOBS}/b-r1-smoke"


async def test_a_cleanup_never_deletes_an_object_of_another_run(cluster: Cluster) -> None:
    body = await cluster.cleaning_up()
    ctx = await cluster.observed(body)
    theirs = [another_runs_job(cluster), f"{PODS}/b-pod"]
    cluster.kube.put(f"{PODS}/b-pod", pod("b-pod", "uid-b/1"))
    ctx = await cluster.observed(cluster.rollout())
    plan = await decide(ctx)
    assert any(isinstance(a, DeleteCanaryObjects) for a in plan.actions)
    cluster.clear()
    result, error = await act.act_on(ctx, plan)
    # This run's canary went; the other run's Job and pod stayed, and the cleanup says
    # so (and backs off) instead of deleting them.
    assert cluster.kube.stored(f"{DEPLOYMENTS}/web-canary") is None
    assert all(cluster.kube.stored(where) is not None for where in theirs)
    assert not any(what.startswith(("jobs/b-", "pods/b-")) for what, _ in cluster.kube.deletions)
    assert error is None and result.status.phase == Phase.CLEANING_UP
    message = result.status.message or ""
    assert "job b-r1-smoke" in message and "pod b-pod" in message, message


async def test_a_recovery_deletes_what_a_previous_holder_left(cluster: Cluster) -> None:
    ctx = await cluster.running()
    theirs = [another_runs_job(cluster), f"{PODS}/b-pod"]
    cluster.kube.put(f"{PODS}/b-pod", pod("b-pod", "uid-b/1"))
    queued = ctx.rollout.status.model_copy(update={"phase": Phase.QUEUED})
    ctx.rollout = replace(ctx.rollout, status=queued)
    assert canary.recovering(ctx.rollout.status.phase)
    cluster.clear()
    await act_on(ctx, [DeleteCanaryObjects()])
    assert all(cluster.kube.stored(where) is None for where in theirs)
    assert unfenced(in_order(cluster)) == []


async def test_only_the_run_of_the_plan_marks_what_it_makes(cluster: Cluster) -> None:
    """A plan that starts run 2 applies the canary as run 2's, though the status as
    read still says run 1."""
    ctx = await cluster.running()
    canary_now = cluster.kube.stored(f"{DEPLOYMENTS}/web-canary")
    assert canary_now is not None
    assert canary_now["metadata"]["annotations"][canary.RUN_ANNOTATION] == f"{UID}/1"
    stale = await canary.to_apply(ctx, 1, run=2)
    assert {m["metadata"]["annotations"][canary.RUN_ANNOTATION] for _, m in stale} == {f"{UID}/2"}
    assert NAME  # the rollout's name is in the label, the run in the annotation


async def test_the_plan_not_the_status_as_read_says_whether_a_cleanup_is_a_recovery(
    cluster: Cluster,
) -> None:
    """A rollout read as ended whose plan starts its next run (a spec change, a retry)
    and holds the lock recovers the target: what run 1 left goes, though the plan is
    run 2's."""
    ctx = await cluster.running()
    ended = ctx.rollout.status.model_copy(update={"phase": Phase.SUCCEEDED})
    ctx.rollout = replace(ctx.rollout, status=ended)
    starting = ended.model_copy(update={"phase": Phase.QUEUED, "run": ended.run + 1})
    cluster.clear()
    await act.act(ctx, Plan(status=starting, actions=[DeleteCanaryObjects()]))
    assert cluster.kube.stored(f"{DEPLOYMENTS}/web-canary") is None
    assert cluster.kube.stored(f"{SERVICES}/web-canary") is None
