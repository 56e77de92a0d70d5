"""Renewal of the per-target leases this operator's rollouts hold, on its own schedule.

A live holder's lease must never lapse because its rollout is slow, so nothing a
reconcile does is on the renewal path: no user endpoint, no work-queue backlog, no
worker stalled on a slow API call. One task looks at every held lease each
`TICK_SECONDS` and renews those last renewed `RENEW_EVERY_SECONDS` ago, each in its
own task with its own time limit, so one slow write holds no other lease back.

A renewal is a conditional write (the resourceVersion last seen). A 409 is read
again: if the lease still names the same holder and token, someone renewed it for
us (a second operator process of the same rollouts) and that counts; otherwise the
lock was lost, the holder is forgotten and its rollout woken, and its run ends
`LockLost` (lock/lease.py never takes a lease from a live holder, so that takes a
human or a foreign writer). Failed renewals are kept per lease (`error`), counted
(`on_renewal(False)`), and shown on the rollout by the state machine (condition
`LockRenewed=False`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.api.timestamps import precise
from canary_operator.kube.api import Conflict, JsonObj, Kube, describe, path
from canary_operator.kube.cache import newer_or_same

log = logging.getLogger(__name__)

RENEW_EVERY_SECONDS = 5.0  # a sixth of the lease duration: renewTime never lags a third
TICK_SECONDS = 1.0
WRITE_TIMEOUT_SECONDS = 10.0


def lease_path(namespace: str, name: str | None = None) -> str:
    return path("coordination.k8s.io", "v1", "leases", namespace, name)


def micro_time(now: datetime | None = None) -> str:
    """A Lease's MicroTime (renewTime, acquireTime)."""
    return precise(now or datetime.now(UTC))


@dataclass
class HeldLease:
    namespace: str
    name: str
    holder: str  # the holding run's identity (run_identity)
    holder_name: str
    token: int
    lease: JsonObj  # the newest version seen: read, written, or from the watch
    renewed_at: float  # monotonic: when it last changed (our write or someone's)
    error: str | None = None  # why the last renewal failed; None once one succeeds


def holder_of(lease: JsonObj) -> tuple[str | None, int]:
    """A Lease's holder (its holderIdentity) and token (its transitions)."""
    spec = lease.get("spec") or {}
    return spec.get("holderIdentity") or None, int(spec.get("leaseTransitions") or 0)


def run_identity(uid: str, run: int) -> str:
    """The holderIdentity of one run of a rollout: the holder is the run, not the
    rollout, so nothing of run N (a late release, a write) can pass for run N+1."""
    return f"{uid}/{run}"


def uid_of(identity: str | None) -> str | None:
    """The rollout uid a holderIdentity names (before 0.9 it was the bare uid)."""
    return identity.partition("/")[0] if identity else None


def run_of(identity: str | None) -> int | None:
    """The run a holderIdentity names; None for one written before runs were named."""
    run = (identity or "").partition("/")[2]
    return int(run) if run.isdigit() else None


def is_run(identity: str | None, uid: str, run: int) -> bool:
    """Whether `identity` names this run. A bare uid (written by a version that named
    rollouts, not runs) names the rollout's run in progress at the upgrade."""
    return identity is not None and identity in (run_identity(uid, run), uid)


class LeaseRenewer:
    def __init__(
        self,
        kube: Kube,
        clock: Callable[[], float] = time.monotonic,
        renew_every: float = RENEW_EVERY_SECONDS,
        write_timeout: float = WRITE_TIMEOUT_SECONDS,
        fresh: Kube | None = None,
        on_lost: Callable[[str, str], None] | None = None,
        holder_active: Callable[[str, str], bool] | None = None,
        on_renewal: Callable[[bool], None] | None = None,
    ) -> None:
        self.kube = kube
        self.fresh = fresh or kube  # reads after a 409 must see the API server's version
        self.clock = clock
        self.renew_every = renew_every
        self.write_timeout = write_timeout
        self._held: dict[tuple[str, str], HeldLease] = {}
        self._renewing: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._loop: asyncio.Task[None] | None = None
        # (namespace, rollout name): the lock of this rollout was lost.
        self.on_lost = on_lost
        # (namespace, holder uid) -> whether that rollout still exists and runs: a
        # holder that ended or went is not kept alive by renewals.
        self.holder_active = holder_active
        self.on_renewal = on_renewal  # told of each renewal's success (a metric)

    # ------------------------------------------------------------ bookkeeping

    def hold(self, namespace: str, lease: JsonObj, holder_name: str) -> None:
        """`lease` names one of our rollouts as holder: renew it from now on."""
        holder, token = holder_of(lease)
        if holder is None:
            return
        key = (namespace, lease["metadata"]["name"])
        known = self._held.get(key)
        if known is not None and (known.holder, known.token) == (holder, token):
            if not newer_or_same(known.lease, lease):
                known.lease = lease
            return
        self._held[key] = HeldLease(
            namespace, key[1], holder, holder_name, token, lease, renewed_at=self.clock()
        )

    def drop(self, namespace: str, name: str) -> JsonObj | None:
        """Stop renewing; returns the newest version of the Lease this process wrote or
        saw while it held it (None if it held none)."""
        held = self._held.pop((namespace, name), None)
        task = self._renewing.pop((namespace, name), None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        return held.lease if held is not None else None

    def seen(self, lease: JsonObj) -> None:
        """A watch event of a Lease: keep the newest version; notice a lost lock."""
        meta = lease["metadata"]
        held = self._held.get((meta.get("namespace", ""), meta["name"]))
        if held is None or newer_or_same(held.lease, lease):
            return
        if holder_of(lease) != (held.holder, held.token):
            self._lost(held, lease)
            return
        held.lease, held.renewed_at = lease, self.clock()  # a newer version: renewed

    def error(self, namespace: str, name: str) -> str | None:
        held = self._held.get((namespace, name))
        return held.error if held is not None else None

    def holds(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self._held

    def holder(self, namespace: str, name: str) -> str | None:
        """The identity of the run whose lease this process renews (None if none)."""
        held = self._held.get((namespace, name))
        return held.holder if held is not None else None

    def _lost(self, held: HeldLease, lease: JsonObj | None) -> None:
        now_holder = holder_of(lease)[0] if lease is not None else None
        log.warning(
            "lock %s/%s of %s is no longer ours (holder now %s)",
            held.namespace,
            held.name,
            held.holder_name,
            now_holder,
        )
        self.drop(held.namespace, held.name)
        if self.on_lost is not None:
            self.on_lost(held.namespace, held.holder_name)

    # ---------------------------------------------------------------- renewal

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.create_task(self._run(), name="lease renewer")

    async def stop(self) -> None:
        tasks = [t for t in [self._loop, *self._renewing.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop = None
        self._renewing.clear()

    async def _run(self) -> None:
        while True:
            self.renew_due()
            await asyncio.sleep(TICK_SECONDS)  # a timer: the renewal schedule itself

    def renew_due(self) -> list[asyncio.Task[None]]:
        """Start a renewal of every held lease that is due (and not being renewed)."""
        started = []
        now = self.clock()
        for key, held in list(self._held.items()):
            if now - held.renewed_at < self.renew_every or key in self._renewing:
                continue
            if self.holder_active is not None and not self.holder_active(
                held.namespace, uid_of(held.holder) or ""
            ):
                log.info("not renewing %s/%s: its holder has ended", *key)
                self.drop(*key)
                continue
            task = asyncio.create_task(self._renew(held), name=f"renew {key[0]}/{key[1]}")
            self._renewing[key] = task
            task.add_done_callback(self._renewal_done)
            started.append(task)
        return started

    def _renewal_done(self, task: asyncio.Task[None]) -> None:
        for key, running in list(self._renewing.items()):
            if running is task:
                del self._renewing[key]

    async def _renew(self, held: HeldLease) -> None:
        body = copy.deepcopy(held.lease)
        body["spec"]["renewTime"] = micro_time()
        where = lease_path(held.namespace, held.name)
        try:
            try:
                written = await asyncio.wait_for(self.kube.replace(where, body), self.write_timeout)
            except Conflict:
                fresh = await asyncio.wait_for(self.fresh.get(where), self.write_timeout)
                if fresh is None or holder_of(fresh) != (held.holder, held.token):
                    self._lost(held, fresh)
                    return
                written = fresh  # renewed by someone else (another operator process)
        except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as exc:
            held.error = f"lease renewal failed: {describe(exc)}"
            log.warning("%s/%s: %s", held.namespace, held.name, held.error)
            self._count(False)
            return
        if self._held.get((held.namespace, held.name)) is held:
            held.lease, held.renewed_at, held.error = written, self.clock(), None
        self._count(True)

    def _count(self, ok: bool) -> None:
        if self.on_renewal is not None:
            with contextlib.suppress(Exception):
                self.on_renewal(ok)
