"""The one object a reconcile works on, made once per reconcile, and the long-lived
collaborators it reaches the cluster through."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import ValidationError

from canary_operator.api.job_policy import AllowedServiceAccounts
from canary_operator.api.models import CanaryRolloutSpec, CanaryRolloutStatus
from canary_operator.checks.inflight import CheckRunner, RunRef
from canary_operator.engine.types import Action, Observed, Rollout
from canary_operator.index import RolloutIndex
from canary_operator.kube.api import JsonObj, Kube
from canary_operator.kube.events import EventRecorder
from canary_operator.kube.rollouts import has_finalizer
from canary_operator.lock.keys import lock_keys, target_key
from canary_operator.lock.lease import LeaseLock
from canary_operator.lock.run_lock import RunLock
from canary_operator.traffic.base import TrafficRouter
from canary_operator.traffic.factory import router_for
from canary_operator.traffic.service_switch import recorded_selector
from canary_operator.validation import SpecValidator

# Called after each status write: (namespace, name, old status, new status).
StatusHook = Callable[[str, str, CanaryRolloutStatus | None, CanaryRolloutStatus], None]
# Called with the written body once the transition's Events are out (the notifier:
# it only schedules background work, never waits on an endpoint).
TransitionHook = Callable[[JsonObj, CanaryRolloutStatus | None, CanaryRolloutStatus], None]


@dataclass(frozen=True)
class Collaborators:
    """What every reconcile uses, made once by the controller."""

    kube: Kube
    """Reads from the watch-fed caches (kube/cache.py); writes go through."""
    fresh: Kube
    """Asks the API server itself: only where a stale read could break a promise (each
    use says which)."""
    lock: LeaseLock
    """The Lease protocol (lock/lease.py)."""
    index: RolloutIndex
    """The rollouts as last seen, and who shares a lock."""
    events: EventRecorder
    """Writes Events in the background, in order."""
    checks: CheckRunner
    """Calls to user endpoints (webhooks, metric queries) as background work."""
    validator: SpecValidator
    """Checks of the spec against the cluster, made before a run touches anything."""
    allowed_accounts: AllowedServiceAccounts
    """Which ServiceAccounts rollout Jobs may name (`run --allow-job-service-accounts`)."""
    on_status_written: StatusHook | None = None
    on_transition: TransitionHook | None = None


@dataclass
class Targets:
    """The rollout's target Deployment and stable Service, as this reconcile read them."""

    target: JsonObj | None
    service: JsonObj | None
    fresh: bool = False
    """The target as the API server gave it in this reconcile."""
    version_before_read: str | None = None
    """Read fresh before this reconcile took the lock: the Lease's version just before
    that read (see RunLock.read_stands)."""
    rollout_read_at: float | None = None
    """When the start's fresh read of the rollout was made (monotonic seconds)."""


@dataclass
class ReconcileContext:
    """One reconcile of one rollout."""

    deps: Collaborators
    rollout: Rollout
    """The resource as the engine sees it (spec parsed, status as read); fixed."""
    body: JsonObj
    """The resource as read; its metadata takes the answer of a finalizer write."""
    ref: RunRef
    """The run whose background checks this reconcile observes; fixed."""
    run_lock: RunLock
    """The lock as this run meets it (observe, fence, precondition)."""
    targets: Targets = field(init=False)
    """The target and its Service; read fresh, on the engine's asking, when a run may
    start."""
    obs: Observed = field(init=False)
    """What the engine plans from; each round of observation replaces it."""
    acting: list[Action] = field(default_factory=list)
    """The actions tried so far in this reconcile; after a failure, the last one failed."""

    @classmethod
    def made(cls, deps: Collaborators, body: JsonObj, spec: CanaryRolloutSpec) -> ReconcileContext:
        """The context of one reconcile of the rollout `body` (its spec parsed)."""
        meta = body["metadata"]
        try:
            current = CanaryRolloutStatus.model_validate(body.get("status") or {})
        except ValidationError:
            current = CanaryRolloutStatus()
        rollout = Rollout(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta["uid"],
            generation=int(meta.get("generation") or 1),
            spec=spec,
            status=current,
            deleting=bool(meta.get("deletionTimestamp")),
            has_finalizer=has_finalizer(body),
            annotations=meta.get("annotations") or {},
            created=meta.get("creationTimestamp"),
        )
        run_lock = RunLock(
            deps.lock,
            deps.fresh,
            rollout.namespace,
            lock_keys(spec),
            target_key(spec.target.deployment),
            rollout.uid,
            max(current.run, 1),  # a new run's number before its first status write
        )
        ref = RunRef(rollout.namespace, rollout.name, rollout.uid, current.run)
        return cls(deps, rollout, body, ref, run_lock)

    @property
    def namespace(self) -> str:
        return self.rollout.namespace

    def router(self, token: int | None, kube: Kube | None = None) -> TrafficRouter:
        """The rollout's router, reading (and writing) through `kube`."""
        targets: Targets | None = getattr(self, "targets", None)  # not read yet
        service = targets.service if targets is not None else None
        switched = service is not None and recorded_selector(service) is not None
        return router_for(self.rollout, token, kube or self.deps.kube, self.deps.fresh, switched)
