"""One reconcile of one rollout: observe, plan (pure), act, write status.

The only place that joins the state machine to the API. Order matters: side effects
first (each write to the target preceded by a fencing check that the run still holds
its lock), then the status write (with a resourceVersion precondition), then the
Events of that transition (so a transition whose write was lost is never announced;
they are written in the background, in order), and only after the status is durably
terminal: release the lock and drop the finalizer.

Nothing here waits on a user endpoint: webhook calls and measurements are started in
the background (checks/inflight.py) and their answers come back as observations, so
a reconcile costs API round trips only, whatever the endpoints do.
"""

from __future__ import annotations

from pydantic import ValidationError

from canary_operator.checks.inflight import RunRef
from canary_operator.engine.types import CHECK_ACTIONS, Emit, Plan
from canary_operator.index import parse_spec
from canary_operator.kube.rollouts import rollout_path
from canary_operator.reconcile import act, status
from canary_operator.reconcile.context import Collaborators, ReconcileContext
from canary_operator.reconcile.decide import decide
from canary_operator.reconcile.errors import RetryLater, StaleView
from canary_operator.reconcile.observe import observe, read_targets


class Reconciler:
    def __init__(self, deps: Collaborators) -> None:
        self.deps = deps

    async def reconcile(self, namespace: str, name: str) -> float | None:
        """Returns seconds until the next reconcile is wanted (None: wait for events)."""
        deps = self.deps
        # The watch's view (or this process's last write): a stale one costs at most a
        # 409 on the status write, which is conditional on its resourceVersion.
        body = deps.index.body(namespace, name)
        if body is None:
            body = await deps.fresh.get(rollout_path(namespace, name))
        if body is None:
            deps.checks.forget(namespace, name)
            return None
        deps.index.update(body)
        try:
            spec = parse_spec(body)
        except ValidationError as exc:
            await status.invalid(deps, body, exc)
            return None
        ctx = ReconcileContext.made(deps, body, spec)
        ctx.targets = await read_targets(ctx)
        ctx.obs = await observe(ctx, deps.kube)
        try:
            planned = await decide(ctx)
        except StaleView as stale:
            # Another process moved the run on: nothing done; decide again from there.
            if stale.fresh is not None:
                deps.index.update(stale.fresh)
            return 0.5
        result, retry_error = await act.act_on(ctx, planned)
        return await self._record(ctx, result, retry_error)

    async def _record(
        self, ctx: ReconcileContext, result: Plan, retry_error: str | None
    ) -> float | None:
        """Write the status the plan decided, announce it, then what must follow it."""
        deps, rollout, before = self.deps, ctx.rollout, ctx.rollout.status
        written = await status.write(deps, ctx.body, result.status)
        if written is None:
            return 0.5  # lost a race with another writer: re-read and decide again
        changed = written is not ctx.body
        if deps.on_status_written is not None and changed:
            deps.on_status_written(rollout.namespace, rollout.name, before, result.status)
        # The transition is durable: announce it, and drop the answers it recorded.
        for action in result.actions:
            if isinstance(action, Emit):
                status.announce(deps, rollout, action)
        if deps.on_transition is not None and changed:
            deps.on_transition(written, before, result.status)
        deps.checks.retain(
            RunRef(rollout.namespace, rollout.name, rollout.uid, result.status.run),
            {a.key for a in result.actions if isinstance(a, CHECK_ACTIONS)},
        )
        if retry_error is not None:
            raise RetryLater(retry_error)
        ctx.body = written
        for action in result.actions:
            if act.after_status(action):
                await act.execute(ctx, action)
        return result.requeue_after
