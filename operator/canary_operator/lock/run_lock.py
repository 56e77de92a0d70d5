"""The lock as one run of a rollout meets it during a reconcile: observing it (and
taking it when this run is next), the precondition of taking a free lock, the fence
before each write to the target, the check that a holder still runs, and when a
read made before the lock was taken still stands.

lease.py holds the Lease protocol itself; this is the reconcile's half of it, so
that a change to the protocol is a change to lock/ alone.
"""

from __future__ import annotations

from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.api.models import Phase
from canary_operator.engine.types import LockView
from canary_operator.kube.api import Conflict, JsonObj, Kube
from canary_operator.kube.rollouts import add_finalizer, has_finalizer, rollout_path
from canary_operator.lock.lease import LeaseLock
from canary_operator.lock.queue import Candidate


class LockLost(Exception):
    """The fencing check before a write found the lock no longer held by this run."""


class StillAsRead:
    """The precondition of taking a free lock: the would-be holder is still the rollout
    as this reconcile read it. Another operator process may have ended this rollout's
    run (and released the lock) after that read; a run writes its terminal status
    before it releases, so a stale view must never take the lock.

    A rollout without the finalizer (a run must have it before its first side effect)
    gets it now, conditional on the version read: the write's success shows that
    version current as a fresh read would, in a write the run makes anyway. One that
    has it is read fresh."""

    def __init__(self, writes: Kube, fresh: Kube, body: JsonObj) -> None:
        self.writes = writes
        self.fresh = fresh
        self.body = body  # takes the finalizer write's answer

    async def __call__(self) -> bool:
        meta = self.body["metadata"]
        if not has_finalizer(self.body) and not meta.get("deletionTimestamp"):
            try:
                await add_finalizer(self.writes, self.body)
            except Conflict:
                return False
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            return True
        fresh = await self.fresh.get(rollout_path(meta["namespace"], meta["name"]))
        return fresh is not None and fresh["metadata"]["resourceVersion"] == meta["resourceVersion"]


class Fence:
    """Confirms, right before a write to the target, that the run still holds its lock
    with its token (a fresh read of the Lease); raises LockLost if it does not.

    A lock taken in this very reconcile confirms the first write it covers: the
    acquisition was a write conditional on the version read, which the API server
    answered with this run as holder and its token, as fresh as a read would be.
    Every later write reads the Lease again."""

    def __init__(self, lock: LeaseLock, namespace: str, lock_key: str, uid: str, view: LockView):
        self.lock = lock
        self.namespace = namespace
        self.lock_key = lock_key
        self.uid = uid
        self.view = view
        self._confirmed_by_acquisition = view.acquired

    async def __call__(self) -> None:
        if self._confirmed_by_acquisition:
            self._confirmed_by_acquisition = False
            return
        token = self.view.token
        if not await self.lock.confirm(self.namespace, self.lock_key, self.uid, token):
            raise LockLost(f"lock {self.view.name} no longer held with token {token}")


class RunLock:
    """The lock of one rollout's run, as one reconcile sees it."""

    def __init__(self, lock: LeaseLock, fresh: Kube, namespace: str, lock_key: str, uid: str):
        self.lock = lock
        self.fresh = fresh  # asks the API server itself
        self.namespace = namespace
        self.lock_key = lock_key
        self.uid = uid

    async def observe(
        self,
        me: Candidate,
        sharing: list[Candidate],
        wants: bool,
        precondition: StillAsRead,
    ) -> LockView:
        """The lock, taken if `wants`, this rollout is next and may, and `precondition`
        holds. `sharing`: everyone of this lock as last seen; `me` as just read."""
        everyone = [c for c in sharing if c.uid != me.uid]
        everyone.append(me)
        return await self.lock.observe(
            self.namespace,
            self.lock_key,
            me,
            everyone,
            wants,
            self.holder_running,
            precondition,
        )

    async def holder_running(self, namespace: str, name: str, uid: str) -> bool:
        # Fresh: a lease is taken from its holder only if the API server says it ended.
        body = await self.fresh.get(rollout_path(namespace, name))
        if body is None or body["metadata"]["uid"] != uid:
            return False
        return not Phase((body.get("status") or {}).get("phase") or "Pending").terminal

    def fence(self, view: LockView) -> Fence:
        """The fence for the writes of one reconcile's actions."""
        return Fence(self.lock, self.namespace, self.lock_key, self.uid, view)

    async def version_before_read(self) -> str:
        """The Lease's version (watch-fed view) just before a fresh read of the target
        made while this run does not hold the lock; see `read_stands`."""
        return await self.lock.cached_version(self.namespace, self.lock_key)

    @staticmethod
    def read_stands(version_before_read: str | None, view: LockView) -> bool:
        """Whether a fresh read of the target made in this reconcile before the lock was
        taken is as good as one made now: the acquisition was conditional on the very
        version the Lease had just before that read, so the Lease stood free and
        unchanged from before the read until this run took it, and nobody held the lock
        (nor wrote the target under it) in between."""
        return (
            version_before_read is not None
            and view.acquired_over is not None
            and version_before_read == view.acquired_over
        )
