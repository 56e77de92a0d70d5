"""The reconcile of one rollout reads nothing whose size grows with ended rollouts
(issue 26: the cost of a reconcile is independent of history).

The same active rollout is reconciled twice (its start: lock taken, step 1; then a
reconcile of the running step) beside 10 and beside 2,000 ended rollouts, and what it
touched is compared: every API request (both the cached and the fresh Kube's), the
objects the answers carried (a list counts its items), the rollouts the index handed
out, and the index's entries walked through (a scan over all rollouts). Ended
rollouts of other targets change none of it. Ended rollouts of the same target change
none of the requests, objects or scans; they are among the rollouts sharing its lock,
which the lock's queue looks at in memory (lock/queue.py: an ended rollout edited since
is the next run's arrival, an ended holder is shown by phase): that one figure is the
count of rollouts sharing the lock, and is asserted as such, so that any other growth
still fails.

The last test checks the check: a list of all rollouts, or a walk over the index's,
added to the reconcile path (monkeypatched in) makes the figures differ."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from canary_operator.api.models import CanaryRolloutSpec, CanaryRolloutStatus, Phase, dump_status
from canary_operator.index import RolloutIndex
from canary_operator.kube.api import JsonObj
from canary_operator.kube.rollouts import rollout_path
from canary_operator.reconcile import reconciler
from tests.harness.fake_kube import FakeKube
from tests.harness.reconcile_fixtures import NS, Cluster, fake_cluster, rollout_body, spec

pytestmark = pytest.mark.asyncio


class ScanCounting(dict[Any, Any]):
    """An index's dict that counts the entries walked through (iteration of any kind)."""

    walked = 0

    def __iter__(self) -> Iterator[Any]:
        ScanCounting.walked += len(self)
        return super().__iter__()

    def items(self) -> Any:
        ScanCounting.walked += len(self)
        return super().items()

    def values(self) -> Any:
        ScanCounting.walked += len(self)
        return super().values()

    def keys(self) -> Any:
        ScanCounting.walked += len(self)
        return super().keys()


@dataclass
class Touched:
    requests: list[str]  # every request, in order, each view's
    objects: int  # objects in the answers (a list's items)
    handed: Counter[str]  # rollouts handed out by the index, per method
    walked: int  # index entries iterated over

    def without_lock_sharing(self) -> Touched:
        return Touched(
            self.requests,
            self.objects,
            Counter({k: v for k, v in self.handed.items() if k != "sharing_lock"}),
            self.walked,
        )


def _count_objects(kube: FakeKube, into: list[int]) -> None:
    request = kube.request

    async def counted(method: str, resource_path: str, *args: Any, **kwargs: Any) -> Any:
        answer = await request(method, resource_path, *args, **kwargs)
        if isinstance(answer, dict) and isinstance(answer.get("items"), list):
            into[0] += len(answer["items"])
        elif answer is not None:
            into[0] += 1
        return answer

    kube.request = counted  # type: ignore[method-assign]


def _count_handed(index: RolloutIndex, handed: Counter[str]) -> None:
    for method in ("body", "candidate", "sharing_lock", "targeting", "active"):
        original: Callable[..., Any] = getattr(index, method)

        def counted(*args: Any, _name: str = method, _f: Callable[..., Any] = original) -> Any:
            answer = _f(*args)
            handed[_name] += len(answer) if isinstance(answer, list) else int(bool(answer))
            return answer

        setattr(index, method, counted)
    for attribute in ("_bodies", "_entries", "_by_lock", "_phases", "_uids"):
        setattr(index, attribute, ScanCounting(getattr(index, attribute)))


def ended(i: int, target: str) -> JsonObj:
    """An ended run (Succeeded) of its own spec, as the operator leaves it."""
    body = spec(
        target={"deployment": target, "service": target},
        images=[{"container": "app", "image": f"web:old-{i}"}],
    )
    status = CanaryRolloutStatus(
        phase=Phase.SUCCEEDED,
        run=1,
        observed_generation=1,
        fingerprint=CanaryRolloutSpec.model_validate(body).run_fingerprint(),
        version_since="2026-12-07T09:00:00Z",
        started_at="2026-12-07T09:00:01Z",
        completed_at="2026-12-07T09:00:30Z",
    )
    return rollout_body(body, dump_status(status), name=f"old-{i}", uid=f"uid-old-{i:05d}")


async def touched_beside(history: int, same_target: bool) -> list[Touched]:
    """What the active rollout's start and its next reconcile touch, each, beside
    `history` ended rollouts (of its own target, or of 50 others)."""
    async with fake_cluster() as c:
        c.with_target()
        for i in range(history):
            c.add_rollout(ended(i, "web" if same_target else f"other-{i % 50}"))
        c.add_rollout(rollout_body())
        return [await _one(c, "Progressing"), await _one(c, "Progressing")]


async def _one(c: Cluster, phase: str) -> Touched:
    c.clear()
    objects, handed = [0], Counter[str]()
    ScanCounting.walked = 0
    index = c.deps.index
    saved = dict(vars(index))
    _count_objects(c.kube, objects)
    _count_objects(c.fresh, objects)
    _count_handed(index, handed)
    try:
        body = await c.reconcile()
    finally:
        vars(c.kube).pop("request", None)
        vars(c.fresh).pop("request", None)
        for attribute, value in saved.items():
            setattr(index, attribute, value)
        for method in ("body", "candidate", "sharing_lock", "targeting", "active"):
            vars(index).pop(method, None)
    assert body["status"]["phase"] == phase
    return Touched(list(c.kube.store.requests), objects[0], handed, ScanCounting.walked)


@pytest.mark.parametrize("same_target", [False, True], ids=["other targets", "same target"])
async def test_a_reconcile_touches_the_same_beside_10_or_2000_ended(same_target: bool) -> None:
    few = await touched_beside(10, same_target)
    many = await touched_beside(2000, same_target)
    assert few[0].requests  # the start wrote (lock, finalizer, canary, status)
    for small, large in zip(few, many, strict=True):
        assert large.requests == small.requests
        assert large.objects == small.objects
        assert large.walked == small.walked
        if same_target:
            # The lock's queue looks at who shares the lock, in memory: all of them.
            per_look = small.handed["sharing_lock"] // 11
            assert large.handed["sharing_lock"] == per_look * 2001
            assert large.without_lock_sharing() == small.without_lock_sharing()
        else:
            assert large == small


@pytest.mark.parametrize("added", ["list", "scan"])
async def test_the_check_sees_a_read_of_all_rollouts(
    added: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were the reconcile to list the rollouts from the API (or its cache), or walk the
    index's rollouts (here: before reading its targets), the figures would differ
    between 10 and 2,000 ended rollouts of other targets."""
    read_targets = reconciler.read_targets

    async def reading_all_first(ctx: Any) -> Any:
        if added == "list":
            await ctx.deps.kube.list(rollout_path(NS))
        else:
            [c for c in ctx.deps.index._entries.values() if c[2] == "web"]  # a walk
        return await read_targets(ctx)

    monkeypatch.setattr(reconciler, "read_targets", reading_all_first)
    few = await touched_beside(10, same_target=False)
    many = await touched_beside(2000, same_target=False)
    if added == "list":
        assert many[1].objects - few[1].objects == 1990
    else:
        assert many[1].walked - few[1].walked == 1990
    assert many[1] != few[1]
