"""FencedWrites (kube/api.py): each write to the target is preceded by a fencing check
of its own, started after the write was issued (writes issued together share one such
check); an action that writes nothing costs no check at all."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from canary_operator.kube.api import FencedWrites, Kube
from tests.harness.fake_api import RawResponse

TARGET = "/apis/apps/v1/namespaces/ns/deployments/web"


class Recording:
    """An API client that logs each call, answering every one with an object."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.user_agent = ""

    async def call_api(self, resource_path: str, method: str, **kw: Any) -> RawResponse:
        self.log.append(method)
        return RawResponse(200, {"metadata": {"name": "web", "resourceVersion": "7"}})


def fenced(log: list[str], fails: bool = False) -> FencedWrites:
    async def confirm() -> None:
        log.append("confirm")
        await asyncio.sleep(0)
        if fails:
            raise LookupError("lock lost")

    return FencedWrites(Kube(Recording(log)), confirm)  # type: ignore[arg-type]


async def test_reads_alone_confirm_nothing() -> None:
    log: list[str] = []
    kube = fenced(log)
    await kube.get(TARGET)
    await kube.list(TARGET.rsplit("/", 1)[0], "role=canary")
    assert log == ["GET", "GET"]


async def test_each_write_is_confirmed_on_its_own() -> None:
    log: list[str] = []
    kube = fenced(log)
    await kube.get(TARGET)
    await kube.merge_patch(TARGET, {"spec": {"replicas": 2}})
    await kube.list(TARGET.rsplit("/", 1)[0], "role=canary")
    await kube.delete(TARGET)
    await kube.replace(TARGET, {"metadata": {"name": "web"}})
    # A write after a list, after another write: confirmed again, every time.
    assert log == ["GET", "confirm", "PATCH", "GET", "confirm", "DELETE", "confirm", "PUT"]
    assert kube.confirmations == 3


async def test_writes_issued_together_share_one_confirmation_started_after_all() -> None:
    log: list[str] = []
    kube = fenced(log)
    await asyncio.gather(kube.apply(TARGET, {}), kube.apply(TARGET + "-2", {}))
    assert log == ["confirm", "PATCH", "PATCH"]
    # The next one, issued after those: a confirmation of its own.
    await kube.apply(TARGET + "-3", {})
    assert log == ["confirm", "PATCH", "PATCH", "confirm", "PATCH"]


async def test_a_write_issued_while_a_confirmation_runs_waits_for_the_next() -> None:
    """A confirmation that started before a write was issued is not that write's."""
    log: list[str] = []
    started = [asyncio.Event(), asyncio.Event()]
    release = asyncio.Event()

    async def confirm() -> None:
        n = log.count("confirm")
        log.append("confirm")
        started[n].set()
        await release.wait()

    kube = FencedWrites(Kube(Recording(log)), confirm)  # type: ignore[arg-type]
    first = asyncio.ensure_future(kube.apply(TARGET, {}))
    await started[0].wait()
    second = asyncio.ensure_future(kube.apply(TARGET + "-2", {}))
    await started[1].wait()  # the second write's own check, not the first one's
    assert log == ["confirm", "confirm"]
    release.set()
    await asyncio.gather(first, second)
    assert log == ["confirm", "confirm", "PATCH", "PATCH"]
    assert kube.confirmations == 2


async def test_a_failed_confirmation_stops_every_write() -> None:
    log: list[str] = []
    kube = fenced(log, fails=True)
    with pytest.raises(LookupError):
        await kube.merge_patch(TARGET, {"spec": {"replicas": 2}})
    with pytest.raises(LookupError):
        await kube.create(TARGET.rsplit("/", 1)[0], {"metadata": {"name": "x"}})
    assert log == ["confirm", "confirm"]  # each asked again, neither sent


async def test_a_dry_run_is_no_side_effect() -> None:
    log: list[str] = []
    kube = fenced(log)
    await kube.request("POST", TARGET.rsplit("/", 1)[0], {}, query={"dryRun": "All"})
    assert log == ["POST"]
