"""One reconcile of one rollout: observe, plan (pure), act, write status.

This is the only place that joins the state machine to the API. Order matters:
side effects first (each write to the target preceded by a fencing check that the
run still holds its lock), then the status write (with a resourceVersion
precondition), then the Events of that transition (so a transition whose write was
lost is never announced; they are written in the background, in order), and only
after the status is durably terminal: release the lock and drop the finalizer.

Nothing here waits on a user endpoint: webhook calls and measurements are started
in the background (checks/inflight.py) and their answers come back as observations,
so a reconcile costs API round trips only, whatever the endpoints do.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from canary_operator.analysis.providers import (
    MetricProvider,
    PrometheusProvider,
    ProviderError,
    WebhookMetricProvider,
    render_query,
)
from canary_operator.api import models
from canary_operator.api.job_policy import AllowedServiceAccounts, job_service_account_problems
from canary_operator.api.models import (
    CanaryRolloutSpec,
    CanaryRolloutStatus,
    MeasurementStatus,
    Phase,
    dump_status,
    parse_duration,
)
from canary_operator.api.models import MetricProvider as MetricProviderSpec
from canary_operator.checks.evidence import job_log_tails
from canary_operator.checks.inflight import CheckRunner, RunRef
from canary_operator.checks.webhook import resolve_headers, run_webhook
from canary_operator.engine import machine
from canary_operator.engine.types import (
    CHECK_ACTIONS,
    TARGET_EFFECTS,
    Action,
    AddFinalizer,
    CallWebhook,
    CheckResult,
    DeleteCanaryObjects,
    DeleteJob,
    Emit,
    EnsureCanary,
    EnsureJob,
    JobView,
    LockView,
    Measure,
    Observed,
    Plan,
    PromoteStable,
    PromotionRecord,
    ReleaseLock,
    RemoveFinalizer,
    ResetRoute,
    Rollout,
    ScaleStable,
    SetRouteWeight,
    WorkloadView,
)
from canary_operator.kube import objects
from canary_operator.kube.api import (
    Conflict,
    FencedWrites,
    JsonObj,
    Kube,
    ReadOnce,
    ResourceKind,
    path,
)
from canary_operator.kube.cache import copy_json, newer_or_same, strip
from canary_operator.kube.events import EventRecorder
from canary_operator.lock.lease import LeaseLock
from canary_operator.lock.queue import Candidate
from canary_operator.redact import scrub
from canary_operator.traffic.base import TrafficRouter
from canary_operator.traffic.gateway_api import GatewayAPIRouter, PermanentRouteError
from canary_operator.traffic.istio import IstioRouter
from canary_operator.traffic.nginx import NginxRouter
from canary_operator.traffic.replicas import (
    ReplicasRouter,
    RestoresStable,
    scale_stable,
    stable_record,
)
from canary_operator.validation import ClusterValidator, SpecValidator, refused_for_good

log = logging.getLogger(__name__)

FINALIZER = "canary-operator.dev/cleanup"
EVIDENCE = "evidence"  # purpose label of a failed test Job kept for its logs
TRANSIENT = (ApiException, Conflict, aiohttp.ClientError, TimeoutError, OSError)


class LockLost(Exception):
    """The fencing check before a write found the lock no longer held by this run."""


class RetryLater(Exception):
    """An API call failed in a way a retry may cure; the status says so, the work
    queue retries with backoff."""

    described = True  # the status and an Event tell it: no traceback in the log


ROLLOUTS = ResourceKind(models.GROUP, models.VERSION, models.PLURAL)


def rollout_path(namespace: str, name: str | None = None) -> str:
    return path(models.GROUP, models.VERSION, models.PLURAL, namespace, name)


def _target_path(rollout: Rollout) -> str:
    return path("apps", "v1", "deployments", rollout.namespace, rollout.spec.target.deployment)


def parse_spec(body: JsonObj) -> CanaryRolloutSpec:
    """The spec, parsed once per generation of a rollout: every watch event and every
    reconcile asks for it, and the API server bumps metadata.generation on each change
    of a custom resource's spec (status and metadata writes leave it). Callers do not
    change the model they get."""
    meta = body.get("metadata") or {}
    uid, generation = meta.get("uid"), meta.get("generation")
    if uid is None or generation is None:
        return CanaryRolloutSpec.model_validate(body.get("spec") or {})
    key = (str(uid), int(generation))
    spec = _parsed_specs.get(key)
    if spec is None:
        spec = CanaryRolloutSpec.model_validate(body.get("spec") or {})
        if len(_parsed_specs) >= PARSED_SPECS:
            del _parsed_specs[next(iter(_parsed_specs))]  # the oldest parsed
        _parsed_specs[key] = spec
    return spec


PARSED_SPECS = 4096
_parsed_specs: dict[tuple[str, int], CanaryRolloutSpec] = {}


def candidate(body: JsonObj) -> Candidate | None:
    """A rollout as the lock queue sees it (None if its spec cannot be read)."""
    try:
        spec = parse_spec(body)
    except ValidationError:
        return None
    meta = body["metadata"]
    status = body.get("status") or {}
    return Candidate(
        name=meta["name"],
        uid=meta["uid"],
        created=meta.get("creationTimestamp", ""),
        phase=Phase(status.get("phase") or Phase.PENDING),
        policy=spec.policy,
        deleting=bool(meta.get("deletionTimestamp")),
        queued_at=status.get("queuedAt") or "~",
    )


class RolloutIndex:
    """Rollouts as last seen by the watch (or as this process last wrote them): what a
    reconcile plans from, and who shares a lock, without asking the API server."""

    def __init__(self) -> None:
        self._bodies: dict[tuple[str, str], JsonObj] = {}  # (namespace, name) -> body
        # (namespace, name) -> (as the lock queue sees it, lock key, target Deployment),
        # parsed once per change; rollouts whose spec cannot be read are left out.
        self._entries: dict[tuple[str, str], tuple[Candidate, str, str]] = {}
        self._by_lock: dict[tuple[str, str], set[str]] = {}  # (namespace, lock key) -> names
        self._phases: dict[tuple[str, str], Phase] = {}  # (namespace, uid) -> phase
        self._uids: dict[tuple[str, str], str] = {}  # (namespace, name) -> uid

    def update(self, body: JsonObj, deleted: bool = False) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        known = self._bodies.get(key)
        if (
            not deleted
            and known is not None
            and known["metadata"].get("uid") == body["metadata"].get("uid")
            and not newer_or_same(body, known)
        ):
            return  # a watch event older than what this process wrote
        body = strip(body, ROLLOUTS)
        by_uid = (key[0], body["metadata"]["uid"])
        previous = self._uids.pop(key, None)
        if previous is not None and previous != by_uid[1]:
            self._phases.pop((key[0], previous), None)  # recreated under the same name
        old = self._entries.pop(key, None)
        if old is not None:
            self._by_lock.get((key[0], old[1]), set()).discard(key[1])
        if deleted:
            self._phases.pop(by_uid, None)
            self._bodies.pop(key, None)
            return
        self._uids[key] = by_uid[1]
        phase = (body.get("status") or {}).get("phase") or Phase.PENDING.value
        self._phases[by_uid] = Phase(phase)
        self._bodies[key] = body
        me = candidate(body)
        if me is None:
            return
        spec = parse_spec(body)
        self._entries[key] = (me, spec.lock_key, spec.target.deployment)
        self._by_lock.setdefault((key[0], spec.lock_key), set()).add(key[1])

    def body(self, namespace: str, name: str) -> JsonObj | None:
        """The rollout as last seen (a copy: the reconcile may change it)."""
        found = self._bodies.get((namespace, name))
        return copy_json(found) if found is not None else None

    def candidate(self, namespace: str, name: str) -> Candidate | None:
        entry = self._entries.get((namespace, name))
        return entry[0] if entry is not None else None

    def active(self, namespace: str, uid: str) -> bool:
        """Whether the rollout with this uid exists (as last seen) and has not ended."""
        phase = self._phases.get((namespace, uid))
        return phase is not None and not phase.terminal

    def sharing_lock(self, namespace: str, lock_key: str) -> list[Candidate]:
        names = self._by_lock.get((namespace, lock_key), set())
        return [self._entries[(namespace, n)][0] for n in sorted(names)]

    def targeting(self, namespace: str, deployment: str) -> list[Candidate]:
        return [
            c
            for (ns, _name), (c, _k, t) in list(self._entries.items())
            if ns == namespace and t == deployment
        ]


@dataclass
class _Targets:
    target: JsonObj | None
    service: JsonObj | None
    fresh: bool = False  # the target as the API server gave it in this reconcile
    # Read fresh before this reconcile took the lock: the Lease's version (watch-fed
    # view) just before that read. If the acquisition was conditional on that very
    # version, nobody held the lock from before the read until now, and the read stands.
    read_under_lease: str | None = None


StatusHook = Callable[[str, str, CanaryRolloutStatus | None, CanaryRolloutStatus], None]
TransitionHook = Callable[[JsonObj, CanaryRolloutStatus | None, CanaryRolloutStatus], None]


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        lock: LeaseLock,
        index: RolloutIndex,
        events: EventRecorder,
        checks: CheckRunner,
        fresh: Kube | None = None,
    ) -> None:
        self.kube = kube  # reads from the watch-fed caches (kube/cache.py), writes through
        # Asks the API server itself: only where a stale read could break a promise
        # (each use says which).
        self.fresh = fresh or kube
        self.lock = lock
        self.index = index
        self.events = events
        self.checks = checks
        # Which ServiceAccounts rollout Jobs may name (`run --allow-job-service-accounts`).
        self.allowed_accounts = AllowedServiceAccounts.from_env()
        # Checks of the spec against the cluster, made before a run touches anything.
        self.validator: SpecValidator = ClusterValidator(self.fresh)
        # Called after each status write: (namespace, name, old status, new status).
        self.on_status_written: StatusHook | None = None
        # Called with the written body once the transition's Events are out (the
        # notifier: it only schedules background work, never waits on an endpoint).
        self.on_transition: TransitionHook | None = None

    # ------------------------------------------------------------------ entry

    async def reconcile(self, namespace: str, name: str) -> float | None:
        """Returns seconds until the next reconcile is wanted (None: wait for events)."""
        # The watch's view (or this process's last write): a stale one costs at most a
        # 409 on the status write, which is conditional on its resourceVersion.
        body = self.index.body(namespace, name)
        if body is None:
            body = await self.fresh.get(rollout_path(namespace, name))
        if body is None:
            self.checks.forget(namespace, name)
            return None
        self.index.update(body)
        meta = body["metadata"]
        try:
            spec = parse_spec(body)
        except ValidationError as exc:
            await self._invalid(body, exc)
            return None
        try:
            status = CanaryRolloutStatus.model_validate(body.get("status") or {})
        except ValidationError:
            status = CanaryRolloutStatus()
        rollout = Rollout(
            name=meta["name"],
            namespace=namespace,
            uid=meta["uid"],
            generation=int(meta.get("generation") or 1),
            spec=spec,
            status=status,
            deleting=bool(meta.get("deletionTimestamp")),
            has_finalizer=FINALIZER in (meta.get("finalizers") or []),
            annotations=meta.get("annotations") or {},
            created=meta.get("creationTimestamp"),
        )
        ref = RunRef(namespace, name, rollout.uid, status.run)
        targets = await self._read_targets(rollout)
        obs = await self._observe(rollout, body, targets, ref)
        if _about_to_start(status, obs.lock):
            obs = await self._observe_for_start(rollout, body, targets, ref, obs.lock)
        try:
            obs = await self._validate_and_collect(rollout, obs, targets)
        except TRANSIENT as exc:
            # The spec cannot be checked yet (an admission webhook down, a slow API
            # server): nothing is touched until it can be, and the status says why.
            await self._say_retrying(
                rollout, obs, body, f"cannot check the spec yet: {_describe(exc)}"
            )
        if status.phase == Phase.PENDING and not obs.lock.held:
            obs = await self._new_run_asks_for_lock(rollout, body, targets, ref, obs)
        result, retry_error = await self._plan_and_act(rollout, obs, targets, body, ref)
        written = await self._write_status(body, result.status)
        if written is None:
            return 0.5  # lost a race with another writer: re-read and decide again
        if self.on_status_written is not None and written is not body:
            self.on_status_written(namespace, name, status, result.status)
        # The transition is durable: announce it, and drop the answers it recorded.
        for action in result.actions:
            if isinstance(action, Emit):
                self._announce(rollout, action)
        if self.on_transition is not None and written is not body:
            self.on_transition(written, status, result.status)
        self.checks.retain(
            RunRef(namespace, name, rollout.uid, result.status.run),
            {a.key for a in result.actions if isinstance(a, CHECK_ACTIONS)},
        )
        if retry_error is not None:
            raise RetryLater(retry_error)
        for action in result.actions:
            if _after_status(action):
                await self._execute(action, rollout, obs, targets, written)
        return result.requeue_after

    async def _observe_for_start(
        self, rollout: Rollout, body: JsonObj, targets: _Targets, ref: RunRef, lock: LockView
    ) -> Observed:
        # A run is about to start: whether the target is clean (a previous run's canary
        # left behind is removed first) is judged by the API server, not by caches that
        # may not have seen the last cleanup's deletions yet. Read after the lock is held
        # (nobody else writes the target from then on), each object once.
        once = ReadOnce(self.fresh)
        if (
            targets.read_under_lease is not None
            and lock.acquired_over is not None
            and targets.read_under_lease == lock.acquired_over
        ):
            # The target was read fresh this reconcile, and the Lease stood free at one
            # version from before that read until we took it: as good as reading it now.
            once.known(_target_path(rollout), targets.target)
        target, obs = await asyncio.gather(
            once.get(_target_path(rollout)),
            self._observe(rollout, body, targets, ref, reads=once, lock=lock),
        )
        targets.target, targets.fresh = target, True
        return replace(obs, target=_workload(target))

    async def _new_run_asks_for_lock(
        self, rollout: Rollout, body: JsonObj, targets: _Targets, ref: RunRef, obs: Observed
    ) -> Observed:
        """A new run that passed its checks (the plan queues it) asks for its lock in the
        same round rather than one trip through the work queue later; only the head of
        a free lock gets it, as when queued. Holding it, the run starts in this round,
        from a fresh observation."""
        if machine.plan(rollout, obs).status.phase != Phase.QUEUED:
            return obs  # it ends here (invalid, aborted, ...): it never asks
        lock = await self._observe_lock(rollout, body, wants=True)
        if not lock.held:
            return replace(obs, lock=lock)
        fresh = await self._observe_for_start(rollout, body, targets, ref, lock)
        # The checks made against the cluster a moment ago stand.
        return replace(fresh, spec_problems=obs.spec_problems)

    async def _plan_and_act(
        self, rollout: Rollout, obs: Observed, targets: _Targets, body: JsonObj, ref: RunRef
    ) -> tuple[Plan, str | None]:
        """Plan and run the side effects (all but what must follow the status write).
        Returns the plan to record and, when an API call failed in a way a retry may
        cure, what failed (the caller retries after recording it)."""
        result = machine.plan(rollout, obs)
        if rollout.status.phase == Phase.CLEANING_UP and any(
            isinstance(a, ReleaseLock) for a in result.actions
        ):
            # About to declare the cleanup verified: that promise (100 % stable, no canary
            # object left) is checked against the API server, not against caches that
            # may not have seen a pod created a moment ago.
            reads = ReadOnce(self.fresh)  # the router reads the target and canary too
            obs = await self._observe(rollout, body, targets, ref, reads=reads, lock=obs.lock)
            result = machine.plan(rollout, obs)
        acting: list[Action] = []  # the actions tried so far; the last one failed
        try:
            await self._act(result, rollout, obs, targets, body, ref, acting)
        except LockLost as lost:
            # Decide again as the run that lost its lock: it ends LockLost and queues
            # for its cleanup; such a plan asks for nothing that touches the target.
            log.warning("%s/%s: %s", rollout.namespace, rollout.name, lost)
            obs = replace(obs, lock=LockView(name=obs.lock.name, holder=str(lost), busy=True))
            return machine.plan(rollout, obs), None
        except (*TRANSIENT, PermanentRouteError, ValueError) as exc:
            permanent = not isinstance(exc, TRANSIENT) or _refused(exc)
            if not permanent and rollout.status.phase != Phase.CLEANING_UP:
                # The run keeps its lock (renewed apart from reconciles) and says what
                # fails; the work queue retries with backoff.
                error = _describe(exc)
                return machine.retrying(rollout, obs, result.status, error), error
            # The API refused what we sent (e.g. an invalid Job in the spec), or a
            # cleanup action failed: the step that asked for it fails, or the cleanup
            # backs off.
            blamed = machine.blamed_status(rollout, obs, result, acting[-1] if acting else None)
            return machine.action_failed(rollout, obs, blamed, _describe(exc)), None
        machine.recovered(result.status, obs.now, rollout.generation)
        return result, None

    async def _act(
        self,
        result: Plan,
        rollout: Rollout,
        obs: Observed,
        targets: _Targets,
        body: JsonObj,
        ref: RunRef,
        acting: list[Action],
    ) -> None:
        # A lock taken in this reconcile confirms the first fenced action (see
        # LockView.acquired); every later one reads the Lease again.
        confirmed_by_acquisition = obs.lock.acquired

        async def fence() -> None:
            nonlocal confirmed_by_acquisition
            if confirmed_by_acquisition:
                confirmed_by_acquisition = False
                return
            await self._fence(rollout, obs)

        for action in result.actions:
            if isinstance(action, Emit) or _after_status(action):
                continue
            acting.append(action)
            if isinstance(action, CHECK_ACTIONS):
                if not self.checks.known(ref, action.key):
                    await fence()  # a step starts only under the lock
                    self._start_check(ref, rollout, obs, action)
                continue
            if not isinstance(action, TARGET_EFFECTS):
                await self._execute(action, rollout, obs, targets, body)
                continue
            # Confirmed right before its first write; an action that finds its work done
            # (an unchanged canary, a reset already written, objects already going)
            # writes nothing and needs no confirmation.
            fenced = FencedWrites(self.kube, fence)
            if isinstance(action, EnsureCanary):
                # Only what the cache does not show as last applied.
                stale = await self._canary_to_apply(rollout, obs, targets, action.replicas)
                # Independent objects (Deployment(s), Service): applied at once.
                await asyncio.gather(*(fenced.apply(w, m) for w, m in stale))
                continue
            await self._execute(action, rollout, obs, targets, body, fenced)

    async def _canary_to_apply(
        self, rollout: Rollout, obs: Observed, targets: _Targets, replicas: int
    ) -> list[tuple[str, JsonObj]]:
        """The canary's objects (Deployment, baseline Deployment, Service) that the cache
        does not show as last applied: each manifest carries a digest of itself, so a
        step re-asserting an unchanged canary writes nothing (and needs no fencing
        read). The cache holds the answer of our last write; someone else's change
        (a scale, a deletion) shows as a difference, and the object is applied again."""
        ns, spec = rollout.namespace, rollout.spec
        if targets.target is None:
            raise ValueError(f"target Deployment {spec.target.deployment} not found")
        selector = (targets.service or {}).get("spec", {}).get("selector")
        # Which of the stable pods' labels the canary's must not carry, so that only the
        # router sends it traffic (Istio subsets: the stable subset's).
        drop = await self.router(rollout, obs.lock.token).canary_labels_to_drop(selector or {})
        wanted = [
            (
                path("apps", "v1", "deployments", ns, objects.canary_name(spec)),
                objects.canary_deployment(
                    spec, rollout.name, rollout.uid, ns, targets.target, selector, replicas, drop
                ),
            )
        ]
        if spec.baseline:
            wanted.append(
                (
                    path("apps", "v1", "deployments", ns, objects.baseline_name(spec)),
                    objects.baseline_deployment(
                        spec, rollout.name, rollout.uid, ns, targets.target, replicas
                    ),
                )
            )
        wanted.append(
            (
                path("", "v1", "services", ns, objects.canary_name(spec)),
                objects.canary_service(
                    spec, rollout.name, rollout.uid, ns, targets.service, targets.target
                ),
            )
        )
        stale = []
        for where, manifest in wanted:
            digest = objects.stamp_digest(manifest)
            have = await self.kube.get(where)
            if not objects.applied_as(have, digest, manifest):
                stale.append((where, manifest))
        return stale

    async def _fence(self, rollout: Rollout, obs: Observed) -> None:
        """Immediately before a write to the target (or the start of a check): a fresh
        read of the Lease confirms this run still holds it with its token."""
        ns, key = rollout.namespace, rollout.spec.lock_key
        if not await self.lock.confirm(ns, key, rollout.uid, obs.lock.token):
            raise LockLost(f"lock {obs.lock.name} no longer held with token {obs.lock.token}")

    def _start_check(self, ref: RunRef, rollout: Rollout, obs: Observed, action: Action) -> None:
        """Start a webhook call or a measurement in the background."""
        if isinstance(action, CallWebhook):
            context = {**self._context(rollout, obs), "step": action.step_label}
            self.checks.ensure(
                ref,
                action.key,
                lambda: self._call_webhook(rollout, action, context),
                lambda exc: CheckResult(
                    False,
                    scrub(f"webhook call failed: {_describe(exc)}", [action.webhook.url or ""]),
                ),
            )
        elif isinstance(action, Measure):
            self.checks.ensure(
                ref,
                action.key,
                lambda: self._measure(rollout, action),
                lambda exc: MeasurementStatus(
                    at=machine.iso(datetime.now(UTC)), error=f"measurement failed: {exc}"
                ),
            )

    def _context(self, rollout: Rollout, obs: Observed | None) -> dict[str, Any]:
        """What webhooks (tests and metric providers) are told about the rollout."""
        spec, ns = rollout.spec, rollout.namespace
        return {
            "rollout": rollout.name,
            "namespace": ns,
            "run": rollout.status.run,
            "target": spec.target.deployment,
            "weight": obs.route.weight if obs else rollout.status.weight,
            "canaryService": f"{objects.canary_name(spec)}.{ns}.svc",
            "stableService": f"{spec.target.service or spec.target.deployment}.{ns}.svc",
            "newVersion": [i.model_dump() for i in spec.images or []] or "template",
            "version": ",".join(f"{i.container}={i.image}" for i in spec.images or [])
            or "template",
            "phase": rollout.status.phase.value,
            "outcome": rollout.status.outcome.result.value if rollout.status.outcome else "",
            "message": rollout.status.outcome.message if rollout.status.outcome else "",
        }

    async def _call_webhook(
        self, rollout: Rollout, action: CallWebhook, context: dict[str, Any]
    ) -> CheckResult:
        try:
            headers = await resolve_headers(
                action.webhook.headers, lambda n, k: self._secret(rollout.namespace, n, k)
            )
        except ValueError as exc:
            return CheckResult(False, str(exc))
        url = action.webhook.url
        source = action.webhook.url_from
        if source is not None:
            ref = source.secret_key_ref
            url = await self._secret(rollout.namespace, ref.name, ref.key)
            if url is None:
                return CheckResult(
                    False, f"urlFrom: Secret {ref.name!r} has no key {ref.key!r} (or is missing)"
                )
            url = url.strip()
            if not url.startswith(("http://", "https://")):
                return CheckResult(
                    False, f"urlFrom: Secret {ref.name!r} key {ref.key!r} holds no http(s) URL"
                )
        try:
            ok, message = await run_webhook(action.webhook, context, headers, url=url)
        except Exception as exc:  # a URL from a Secret must not leak through an error
            return CheckResult(False, scrub(f"webhook call failed: {_describe(exc)}", [url or ""]))
        return CheckResult(ok, message)

    async def _secret(self, namespace: str, name: str, key: str) -> str | None:
        secret = await self.kube.get(path("", "v1", "secrets", namespace, name))
        raw = ((secret or {}).get("data") or {}).get(key)
        return base64.b64decode(raw).decode() if raw is not None else None

    async def _measure(self, rollout: Rollout, action: Measure) -> MeasurementStatus:
        spec, ns = rollout.spec, rollout.namespace
        deployments = {
            "canary": objects.canary_name(spec),
            "baseline": objects.baseline_name(spec),
            "stable": spec.target.deployment,
        }
        measurement = MeasurementStatus(at=machine.iso(datetime.now(UTC)))
        for metric in action.analysis.metrics:
            provider_spec = metric.provider or action.analysis.provider
            if provider_spec is None:
                measurement.error = f"metric {metric.name}: no provider configured"
                return measurement
            try:
                provider = await self._provider(rollout, provider_spec)
                for role in action.roles:
                    query = render_query(
                        metric.query,
                        {
                            "role": role,
                            "deployment": deployments[role],
                            "namespace": ns,
                            "rollout": rollout.name,
                        },
                    )
                    value = await provider.query(
                        query, {"role": role, "metric": metric.name, **self._context(rollout, None)}
                    )
                    if value is not None and math.isfinite(value):
                        measurement.values.setdefault(metric.name, {})[role] = value
            except (ProviderError, ValueError) as exc:
                measurement.error = f"metric {metric.name}: {exc}"
                return measurement
        return measurement

    async def _provider(self, rollout: Rollout, spec: MetricProviderSpec) -> MetricProvider:
        if spec.prometheus is not None:
            return PrometheusProvider(
                spec.prometheus.address, parse_duration(spec.prometheus.timeout).total_seconds()
            )
        assert spec.webhook is not None
        headers = await resolve_headers(
            spec.webhook.headers, lambda n, k: self._secret(rollout.namespace, n, k)
        )
        return WebhookMetricProvider(
            spec.webhook.url, parse_duration(spec.webhook.timeout).total_seconds(), headers
        )

    # ---------------------------------------------------------------- observe

    async def _read_targets(self, rollout: Rollout) -> _Targets:
        ns, spec = rollout.namespace, rollout.spec
        service_name = spec.target.service
        target, service = await asyncio.gather(
            self.kube.get(_target_path(rollout)),
            self.kube.get(path("", "v1", "services", ns, service_name))
            if service_name
            else _nothing(),
        )
        return _Targets(target, service)

    def router(
        self, rollout: Rollout, token: int | None, kube: Kube | None = None
    ) -> TrafficRouter:
        """The rollout's router; whichever it is, its reset first restores a stable
        Deployment that a Shift run scaled down (traffic/replicas.py)."""
        return RestoresStable(
            self._route_router(rollout, token, kube),
            kube or self.kube,
            rollout.namespace,
            rollout.spec.target.deployment,
            f"{rollout.name}/{token}",
            fresh=self.fresh,
        )

    def _route_router(
        self, rollout: Rollout, token: int | None, kube: Kube | None = None
    ) -> TrafficRouter:
        spec = rollout.spec
        reads = kube or self.kube
        canary = objects.canary_name(spec)
        routing = spec.traffic_routing
        stable_service = spec.target.service or spec.target.deployment
        if routing and routing.nginx:
            return NginxRouter(
                reads,
                rollout.namespace,
                routing.nginx,
                stable_service,
                canary,
                objects.owned_metadata(
                    spec, "canary", canary, rollout.namespace, rollout.name, rollout.uid
                ),
                f"{rollout.name}/{token}",
            )
        if routing and routing.istio:
            return IstioRouter(
                reads,
                rollout.namespace,
                routing.istio,
                stable_service,
                canary,
                f"{rollout.name}/{token}",
                objects.selector_labels(spec, "canary"),
            )
        if spec.traffic_routing and spec.traffic_routing.gateway_api:
            return GatewayAPIRouter(
                reads,
                rollout.namespace,
                spec.traffic_routing.gateway_api.http_route,
                spec.target.service or spec.target.deployment,
                canary,
                f"{rollout.name}/{token}",
            )
        return ReplicasRouter(reads, rollout.namespace, spec.target.deployment, canary)

    async def _observe(
        self,
        rollout: Rollout,
        body: JsonObj,
        targets: _Targets,
        ref: RunRef,
        reads: Kube | None = None,
        lock: LockView | None = None,
    ) -> Observed:
        """What the plan starts from. With `lock`, the lock as already observed (and
        perhaps just acquired) in this reconcile is kept: observing it again would lose
        what the acquisition found (a holder it took over from)."""
        ns, spec = rollout.namespace, rollout.spec
        reads = reads or self.kube
        # Only a rollout about to start, or one owing a cleanup, takes the lock. A run in
        # progress never takes it again: if it is not held any more, the run lost it.
        wants = rollout.status.phase in (Phase.QUEUED, Phase.CLEANING_UP)
        # Independent round trips, issued at once (the route read needs no token).
        observed_lock, (canary, baseline), canary_service, pods, jobs, route = await asyncio.gather(
            _given(lock) if lock is not None else self._observe_lock(rollout, body, wants),
            self._role_deployments(ns, spec, reads),
            reads.get(path("", "v1", "services", ns, objects.canary_name(spec))),
            reads.list(path("", "v1", "pods", ns), objects.any_role_selector(spec)),
            reads.list(path("batch", "v1", "jobs", ns), objects.operator_jobs_selector(spec)),
            self.router(rollout, None, reads).read(),
        )
        answers, running = self.checks.observe(ref)
        return Observed(
            now=datetime.now(UTC),
            lock=observed_lock,
            target=_workload(targets.target),
            canary=_workload(canary, _with_role(pods, "canary")),
            baseline=_workload(baseline, _with_role(pods, "baseline")),
            canary_service=canary_service is not None,
            route=route,
            jobs={
                j["metadata"]["name"]: _job(j)
                for j in jobs
                if _owned_by(j, rollout.uid) or _purpose(j) == "test"
            },
            canary_pods=len(pods),
            checks={k: v for k, v in answers.items() if isinstance(v, CheckResult)},
            measurements={k: v for k, v in answers.items() if isinstance(v, MeasurementStatus)},
            in_flight=running,
            policy_problems=tuple(job_service_account_problems(spec, ns, self.allowed_accounts)),
        )

    async def _observe_lock(self, rollout: Rollout, body: JsonObj, wants: bool) -> LockView:
        """The lock, taken if `wants` and this rollout is next and may."""
        ns, key = rollout.namespace, rollout.spec.lock_key
        me = candidate(body)
        assert me is not None
        # Everyone of this lock as the index has them, and this rollout as just read.
        shared = [c for c in self.index.sharing_lock(ns, key) if c.uid != me.uid]
        shared.append(me)

        async def still_current() -> bool:
            # Only when about to take a free lock (see LeaseLock.observe).
            meta = body["metadata"]
            if FINALIZER not in (meta.get("finalizers") or []) and not meta.get(
                "deletionTimestamp"
            ):
                # The finalizer, which a run must have before its first side effect, is
                # written now, conditional on the version read: its success shows that
                # version current as a fresh read would, in a write the run makes anyway.
                try:
                    await self._add_finalizer(body)
                except Conflict:
                    return False
                except ApiException as exc:
                    if exc.status == 404:
                        return False
                    raise
                return True
            # Fresh read: a stale view of this rollout must never take the lock.
            fresh = await self.fresh.get(rollout_path(ns, rollout.name))
            return (
                fresh is not None
                and fresh["metadata"]["resourceVersion"] == meta["resourceVersion"]
            )

        return await self.lock.observe(
            ns, key, me, shared, wants, self._holder_running, still_current
        )

    async def _say_retrying(
        self, rollout: Rollout, obs: Observed, body: JsonObj, error: str
    ) -> None:
        """Record (once) that this reconcile cannot go on, then retry with backoff."""
        said = machine.retrying(rollout, obs, rollout.status, error)
        if await self._write_status(body, said.status) is not None:
            for action in said.actions:
                if isinstance(action, Emit):
                    self._announce(rollout, action)
        raise RetryLater(error)

    async def _validate_and_collect(
        self, rollout: Rollout, obs: Observed, targets: _Targets
    ) -> Observed:
        """Observations only some reconciles need: the spec checked against the cluster
        when a run may start, and the log tails of failed test Jobs not yet recorded."""
        if machine.wants_validation(rollout, obs.lock.held) and targets.target is not None:
            # A run may start: its canary is built from, and its "older than live" check
            # made against, the target as it is now, not as the cache last saw it (a
            # promotion a moment ago must not be missed). Read once per reconcile.
            if not targets.fresh and not obs.lock.held:
                targets.read_under_lease = await self.lock.cached_version(
                    rollout.namespace, rollout.spec.lock_key
                )
            fresh = targets.target if targets.fresh else await self.fresh.get(_target_path(rollout))
            targets.target = fresh
            obs = replace(obs, target=_workload(fresh))
            if fresh is not None:
                problems = await self.validator.problems(rollout, fresh, targets.service)
                obs = replace(obs, spec_problems=tuple(problems))
        wanted = machine.jobs_wanting_logs(rollout.status, obs.jobs)
        if wanted:
            tails = await asyncio.gather(
                *(job_log_tails(self.kube, rollout.namespace, job) for job in wanted)
            )
            obs = replace(obs, job_logs=dict(zip(wanted, tails, strict=True)))
        return obs

    async def _role_deployments(
        self, ns: str, spec: CanaryRolloutSpec, reads: Kube
    ) -> tuple[JsonObj | None, JsonObj | None]:
        """The canary Deployment, and the baseline's when the spec asks for one."""
        canary, baseline = await asyncio.gather(
            reads.get(path("apps", "v1", "deployments", ns, objects.canary_name(spec))),
            reads.get(path("apps", "v1", "deployments", ns, objects.baseline_name(spec)))
            if spec.baseline
            else _nothing(),
        )
        return canary, baseline

    async def _holder_running(self, namespace: str, name: str, uid: str) -> bool:
        # Fresh: a lease is taken from its holder only if the API server says it ended.
        body = await self.fresh.get(rollout_path(namespace, name))
        if body is None or body["metadata"]["uid"] != uid:
            return False
        return not Phase((body.get("status") or {}).get("phase") or "Pending").terminal

    async def _add_finalizer(self, body: JsonObj) -> None:
        """Add the finalizer, conditional on the version of `body` (Conflict if it is
        not current); `body` takes the answer's metadata."""
        meta = body["metadata"]
        patched = await self.kube.merge_patch(
            rollout_path(meta["namespace"], meta["name"]),
            {
                "metadata": {
                    "finalizers": [*(meta.get("finalizers") or []), FINALIZER],
                    "resourceVersion": meta["resourceVersion"],
                }
            },
        )
        body["metadata"] = patched["metadata"]

    # ---------------------------------------------------------------- execute

    async def _execute(
        self,
        action: Action,
        rollout: Rollout,
        obs: Observed,
        targets: _Targets,
        body: JsonObj,
        writes: Kube | None = None,
    ) -> None:
        """Carry out one action; `writes` is the Kube its reads and writes go through
        (for a write to the target: one that confirms the lock first)."""
        ns, spec = rollout.namespace, rollout.spec
        kube = writes or self.kube
        match action:
            case Emit():
                self._announce(rollout, action)
            case AddFinalizer():
                if FINALIZER not in (body["metadata"].get("finalizers") or []):
                    await self._add_finalizer(body)
            case RemoveFinalizer():
                finalizers = [f for f in body["metadata"].get("finalizers") or [] if f != FINALIZER]
                patched = await self.kube.merge_patch(
                    rollout_path(ns, rollout.name), {"metadata": {"finalizers": finalizers}}
                )
                # Known at once: a reconcile woken by the terminal status write's event
                # would otherwise see the finalizer still there and remove it again.
                self.index.update(patched)
            case ReleaseLock():
                await self.lock.release(ns, spec.lock_key, rollout.uid)
            case ScaleStable(replicas=replicas, original=original, floor=floor):
                await scale_stable(
                    kube,
                    ns,
                    spec.target.deployment,
                    replicas,
                    original,
                    floor,
                    f"{rollout.name}/{obs.lock.token}",
                    fresh=self.fresh,
                )
            case SetRouteWeight(weight=weight):
                await self.router(rollout, obs.lock.token, kube).set_weight(weight)
            case ResetRoute():
                await self.router(rollout, obs.lock.token, kube).reset()
            case DeleteCanaryObjects(keep_jobs=keep):
                await self._delete_canary_objects(rollout, frozenset(keep), kube)
            case EnsureJob():
                if targets.target is None:
                    raise ValueError(f"target Deployment {spec.target.deployment} not found")
                port = _first_port(
                    objects.canary_service(
                        spec, rollout.name, rollout.uid, ns, targets.service, targets.target
                    )
                )
                manifest = objects.job_manifest(
                    spec,
                    rollout.name,
                    rollout.uid,
                    ns,
                    action.name,
                    action.template,
                    action.step_label,
                    cleanup=action.step_label.startswith("cleanup"),
                    service_port=port,
                )
                with contextlib.suppress(Conflict):  # created by an earlier reconcile
                    await kube.create(path("batch", "v1", "jobs", ns), manifest)
            case DeleteJob(name=job):
                await kube.delete(path("batch", "v1", "jobs", ns, job))
            case PromoteStable():
                await self._promote(rollout, obs, action, kube)

    async def _promote(
        self, rollout: Rollout, obs: Observed, action: PromoteStable, kube: Kube
    ) -> None:
        """Server-side apply with the operator's field manager, of only what promotion
        changes (the images, or the template it was given) and its record: a later
        `kubectl apply --server-side` (or any applier) of an older manifest then meets
        a conflict on those fields instead of reverting them unnoticed."""
        spec = rollout.spec
        target_path = _target_path(rollout)
        # Fresh: the apply is conditional on the target's resourceVersion.
        target = await self.fresh.get(target_path)
        if target is None:
            raise ValueError(f"target Deployment {spec.target.deployment} not found")
        record = {
            "rollout": rollout.name,
            "uid": rollout.uid,
            "run": rollout.status.run,
            "fingerprint": spec.run_fingerprint(),
            "images": objects.template_images(objects.new_pod_template(spec, target)),
            "versionSince": action.version_since,
            "promotedAt": machine.precise(datetime.now(UTC)),
        }
        body = objects.promotion(
            spec,
            target,
            {
                objects.PROMOTED_BY: action.run_id,
                objects.FENCING: f"{rollout.name}/{obs.lock.token}",
                objects.PROMOTION: json.dumps(record, sort_keys=True),
            },
        )
        await kube.apply(target_path, body)  # resourceVersion precondition

    async def _delete_canary_objects(
        self, rollout: Rollout, keep: frozenset[str], kube: Kube
    ) -> None:
        ns, spec = rollout.namespace, rollout.spec
        target = objects.target_selector(spec)
        deployments = path("apps", "v1", "deployments", ns)
        for deployment in await kube.list(deployments, f"{target},{objects.ROLE_LABEL}"):
            await _delete_unless_going(kube, deployments, deployment, "Foreground")
        services = path("", "v1", "services", ns)
        for service in await kube.list(services, f"{target},{objects.ROLE_LABEL}"):
            await _delete_unless_going(kube, services, service)
        jobs = path("batch", "v1", "jobs", ns)
        for job in await kube.list(
            jobs,
            f"{objects.operator_jobs_selector(spec)},{objects.PURPOSE_LABEL}=test",
        ):
            name = job["metadata"]["name"]
            if name in keep and _owned_by(job, rollout.uid):
                # Kept for its logs (keepFailedJobs): relabelled so that no cleanup,
                # of this rollout or a later one, deletes it; it goes with its owner.
                await kube.merge_patch(
                    f"{jobs}/{name}", {"metadata": {"labels": {objects.PURPOSE_LABEL: EVIDENCE}}}
                )
                continue
            await _delete_unless_going(kube, jobs, job)
        # Pods of a deleted ReplicaSet go through the garbage collector; delete them
        # directly too, so verification does not wait on it.
        pods = path("", "v1", "pods", ns)
        for pod in await kube.list(pods, objects.any_role_selector(spec)):
            await _delete_unless_going(kube, pods, pod)

    # ----------------------------------------------------------------- status

    async def _write_status(self, body: JsonObj, status: CanaryRolloutStatus) -> JsonObj | None:
        new_status = dump_status(status)
        if new_status == (body.get("status") or {}):
            return body
        update = {**body, "status": new_status}  # PUT /status: only status is taken
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            written = await self.kube.replace(rollout_path(ns, name) + "/status", update)
        except Conflict:
            return None
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        self.index.update(written)
        return written

    async def _invalid(self, body: JsonObj, exc: ValidationError) -> None:
        """A spec the schema let through but the models refuse: fail clearly, touch nothing."""
        status = body.get("status") or {}
        if status.get("phase") in {p.value for p in models.TERMINAL_PHASES}:
            return
        if status.get("phase") not in (None, Phase.PENDING.value, Phase.QUEUED.value):
            # A run that started owes its cleanup, which needs a readable spec: keep
            # retrying (with backoff) and say why, rather than end without the finally.
            raise ValueError(f"spec no longer readable by this operator: {exc}")
        message = "; ".join(
            f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )[:1000]
        now = machine.iso(datetime.now(UTC))
        failed = CanaryRolloutStatus(
            phase=Phase.FAILED,
            observed_generation=body["metadata"].get("generation"),
            message=f"invalid spec: {message}",
            outcome=models.Outcome(result=models.Result.INVALID, message=message, decided_at=now),
            completed_at=now,
            conditions=[
                models.Condition(
                    type=type_,
                    status=value,
                    reason="InvalidSpec",
                    message=message,
                    last_transition_time=now,
                    observed_generation=body["metadata"].get("generation"),
                )
                for type_, value in (("Failed", "True"), ("Completed", "False"))
            ],
        )
        await self._write_status(body, failed)

    def _announce(self, rollout: Rollout, event: Emit) -> None:
        # Written in the background, in order: what follows a durable transition (the
        # next step, the lock's release) never waits on Event writes.
        self.events.post(
            rollout.namespace, rollout.name, rollout.uid, event.reason, event.message, event.warning
        )


async def _nothing() -> None:
    return None


async def _given(lock: LockView) -> LockView:
    return lock


def _about_to_start(status: CanaryRolloutStatus, lock: LockView) -> bool:
    """A run holds its lock and has not started: its next plan may start it (a new run
    that took the lock in an earlier round and did not get further is one too)."""
    return status.phase in (Phase.PENDING, Phase.QUEUED) and lock.held and status.started_at is None


def _after_status(action: Action) -> bool:
    """Actions that must follow a durable terminal status: the lock and the finalizer."""
    return isinstance(action, ReleaseLock | RemoveFinalizer)


def _with_role(pods: list[JsonObj], role: str) -> list[JsonObj]:
    return [p for p in pods if (p["metadata"].get("labels") or {}).get(objects.ROLE_LABEL) == role]


# Container states that no wait cures: the image cannot be had, or the container
# cannot even be created from its configuration.
POD_START_FAILURES = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "ImageInspectError",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


def workload_failure(body: JsonObj, pods: list[JsonObj]) -> str | None:
    """Why a Deployment's pods cannot come up, if that is already known: its
    ReplicaSet could not create them (ReplicaFailure), its progress deadline passed, a
    pod cannot pull its image or create a container, or cannot be scheduled."""
    for condition in (body.get("status") or {}).get("conditions") or []:
        kind, value = condition.get("type"), condition.get("status")
        if (kind == "ReplicaFailure" and value == "True") or (
            kind == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            reason = condition.get("reason") or kind
            return f"{reason}: {condition.get('message') or kind}"
    for pod in pods:
        if (pod["metadata"]).get("deletionTimestamp"):
            continue
        status = pod.get("status") or {}
        name = pod["metadata"]["name"]
        for container in [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
        ]:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in POD_START_FAILURES:
                message = waiting.get("message") or ""
                return (
                    f"pod {name} container {container.get('name')}: {waiting['reason']}"
                    + (f": {message}" if message else "")
                )[:600]
        for condition in status.get("conditions") or []:
            if (
                condition.get("type") == "PodScheduled"
                and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"
            ):
                return f"pod {name} cannot be scheduled: {condition.get('message') or ''}"[:600]
    return None


def _workload(body: JsonObj | None, pods: list[JsonObj] | None = None) -> WorkloadView | None:
    if body is None:
        return None
    status = body.get("status") or {}
    replicas = int(body["spec"].get("replicas", 1))
    return WorkloadView(
        replicas=replicas,
        ready=int(status.get("readyReplicas") or 0),
        available=int(status.get("availableReplicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        current=int(status.get("observedGeneration") or 0)
        >= int(body["metadata"].get("generation") or 0)
        and int(status.get("replicas") or 0) == replicas,
        promoted_by=(body["metadata"].get("annotations") or {}).get(objects.PROMOTED_BY),
        promotion=_promotion(body),
        images=objects.template_images(body["spec"].get("template") or {}),
        failure=workload_failure(body, pods) if pods is not None else None,
        stable_record=stable_record(body),
    )


def _promotion(body: JsonObj) -> PromotionRecord | None:
    """The promotion record on a target (None when absent or unreadable: a record
    edited into nonsense is no reason to refuse anything)."""
    raw = (body["metadata"].get("annotations") or {}).get(objects.PROMOTION)
    try:
        data = json.loads(raw) if raw else None
        if not isinstance(data, dict):
            return None
        return PromotionRecord(
            rollout=str(data["rollout"]),
            uid=str(data["uid"]),
            run=int(data["run"]),
            fingerprint=str(data["fingerprint"]),
            images={str(k): str(v) for k, v in dict(data["images"]).items()},
            version_since=str(data["versionSince"]),
            promoted_at=str(data["promotedAt"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _job(body: JsonObj) -> JobView:
    conditions = {
        c["type"]: c
        for c in (body.get("status") or {}).get("conditions") or []
        if c.get("status") == "True"
    }
    failed = conditions.get("Failed")
    return JobView(
        name=body["metadata"]["name"],
        succeeded="Complete" in conditions,
        failed=failed is not None,
        message=(failed or {}).get("message") or (failed or {}).get("reason") or "",
        cleanup=_purpose(body) == "cleanup",
        kept=_purpose(body) == EVIDENCE,
    )


def _purpose(body: JsonObj) -> str:
    return str((body["metadata"].get("labels") or {}).get(objects.PURPOSE_LABEL, ""))


async def _delete_unless_going(
    kube: Kube, collection: str, obj: JsonObj, propagation: str = "Background"
) -> None:
    """Delete `obj` (listed from `collection`) unless it is already being deleted (a
    Foreground deletion waits for its pods): cleanup asks for this on every reconcile
    until every canary object is gone, and each repeat would cost a fencing read."""
    if not obj["metadata"].get("deletionTimestamp"):
        await kube.delete(f"{collection}/{obj['metadata']['name']}", propagation)


def _owned_by(body: JsonObj, uid: str) -> bool:
    return any(o.get("uid") == uid for o in body["metadata"].get("ownerReferences") or [])


def _first_port(service: JsonObj) -> int | None:
    ports: list[Any] = service.get("spec", {}).get("ports") or []
    return int(ports[0]["port"]) if ports else None


def _refused(exc: BaseException) -> bool:
    """The API server rejected the request itself (400, 422, or a 500 for an object
    it cannot type): sending it again cannot succeed."""
    return refused_for_good(exc) and not (isinstance(exc, ApiException) and exc.status == 403)


def _describe(exc: BaseException) -> str:
    """What failed, in words for the user (never the name of a Python class)."""
    if isinstance(exc, ApiException):
        return f"API error {exc.status} {exc.reason}"
    if isinstance(exc, TimeoutError):
        return f"timed out{': ' + str(exc) if str(exc) else ''}"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return f"connection failed: {exc or 'no answer'}"
    return str(exc) or "unexpected error"
