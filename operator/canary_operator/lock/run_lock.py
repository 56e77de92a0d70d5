"""The lock as one run of a rollout meets it during a reconcile: observing it (and
taking it when this run is next), the precondition of taking a free lock, the fence
before each write to the target, the check that a holder still runs, and when a
read made before the lock was taken still stands.

lease.py holds the Lease protocol itself; this is the reconcile's half of it, so
that a change to the protocol is a change to lock/ alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import replace

from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.api.models import Phase
from canary_operator.engine.types import LockView
from canary_operator.kube.api import Conflict, JsonObj, Kube
from canary_operator.kube.rollouts import add_finalizer, has_finalizer, rollout_path
from canary_operator.lock.lease import LeaseLock, Look, lease_name
from canary_operator.lock.queue import Candidate
from canary_operator.lock.renewer import run_of, uid_of


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
    """Confirms, right before a write to the target, that the run still holds every
    lock it holds with its token (a fresh read of each Lease); raises LockLost if it
    does not.

    Every write reads the Leases again, also the first after an acquisition: whatever
    came between the acquisition and the write (a server-side dry-run through an
    admission webhook, a stalled process) may have been long enough for the lock to
    change hands."""

    def __init__(self, lock: LeaseLock, namespace: str, uid: str, run: int, view: LockView):
        self.lock = lock
        self.namespace = namespace
        self.uid = uid
        self.run = run
        self.view = view

    async def __call__(self) -> None:
        tokens = self.view.tokens
        if not tokens:  # a view that holds no lock (view.name is a Lease's, not a key)
            raise LockLost(f"lock {self.view.name} not held by this run")
        confirmed = await asyncio.gather(
            *(
                self.lock.confirm(self.namespace, key, self.uid, self.run, token)
                for key, token in tokens
            )
        )
        lost = [
            f"{lease_name(key)} (token {token})"
            for (key, token), ok in zip(tokens, confirmed, strict=True)
            if not ok
        ]
        if lost:
            raise LockLost(f"lock {', '.join(lost)} no longer held by this run")


class RunLock:
    """The locks of one run of a rollout, as one reconcile sees them: its target's,
    and its group's when it names one (lock/keys.py), taken all or none."""

    def __init__(
        self,
        lock: LeaseLock,
        fresh: Kube,
        namespace: str,
        keys: tuple[str, ...],
        target: str,
        uid: str,
        run: int,
    ):
        self.lock = lock
        self.fresh = fresh  # asks the API server itself
        self.namespace = namespace
        self.keys = keys  # in the order they are taken
        self.target = target  # the target's own key (one of keys)
        self.uid = uid
        self.run = run

    async def observe(
        self,
        me: Candidate,
        sharing: Mapping[str, list[Candidate]],
        wants: bool,
        precondition: StillAsRead,
    ) -> LockView:
        """The locks, taken if `wants`, this run is next at each and may, and
        `precondition` holds. `sharing`: per key, everyone of that lock as last seen;
        `me` as just read."""
        looks = [
            await self.lock.look(
                self.namespace, key, me, _with(me, sharing.get(key, [])), wants, self.holder_running
            )
            for key in self.keys
        ]
        if all(look.held for look in looks):
            return _combined(looks, self.target)
        missing = [look for look in looks if not look.held]
        if wants and all(look.may_take for look in missing):
            if not await precondition():
                return _waiting(looks)
            return await self._take_all(me, looks)
        if any(look.held for look in looks) and me.waiting:
            # A waiting run holding part of its locks (a process that stopped between
            # two acquisitions) gives them back: all or none, so that no two runs each
            # hold what the other waits for.
            await self._give_back(look.key for look in looks if look.held)
        return _waiting(looks)

    async def _take_all(self, me: Candidate, looks: list[Look]) -> LockView:
        """Take every lock this run does not hold yet, in order; if one is lost to a
        race, give back those taken here."""
        taken: list[Look] = []
        for look in looks:
            if look.held:
                taken.append(look)
                continue
            view = await self.lock.take(self.namespace, look, me)
            if not view.held:
                # A waiting run keeps none; one owing a cleanup keeps what it held.
                await self._give_back(t.key for t in taken if t.view.acquired or me.waiting)
                return _waiting(looks)
            taken.append(replace(look, view=view, held=True))
        return _combined(taken, self.target)

    async def _give_back(self, keys: Iterable[str]) -> None:
        for key in keys:
            await self.lock.release(self.namespace, key, self.uid, self.run)

    async def release(self) -> bool:
        """Give up every lock this run holds (the reverse of the order taken). Returns
        whether a release was written."""
        released = [
            await self.lock.release(self.namespace, key, self.uid, self.run)
            for key in reversed(self.keys)
        ]
        return any(released)

    async def holder_running(self, namespace: str, name: str, identity: str | None) -> bool:
        # Fresh: a lease is taken from its holder only if the API server says its run
        # ended (the rollout is gone, ended, or went on to a later run).
        body = await self.fresh.get(rollout_path(namespace, name))
        if body is None or body["metadata"]["uid"] != uid_of(identity):
            return False
        status = body.get("status") or {}
        run = run_of(identity)
        if run is not None and max(int(status.get("run") or 0), 1) != run:
            return False
        return not Phase(status.get("phase") or "Pending").terminal

    def fence(self, view: LockView) -> Fence:
        """The fence for the writes of one reconcile's actions."""
        return Fence(self.lock, self.namespace, self.uid, self.run, view)

    async def version_before_read(self) -> str:
        """The Leases' versions (watch-fed view) just before a fresh read of the target
        made while this run does not hold its locks; see `read_stands`."""
        versions = [await self.lock.cached_version(self.namespace, key) for key in self.keys]
        return ",".join(versions)

    @staticmethod
    def read_stands(version_before_read: str | None, view: LockView) -> bool:
        """Whether a fresh read of the target made in this reconcile before the locks
        were taken is as good as one made now: every acquisition was conditional on
        the very version its Lease had just before that read, so each Lease stood free
        and unchanged from before the read until this run took it, and nobody held a
        lock (nor wrote the target under it) in between."""
        return (
            version_before_read is not None
            and view.acquired_over is not None
            and version_before_read == view.acquired_over
        )


def _with(me: Candidate, sharing: list[Candidate]) -> list[Candidate]:
    """Everyone of a lock, `me` as just read."""
    return [*(c for c in sharing if c.uid != me.uid), me]


def _combined(looks: list[Look], target: str) -> LockView:
    """Every lock held: one view. It names the target's lock and carries every token;
    `acquired_over` only if all were taken here, none taken over."""
    views = [look.view for look in looks]
    main = next(look.view for look in looks if look.key == target)
    tokens = tuple(pair for view in views for pair in view.tokens)
    all_taken = all(view.acquired for view in views)
    overs = [view.acquired_over for view in views]
    over = ",".join(o for o in overs if o is not None) if all_taken and None not in overs else None
    return replace(
        main,
        tokens=tokens,
        acquired=any(view.acquired for view in views),
        acquired_over=over,
        recovered_from=next((v.recovered_from for v in views if v.recovered_from), None),
        renew_error=next((v.renew_error for v in views if v.renew_error), None),
        waiting=max(view.waiting for view in views),
    )


def _waiting(looks: list[Look]) -> LockView:
    """Not every lock held: the view of the first one that keeps this run waiting (busy
    before free, in the order taken)."""
    views = [look.view for look in looks if not look.held]
    return next((v for v in views if v.busy), views[0])
