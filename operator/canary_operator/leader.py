"""Leader election between operator replicas: one coordination.k8s.io/v1 Lease.

Only the leader runs the work queue; the others keep their watches warm and take
over when the leader's Lease stops changing. Correctness never depends on this
(every write is guarded by the per-target Lease and resourceVersion preconditions),
it only avoids two replicas doing the same work and racing on every write.

Same rules as the per-target lock: conditional writes (a 409 means someone else
won), expiry judged by the Lease's resourceVersion not changing for its duration on
the local monotonic clock, never by comparing another host's `renewTime`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path

from canary_operator.kube.api import Conflict, JsonObj, Kube, path
from canary_operator.lock.lease import micro_time

log = logging.getLogger(__name__)

LEASE_SECONDS = 15
RENEW_DEADLINE_SECONDS = 10.0  # a leader that could not renew for this long steps down
RETRY_SECONDS = 2.0
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def default_namespace() -> str:
    """The operator's own namespace: POD_NAMESPACE, the pod's SA namespace, or default."""
    env = os.environ.get("POD_NAMESPACE")
    if env:
        return env
    try:
        return SA_NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"


def default_identity() -> str:
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{secrets.token_hex(4)}"


class LeaderElector:
    """Campaigns for the Lease; calls `on_started` once leading and `on_lost` if a
    leader can no longer prove it leads (it must then stop acting at once)."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        on_started: Callable[[], None],
        on_lost: Callable[[], None],
        identity: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        lease_seconds: int = LEASE_SECONDS,
        renew_deadline: float = RENEW_DEADLINE_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.on_started = on_started
        self.on_lost = on_lost
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline
        self.retry_seconds = retry_seconds
        self.leading = False
        self._renewed_at = 0.0
        self._seen: tuple[str, float] | None = None  # (resourceVersion, first seen)
        self._task: asyncio.Task[None] | None = None

    @property
    def _path(self) -> str:
        return path("coordination.k8s.io", "v1", "leases", self.namespace, self.name)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop campaigning; a leader hands the Lease back so a standby takes over now."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.leading:
            self.leading = False
            with contextlib.suppress(Exception):
                await self._release()

    async def _run(self) -> None:
        while True:
            try:
                await self.try_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API is unreachable: keep trying
                log.warning("leader election %s/%s: %s", self.namespace, self.name, exc)
            if self.leading and self.clock() - self._renewed_at > self.renew_deadline:
                self._lose("could not renew the leader Lease in time")
            await asyncio.sleep(self.renew_deadline / 3 if self.leading else self.retry_seconds)

    async def try_once(self) -> bool:
        """One round: create, renew or take over the Lease. Returns whether we lead."""
        lease = await self.kube.get(self._path)
        now = micro_time()
        if lease is None:
            body: JsonObj = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now, transitions=0),
            }
            return await self._write(body, create=True)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        if holder == self.identity:
            updated = json.loads(json.dumps(lease))
            updated["spec"]["renewTime"] = now
            return await self._write(updated)
        if self.leading:  # someone else holds it: we were replaced
            self._lose(f"the leader Lease is held by {holder}")
            return False
        if holder and not self._expired(lease):
            return False
        updated = json.loads(json.dumps(lease))
        transitions = int(spec.get("leaseTransitions") or 0) + 1
        updated["spec"] = self._spec(now, transitions)
        return await self._write(updated)

    def _spec(self, now: str, transitions: int) -> JsonObj:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def _expired(self, lease: JsonObj) -> bool:
        version = lease["metadata"]["resourceVersion"]
        if self._seen is None or self._seen[0] != version:
            self._seen = (version, self.clock())
            return False
        duration = float(lease["spec"].get("leaseDurationSeconds") or self.lease_seconds)
        return self.clock() - self._seen[1] >= duration

    async def _write(self, body: JsonObj, create: bool = False) -> bool:
        try:
            if create:
                await self.kube.create(
                    path("coordination.k8s.io", "v1", "leases", self.namespace), body
                )
            else:
                await self.kube.replace(self._path, body)  # resourceVersion precondition
        except Conflict:
            return self.leading
        self._renewed_at = self.clock()
        if not self.leading:
            self.leading = True
            log.info("leader election: %s leads (%s/%s)", self.identity, self.namespace, self.name)
            self.on_started()
        return True

    async def _release(self) -> None:
        lease = await self.kube.get(self._path)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        lease["spec"]["holderIdentity"] = None
        lease["spec"]["renewTime"] = micro_time()
        await self.kube.replace(self._path, lease)
        log.info("leader election: %s released %s/%s", self.identity, self.namespace, self.name)

    def _lose(self, why: str) -> None:
        self.leading = False
        log.error("leader election: lost leadership (%s); stopping", why)
        self.on_lost()
