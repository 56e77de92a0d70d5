"""The per-target lock: a coordination.k8s.io/v1 Lease held by a *rollout* (its uid).

Protocol (see DESIGN.md, "Exclusion"):
- every write carries the resourceVersion it read: a 409 means another writer won;
- a lease may be taken over when its holder rollout no longer exists, has ended, or
  the lease has not changed for leaseDurationSeconds as measured on *our* monotonic
  clock since we first saw that version (wall clocks of other hosts are never used);
- leaseTransitions increases on every acquisition and is the fencing token;
- the holder renews while it holds the lock, whatever its phase (also while paused).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from canary_operator.engine.types import LockView
from canary_operator.kube.api import Conflict, JsonObj, Kube, path
from canary_operator.lock import queue
from canary_operator.lock.queue import Candidate

LEASE_DURATION_SECONDS = 30
RENEW_EVERY_SECONDS = 10.0
HOLDER_ANNOTATION = "canary-operator.dev/holder"
HISTORY_ANNOTATION = "canary-operator.dev/history"
LOCK_LABEL = "canary-operator.dev/lock"
HISTORY_LENGTH = 30

# Asks whether a holder rollout (namespace, name, uid) still runs: True / False.
HolderCheck = Callable[[str, str, str], Awaitable[bool]]


def lease_name(lock_key: str) -> str:
    name = f"cro-lock-{lock_key}"
    if len(name) <= 253:
        return name
    return f"cro-lock-{hashlib.sha256(lock_key.encode()).hexdigest()[:16]}"


def micro_time(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class _Seen:
    resource_version: str
    since: float  # monotonic time we first saw this resourceVersion


class LeaseLock:
    def __init__(self, kube: Kube, clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.clock = clock
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._renewed: dict[tuple[str, str], float] = {}

    def _path(self, namespace: str, name: str | None = None) -> str:
        return path("coordination.k8s.io", "v1", "leases", namespace, name)

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
    ) -> LockView:
        """Read the lock; renew it if we hold it; take it if we are next and may."""
        name = lease_name(lock_key)
        lease = await self.kube.get(self._path(namespace, name))
        spec = (lease or {}).get("spec", {})
        holder_uid = spec.get("holderIdentity") or None
        holder_name = ((lease or {}).get("metadata", {}).get("annotations") or {}).get(
            HOLDER_ANNOTATION
        )
        by_uid = {c.uid: c for c in candidates}

        if lease is not None and holder_uid == me.uid:
            await self._renew(namespace, lease)
            waiting = len(queue.order(candidates, me.uid))
            return LockView(
                name=name,
                held=True,
                token=int(spec.get("leaseTransitions") or 0),
                holder=me.name,
                holder_phase=me.phase.value,
                waiting=waiting,
            )

        free = holder_uid is None
        stale_holder: str | None = None
        if not free and lease is not None:
            holder = by_uid.get(holder_uid or "")
            alive = holder.active if holder is not None else False
            if holder is None and holder_name:
                alive = await holder_running(namespace, holder_name, holder_uid or "")
            expired = self._unchanged_for(namespace, lease) >= float(
                spec.get("leaseDurationSeconds") or LEASE_DURATION_SECONDS
            )
            if not alive or expired:
                free = True
                stale_holder = holder_name or holder_uid
        holder_candidate = by_uid.get(holder_uid or "")
        # The holder (live, or expired and about to lose the lock) is not in the queue.
        qv = queue.view(me, candidates, holder_uid, free)
        view = LockView(
            name=name,
            holder=None if free else (holder_name or holder_uid),
            holder_phase=holder_candidate.phase.value if holder_candidate and not free else None,
            position=qv.position,
            waiting=qv.waiting,
            busy=not free,
            superseded_by=qv.superseded_by,
        )
        if not (wants_lock and qv.may_acquire):
            return view
        token = await self._acquire(namespace, name, lock_key, lease, me)
        if token is None:
            return view
        return LockView(
            name=name,
            held=True,
            token=token,
            holder=me.name,
            holder_phase=me.phase.value,
            waiting=max(0, qv.waiting - 1),
            recovered_from=stale_holder,
        )

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
                    "annotations": {"canary-operator.dev/lock-key": lock_key},
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
                written = await self.kube.create(self._path(namespace), body)
            else:
                written = await self.kube.replace(self._path(namespace, name), body)
        except Conflict:
            return None
        self._renewed[(namespace, name)] = self.clock()
        self._seen.pop((namespace, name), None)
        return int(written["spec"]["leaseTransitions"])

    async def _renew(self, namespace: str, lease: JsonObj) -> None:
        key = (namespace, lease["metadata"]["name"])
        last = self._renewed.get(key)
        if last is not None and self.clock() - last < RENEW_EVERY_SECONDS:
            return
        body = json.loads(json.dumps(lease))
        body["spec"]["renewTime"] = micro_time()
        try:
            await self.kube.replace(self._path(namespace, key[1]), body)
            self._renewed[key] = self.clock()
        except Conflict:
            pass  # someone wrote meanwhile; the next observation tells who holds it

    async def release(self, namespace: str, lock_key: str, uid: str) -> bool:
        """Give the lock up if `uid` holds it. Returns whether a release was written."""
        name = lease_name(lock_key)
        lease = await self.kube.get(self._path(namespace, name))
        if lease is None or lease.get("spec", {}).get("holderIdentity") != uid:
            return False
        body = json.loads(json.dumps(lease))
        body["spec"]["holderIdentity"] = None
        body["spec"]["renewTime"] = micro_time()
        annotations = body["metadata"].get("annotations") or {}
        history = json.loads(annotations.get(HISTORY_ANNOTATION) or "[]")
        if history and history[-1].get("uid") == uid:
            history[-1]["released"] = body["spec"]["renewTime"]
        annotations[HISTORY_ANNOTATION] = json.dumps(history[-HISTORY_LENGTH:])
        annotations.pop(HOLDER_ANNOTATION, None)
        body["metadata"]["annotations"] = annotations
        await self.kube.replace(self._path(namespace, name), body)  # Conflict: caller retries
        self._renewed.pop((namespace, name), None)
        return True
