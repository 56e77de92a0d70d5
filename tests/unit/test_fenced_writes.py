"""FencedWrites (kube/api.py): a write to the target is preceded by the fencing check,
once per action, and an action that writes nothing costs no check at all."""

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


async def test_the_first_write_is_confirmed_and_later_ones_share_that_answer() -> None:
    log: list[str] = []
    kube = fenced(log)
    await kube.get(TARGET)
    await kube.merge_patch(TARGET, {"spec": {"replicas": 2}})
    await kube.delete(TARGET)
    assert log == ["GET", "confirm", "PATCH", "DELETE"]


async def test_concurrent_writes_wait_for_one_confirmation() -> None:
    log: list[str] = []
    kube = fenced(log)
    await asyncio.gather(kube.apply(TARGET, {}), kube.apply(TARGET + "-2", {}))
    assert log == ["confirm", "PATCH", "PATCH"]


async def test_a_failed_confirmation_stops_every_write() -> None:
    log: list[str] = []
    kube = fenced(log, fails=True)
    with pytest.raises(LookupError):
        await kube.merge_patch(TARGET, {"spec": {"replicas": 2}})
    with pytest.raises(LookupError):
        await kube.create(TARGET.rsplit("/", 1)[0], {"metadata": {"name": "x"}})
    assert log == ["confirm"]


async def test_a_dry_run_is_no_side_effect() -> None:
    log: list[str] = []
    kube = fenced(log)
    await kube.request("POST", TARGET.rsplit("/", 1)[0], {}, query={"dryRun": "All"})
    assert log == ["POST"]
