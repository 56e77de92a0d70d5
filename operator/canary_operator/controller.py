"""The controller: watch-fed caches feed the work queue; the reconciler does the work.

kopf watches the rollouts (handlers.py); this module's caches watch what the
reconciler reads, and their events wake only the rollouts that can act on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from canary_operator.api.job_policy import AllowedServiceAccounts
from canary_operator.api.models import Phase
from canary_operator.checks.inflight import CheckRunner
from canary_operator.index import RolloutIndex, candidate, parse_spec
from canary_operator.kube import cache, objects
from canary_operator.kube.api import Kube
from canary_operator.kube.cache import Cache, CachedKube, Informer
from canary_operator.kube.events import EventRecorder
from canary_operator.lock import queue
from canary_operator.lock.holder import queue_uid
from canary_operator.lock.keys import lock_keys
from canary_operator.lock.lease import LOCK_KEY_ANNOTATION, LOCK_LABEL, LeaseLock, lease_name
from canary_operator.lock.renewer import LeaseRenewer
from canary_operator.metrics import Metrics
from canary_operator.notifications.notifier import Notifier
from canary_operator.reconcile.context import Collaborators
from canary_operator.reconcile.reconciler import Reconciler
from canary_operator.validation import ClusterValidator
from canary_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)

# Waiters behind the head of a lock's queue learn their new position this much later
# (coalesced): a handoff's critical path wakes only who can act, so its cost does not
# grow with the queue, while `status.queue` still catches up within seconds.
QUEUE_REFRESH_SECONDS = 5.0
# The work queue starts once the caches have listed (or after this, reading through).
CACHE_SYNC_TIMEOUT_SECONDS = 30.0


class Controller:
    """The work queue and what runs beside it, apart from reconciles: the watch-fed
    caches, the lease renewer and the background checks. The caches run in every
    process (a standby is warm when it takes over); the rest only in the leader."""

    def __init__(
        self,
        kube: Kube,
        workers: int = 8,
        namespaces: tuple[str, ...] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self.api = kube
        self.cache = Cache(kube, namespaces)
        self.kube = CachedKube(kube, self.cache)
        self.index = RolloutIndex()
        renewer = LeaseRenewer(
            self.kube,
            fresh=kube,
            on_lost=self.wake,
            holder_active=self.index.active,
            on_renewal=metrics.lease_renewal if metrics is not None else None,
        )
        self.lock = LeaseLock(self.kube, renewer=renewer, fresh=kube)
        self.checks = CheckRunner(wake=self.wake)
        self.events = EventRecorder(kube)
        # Notifications go out from tasks of their own, after the status write.
        self.notifier = Notifier(kube, self.events, metrics)
        self.reconciler = Reconciler(
            Collaborators(
                kube=self.kube,
                fresh=kube,
                lock=self.lock,
                index=self.index,
                events=self.events,
                checks=self.checks,
                validator=ClusterValidator(kube, cached=self.kube),
                allowed_accounts=AllowedServiceAccounts.from_env(),
                on_status_written=metrics.record if metrics is not None else None,
                on_transition=self.notifier.transition,
            )
        )
        self.queue = WorkQueue(
            lambda key: self.reconciler.reconcile(*key), workers=workers, metrics=metrics
        )
        # (namespace, lease) -> (holder uid, token) last seen: renewals wake nobody.
        self._lease_holders: dict[tuple[str, str], tuple[str | None, int]] = {}
        self._starting: asyncio.Task[None] | None = None
        self._required: list[Informer] = []
        self._watch()

    def _watch(self) -> None:
        """What the reconciler reads, watched like its RBAC: all Deployments and Services
        (targets are the user's), only the operator's Jobs, canary pods and lock Leases."""
        deployments = self.cache.add(
            cache.DEPLOYMENTS, handlers=[lambda _t, body: self.on_deployment(body)]
        )
        services = self.cache.add(cache.SERVICES)
        pods = self.cache.add(cache.PODS, label_selector=objects.ROLE_LABEL, handlers=[self.on_pod])
        jobs = self.cache.add(
            cache.JOBS,
            label_selector=f"{objects.MANAGED_BY}={objects.OPERATOR}",
            handlers=[lambda _t, body: self.on_owned(body)],
        )
        # Complete: every lock Lease is created by the operator with this label, and all
        # that is done on seeing none is a create, which fails (409) should an unlabelled
        # Lease of that name exist.
        leases = self.cache.add(
            cache.LEASES,
            label_selector=f"{LOCK_LABEL}=true",
            handlers=[self.on_lease],
            complete=True,
        )
        self._required = [*deployments, *services, *pods, *jobs, *leases]
        # Optional: a cluster without Gateway API answers 404, and its reads go direct.
        self.cache.add(cache.HTTPROUTES)

    def start_watching(self) -> None:
        self.cache.start()

    def start(self) -> None:
        self._starting = asyncio.create_task(self._start_when_synced(), name="controller start")

    async def _start_when_synced(self) -> None:
        # Reconciles before the caches have listed would read everything directly: on a
        # restart with many rollouts that is a burst of requests for nothing.
        try:
            await asyncio.wait_for(
                asyncio.gather(*(i.synced.wait() for i in self._required)),
                CACHE_SYNC_TIMEOUT_SECONDS,
            )
        except TimeoutError:
            log.warning("caches not synced in %.0fs; reading through", CACHE_SYNC_TIMEOUT_SECONDS)
        self.lock.renewer.start()
        self.notifier.start()
        self.queue.start()

    async def stop(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starting
        await self.queue.stop()
        await self.events.stop()  # what the last reconciles announced
        await self.notifier.stop()
        await self.checks.stop()
        await self.lock.renewer.stop()

    async def stop_watching(self) -> None:
        await self.cache.stop()

    def wake(self, namespace: str, name: str) -> None:
        self.queue.add((namespace, name))

    def on_rollout(self, event_type: str | None, body: dict[str, Any]) -> None:
        deleted = event_type == "DELETED"
        before = self.index.candidate(body["metadata"]["namespace"], body["metadata"]["name"])
        self.index.update(body, deleted=deleted)
        self.notifier.seen(body, deleted=deleted)
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        if not deleted:
            self.queue.add((ns, name))
        else:
            self.checks.forget(ns, name)
        after = None if deleted else candidate(body)
        # Others sharing the lock care only when this one joined, left, or changed phase
        # (the holder's phase shows in their status; an ended holder frees the lock).
        if (
            before is None
            or after is None
            or (before.phase, before.deleting)
            != (
                after.phase,
                after.deleting,
            )
        ):
            self.wake_lock_group(body)

    def wake_lock_group(self, body: dict[str, Any]) -> None:
        try:
            keys = lock_keys(parse_spec(body))
        except Exception:
            return
        ns = body["metadata"]["namespace"]
        for key in keys:
            holder = self._lease_holders.get((ns, lease_name(key)), (None, 0))[0]
            self._wake_queue(ns, key, holder, skip=body["metadata"]["name"])

    def _wake_queue(self, ns: str, lock_key: str, holder: str | None, skip: str = "") -> None:
        """Wake who can act on the lock now (its holder, the head of its queue, and under
        Supersede the newest waiter); the others later, coalesced."""
        sharing = self.index.sharing_lock(ns, lock_key)
        holder_uid = queue_uid(holder, sharing)  # as lock/lease.py ranks the queue
        now: set[str] = {c.name for c in sharing if c.uid == holder_uid}
        ordered = queue.order(sharing, holder_uid)
        if ordered:
            now.add(ordered[0].name)
        newest = queue.newest_waiting(sharing)
        if newest is not None:
            now.add(newest.name)
        for c in sharing:
            if c.name == skip or not c.active:
                continue
            if c.name in now:
                self.queue.add((ns, c.name))
            else:
                self.queue.add((ns, c.name), delay=QUEUE_REFRESH_SECONDS)

    def on_lease(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A lock changed hands: wake who can act on it (event-driven handoff).
        A renewal changes nothing anyone waits for, so it wakes nobody."""
        self.lock.renewer.seen(body)
        meta = body["metadata"]
        ns = meta["namespace"]
        spec = body.get("spec") or {}
        holder = (
            None if event_type == "DELETED" else spec.get("holderIdentity") or None,
            int(spec.get("leaseTransitions") or 0),
        )
        if self._lease_holders.get((ns, meta["name"])) == holder:
            return
        self._lease_holders[(ns, meta["name"])] = holder
        key = (meta.get("annotations") or {}).get(LOCK_KEY_ANNOTATION)
        if key is not None:
            self._wake_queue(ns, key, holder[0])

    def on_owned(self, body: dict[str, Any]) -> None:
        """A canary Deployment or a Job changed: reconcile the rollout it belongs to."""
        labels = body["metadata"].get("labels") or {}
        name = labels.get(objects.ROLLOUT_LABEL)
        if name:
            self.queue.add((body["metadata"]["namespace"], name))

    def on_pod(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A canary pod gone: the cleanup waiting for it goes on now, not at its next
        look (which backs off to 30 s while a pod will not go). Other pod events wake
        nobody: what a run waits for shows in its Deployment's status."""
        labels = body["metadata"].get("labels") or {}
        name, ns = labels.get(objects.ROLLOUT_LABEL), body["metadata"]["namespace"]
        seen = self.index.candidate(ns, name) if event_type == "DELETED" and name else None
        if seen is not None and seen.phase == Phase.CLEANING_UP:
            self.queue.add((ns, seen.name))

    def on_deployment(self, body: dict[str, Any]) -> None:
        self.on_owned(body)
        ns = body["metadata"]["namespace"]
        for c in self.index.targeting(ns, body["metadata"]["name"]):
            # A run under way (or about to queue) acts on its target's changes at once.
            # A waiting or ended rollout only shows what the target runs (status.live;
            # a waiter reads the target afresh when it takes the lock): it catches up
            # within seconds, coalesced, rather than once per event of a rolling target.
            urgent = c.owes_cleanup or c.phase == Phase.PENDING
            self.queue.add((ns, c.name), delay=0.0 if urgent else QUEUE_REFRESH_SECONDS)
