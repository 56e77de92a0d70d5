"""Background checks: started once per key, answers kept until recorded, unwanted
calls cancelled, runs kept apart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from canary_operator.checks.inflight import CheckRunner, RunRef
from tests.harness.cluster import wait_for_async

RUN1 = RunRef("ns", "web-v2", "uid-1", 1)
RUN2 = RunRef("ns", "web-v2", "uid-1", 2)


class Endpoint:
    """A call the test answers by hand; counts how often it was called."""

    def __init__(self) -> None:
        self.calls = 0
        self.answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.cancelled = asyncio.Event()

    async def __call__(self) -> str:
        self.calls += 1
        try:
            return await asyncio.shield(self.answer)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def until(predicate: Callable[[], object]) -> None:
    await wait_for_async(predicate, 5, interval=0.01)


async def test_a_call_runs_once_per_key_and_its_answer_wakes_the_rollout() -> None:
    woken: list[tuple[str, str]] = []
    runner = CheckRunner(wake=lambda ns, name: woken.append((ns, name)))
    endpoint = Endpoint()
    assert runner.ensure(RUN1, "s2", endpoint, str)
    assert not runner.ensure(RUN1, "s2", endpoint, str)  # asked again: nothing new
    await until(lambda: endpoint.calls == 1)
    assert runner.observe(RUN1) == ({}, frozenset({"s2"})) and runner.running() == 1
    endpoint.answer.set_result("HTTP 200")
    await until(lambda: woken)
    assert woken == [("ns", "web-v2")]
    assert runner.observe(RUN1) == ({"s2": "HTTP 200"}, frozenset())
    # Answered but not yet recorded: asking again still starts nothing.
    assert not runner.ensure(RUN1, "s2", endpoint, str) and endpoint.calls == 1


async def test_an_answer_is_kept_until_a_status_write_no_longer_asks_for_it() -> None:
    runner = CheckRunner(wake=lambda ns, name: None)
    endpoint = Endpoint()
    endpoint.answer.set_result("ok")
    runner.ensure(RUN1, "s2", endpoint, str)
    await until(lambda: runner.observe(RUN1)[0])
    runner.retain(RUN1, {"s2"})  # the write still asks for it (e.g. a lost race)
    assert runner.observe(RUN1)[0] == {"s2": "ok"}
    runner.retain(RUN1, set())  # recorded in status: dropped
    assert runner.observe(RUN1) == ({}, frozenset()) and not runner.known(RUN1, "s2")


async def test_a_call_no_plan_wants_is_cancelled() -> None:
    runner = CheckRunner(wake=lambda ns, name: None)
    hanging, other = Endpoint(), Endpoint()
    runner.ensure(RUN1, "s2-1", hanging, str)
    runner.ensure(RUN1, "s2-2", other, str)
    await until(lambda: hanging.calls and other.calls)
    runner.retain(RUN1, {"s2-2"})  # e.g. a sibling failed, or the user aborted
    await asyncio.wait_for(hanging.cancelled.wait(), 5)
    assert runner.observe(RUN1) == ({}, frozenset({"s2-2"}))
    runner.forget("ns", "web-v2")  # the rollout was deleted
    await asyncio.wait_for(other.cancelled.wait(), 5)
    assert runner.running() == 0


async def test_a_new_run_cancels_what_the_old_run_left_running() -> None:
    runner = CheckRunner(wake=lambda ns, name: None)
    old, new = Endpoint(), Endpoint()
    runner.ensure(RUN1, "s2", old, str)
    await until(lambda: old.calls)
    runner.ensure(RUN2, "s2", new, str)  # same key, another run: not the same call
    await asyncio.wait_for(old.cancelled.wait(), 5)
    await until(lambda: new.calls)
    assert runner.observe(RUN1) == ({}, frozenset())
    assert runner.observe(RUN2) == ({}, frozenset({"s2"}))
    new.answer.set_result("x")
    await until(lambda: runner.observe(RUN2)[0])
    assert runner.observe(RUN2)[0] == {"s2": "x"}


async def test_a_status_write_of_a_new_run_cancels_the_old_runs_calls() -> None:
    runner = CheckRunner(wake=lambda ns, name: None)
    old = Endpoint()
    runner.ensure(RUN1, "c1-a0", old, str)
    await until(lambda: old.calls)
    runner.retain(RUN2, set())  # the status now records run 2 (spec changed, cleaned up)
    await asyncio.wait_for(old.cancelled.wait(), 5)
    assert runner.observe(RUN1) == ({}, frozenset()) and runner.running() == 0


async def test_an_unexpected_exception_becomes_an_answer() -> None:
    runner = CheckRunner(wake=lambda ns, name: None)

    async def broken() -> str:
        raise RuntimeError("boom")

    runner.ensure(RUN1, "s2", broken, lambda exc: f"failed: {exc}")
    await until(lambda: runner.observe(RUN1)[0])
    assert runner.observe(RUN1)[0] == {"s2": "failed: boom"}


async def test_stop_cancels_everything() -> None:
    runner = CheckRunner(wake=lambda ns, name: None)
    endpoints = [Endpoint() for _ in range(3)]
    for n, endpoint in enumerate(endpoints):
        runner.ensure(RunRef("ns", f"r{n}", "u", 1), "s1", endpoint, str)
    await until(lambda: all(e.calls for e in endpoints))
    await runner.stop()
    assert all(e.cancelled.is_set() for e in endpoints) and runner.running() == 0
