"""Observe -> plan, at one call site, bounded: the engine says what it needs observed
before it can decide (engine/types.py Need); this module observes exactly that and
asks again. Each need is answered at most once per reconcile."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from canary_operator.checks.evidence import job_log_tails
from canary_operator.engine import machine
from canary_operator.engine.types import Need, Observed, Plan
from canary_operator.kube.api import JsonObj, ReadOnce, describe
from canary_operator.kube.rollouts import rollout_path
from canary_operator.reconcile import status, views
from canary_operator.reconcile.context import ReconcileContext
from canary_operator.reconcile.errors import TRANSIENT, StaleView
from canary_operator.reconcile.observe import observe, observe_lock, target_path

# Seconds of checks after which the start's read of the rollout is made again.
RECHECK_AFTER = 1.0

# Every need once, and the plan that decides.
ROUNDS = len(Need) + 1


async def decide(ctx: ReconcileContext) -> Plan:
    """The plan to act on: ctx.obs answers everything the engine asked for."""
    for _ in range(ROUNDS):
        result = machine.plan(ctx.rollout, ctx.obs)
        if result.observe_next is None:
            return result
        await _answer(ctx, result.observe_next)
    raise RuntimeError(f"the engine asked for more than {ROUNDS - 1} observations")


async def _answer(ctx: ReconcileContext, need: Need) -> None:
    if need == Need.START:
        obs = await _fresh_for_start(ctx)
    elif need == Need.VERIFICATION:
        # About to declare the cleanup verified: that promise (100 % stable, no canary
        # object left) is checked against the API server, not against caches that may
        # not have seen a pod created a moment ago. The router reads through it too.
        # The target too: an undone promotion is verified on it as the server has it.
        once = ReadOnce(ctx.deps.fresh)
        ctx.targets.target = await once.get(target_path(ctx))
        obs = await observe(ctx, once, lock=ctx.obs.lock)
    elif need == Need.LOCK:
        # A new run that passed its checks asks for its lock in this round rather than
        # one trip through the work queue later; only the head of a free lock gets it.
        obs = replace(ctx.obs, lock=await observe_lock(ctx, wants=True))
    else:
        try:
            obs = await (_validation(ctx) if need == Need.VALIDATION else _job_logs(ctx))
        except TRANSIENT as exc:
            # The spec cannot be checked yet (an admission webhook down, a slow API
            # server): nothing is touched until it can be, and the status says why.
            error = f"cannot check the spec yet: {describe(exc)}"
            raise await status.say_retrying(ctx, error) from exc
    ctx.obs = _carried(ctx.obs, obs, need)


def _carried(before: Observed, after: Observed, need: Need) -> Observed:
    """A new round keeps what earlier rounds answered (the spec's checks, log tails)."""
    return replace(
        after,
        answered=before.answered | {need},
        spec_problems=after.spec_problems or before.spec_problems,
        job_logs={**before.job_logs, **after.job_logs},
    )


async def _fresh_for_start(ctx: ReconcileContext) -> Observed:
    """A run is about to start: whether the target is clean (a previous run's canary
    left behind is removed first) is judged by the API server, not by caches that may
    not have seen the last cleanup's deletions yet. Read after the lock is held
    (nobody else writes the target from then on), each object once."""
    once = ReadOnce(ctx.deps.fresh)
    lock = ctx.obs.lock
    if ctx.run_lock.read_stands(ctx.targets.version_before_read, lock):
        once.known(target_path(ctx), ctx.targets.target)
    # The rollout too: the run's lock is held, but possibly by this very run in another
    # operator process, which may have started it already. Its canary would look like
    # a previous holder's leftovers to a view of the run as not yet started, and the
    # recovery would delete it (the status write's precondition comes only after).
    rollout, target, obs = await asyncio.gather(
        ctx.deps.fresh.get(rollout_path(ctx.namespace, ctx.rollout.name)),
        once.get(target_path(ctx)),
        observe(ctx, once, lock=lock),
    )
    if rollout is None or _version(rollout) != _version(ctx.body):
        raise StaleView(rollout)
    ctx.targets.target, ctx.targets.fresh = target, True
    ctx.targets.rollout_read_at = time.monotonic()
    return replace(obs, target=views.workload(target))


def _version(body: JsonObj) -> str:
    return str(body["metadata"].get("resourceVersion"))


async def _validation(ctx: ReconcileContext) -> Observed:
    """A run may start: its canary is built from, and its "older than live" check made
    against, the target as it is now, not as the cache last saw it (a promotion a
    moment ago must not be missed). Read once per reconcile."""
    targets, obs = ctx.targets, ctx.obs
    if not targets.fresh and not obs.lock.held:
        targets.version_before_read = await ctx.run_lock.version_before_read()
    fresh = targets.target if targets.fresh else await ctx.deps.fresh.get(target_path(ctx))
    targets.target = fresh
    obs = replace(obs, target=views.workload(fresh))
    if fresh is not None:
        problems = await ctx.deps.validator.problems(ctx.rollout, fresh, targets.service)
        obs = replace(obs, spec_problems=tuple(problems))
    await _still_unstarted(ctx)
    return obs


async def _still_unstarted(ctx: ReconcileContext) -> None:
    """The start's fresh read of the rollout, made again when the checks since took
    long enough (slow dry-runs, admission webhooks) for another process to have
    started the run in the meantime: acting on the old read would apply the first
    step's canary over a run that is further on. A quick check keeps its read (the
    status write's precondition catches the rest)."""
    read_at = ctx.targets.rollout_read_at
    if read_at is None or time.monotonic() - read_at < RECHECK_AFTER:
        return
    rollout = await ctx.deps.fresh.get(rollout_path(ctx.namespace, ctx.rollout.name))
    if rollout is None or _version(rollout) != _version(ctx.body):
        raise StaleView(rollout)


async def _job_logs(ctx: ReconcileContext) -> Observed:
    """The log tails of failed test Jobs, read before cleanup deletes the Jobs."""
    wanted = machine.jobs_wanting_logs(ctx.rollout.status, ctx.obs.jobs)
    tails = await asyncio.gather(
        *(job_log_tails(ctx.deps.kube, ctx.namespace, job) for job in wanted)
    )
    return replace(ctx.obs, job_logs=dict(zip(wanted, tails, strict=True)))
