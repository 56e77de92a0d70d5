"""The per-target lock: a coordination.k8s.io/v1 Lease held by one *run* of a rollout
(holderIdentity `<uid>/<run>`). A run takes several when its rollout names a lock
group (lock/keys.py, lock/run_lock.py); this module is one Lease's protocol.

Protocol (docs/architecture.md, "The lock"):
- every write carries the resourceVersion it read: a 409 means another writer won;
- **a live holder is never preempted**: a lease whose holder is a run of an existing
  rollout that has not ended stays with it, however long its steps take and however
  long its lease has gone unrenewed (slowness, a stalled API server or a dead
  operator delay a rollout, never hand its lock to another). Before taking a lease
  over, the holder is read fresh from the API server, not from the watch-fed index;
- a lease may be taken over when its holder run has ended (its rollout is gone,
  recreated, ended, or went on to a later run) and the lease has not changed for
  TAKEOVER_GRACE_SECONDS (an ended holder releases within moments, and that
  release, not a takeover, is the normal handoff); the new holder first runs a
  recovery cleanup;
- a holder this operator did not write (holderIdentity other than the one recorded
  in the holder-identity annotation: a human, another tool) is foreign: it is taken
  only once the lease has not changed for its own leaseDurationSeconds, on *our*
  monotonic clock since we first saw that version; wall clocks of other hosts are
  never used;
- leaseTransitions increases on every acquisition and is the fencing token;
  `confirm` reads the lease fresh before each write to the target, and compares the
  run as well as the token, so nothing of run N passes for run N+1;
- renewal is lock/renewer.py's, on its own schedule, never a reconcile's.

Two operator processes acting on the same rollouts at once (no leader election):
holders are runs, not processes, so both renew the same holder; acquisitions race
through resourceVersion preconditions (one wins, both then see the same holder), and
neither ever takes a lease from a live run. A process that stalls between a fencing
read and its write is the remaining window (README, "The lock").
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from canary_operator.engine.types import LockView
from canary_operator.kube.api import Conflict, JsonObj, Kube
from canary_operator.lock import queue
from canary_operator.lock.holder import (
    HOLDER_ANNOTATION,
    IDENTITY_ANNOTATION,
    LEASE_DURATION_SECONDS,
    Holder,
    earlier_run,
)
from canary_operator.lock.queue import Candidate
from canary_operator.lock.renewer import (
    LeaseRenewer,
    holder_of,
    is_run,
    lease_path,
    micro_time,
    run_identity,
)

__all__ = [
    "HISTORY_ANNOTATION",
    "HOLDER_ANNOTATION",
    "IDENTITY_ANNOTATION",
    "LEASE_DURATION_SECONDS",
    "LOCK_LABEL",
    "LeaseLock",
    "lease_name",
    "micro_time",
]

TAKEOVER_GRACE_SECONDS = 5.0
HISTORY_ANNOTATION = "canary-operator.dev/history"
LOCK_LABEL = "canary-operator.dev/lock"
LOCK_KEY_ANNOTATION = "canary-operator.dev/lock-key"
HISTORY_LENGTH = 30

# Asks the API server (fresh, not a cache) whether a holder run (namespace, rollout
# name, holderIdentity) still exists and has not ended.
HolderCheck = Callable[[str, str, str | None], Awaitable[bool]]
# Asks the API server (fresh) whether the would-be holder is still as it was read.
SelfCheck = Callable[[], Awaitable[bool]]


def lease_name(lock_key: str) -> str:
    name = f"cro-lock-{lock_key}"
    if len(name) <= 253:
        return name
    return f"cro-lock-{hashlib.sha256(lock_key.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class Look:
    """One lock as a run would take it (LeaseLock.look)."""

    key: str
    view: LockView  # held, or what the run sees while it waits
    held: bool = False
    lease: JsonObj | None = None  # the version a take is conditional on
    may_take: bool = False  # free (or its holder replaceable) and this run is next
    stale_holder: str | None = None  # whom a take would replace


@dataclass
class _Seen:
    resource_version: str
    since: float  # monotonic time we first saw this resourceVersion


class LeaseLock:
    def __init__(
        self,
        kube: Kube,
        clock: Callable[[], float] = time.monotonic,
        renewer: LeaseRenewer | None = None,
        fresh: Kube | None = None,
    ) -> None:
        self.kube = kube  # may answer reads from the watch-fed cache
        self.fresh = fresh or kube  # always asks the API server
        self.clock = clock
        self.renewer = renewer or LeaseRenewer(kube, clock, fresh=self.fresh)
        self._seen: dict[tuple[str, str], _Seen] = {}

    def _unchanged_for(self, namespace: str, lease: JsonObj) -> float:
        key = (namespace, lease["metadata"]["name"])
        rv = lease["metadata"]["resourceVersion"]
        seen = self._seen.get(key)
        now = self.clock()
        if seen is None or seen.resource_version != rv:
            self._seen[key] = _Seen(rv, now)
            return 0.0
        return now - seen.since

    async def observe(
        self,
        namespace: str,
        lock_key: str,
        me: Candidate,
        candidates: list[Candidate],
        wants_lock: bool,
        holder_running: HolderCheck,
        still_current: SelfCheck | None = None,
    ) -> LockView:
        """Read one lock; take it if we are next and may (`look`, then `take`).

        `still_current` is asked right before taking a free lock: another operator
        process may have ended this rollout's run (and released the lock) after we
        read the rollout. A run writes its terminal status before releasing, so a
        fresh read (or a write conditional on the version read) after seeing the lock
        free tells; a stale view never takes it."""
        looked = await self.look(namespace, lock_key, me, candidates, wants_lock, holder_running)
        if not looked.may_take:
            return looked.view
        if still_current is not None and not await still_current():
            return looked.view
        return await self.take(namespace, looked, me)

    async def look(
        self,
        namespace: str,
        lock_key: str,
        me: Candidate,
        candidates: list[Candidate],
        wants_lock: bool,
        holder_running: HolderCheck,
    ) -> Look:
        """One lock as `me` would take it: held by this run (handed to the renewer,
        also after a restart: the holder is the run, not the process), or whether this
        run, at the head of its queue, may take it now."""
        name = lease_name(lock_key)
        # The watch-fed view: acting on it is safe, because taking the lock is a write
        # conditional on the version read, and writes to the target are fenced.
        lease = await self.kube.get(lease_path(namespace, name))
        identity = holder_of(lease)[0] if lease is not None else None
        if lease is not None and is_run(identity, me.uid, me.run):
            return Look(lock_key, self._held_view(namespace, lease, me, candidates), held=True)
        if earlier_run(identity, me) and self.renewer.holder(namespace, name) == identity:
            # That run ended: this process no longer keeps its lease alive (renewals
            # would reset the grace a takeover waits for, again and again).
            self.renewer.drop(namespace, name)
        holder = Holder.of(lease, me, candidates)
        qv = queue.view(me, candidates, holder.queue_uid, holder.maybe_free)
        busy_view = LockView(
            name=name,
            holder=holder.shown,
            holder_phase=holder.phase,
            position=qv.position,
            waiting=qv.waiting,
            busy=True,
            superseded_by=qv.superseded_by,
        )
        free_view = LockView(
            name=name, position=qv.position, waiting=qv.waiting, superseded_by=qv.superseded_by
        )
        if not holder.maybe_free:
            return Look(lock_key, busy_view)
        if not (wants_lock and qv.may_acquire):
            # Whether a held lease may be taken over matters only to the head.
            return Look(lock_key, busy_view if identity is not None else free_view)
        stale_holder: str | None = None
        if identity is not None:
            assert lease is not None
            if not await self._may_take_over(namespace, lease, holder, holder_running):
                return Look(lock_key, busy_view)
            stale_holder = holder.shown
        return Look(lock_key, free_view, lease=lease, may_take=True, stale_holder=stale_holder)

    async def take(self, namespace: str, looked: Look, me: Candidate) -> LockView:
        """Take a lock `look` found free (or its stale holder replaceable) for `me`, a
        write conditional on the version looked at; the looked-at view if it lost."""
        view = looked.view
        token = await self._acquire(namespace, view.name, looked.key, looked.lease, me)
        if token is None:
            return view
        return LockView(
            name=view.name,
            held=True,
            token=token,
            tokens=((looked.key, token),),
            holder=me.name,
            holder_phase=me.phase.value,
            waiting=max(0, view.waiting - 1),
            recovered_from=looked.stale_holder,
            acquired=True,
            acquired_over=_version(looked.lease) if looked.stale_holder is None else None,
        )

    def _held_view(
        self, namespace: str, lease: JsonObj, me: Candidate, candidates: list[Candidate]
    ) -> LockView:
        """`me` holds the lease: hand it to the renewer (also after a restart: the holder
        is the run, not the process)."""
        name = lease["metadata"]["name"]
        self.renewer.hold(namespace, lease, me.name)
        token = holder_of(lease)[1]
        return LockView(
            name=name,
            held=True,
            token=token,
            tokens=((lease_key(lease), token),),
            holder=me.name,
            holder_phase=me.phase.value,
            waiting=len(queue.order(candidates, me.uid)),
            renew_error=self.renewer.error(namespace, name),
        )

    async def _may_take_over(
        self, namespace: str, lease: JsonObj, holder: Holder, holder_running: HolderCheck
    ) -> bool:
        unchanged = self._unchanged_for(namespace, lease)
        if holder.rollout:
            if unchanged < TAKEOVER_GRACE_SECONDS:
                return False  # an ended holder's own release is on its way
            # Fresh read, not the watch-fed index: taking a lease from a holder that
            # still runs would break the one promise the lock makes.
            return not await holder_running(namespace, holder.rollout, holder.identity)
        # A holder that is not a run of ours (written by hand or by another tool): only
        # expiry tells that it is abandoned, by its own leaseDurationSeconds on our clock.
        duration = float(lease["spec"].get("leaseDurationSeconds") or LEASE_DURATION_SECONDS)
        return unchanged >= duration

    async def cached_version(self, namespace: str, lock_key: str) -> str:
        """The version of the lock's Lease in the watch-fed view ("" when it has none)."""
        return _version(await self.kube.get(lease_path(namespace, lease_name(lock_key))))

    async def confirm(
        self, namespace: str, lock_key: str, uid: str, run: int, token: int | None
    ) -> bool:
        """Fencing: does this run still hold the lock with `token`? A fresh read of the
        Lease, on purpose not the watch-fed view: it guards a write to the target."""
        name = lease_name(lock_key)
        lease = await self.fresh.get(lease_path(namespace, name))
        if lease is None:
            return False
        identity, transitions = holder_of(lease)
        holds = is_run(identity, uid, run) and transitions == (token or 0)
        if holds:
            self.renewer.seen(lease)
        return holds

    async def _acquire(
        self, namespace: str, name: str, lock_key: str, lease: JsonObj | None, me: Candidate
    ) -> int | None:
        now = micro_time()
        if lease is None:
            body: JsonObj = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": {LOCK_LABEL: "true"},
                    "annotations": {LOCK_KEY_ANNOTATION: lock_key},
                },
                "spec": {},
            }
        else:
            body = json.loads(json.dumps(lease))  # keep resourceVersion: conditional write
        transitions = int(body["spec"].get("leaseTransitions") or 0) + 1
        identity = run_identity(me.uid, me.run)
        body["spec"].update(
            {
                "holderIdentity": identity,
                "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": transitions,
            }
        )
        annotations = body["metadata"].setdefault("annotations", {}) or {}
        annotations[HOLDER_ANNOTATION] = me.name
        annotations[IDENTITY_ANNOTATION] = identity
        history = json.loads(annotations.get(HISTORY_ANNOTATION) or "[]")
        if history and "released" not in history[-1]:
            # Taken over from a holder that had ended (or expired) without releasing.
            history[-1]["released"] = now
            history[-1]["takenOverBy"] = me.name
        history.append(
            {"holder": me.name, "uid": me.uid, "run": me.run, "token": transitions, "acquired": now}
        )
        annotations[HISTORY_ANNOTATION] = json.dumps(history[-HISTORY_LENGTH:])
        body["metadata"]["annotations"] = annotations
        try:
            if lease is None:
                written = await self.kube.create(lease_path(namespace), body)
            else:
                written = await self.kube.replace(lease_path(namespace, name), body)
        except Conflict:
            return None
        self._seen.pop((namespace, name), None)
        self.renewer.hold(namespace, written, me.name)
        return int(written["spec"]["leaseTransitions"])

    async def release(self, namespace: str, lock_key: str, uid: str, run: int) -> bool:
        """Give the lock up if this run holds it (never a later run of the same
        rollout's). Returns whether a release was written."""
        name = lease_name(lock_key)
        where = lease_path(namespace, name)
        # No renewal may race the release. The renewer's version (its own last write,
        # or newer as seen) is what the conditional release is written against. The
        # renewal of another run's lease (a later run's) goes on: not ours to stop.
        known = None
        if is_run(self.renewer.holder(namespace, name), uid, run):
            known = self.renewer.drop(namespace, name)
        if known is not None:
            try:
                await self.kube.replace(where, _released(known, uid))
                return True
            except Conflict:
                pass  # a write we had not seen (a renewal in flight): read it, once
        # Fresh: the release is conditional, and a renewal the cache has not seen yet
        # would make it fail and hold up the next rollout by a retry.
        lease = await self.fresh.get(where)
        if lease is None or not is_run(holder_of(lease)[0], uid, run):
            return False
        await self.kube.replace(where, _released(lease, uid))  # Conflict: caller retries
        return True


def _released(lease: JsonObj, uid: str) -> JsonObj:
    """`lease` with no holder, its history closing `uid`'s entry; conditional on the
    version it was read as."""
    body: JsonObj = json.loads(json.dumps(lease))
    body["spec"]["holderIdentity"] = None
    body["spec"]["renewTime"] = micro_time()
    annotations = body["metadata"].get("annotations") or {}
    history = json.loads(annotations.get(HISTORY_ANNOTATION) or "[]")
    if history and history[-1].get("uid") == uid:
        history[-1]["released"] = body["spec"]["renewTime"]
    annotations[HISTORY_ANNOTATION] = json.dumps(history[-HISTORY_LENGTH:])
    annotations.pop(HOLDER_ANNOTATION, None)
    annotations.pop(IDENTITY_ANNOTATION, None)
    body["metadata"]["annotations"] = annotations
    return body


def lease_key(lease: JsonObj) -> str:
    """The lock key a Lease of ours was made for."""
    annotations = lease["metadata"].get("annotations") or {}
    return str(annotations.get(LOCK_KEY_ANNOTATION) or lease["metadata"]["name"][9:])


def _version(lease: JsonObj | None) -> str:
    """The resourceVersion of a Lease ("" for no Lease at all)."""
    return str(lease["metadata"]["resourceVersion"]) if lease is not None else ""
