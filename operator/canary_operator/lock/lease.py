"""The per-target lock: a coordination.k8s.io/v1 Lease held by a *rollout* (its uid).

Protocol (docs/architecture.md, "The lock"):
- every write carries the resourceVersion it read: a 409 means another writer won;
- **a live holder is never preempted**: a lease whose holder is an existing rollout
  that has not ended stays with it, however long its steps take and however long
  its lease has gone unrenewed (slowness, a stalled API server or a dead operator
  delay a rollout, never hand its lock to another). Before taking a lease over,
  the holder is read fresh from the API server, not from the watch-fed index;
- a lease may be taken over when its holder rollout no longer exists (or exists
  under a new uid) or has ended, and the lease has not changed for
  TAKEOVER_GRACE_SECONDS (an ended holder releases within moments, and that
  release, not a takeover, is the normal handoff); the new holder first runs a
  recovery cleanup;
- expiry is only for a lease this operator cannot judge by its holder: one whose
  holder names no rollout (written by hand or by another tool). It counts as
  expired when it has not changed for leaseDurationSeconds on *our* monotonic clock
  since we first saw that version; wall clocks of other hosts are never used;
- leaseTransitions increases on every acquisition and is the fencing token;
  `confirm` reads the lease fresh before each write to the target;
- renewal is lock/renewer.py's, on its own schedule, never a reconcile's.

Two operator processes acting on the same rollouts at once (no leader election)
stay safe: holders are rollouts, not processes, so both renew the same holder;
acquisitions race through resourceVersion preconditions (one wins, both then see
the same holder), and neither ever takes a lease from a live holder.
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
from canary_operator.lock.queue import Candidate
from canary_operator.lock.renewer import LeaseRenewer, holder_of, lease_path, micro_time

__all__ = [
    "HISTORY_ANNOTATION",
    "HOLDER_ANNOTATION",
    "LEASE_DURATION_SECONDS",
    "LOCK_LABEL",
    "LeaseLock",
    "lease_name",
    "micro_time",
]

LEASE_DURATION_SECONDS = 30
TAKEOVER_GRACE_SECONDS = 5.0
HOLDER_ANNOTATION = "canary-operator.dev/holder"
HISTORY_ANNOTATION = "canary-operator.dev/history"
LOCK_LABEL = "canary-operator.dev/lock"
LOCK_KEY_ANNOTATION = "canary-operator.dev/lock-key"
HISTORY_LENGTH = 30

# Asks the API server (fresh, not a cache) whether a holder rollout (namespace, name,
# uid) still exists and has not ended.
HolderCheck = Callable[[str, str, str], Awaitable[bool]]
# Asks the API server (fresh) whether the would-be holder is still as it was read.
SelfCheck = Callable[[], Awaitable[bool]]


def lease_name(lock_key: str) -> str:
    name = f"cro-lock-{lock_key}"
    if len(name) <= 253:
        return name
    return f"cro-lock-{hashlib.sha256(lock_key.encode()).hexdigest()[:16]}"


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
        """Read the lock; take it if we are next and may. A held lease is handed to the
        renewer (also after a restart: the holder is the rollout, not the process).

        `still_current` is asked right before taking a free lock: another operator
        process may have ended this rollout's run (and released the lock) after we
        read the rollout. A run writes its terminal status before releasing, so a
        fresh read (or a write conditional on the version read) after seeing the lock
        free tells; a stale view never takes it."""
        name = lease_name(lock_key)
        # The watch-fed view: acting on it is safe, because taking the lock is a write
        # conditional on the version read, and writes to the target are fenced.
        lease = await self.kube.get(lease_path(namespace, name))
        holder_uid, _ = holder_of(lease) if lease is not None else (None, 0)
        holder_name = ((lease or {}).get("metadata", {}).get("annotations") or {}).get(
            HOLDER_ANNOTATION
        )
        if lease is not None and holder_uid == me.uid:
            return self._held_view(namespace, lease, me, candidates)

        holder = {c.uid: c for c in candidates}.get(holder_uid or "")
        # Free, or held by someone who may be gone or ended (confirmed fresh below,
        # only if we would take it). A holder the index shows running is left alone.
        maybe_free = holder_uid is None or holder is None or not holder.active
        qv = queue.view(me, candidates, holder_uid, maybe_free)
        busy_view = LockView(
            name=name,
            holder=holder_name or holder_uid,
            holder_phase=holder.phase.value if holder is not None else None,
            position=qv.position,
            waiting=qv.waiting,
            busy=True,
            superseded_by=qv.superseded_by,
        )
        if not maybe_free:
            return busy_view
        stale_holder: str | None = None
        if holder_uid is not None:
            assert lease is not None
            if not wants_lock or not qv.may_acquire:
                return busy_view  # whether it may be taken over matters only to the head
            if not await self._may_take_over(namespace, lease, holder_name, holder_running):
                return busy_view
            stale_holder = holder_name or holder_uid
        if not (wants_lock and qv.may_acquire):
            return LockView(
                name=name, position=qv.position, waiting=qv.waiting, superseded_by=qv.superseded_by
            )
        return await self._take(namespace, lock_key, lease, me, qv, stale_holder, still_current)

    async def _take(
        self,
        namespace: str,
        lock_key: str,
        lease: JsonObj | None,
        me: Candidate,
        qv: queue.QueueView,
        stale_holder: str | None,
        still_current: SelfCheck | None,
    ) -> LockView:
        """The lock is free (or its stale holder may be replaced) and `me` is its head:
        take it, unless `still_current` finds this rollout's view stale."""
        name = lease_name(lock_key)
        free_view = LockView(
            name=name, position=qv.position, waiting=qv.waiting, superseded_by=qv.superseded_by
        )
        if still_current is not None and not await still_current():
            return free_view
        token = await self._acquire(namespace, name, lock_key, lease, me)
        if token is None:
            return free_view
        return LockView(
            name=name,
            held=True,
            token=token,
            holder=me.name,
            holder_phase=me.phase.value,
            waiting=max(0, qv.waiting - 1),
            recovered_from=stale_holder,
            acquired=True,
            acquired_over=_version(lease) if stale_holder is None else None,
        )

    def _held_view(
        self, namespace: str, lease: JsonObj, me: Candidate, candidates: list[Candidate]
    ) -> LockView:
        """`me` holds the lease: hand it to the renewer (also after a restart: the holder
        is the rollout, not the process)."""
        name = lease["metadata"]["name"]
        self.renewer.hold(namespace, lease, me.name)
        return LockView(
            name=name,
            held=True,
            token=holder_of(lease)[1],
            holder=me.name,
            holder_phase=me.phase.value,
            waiting=len(queue.order(candidates, me.uid)),
            renew_error=self.renewer.error(namespace, name),
        )

    async def _may_take_over(
        self,
        namespace: str,
        lease: JsonObj,
        holder_name: str | None,
        holder_running: HolderCheck,
    ) -> bool:
        holder_uid = lease["spec"]["holderIdentity"]
        unchanged = self._unchanged_for(namespace, lease)
        if holder_name:
            if unchanged < TAKEOVER_GRACE_SECONDS:
                return False  # an ended holder's own release is on its way
            # Fresh read, not the watch-fed index: taking a lease from a holder that
            # still runs would break the one promise the lock makes.
            return not await holder_running(namespace, holder_name, holder_uid)
        # A holder that names no rollout: only expiry tells that it is abandoned.
        duration = float(lease["spec"].get("leaseDurationSeconds") or LEASE_DURATION_SECONDS)
        return unchanged >= duration

    async def cached_version(self, namespace: str, lock_key: str) -> str:
        """The version of the lock's Lease in the watch-fed view ("" when it has none)."""
        return _version(await self.kube.get(lease_path(namespace, lease_name(lock_key))))

    async def confirm(self, namespace: str, lock_key: str, uid: str, token: int | None) -> bool:
        """Fencing: does `uid` still hold the lock with `token`? A fresh read of the
        Lease, on purpose not the watch-fed view: it guards a write to the target."""
        name = lease_name(lock_key)
        lease = await self.fresh.get(lease_path(namespace, name))
        if lease is None:
            return False
        spec = lease.get("spec") or {}
        holds = spec.get("holderIdentity") == uid and int(spec.get("leaseTransitions") or 0) == (
            token or 0
        )
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
        body["spec"].update(
            {
                "holderIdentity": me.uid,
                "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": transitions,
            }
        )
        annotations = body["metadata"].setdefault("annotations", {}) or {}
        annotations[HOLDER_ANNOTATION] = me.name
        history = json.loads(annotations.get(HISTORY_ANNOTATION) or "[]")
        if history and "released" not in history[-1]:
            # Taken over from a holder that had ended (or expired) without releasing.
            history[-1]["released"] = now
            history[-1]["takenOverBy"] = me.name
        history.append({"holder": me.name, "uid": me.uid, "token": transitions, "acquired": now})
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

    async def release(self, namespace: str, lock_key: str, uid: str) -> bool:
        """Give the lock up if `uid` holds it. Returns whether a release was written."""
        name = lease_name(lock_key)
        where = lease_path(namespace, name)
        # No renewal may race the release. The renewer's version (its own last write,
        # or newer as seen) is what the conditional release is written against.
        known = self.renewer.drop(namespace, name)
        if known is not None and holder_of(known)[0] == uid:
            try:
                await self.kube.replace(where, _released(known, uid))
                return True
            except Conflict:
                pass  # a write we had not seen (a renewal in flight): read it, once
        # Fresh: the release is conditional, and a renewal the cache has not seen yet
        # would make it fail and hold up the next rollout by a retry.
        lease = await self.fresh.get(where)
        if lease is None or holder_of(lease)[0] != uid:
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
    body["metadata"]["annotations"] = annotations
    return body


def _version(lease: JsonObj | None) -> str:
    """The resourceVersion of a Lease ("" for no Lease at all)."""
    return str(lease["metadata"]["resourceVersion"]) if lease is not None else ""
