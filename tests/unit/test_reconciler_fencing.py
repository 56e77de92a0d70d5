"""Fencing in the reconciler's acting: each action that writes to the target confirms the
lock right before its first write; a lock taken in the same reconcile is that
confirmation for the first such action; an action with nothing to write confirms
nothing. (Against the real API server: e2e/test_exclusion.py, e2e/test_cached_reads.py.)"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from canary_operator.api.models import CanaryRolloutSpec, CanaryRolloutStatus
from canary_operator.checks.inflight import RunRef
from canary_operator.engine.types import (
    Action,
    DeleteCanaryObjects,
    DeleteJob,
    LockView,
    Observed,
    Plan,
    RemoveFinalizer,
    Rollout,
)
from canary_operator.kube.api import Kube
from canary_operator.reconciler import FINALIZER, LockLost, Reconciler, RolloutIndex, _Targets

NS = "ns"
SPEC = CanaryRolloutSpec.model_validate(
    {
        "target": {"deployment": "web", "service": "web"},
        "images": [{"container": "app", "image": "registry.example.com/web:2.0"}],
        "steps": [{"canary": {"replicas": 1}}, {"promote": {}}],
    }
)
ROLLOUT = Rollout("web-v2", NS, "uid-1", 1, SPEC, CanaryRolloutStatus())


class Api(Kube):
    """Reads answered from `objects` (as a warm cache would); writes logged."""

    def __init__(self, log: list[str], objects: dict[str, list[dict[str, Any]]]) -> None:
        self.api_client = None  # type: ignore[assignment]
        self.field_manager = "canary-operator"
        self.on_request = None
        self.log = log
        self.objects = objects

    async def request(self, method: str, resource_path: str, *args: Any, **kw: Any) -> Any:
        self.log.append(f"{method} {resource_path.rsplit('/', 1)[-1]}")
        return {"metadata": {"name": resource_path.rsplit("/", 1)[-1]}}

    async def get(self, resource_path: str) -> dict[str, Any] | None:
        return None

    async def list(self, resource_path: str, label_selector: str | None = None) -> list[Any]:
        return list(self.objects.get(resource_path.rsplit("/", 1)[-1], []))


class Lock:
    def __init__(self, log: list[str], holds: bool = True) -> None:
        self.log = log
        self.holds = holds

    async def confirm(self, namespace: str, key: str, uid: str, token: int | None) -> bool:
        self.log.append("confirm")
        return self.holds


async def act(
    actions: list[Action],
    acquired: bool,
    holds: bool = True,
    objects: dict[str, list[dict[str, Any]]] | None = None,
) -> list[str]:
    log: list[str] = []
    reconciler = Reconciler(Api(log, objects or {}), Lock(log, holds), None, None, None)  # type: ignore[arg-type]
    lock = LockView(name="cro-lock-web", held=True, token=3, acquired=acquired)
    obs = Observed(now=datetime.now(UTC), lock=lock, target=None)
    ref = RunRef(NS, ROLLOUT.name, ROLLOUT.uid, 1)
    plan = Plan(status=CanaryRolloutStatus(), actions=actions)
    await reconciler._act(plan, ROLLOUT, obs, _Targets(None, None), {}, ref, [])
    return log


async def test_every_action_that_writes_confirms_right_before_its_first_write() -> None:
    log = await act([DeleteJob("a"), DeleteJob("b")], acquired=False)
    assert log == ["confirm", "DELETE a", "confirm", "DELETE b"]


async def test_a_lock_taken_in_this_reconcile_confirms_the_first_action_only() -> None:
    log = await act([DeleteJob("a"), DeleteJob("b")], acquired=True)
    assert log == ["DELETE a", "confirm", "DELETE b"]


async def test_a_lost_lock_stops_the_write() -> None:
    with pytest.raises(LockLost):
        await act([DeleteJob("a")], acquired=False, holds=False)


async def test_objects_already_being_deleted_are_not_deleted_again_nor_fenced() -> None:
    going = {"metadata": {"name": "web-canary", "deletionTimestamp": "2026-12-07T00:00:00Z"}}
    log = await act(
        [DeleteCanaryObjects()],
        acquired=False,
        objects={"deployments": [going], "services": [going]},
    )
    assert log == []
    # One still there: confirmed, then deleted; the one going is left to go.
    standing = {"metadata": {"name": "web-canary"}}
    log = await act(
        [DeleteCanaryObjects()],
        acquired=False,
        objects={"deployments": [going], "services": [standing]},
    )
    assert log == ["confirm", "DELETE web-canary"]


async def test_the_finalizer_removed_is_known_at_once() -> None:
    """After the terminal status, the finalizer's removal goes into the index, so the
    reconcile the status write's own event wakes does not send it again."""
    log: list[str] = []
    index = RolloutIndex()
    meta = {"name": ROLLOUT.name, "namespace": NS, "uid": ROLLOUT.uid}
    written = {"metadata": {**meta, "resourceVersion": "5", "finalizers": [FINALIZER]}}
    index.update(written)

    class Answers(Api):
        async def request(self, method: str, resource_path: str, *args: Any, **kw: Any) -> Any:
            self.log.append(method)
            return {"metadata": {**meta, "resourceVersion": "6", "finalizers": []}}

    reconciler = Reconciler(Answers(log, {}), Lock(log), index, None, None)  # type: ignore[arg-type]
    obs = Observed(now=datetime.now(UTC), lock=LockView(name="cro-lock-web"), target=None)
    await reconciler._execute(RemoveFinalizer(), ROLLOUT, obs, _Targets(None, None), written)
    assert log == ["PATCH"]
    body = index.body(NS, ROLLOUT.name)
    assert body is not None and not body["metadata"].get("finalizers")
    index.update(written)  # the status write's own event, older: does not undo it
    body = index.body(NS, ROLLOUT.name)
    assert body is not None and not body["metadata"].get("finalizers")
