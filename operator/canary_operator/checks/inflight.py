"""Calls to user endpoints (webhook tests, metric measurements) as tracked,
cancellable background work.

A reconcile never awaits a user endpoint. It asks the runner to *ensure* a call by
key (asking again while the call runs, or after it answered, does nothing) and goes
on; when the call ends its answer is kept and the rollout is woken, and the next
reconcile hands the answer to the state machine as an observation. After a status
write the reconciler tells the runner which keys the plan still asks for
(`retain`): answers now recorded in status are dropped, and calls no plan wants any
more (an abort, a deadline, a failed sibling in a parallel group, a lost lock) are
cancelled. An answer is only dropped after the status recording it was written, so
a lost write never loses it; a call lost with a restarted operator is asked for
again by the machine (nothing was recorded for it).

Calls belong to one run of one rollout (namespace, name, uid, run): a new run, or a
rollout of the same name created anew, cancels what the old one left running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Wake = Callable[[str, str], None]  # (namespace, name): reconcile this rollout soon


@dataclass(frozen=True)
class RunRef:
    namespace: str
    name: str
    uid: str
    run: int


@dataclass
class _Call:
    task: asyncio.Task[None] | None = None
    answered: bool = False
    answer: Any = None


@dataclass
class _RunCalls:
    ref: RunRef
    calls: dict[str, _Call] = field(default_factory=dict)


class CheckRunner:
    def __init__(self, wake: Wake) -> None:
        self._wake = wake
        self._runs: dict[tuple[str, str], _RunCalls] = {}

    def _calls_of(self, ref: RunRef) -> _RunCalls:
        key = (ref.namespace, ref.name)
        current = self._runs.get(key)
        if current is not None and current.ref != ref:
            self._cancel(current, current.calls.keys())  # an older run or another uid
            current = None
        if current is None:
            current = self._runs[key] = _RunCalls(ref)
        return current

    def ensure(
        self,
        ref: RunRef,
        key: str,
        call: Callable[[], Awaitable[Any]],
        on_error: Callable[[BaseException], Any],
    ) -> bool:
        """Start `call()` in the background unless this run already has a call by that
        key (running or answered). `on_error` turns an unexpected exception into an
        answer, so a crashing call still ends its step. Returns whether it started."""
        owned = self._calls_of(ref)
        if key in owned.calls:
            return False
        entry = _Call()
        owned.calls[key] = entry
        entry.task = asyncio.create_task(
            self._run(ref, entry, call, on_error), name=f"check {ref.namespace}/{ref.name} {key}"
        )
        return True

    async def _run(
        self,
        ref: RunRef,
        entry: _Call,
        call: Callable[[], Awaitable[Any]],
        on_error: Callable[[BaseException], Any],
    ) -> None:
        try:
            answer = await call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an unforeseen error must still end the check
            log.exception("check of %s/%s failed unexpectedly", ref.namespace, ref.name)
            answer = on_error(exc)
        entry.answer, entry.answered = answer, True
        self._wake(ref.namespace, ref.name)

    def known(self, ref: RunRef, key: str) -> bool:
        """Whether this run has a call by that key (running, or answered and not yet
        dropped)."""
        owned = self._runs.get((ref.namespace, ref.name))
        return owned is not None and owned.ref == ref and key in owned.calls

    def observe(self, ref: RunRef) -> tuple[dict[str, Any], frozenset[str]]:
        """The answers that came back for this run (by key) and the keys still running."""
        owned = self._runs.get((ref.namespace, ref.name))
        if owned is None or owned.ref != ref:
            return {}, frozenset()
        answers = {k: c.answer for k, c in owned.calls.items() if c.answered}
        running = frozenset(k for k, c in owned.calls.items() if not c.answered)
        return answers, running

    def retain(self, ref: RunRef, wanted: Collection[str]) -> None:
        """After a status write of run `ref`: keep only the calls the plan still asks
        for; cancel the others that run, drop the answers that were recorded. Calls of
        any other run (the status now records `ref`'s) are stale and go too."""
        owned = self._runs.get((ref.namespace, ref.name))
        if owned is None:
            return
        if owned.ref != ref:
            self._cancel(owned, owned.calls.keys())
        else:
            self._cancel(owned, [k for k in owned.calls if k not in wanted])
        if not owned.calls:
            self._runs.pop((ref.namespace, ref.name), None)

    def forget(self, namespace: str, name: str) -> None:
        """The rollout is gone: cancel whatever it left running."""
        owned = self._runs.pop((namespace, name), None)
        if owned is not None:
            self._cancel(owned, owned.calls.keys())

    def _cancel(self, owned: _RunCalls, keys: Collection[str]) -> None:
        for key in list(keys):
            entry = owned.calls.pop(key)
            if entry.task is not None and not entry.task.done():
                entry.task.cancel()
                log.info(
                    "cancelled check %s of %s/%s (no longer wanted)",
                    key,
                    owned.ref.namespace,
                    owned.ref.name,
                )

    def running(self) -> int:
        return sum(
            1 for owned in self._runs.values() for c in owned.calls.values() if not c.answered
        )

    async def stop(self) -> None:
        tasks = [
            c.task
            for owned in self._runs.values()
            for c in owned.calls.values()
            if c.task is not None and not c.task.done()
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runs.clear()
