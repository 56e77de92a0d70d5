"""The operator's HTTP endpoints (aiohttp).

- `/healthz`: the process and its event loop answer;
- `/readyz`: the controller has started its work queue (or, under leader election,
  this replica is a warm standby);
- `/metrics`: Prometheus text format (see `metrics/`);
- `/status/{namespace}/{name}`: read-only `{"phase": ...}` for a Spinnaker Webhook
  stage polling with `statusJsonPath: $.phase`; `Pending` until the operator has
  seen the rollout's current generation;
- `POST /abort/{namespace}/{name}`: sets spec.abort=true for a caller whose bearer
  token the API server accepts (TokenReview) and who may patch that rollout
  (SubjectAccessReview); a Spinnaker Webhook stage's `cancelEndpoint`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.api import models
from canary_operator.cli.client import AbortRequest, request_abort
from canary_operator.kube.api import Conflict, JsonObj, Kube, path
from canary_operator.kube.rollouts import rollout_path
from canary_operator.leader import LeaderElector, default_namespace
from canary_operator.metrics import Metrics
from canary_operator.rollout_view import effective_phase, outcome_properties, settled

log = logging.getLogger(__name__)

Lookup = Callable[[str, str], Awaitable[JsonObj | None]]
Aborter = Callable[[str, str], Awaitable[AbortRequest]]
STARTING, RUNNING, STANDBY, STOPPING = "starting", "running", "standby", "stopping"
# The permission an abort needs: what `kubectl canary abort` does is a patch.
ABORT_VERB = "patch"


@dataclass(frozen=True)
class Caller:
    """Who a bearer token belongs to, as the API server's TokenReview says."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)


class AccessReview(Protocol):
    """Authentication and authorisation of HTTP callers, delegated to the API server."""

    async def authenticate(self, token: str) -> Caller | None: ...

    async def may_abort(self, caller: Caller, namespace: str, name: str) -> bool: ...


class KubeAccessReview:
    """TokenReview and SubjectAccessReview (the operator needs `create` on both,
    the rights of the built-in ClusterRole system:auth-delegator)."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    async def authenticate(self, token: str) -> Caller | None:
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        result = await self.kube.create(path("authentication.k8s.io", "v1", "tokenreviews"), review)
        status = result.get("status") or {}
        user = status.get("user") or {}
        if not status.get("authenticated") or not user.get("username"):
            return None
        return Caller(
            username=str(user["username"]),
            uid=str(user.get("uid") or ""),
            groups=tuple(user.get("groups") or ()),
            extra={k: list(v) for k, v in (user.get("extra") or {}).items()},
        )

    async def may_abort(self, caller: Caller, namespace: str, name: str) -> bool:
        spec: JsonObj = {
            "user": caller.username,
            "groups": list(caller.groups),
            "resourceAttributes": {
                "namespace": namespace,
                "verb": ABORT_VERB,
                "group": models.GROUP,
                "resource": models.PLURAL,
                "name": name,
            },
        }
        if caller.uid:
            spec["uid"] = caller.uid
        if caller.extra:
            spec["extra"] = caller.extra
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": spec,
        }
        result = await self.kube.create(
            path("authorization.k8s.io", "v1", "subjectaccessreviews"), review
        )
        return bool((result.get("status") or {}).get("allowed"))


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive)."""
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


@dataclass
class RunOptions:
    """How `canary-operator run` serves and elects (passed to the startup handler)."""

    http_port: int = 8080
    http_host: str = "0.0.0.0"
    leader_elect: bool = False
    leader_namespace: str | None = None
    leader_name: str = "canary-operator-leader"
    workers: int = 8  # reconciles at once (none waits on a user endpoint)
    namespaces: tuple[str, ...] = ()  # watched namespaces; empty: the whole cluster


@dataclass
class WebState:
    metrics: Metrics = field(default_factory=Metrics)
    lookup: Lookup | None = None
    access: AccessReview | None = None
    abort: Aborter | None = None
    mode: str = STARTING

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        self.metrics.leader = 1.0 if mode == RUNNING else 0.0


def status_document(body: JsonObj) -> dict[str, Any]:
    """The Webhook stage's view of a rollout: one scalar `phase`, plus details."""
    meta, status = body["metadata"], body.get("status") or {}
    props = outcome_properties(body)
    return {
        "phase": effective_phase(body),
        "done": settled(body),
        "name": meta["name"],
        "namespace": meta["namespace"],
        "generation": meta.get("generation"),
        "observedGeneration": status.get("observedGeneration"),
        "run": status.get("run"),
        "step": status.get("stepLabel"),
        "weight": status.get("weight"),
        "queue": status.get("queueLabel"),
        "reason": props["REASON"] or None,
        "failedStep": status.get("outcome", {}).get("failedStep"),
        "failedStepName": props["FAILED_STEP_NAME"] or None,
        "message": status.get("message"),
    }


def build_app(state: WebState) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if state.mode in (RUNNING, STANDBY):
            return web.Response(text=f"ok ({state.mode})\n")
        return web.Response(status=503, text=f"not ready ({state.mode})\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=state.metrics.render().encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def status(request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        if state.lookup is None:
            return web.json_response({"phase": "Unknown", "error": "not started"}, status=503)
        try:
            body = await state.lookup(namespace, name)
        except ApiException as exc:
            code = exc.status if exc.status in (401, 403) else 502
            return web.json_response(
                {"phase": "Unknown", "error": f"API error {exc.status}: {exc.reason}"}, status=code
            )
        except Exception as exc:
            log.warning("status endpoint: reading %s/%s failed: %s", namespace, name, exc)
            return web.json_response({"phase": "Unknown", "error": str(exc)}, status=502)
        if body is None:
            return web.json_response(
                {"phase": "NotFound", "name": name, "namespace": namespace}, status=404
            )
        return web.json_response(status_document(body))

    async def abort(request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        target = {"name": name, "namespace": namespace}
        if state.access is None or state.abort is None:
            return web.json_response({"aborted": False, "error": "not started"}, status=503)
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            return _unauthorized("an Authorization: Bearer token is required", target)
        try:
            caller = await state.access.authenticate(token)
            if caller is None:
                return _unauthorized("the API server did not accept the token", target)
            if not await state.access.may_abort(caller, namespace, name):
                message = (
                    f"{caller.username} may not {ABORT_VERB} {models.PLURAL}.{models.GROUP} "
                    f"{name!r} in namespace {namespace!r}"
                )
                return web.json_response({"aborted": False, "error": message, **target}, status=403)
            outcome = await state.abort(namespace, name)
        except (ApiException, Conflict, OSError, TimeoutError) as exc:
            # The operator could not review the token or write the abort (e.g. its
            # own RBAC lacks create on tokenreviews): not the caller's fault.
            log.warning("abort endpoint: %s/%s: %s", namespace, name, exc)
            detail = f"{exc.status}: {exc.reason}" if isinstance(exc, ApiException) else str(exc)
            return web.json_response(
                {"aborted": False, "error": f"the operator could not do it ({detail})", **target},
                status=503,
            )
        if outcome.body is None:
            return web.json_response({"aborted": False, "phase": "NotFound", **target}, status=404)
        if not outcome.aborted:
            return web.json_response(
                {
                    "aborted": False,
                    "phase": effective_phase(outcome.body),
                    "message": "the run has already ended",
                    **target,
                },
                status=409,
            )
        log.info("abort of %s/%s requested by %s", namespace, name, caller.username)
        # The phase the abort found: the patch made a generation the operator has
        # not acted on yet, so the generation-aware phase would only say Pending.
        phase = str((outcome.body.get("status") or {}).get("phase") or "Pending")
        return web.json_response(
            {"aborted": True, "phase": phase, "requestedBy": caller.username, **target},
            status=202,
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status/{namespace}/{name}", status)
    app.router.add_post("/abort/{namespace}/{name}", abort)
    return app


def _unauthorized(message: str, target: dict[str, str]) -> web.Response:
    return web.json_response(
        {"aborted": False, "error": message, **target},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="canary-operator"'},
    )


class WebServer:
    """Runs the app on host:port; a port already taken is logged, not fatal."""

    def __init__(self, state: WebState, host: str, port: int) -> None:
        self.state = state
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> bool:
        runner = web.AppRunner(build_app(self.state), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            log.error("cannot serve HTTP on %s:%d: %s", self.host, self.port, exc)
            await runner.cleanup()
            return False
        self._runner = runner
        log.info("serving /healthz /readyz /metrics /status /abort on %s:%d", self.host, self.port)
        return True

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class Controller(Protocol):
    """What the leader runs: the work queue and its companions (controller.Controller)."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class Services:
    """What runs around the controller's work queue: the HTTP endpoints and, when
    asked for, leader election (only the leader starts the queue)."""

    def __init__(
        self, kube: Kube, options: RunOptions, work: Controller, metrics: Metrics | None = None
    ) -> None:
        self.kube = kube
        self.options = options
        self.work = work
        self.state = WebState(
            metrics=metrics or Metrics(),
            lookup=self._lookup,
            access=KubeAccessReview(kube),
            abort=self._abort,
        )
        self.server: WebServer | None = None
        self.elector: LeaderElector | None = None
        self._stopping: asyncio.Future[None] | None = None

    async def _lookup(self, namespace: str, name: str) -> JsonObj | None:
        return await self.kube.get(rollout_path(namespace, name))

    async def _abort(self, namespace: str, name: str) -> AbortRequest:
        return await request_abort(self.kube, namespace, name)

    async def start(self) -> None:
        if self.options.http_port:
            self.server = WebServer(self.state, self.options.http_host, self.options.http_port)
            await self.server.start()
        if not self.options.leader_elect:
            self._lead()
            return
        self.elector = LeaderElector(
            self.kube,
            self.options.leader_namespace or default_namespace(),
            self.options.leader_name,
            on_started=self._lead,
            on_lost=self._lost,
        )
        self.state.set_mode(STANDBY)
        self.elector.start()

    def _lead(self) -> None:
        self.work.start()
        self.state.set_mode(RUNNING)

    def _lost(self) -> None:
        """Stop working at once, then exit (SIGTERM: kopf shuts down, the pod restarts)."""
        self.state.set_mode(STOPPING)
        self._stopping = asyncio.ensure_future(self.work.stop())
        os.kill(os.getpid(), signal.SIGTERM)

    async def stop(self) -> None:
        self.state.set_mode(STOPPING)
        await self.work.stop()
        if self.elector is not None:
            await self.elector.stop()
        if self.server is not None:
            await self.server.stop()
