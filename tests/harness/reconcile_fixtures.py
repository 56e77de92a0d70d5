"""A fake cluster (tests/harness/fake_kube.py) with the real collaborators of a
reconcile on top of it, and a real ReconcileContext for a rollout body.

`fake_cluster()` gives the cached Kube (`kube`) and the fresh one (`fresh`) as two
views of one store, each with its own request log, a real LeaseLock, RolloutIndex,
EventRecorder, CheckRunner and ClusterValidator; it stops the recorder and the
runner and closes the (never connected) ApiClient on the way out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio.client import ApiClient

from canary_operator import index
from canary_operator.api.job_policy import AllowedServiceAccounts
from canary_operator.api.models import GROUP, VERSION
from canary_operator.checks.inflight import CheckRunner
from canary_operator.index import RolloutIndex, parse_spec
from canary_operator.kube.api import JsonObj, path
from canary_operator.kube.events import EventRecorder
from canary_operator.kube.rollouts import FINALIZER, rollout_path
from canary_operator.lock.lease import LeaseLock
from canary_operator.reconcile.context import Collaborators, ReconcileContext, Targets
from canary_operator.reconcile.observe import observe, read_targets
from canary_operator.reconcile.reconciler import Reconciler
from canary_operator.validation import ClusterValidator
from tests.harness.fake_kube import FakeKube

NS = "shop"
NAME = "web-v2"
UID = "uid-web-v2"
SELECTOR = {"app": "web"}
DEPLOYMENTS = path("apps", "v1", "deployments", NS)
SERVICES = path("", "v1", "services", NS)
PODS = path("", "v1", "pods", NS)
JOBS = path("batch", "v1", "jobs", NS)
LEASES = path("coordination.k8s.io", "v1", "leases", NS)
EVENTS = path("", "v1", "events", NS)


def spec(**fields: Any) -> JsonObj:
    return {
        "target": {"deployment": "web", "service": "web"},
        "images": [{"container": "app", "image": "web:2"}],
        "steps": [{"canary": {"replicas": 1}}, {"promote": {}}],
        **fields,
    }


def rollout_body(
    spec_: JsonObj | None = None,
    status: JsonObj | None = None,
    finalizer: bool = False,
    name: str = NAME,
    uid: str = UID,
) -> JsonObj:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CanaryRollout",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": uid,
            "generation": 1,
            "creationTimestamp": "2026-12-07T10:00:00Z",
            **({"finalizers": [FINALIZER]} if finalizer else {}),
        },
        "spec": spec_ or spec(),
        **({"status": status} if status is not None else {}),
    }


def target(replicas: int = 3, image: str = "web:1") -> JsonObj:
    labels = {**SELECTOR, "version": "1"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": SELECTOR},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {"name": "app", "image": image, "ports": [{"containerPort": 8080}]}
                    ]
                },
            },
        },
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "updatedReplicas": replicas,
        },
    }


def service() -> JsonObj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"selector": SELECTOR, "ports": [{"name": "http", "port": 80}]},
    }


@dataclass
class Cluster:
    kube: FakeKube
    """The reconcile's cached Kube (a view of the store with its own log)."""
    fresh: FakeKube
    """The Kube that asks the API server itself (same store, own log)."""
    deps: Collaborators
    wakes: list[tuple[str, str]] = field(default_factory=list)

    def with_target(self, replicas: int = 3) -> None:
        self.kube.put(f"{DEPLOYMENTS}/web", target(replicas))
        self.kube.put(f"{SERVICES}/web", service())

    def add_rollout(self, body: JsonObj) -> JsonObj:
        """Store the rollout and let the index see it (as the watch would)."""
        stored = self.kube.put(rollout_path(NS, body["metadata"]["name"]), body)
        self.deps.index.update(stored)
        return stored

    def clear(self) -> None:
        self.kube.clear()
        self.fresh.clear()

    def rollout(self, name: str = NAME) -> JsonObj:
        """The rollout as stored now."""
        body = self.kube.stored(rollout_path(NS, name))
        assert body is not None
        return body

    async def reconcile(self, name: str = NAME) -> JsonObj:
        """One whole reconcile (Events written); the rollout as stored after it."""
        await Reconciler(self.deps).reconcile(NS, name)
        await self.deps.events.flush()
        return self.rollout(name)

    async def progressing(self) -> JsonObj:
        """A new rollout of the default spec, through its first reconcile: step 1
        started, lock and finalizer held, the canary applied; request logs cleared."""
        self.with_target()
        self.add_rollout(rollout_body())
        body = await self.reconcile()
        assert body["status"]["phase"] == "Progressing"
        self.clear()
        return body

    async def cleaning_up(self, deleted: bool = False) -> JsonObj:
        """A run whose canary failed: CleaningUp, its canary objects still there (or,
        with `deleted`, after the reconcile that deleted them); request logs cleared."""
        await self.progressing()
        canary = self.kube.stored(f"{DEPLOYMENTS}/web-canary")
        assert canary is not None
        failure = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate"}
        self.kube.put(f"{DEPLOYMENTS}/web-canary", {**canary, "status": {"conditions": [failure]}})
        body = await self.reconcile()
        if deleted:
            body = await self.reconcile()
            assert self.kube.stored(f"{DEPLOYMENTS}/web-canary") is None
        assert body["status"]["phase"] == "CleaningUp"
        self.clear()
        return body

    async def running(self) -> ReconcileContext:
        """A progressing rollout, observed, with the request logs cleared."""
        ctx = await self.observed(await self.progressing())
        self.clear()
        return ctx

    async def observed(self, body: JsonObj) -> ReconcileContext:
        """The context of `body` as Reconciler has it before deciding: targets read and
        the first observation made, both from the cached Kube."""
        ctx = self.context(body)
        ctx.targets = await read_targets(ctx)
        ctx.obs = await observe(ctx, self.deps.kube)
        return ctx

    def context(self, body: JsonObj, targets: Targets | None = None) -> ReconcileContext:
        """A ReconcileContext as Reconciler makes it (its targets as given, else none)."""
        ctx = ReconcileContext.made(self.deps, body, parse_spec(body))
        ctx.targets = targets or Targets(None, None)
        return ctx


@contextlib.asynccontextmanager
async def fake_cluster() -> AsyncIterator[Cluster]:
    # Specs are parsed once per (uid, generation), process-wide: the tests' rollouts
    # share uids and generations, not specs.
    index._parsed_specs.clear()
    api_client = ApiClient()
    kube = FakeKube(api_client)
    fresh = kube.view()
    wakes: list[tuple[str, str]] = []
    deps = Collaborators(
        kube=kube,
        fresh=fresh,
        lock=LeaseLock(kube, fresh=fresh),
        index=RolloutIndex(),
        events=EventRecorder(kube),
        checks=CheckRunner(lambda ns, name: wakes.append((ns, name))),
        validator=ClusterValidator(fresh, cached=kube),  # as the controller makes it
        allowed_accounts=AllowedServiceAccounts(),
    )
    try:
        yield Cluster(kube, fresh, deps, wakes)
    finally:
        await deps.events.stop()
        await deps.checks.stop()
        await api_client.close()
