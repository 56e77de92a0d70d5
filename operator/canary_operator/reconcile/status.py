"""Writing the rollout's status (conditional on the version read) and announcing what
a written transition did, in Events written in the background."""

from __future__ import annotations

from datetime import UTC, datetime

from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from canary_operator.api import models
from canary_operator.api.models import CanaryRolloutStatus, Phase, dump_status
from canary_operator.api.timestamps import iso
from canary_operator.engine import machine
from canary_operator.engine.conditions import set_condition
from canary_operator.engine.types import Emit, Rollout
from canary_operator.kube.api import Conflict, JsonObj
from canary_operator.kube.rollouts import rollout_path
from canary_operator.reconcile.context import Collaborators, ReconcileContext
from canary_operator.reconcile.errors import RetryLater


async def write(deps: Collaborators, body: JsonObj, status: CanaryRolloutStatus) -> JsonObj | None:
    """PUT /status with the body's resourceVersion. Returns what was written (`body`
    itself when nothing changed), None when another writer won the race (or the rollout
    is gone): re-read and decide again."""
    new_status = dump_status(status)
    if new_status == (body.get("status") or {}):
        return body
    update = {**body, "status": new_status}  # PUT /status: only status is taken
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        written = await deps.kube.replace(rollout_path(ns, name) + "/status", update)
    except Conflict:
        return None
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    deps.index.update(written)
    return written


def announce(deps: Collaborators, rollout: Rollout, event: Emit) -> None:
    # Written in the background, in order: what follows a durable transition (the
    # next step, the lock's release) never waits on Event writes.
    deps.events.post(
        rollout.namespace, rollout.name, rollout.uid, event.reason, event.message, event.warning
    )


async def say_retrying(ctx: ReconcileContext, error: str) -> RetryLater:
    """Record (once) that this reconcile cannot go on; the caller raises what this
    returns, and the work queue retries with backoff."""
    said = machine.retrying(ctx.rollout, ctx.obs, ctx.rollout.status, error)
    if await write(ctx.deps, ctx.body, said.status) is not None:
        for action in said.actions:
            if isinstance(action, Emit):
                announce(ctx.deps, ctx.rollout, action)
    return RetryLater(error)


async def invalid(deps: Collaborators, body: JsonObj, exc: ValidationError) -> None:
    """A spec the schema let through but the models refuse: fail clearly, touch nothing."""
    status = body.get("status") or {}
    if status.get("phase") in {p.value for p in models.TERMINAL_PHASES}:
        return
    if status.get("phase") not in (None, Phase.PENDING.value, Phase.QUEUED.value):
        # A run that started owes its cleanup, which needs a readable spec: keep
        # retrying (with backoff) and say why, rather than end without the finally.
        raise ValueError(f"spec no longer readable by this operator: {exc}")
    message = "; ".join(
        f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
    )[:1000]
    now = datetime.now(UTC)
    generation = int(body["metadata"].get("generation") or 1)
    failed = CanaryRolloutStatus(
        phase=Phase.FAILED,
        observed_generation=generation,
        message=f"invalid spec: {message}",
        outcome=models.Outcome(result=models.Result.INVALID, message=message, decided_at=iso(now)),
        completed_at=iso(now),
    )
    for type_, value in (("Failed", True), ("Completed", False)):
        set_condition(failed, type_, value, "InvalidSpec", message, now, generation)
    await write(deps, body, failed)
