"""ReadOnce (kube/api.py): within one fresh observation each GET and LIST reaches the API
server once, however many readers ask (the reconciler and the traffic router both read
the target and the canary when a run starts and when its cleanup is verified)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from canary_operator.kube.api import Kube, ReadOnce
from tests.harness.fake_api import RawResponse

TARGET = "/apis/apps/v1/namespaces/ns/deployments/web"
PODS = "/api/v1/namespaces/ns/pods"


class SlowApiClient:
    """Answers after `release` is set, so concurrent readers overlap for sure."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        self.user_agent = ""
        self.release = asyncio.Event()

    async def call_api(self, resource_path: str, method: str, **kw: Any) -> RawResponse:
        query = dict(kw["query_params"])
        self.calls.append((method, resource_path, query))
        await self.release.wait()
        if resource_path.endswith("/missing"):
            return RawResponse(404, {"kind": "Status", "code": 404})
        if resource_path == PODS:
            return RawResponse(200, {"items": [{"metadata": {"name": query.get("labelSelector")}}]})
        return RawResponse(200, {"metadata": {"name": "web", "resourceVersion": "7"}})


def reads() -> tuple[SlowApiClient, ReadOnce]:
    api = SlowApiClient()
    return api, ReadOnce(Kube(api))  # type: ignore[arg-type]


async def test_concurrent_readers_of_one_object_share_one_request() -> None:
    api, once = reads()
    readers = asyncio.gather(once.get(TARGET), once.get(TARGET), once.get(TARGET))
    await asyncio.sleep(0)  # let every reader ask before the answer comes
    api.release.set()
    answers = await readers
    assert [a["metadata"]["resourceVersion"] for a in answers] == ["7", "7", "7"]
    assert [c[:2] for c in api.calls] == [("GET", TARGET)]
    assert await once.get(TARGET) == answers[0]  # a later reader too: no second request
    assert len(api.calls) == 1


async def test_absence_is_read_once_too() -> None:
    api, once = reads()
    api.release.set()
    missing = TARGET.replace("web", "missing")
    assert await once.get(missing) is None
    assert await once.get(missing) is None
    assert len(api.calls) == 1


async def test_lists_are_told_apart_by_selector() -> None:
    api, once = reads()
    api.release.set()
    a = await once.list(PODS, "role=canary")
    b = await once.list(PODS, "role=baseline")
    again = await once.list(PODS, "role=canary")
    assert a[0]["metadata"]["name"] == "role=canary" and again == a
    assert b[0]["metadata"]["name"] == "role=baseline"
    assert [c[2].get("labelSelector") for c in api.calls] == ["role=canary", "role=baseline"]


async def test_each_observation_reads_anew() -> None:
    api = SlowApiClient()
    api.release.set()
    kube = Kube(api)  # type: ignore[arg-type]
    await ReadOnce(kube).get(TARGET)
    await ReadOnce(kube).get(TARGET)
    assert len(api.calls) == 2


async def test_one_reader_cancelled_leaves_the_read_to_the_others() -> None:
    api, once = reads()
    first = asyncio.ensure_future(once.get(TARGET))
    second = asyncio.ensure_future(once.get(TARGET))
    await asyncio.sleep(0)
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    api.release.set()
    assert (await second)["metadata"]["name"] == "web"
    assert len(api.calls) == 1


async def test_writes_pass_through_every_time() -> None:
    api, once = reads()
    api.release.set()
    await once.merge_patch(TARGET, {"spec": {"replicas": 2}})
    await once.merge_patch(TARGET, {"spec": {"replicas": 2}})
    assert [c[0] for c in api.calls] == ["PATCH", "PATCH"]


async def test_a_known_answer_stands_for_the_read() -> None:
    """A read made moments ago that is as good as a new one (the target read for the
    spec's checks, the Lease unchanged and free since) answers without a request."""
    api, once = reads()
    api.release.set()
    known = {"metadata": {"name": "web", "resourceVersion": "5"}}
    once.known(TARGET, known)
    once.known(TARGET.replace("web", "gone"), None)
    assert await once.get(TARGET) == known
    assert await once.get(TARGET.replace("web", "gone")) is None
    assert api.calls == []
    await once.get(TARGET.replace("web", "other"))
    assert len(api.calls) == 1
