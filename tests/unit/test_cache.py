"""The watch-fed caches (kube/cache.py): list+watch bookkeeping, resourceVersion
order, write-through, relist on 410, and which reads a store may answer.

The API here is scripted: a 410 in the middle of a watch, or a watch event older than
a write, cannot be produced on demand by a real server. The real API server is
exercised by e2e/test_cached_reads.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import pytest

from canary_operator.kube import cache
from canary_operator.kube.api import Kube, ResourceKind, parse_path, verb
from canary_operator.kube.cache import Cache, CachedKube, Informer, matches, newer_or_same, strip
from tests.harness.cluster import wait_for_async

NS = "ns"


def obj(name: str, rv: int, uid: str = "u1", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": uid,
            "resourceVersion": str(rv),
            "labels": dict(labels),
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {"replicas": rv},
    }


class ScriptedApi:
    """Answers a list with `items`, then serves watches from `watches` (one list of
    events per watch; a watch with nothing left waits until cancelled)."""

    def __init__(self, items: list[dict[str, Any]], rv: int = 10) -> None:
        self.items = items
        self.rv = rv
        self.watches: list[list[Any]] = []  # events, or an asyncio.Event to wait for
        self.list_calls = 0
        self.watch_queries: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.api_client = None
        self.field_manager = "canary-operator"
        self.watch_failures: list[Exception] = []
        self.relists: list[tuple[list[dict[str, Any]], int]] = []  # later lists' answers

    async def request(
        self,
        method: str,
        resource_path: str,
        body: Any = None,
        query: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        self.requests.append((method, resource_path))
        if method == "GET":
            self.list_calls += 1
            if self.list_calls > 1 and self.relists:
                self.items, self.rv = self.relists.pop(0)
            return {"metadata": {"resourceVersion": str(self.rv)}, "items": list(self.items)}
        return body

    async def get(self, resource_path: str) -> dict[str, Any] | None:
        self.requests.append(("GET", resource_path))
        return {"metadata": {"name": "direct"}}

    async def list(self, resource_path: str, label_selector: str | None = None) -> list[Any]:
        self.requests.append(("LIST", resource_path))
        return [{"metadata": {"name": "direct"}}]

    async def watch(
        self, resource_path: str, query: Mapping[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        self.watch_queries.append(dict(query))
        if self.watch_failures:
            raise self.watch_failures.pop(0)
        if not self.watches:
            await asyncio.Event().wait()  # an idle watch: nothing happens
        for event in self.watches.pop(0):
            if isinstance(event, asyncio.Event):
                await event.wait()  # the test lets the watch go on
                continue
            yield event


def informer_of(api: ScriptedApi, selector: str | None = None) -> tuple[Informer, list[Any]]:
    seen: list[tuple[str, str, str]] = []
    informer = Informer(
        cast(Kube, api),
        cache.DEPLOYMENTS,
        NS,
        selector,
        handlers=[
            lambda t, o: seen.append(
                (t, o["metadata"]["name"], o["metadata"].get("resourceVersion"))
            )
        ],
    )
    return informer, seen


async def run_until(informer: Informer, condition: Any, message: str) -> None:
    informer.start()
    try:
        await wait_for_async(condition, 5, message=message)
    finally:
        await informer.stop()


# ------------------------------------------------------------------ pure parts


@pytest.mark.parametrize(
    ("resource_path", "expected"),
    [
        ("/apis/apps/v1/namespaces/ns/deployments/web", ("deployments", "ns", "web", "")),
        ("/apis/apps/v1/namespaces/ns/deployments", ("deployments", "ns", None, "")),
        ("/api/v1/namespaces/ns/pods", ("pods", "ns", None, "")),
        ("/api/v1/namespaces/ns/services/web", ("services", "ns", "web", "")),
        ("/apis/apps/v1/deployments", ("deployments", None, None, "")),
        (
            "/apis/canary-operator.dev/v1alpha1/namespaces/ns/canaryrollouts/r/status",
            ("canaryrollouts", "ns", "r", "status"),
        ),
        ("/api/v1/namespaces/ns/pods/p/log", ("pods", "ns", "p", "log")),
    ],
)
def test_parse_path(resource_path: str, expected: tuple[Any, ...]) -> None:
    where = parse_path(resource_path)
    assert where is not None
    assert (where[0].plural, *where[1:]) == expected


def test_parse_path_of_something_else() -> None:
    assert parse_path("/healthz") is None
    assert parse_path("/apis") is None


@pytest.mark.parametrize(
    ("method", "resource_path", "query", "expected"),
    [
        ("GET", "/api/v1/namespaces/ns/pods/p", None, "get"),
        ("GET", "/api/v1/namespaces/ns/pods", None, "list"),
        ("GET", "/api/v1/namespaces/ns/pods", {"watch": "true"}, "watch"),
        ("POST", "/api/v1/namespaces/ns/pods", None, "create"),
        ("PUT", "/api/v1/namespaces/ns/pods/p", None, "update"),
        ("PATCH", "/api/v1/namespaces/ns/pods/p", None, "patch"),
        ("DELETE", "/api/v1/namespaces/ns/pods/p", None, "delete"),
    ],
)
def test_verb(method: str, resource_path: str, query: Any, expected: str) -> None:
    assert verb(method, resource_path, query) == expected


def test_selector_matching() -> None:
    labels = {"a": "1", "b": "2"}
    assert matches(labels, None)
    assert matches(labels, "a=1")
    assert matches(labels, "a==1,b")
    assert not matches(labels, "a=2")
    assert not matches(labels, "c")
    assert not matches(None, "a")
    with pytest.raises(ValueError, match="not supported"):
        matches(labels, "a!=1")


def test_what_an_informer_covers() -> None:
    api = cast(Kube, ScriptedApi([]))
    role = Informer(api, cache.PODS, NS, "canary-operator.dev/role")
    assert role.covers(NS, "canary-operator.dev/target=web,canary-operator.dev/role")
    assert role.covers(NS, "canary-operator.dev/role=canary")
    assert not role.covers(NS, "canary-operator.dev/target=web")  # would miss other pods
    assert not role.covers(NS, None)
    assert not role.covers("other", "canary-operator.dev/role")
    assert not role.covers(NS, "canary-operator.dev/role!=x")  # unsupported: go direct
    managed = Informer(api, cache.JOBS, None, "app.kubernetes.io/managed-by=canary-operator")
    assert managed.covers("any", "app.kubernetes.io/managed-by=canary-operator,x=y")
    assert not managed.covers("any", "app.kubernetes.io/managed-by=someone-else")
    everything = Informer(api, cache.SERVICES)
    assert everything.covers("any", None) and everything.covers("any", "x=y")


def test_newer_or_same_compares_numeric_versions_only() -> None:
    assert newer_or_same(obj("a", 5), obj("a", 5))
    assert newer_or_same(obj("a", 10), obj("a", 9))  # numerically, not as text
    assert not newer_or_same(obj("a", 9), obj("a", 10))
    opaque = {"metadata": {"resourceVersion": "abc"}}
    assert newer_or_same(opaque, obj("a", 10)) and newer_or_same(obj("a", 1), opaque)


def test_strip_keeps_what_planning_reads() -> None:
    body = obj("web", 1)
    body["metadata"]["annotations"] = {
        cache.LAST_APPLIED: "{...}",
        "canary-operator.dev/promotion": "{}",
    }
    stripped = strip(body, cache.DEPLOYMENTS)
    assert "managedFields" not in stripped["metadata"]
    assert stripped["metadata"]["annotations"] == {"canary-operator.dev/promotion": "{}"}
    assert stripped["spec"] == body["spec"]
    assert "managedFields" in body["metadata"]  # the input is left alone
    pod = {**obj("p", 1), "status": {"phase": "Running"}}
    assert strip(pod, cache.PODS) == {
        "metadata": {k: v for k, v in pod["metadata"].items() if k != "managedFields"},
        "status": {"phase": "Running"},
    }
    placed = {**pod, "spec": {"nodeName": "n1", "containers": [{"name": "app"}]}}
    assert strip(placed, cache.PODS)["spec"] == {"nodeName": "n1"}


# -------------------------------------------------------------------- informer


async def test_list_then_watch_keeps_the_store_current() -> None:
    api = ScriptedApi([obj("a", 3), obj("b", 4)], rv=10)
    api.watches = [
        [
            {"type": "MODIFIED", "object": obj("a", 11)},
            {"type": "ADDED", "object": obj("c", 12)},
            {"type": "DELETED", "object": obj("b", 13)},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "14"}}},
        ]
    ]
    informer, seen = informer_of(api)
    await run_until(informer, lambda: len(seen) == 5, "list and watch events applied")
    assert seen == [
        ("ADDED", "a", "3"),
        ("ADDED", "b", "4"),
        ("MODIFIED", "a", "11"),
        ("ADDED", "c", "12"),
        ("DELETED", "b", "13"),
    ]
    assert informer.synced.is_set()
    assert sorted(o["metadata"]["name"] for o in informer.list(NS, None)) == ["a", "c"]
    a = informer.get(NS, "a")
    assert a is not None and a["spec"]["replicas"] == 11
    assert "managedFields" not in a["metadata"]
    assert api.watch_queries[0]["resourceVersion"] == "10"  # the list's version
    assert informer._resource_version == "14"  # bookmarks move it on


async def test_a_watch_that_ends_is_resumed_from_its_last_version_without_a_relist() -> None:
    api = ScriptedApi([obj("a", 3)], rv=10)
    api.watches = [[{"type": "MODIFIED", "object": obj("a", 11)}], []]
    informer, _ = informer_of(api)
    await run_until(informer, lambda: len(api.watch_queries) >= 2, "the watch resumed")
    assert api.list_calls == 1
    assert api.watch_queries[1]["resourceVersion"] == "11"


async def test_410_gone_relists_and_reports_what_changed_meanwhile() -> None:
    api = ScriptedApi([obj("a", 3), obj("b", 4)], rv=10)
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    api.watches = [[gone]]
    # While the watch was gone: b was deleted, a changed, d appeared.
    api.relists = [([obj("a", 20), obj("d", 21)], 22)]
    informer, seen = informer_of(api)
    await run_until(informer, lambda: len(seen) == 5, "relisted")
    assert api.list_calls == 2
    assert seen[:2] == [("ADDED", "a", "3"), ("ADDED", "b", "4")]
    assert sorted(seen[2:]) == [
        ("ADDED", "d", "21"),
        ("DELETED", "b", "4"),
        ("MODIFIED", "a", "20"),
    ]
    assert sorted(o["metadata"]["name"] for o in informer.list(NS, None)) == ["a", "d"]
    assert api.watch_queries[-1]["resourceVersion"] == "22"


async def test_a_failing_watch_keeps_the_last_state_and_recovers() -> None:
    api = ScriptedApi([obj("a", 3)], rv=10)
    api.watch_failures = [OSError("connection reset")]
    api.watches = [[{"type": "MODIFIED", "object": obj("a", 11)}]]
    informer, seen = informer_of(api)
    await run_until(informer, lambda: len(seen) == 2, "recovered after the failure")
    got = informer.get(NS, "a")
    assert got is not None and got["metadata"]["resourceVersion"] == "11"
    assert api.list_calls == 1  # reconnected from its version, no relist


async def test_an_event_older_than_our_own_write_is_not_put_back() -> None:
    api = ScriptedApi([obj("a", 3)], rv=10)
    written = asyncio.Event()
    api.watches = [[written, {"type": "MODIFIED", "object": obj("a", 11)}]]
    informer, seen = informer_of(api)
    informer.start()
    try:
        await wait_for_async(lambda: informer.synced.is_set(), 5, message="synced")
        informer.put(obj("a", 12))  # our write's answer, before the watch brings 11
        written.set()
        await wait_for_async(lambda: informer.events == 1, 5, message="event 11 seen")
    finally:
        await informer.stop()
    got = informer.get(NS, "a")
    assert got is not None and got["metadata"]["resourceVersion"] == "12"
    assert ("MODIFIED", "a", "11") not in seen


async def test_a_relist_keeps_what_we_wrote_after_it_was_taken() -> None:
    api = ScriptedApi([obj("a", 3)], rv=10)
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    written = asyncio.Event()
    api.watches = [[written, gone]]
    api.relists = [([obj("a", 4)], 15)]  # listed before our writes below landed
    informer, seen = informer_of(api)
    informer.start()
    try:
        await wait_for_async(lambda: informer.synced.is_set(), 5, message="synced")
        informer.put(obj("a", 16))
        informer.put(obj("new", 17))
        written.set()
        await wait_for_async(lambda: api.list_calls == 2, 5, message="relisted")
        await wait_for_async(lambda: len(api.watch_queries) == 2, 5, message="watching again")
    finally:
        await informer.stop()
    a, new = informer.get(NS, "a"), informer.get(NS, "new")
    assert a is not None and a["metadata"]["resourceVersion"] == "16"
    assert new is not None
    assert [e for e in seen if e[0] == "DELETED"] == []


async def test_a_recreated_object_is_reported_as_added() -> None:
    api = ScriptedApi([obj("a", 3, uid="old")], rv=10)
    api.watches = [[{"type": "MODIFIED", "object": obj("a", 11, uid="new")}]]
    informer, seen = informer_of(api)
    await run_until(informer, lambda: len(seen) == 2, "recreated")
    assert seen[1] == ("ADDED", "a", "11")


async def test_labels_narrow_what_is_stored_and_written_through() -> None:
    api = ScriptedApi([obj("mine", 3, role="canary"), obj("theirs", 4)], rv=10)
    api.watches = [[]]
    informer, _ = informer_of(api, selector="role")
    # The server applies the selector; what it sends is stored. Write-through checks it.
    informer.put(obj("other", 12))
    informer.put(obj("ours", 13, role="canary"))
    assert informer.get(NS, "other") is None
    assert informer.get(NS, "ours") is not None


async def test_a_broken_handler_does_not_stop_the_watch() -> None:
    api = ScriptedApi([obj("a", 3)], rv=10)
    api.watches = [[{"type": "MODIFIED", "object": obj("a", 11)}]]
    informer = Informer(cast(Kube, api), cache.DEPLOYMENTS, NS, handlers=[lambda t, o: 1 / 0])
    await run_until(
        informer,
        lambda: (informer.get(NS, "a") or {}).get("spec", {}).get("replicas") == 11,
        "the event applied despite the handler",
    )


# ------------------------------------------------------------------ CachedKube


async def test_cached_kube_answers_synced_reads_and_writes_through() -> None:
    api = ScriptedApi([obj("web", 3)], rv=10)
    api.watches = [[]]
    store = Cache(cast(Kube, api), namespaces=(NS,))
    (deployments,) = store.add(cache.DEPLOYMENTS)
    (pods,) = store.add(cache.PODS, label_selector="role")
    kube = CachedKube(cast(Kube, api), store)
    where = "/apis/apps/v1/namespaces/ns/deployments"

    # Before the store has listed, reads go to the API server.
    assert (await kube.get(f"{where}/web")) == {"metadata": {"name": "direct"}}
    store.start()
    try:
        await wait_for_async(lambda: deployments.synced.is_set(), 5, message="synced")
        api.requests.clear()
        got = await kube.get(f"{where}/web")
        assert got is not None and got["spec"]["replicas"] == 3
        assert await kube.get(f"{where}/missing") is None  # absent = not found, no request
        assert [o["metadata"]["name"] for o in await kube.list(where, None)] == ["web"]
        await wait_for_async(lambda: pods.synced.is_set(), 5, message="pods synced")
        assert await kube.list("/api/v1/namespaces/ns/pods", "role,target=web") == []
        assert api.requests == []
        # Reads a store cannot answer go direct: another namespace, an uncovered selector,
        # an uncached kind, a subresource.
        await kube.list("/api/v1/namespaces/ns/pods", "job-name=x")
        await kube.get("/apis/apps/v1/namespaces/elsewhere/deployments/web")
        await kube.get("/api/v1/namespaces/ns/secrets/s")
        await kube.get("/api/v1/namespaces/ns/pods/p/log")
        assert len(api.requests) == 4
        # A store narrowed by labels answers a get of what it holds; what it lacks may
        # exist without the labels, so that is asked.
        pods.put({**obj("p1", 40, role="canary"), "status": {"phase": "Running"}})
        got = await kube.get("/api/v1/namespaces/ns/pods/p1")
        assert got is not None and got["status"]["phase"] == "Running"
        assert len(api.requests) == 4
        assert await kube.get("/api/v1/namespaces/ns/pods/p2") == {"metadata": {"name": "direct"}}
        assert len(api.requests) == 5
        pods.complete = True  # every object asked for by name carries the labels
        assert await kube.get("/api/v1/namespaces/ns/pods/p2") is None
        assert len(api.requests) == 5

        # A write's answer is readable at once; a dry run's and a subresource's are not.
        await kube.replace(f"{where}/web", obj("web", 30))
        await kube.request("POST", where, obj("dry", 31), query={"dryRun": "All"})
        await kube.request("PUT", f"{where}/web/status", obj("web", 32))
        got = await kube.get(f"{where}/web")
        assert got is not None and got["metadata"]["resourceVersion"] == "30"
        assert await kube.get(f"{where}/dry") is None
    finally:
        await store.stop()
    assert kube.hits >= 5


def test_informers_per_watched_namespace() -> None:
    store = Cache(cast(Kube, ScriptedApi([])), namespaces=("a", "b"))
    informers = store.add(cache.SERVICES)
    assert [i.namespace for i in informers] == ["a", "b"]
    assert Cache(cast(Kube, ScriptedApi([]))).add(cache.SERVICES)[0].namespace is None


def test_resource_kind_paths() -> None:
    assert ResourceKind("", "v1", "pods").path("ns", "p") == "/api/v1/namespaces/ns/pods/p"
    assert cache.JOBS.path() == "/apis/batch/v1/jobs"


def test_copy_json_is_a_deep_copy_readers_cannot_share() -> None:
    obj = {"metadata": {"labels": {"a": "1"}}, "spec": {"ports": [{"port": 80}]}, "n": 1}
    copied = cache.copy_json(obj)
    assert copied == obj
    copied["metadata"]["labels"]["a"] = "2"
    copied["spec"]["ports"][0]["port"] = 81
    copied["spec"]["ports"].append({})
    assert obj == {"metadata": {"labels": {"a": "1"}}, "spec": {"ports": [{"port": 80}]}, "n": 1}


async def test_an_answer_the_watch_has_already_gone_past_does_not_bring_back_a_deleted_object() -> (
    None
):
    """A write's (or a DELETE's) answer handled after the watch delivered a later
    deletion of that object must not put it back: cleanup would wait on a phantom."""
    api = ScriptedApi([obj("a", 3)], rv=10)
    api.watches = [[{"type": "DELETED", "object": obj("a", 12)}]]
    informer, _ = informer_of(api)
    await run_until(informer, lambda: informer.events == 1, "deletion seen")
    assert informer.get(NS, "a") is None
    informer.put(obj("a", 11))  # the answer, handled late
    assert informer.get(NS, "a") is None
    # An immediate deletion (a pod no node runs) answers with the object at the
    # deletion's own version, the version of the DELETED event the watch delivered.
    informer.put(obj("a", 12))
    assert informer.get(NS, "a") is None
    informer.put(obj("b", 13))  # newer than anything the watch saw: kept
    assert informer.get(NS, "b") is not None


async def test_a_delete_answered_with_the_object_being_deleted_is_kept() -> None:
    """A Foreground deletion answers with the object, deletionTimestamp set: the next
    reconcile reads it as being deleted (and does not delete it again); a DELETE
    answered with a Status changes nothing."""
    api = ScriptedApi([obj("web-canary", 3)], rv=10)
    api.watches = [[]]
    store = Cache(cast(Kube, api), namespaces=(NS,))
    (deployments,) = store.add(cache.DEPLOYMENTS)
    kube = CachedKube(cast(Kube, api), store)
    where = "/apis/apps/v1/namespaces/ns/deployments"
    store.start()
    try:
        await wait_for_async(lambda: deployments.synced.is_set(), 5, message="synced")
        deleting = obj("web-canary", 11)
        deleting["metadata"]["deletionTimestamp"] = "2026-12-07T00:00:00Z"
        kube.answered("DELETE", f"{where}/web-canary", None, deleting)
        got = await kube.get(f"{where}/web-canary")
        assert got is not None and got["metadata"]["deletionTimestamp"]
        kube.answered("DELETE", f"{where}/web-canary", None, {"kind": "Status", "code": 200})
        still = await kube.get(f"{where}/web-canary")
        assert still is not None and still["metadata"]["resourceVersion"] == "11"
    finally:
        await store.stop()
