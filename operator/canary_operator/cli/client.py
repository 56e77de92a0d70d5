"""What the command-line tools share: connecting like kubectl does, one-line errors,
and following one rollout (watch with a poll fallback)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.api import models
from canary_operator.kube.api import Conflict, JsonObj, Kube, api_client, path
from canary_operator.rollout_view import settled

T = TypeVar("T")
CLI_FIELD_MANAGER = "kubectl-canary"  # the plugin's writes are the user's, not the operator's
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
WATCH_SECONDS = 60  # one watch request; then re-read and watch again


class CliError(Exception):
    """An error to print as one line, then exit with `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Session:
    """A connection to the API plus the namespace commands default to."""

    kube: Kube
    namespace: str
    server: str


async def connect(kubeconfig: str | None, context: str | None, namespace: str | None) -> Session:
    """Connect like kubectl: --kubeconfig/--context/KUBECONFIG, else in-cluster, else
    ~/.kube/config; the namespace defaults to the context's (or the pod's)."""
    explicit = kubeconfig or context or os.environ.get("KUBECONFIG")
    if not explicit and os.environ.get("KUBERNETES_SERVICE_HOST"):
        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except config.ConfigException as exc:
            raise CliError(f"in-cluster configuration failed: {exc}") from exc
        default_ns = _read_file(SA_NAMESPACE_FILE) or "default"
        return Session(
            Kube(api_client(cfg), CLI_FIELD_MANAGER), namespace or default_ns, str(cfg.host)
        )
    cfg = client.Configuration()
    try:
        loader = await config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=cfg, persist_config=False
        )
    except (config.ConfigException, OSError, KeyError, ValueError) as exc:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise CliError(f"no usable cluster configuration ({where}): {exc}") from exc
    current = getattr(loader, "current_context", None) or {}
    default_ns = (current.get("context") or {}).get("namespace") or "default"
    return Session(Kube(api_client(cfg), CLI_FIELD_MANAGER), namespace or default_ns, str(cfg.host))


def _read_file(file: Path) -> str | None:
    try:
        return file.read_text().strip() or None
    except OSError:
        return None


def explain(exc: BaseException, server: str = "") -> str:
    """One line for an API or connection error."""
    if isinstance(exc, Conflict):
        return f"conflict: {exc}; try again"
    if isinstance(exc, ApiException):
        reason = str(exc.reason or "").strip()
        if exc.status == 403:
            return f"permission denied: {reason}"
        if exc.status == 401:
            return f"unauthorized: the cluster refused the credentials ({reason})"
        return f"API error {exc.status}: {reason}"
    if isinstance(exc, aiohttp.ClientError | OSError | TimeoutError | asyncio.TimeoutError):
        detail = str(exc) or type(exc).__name__
        return f"cannot reach the Kubernetes API at {server or 'the configured server'}: {detail}"
    return f"{type(exc).__name__}: {exc}"


def run(main: Callable[[], Awaitable[int]]) -> int:
    """Run an async command; print errors as one line on stderr."""

    async def wrapped() -> int:
        try:
            return await main()
        finally:
            await _close_sessions()

    try:
        return asyncio.run(wrapped())
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


_OPEN: list[client.ApiClient] = []


def track(session: Session) -> Session:
    """Close this session's connections when the command ends."""
    _OPEN.append(session.kube.api_client)
    return session


async def _close_sessions() -> None:
    while _OPEN:
        await _OPEN.pop().close()


async def call(session: Session, coro: Awaitable[T]) -> T:
    """Await an API call, turning failures into one-line CliErrors."""
    try:
        return await coro
    except CliError:
        raise
    except (ApiException, Conflict, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise CliError(explain(exc, session.server)) from exc


def rollout_path(namespace: str | None, name: str | None = None) -> str:
    return path(models.GROUP, models.VERSION, models.PLURAL, namespace, name)


async def _read(session: Session, resource_path: str, missing: str) -> JsonObj:
    """GET with one-line errors; `missing` describes a 404 for a missing object."""
    try:
        result: JsonObj = await session.kube.request("GET", resource_path)
        return result
    except ApiException as exc:
        if exc.status != 404:
            raise CliError(explain(exc, session.server)) from exc
        if " not found" in str(exc.reason) and '"' in str(exc.reason):
            raise CliError(missing) from exc
        raise CliError(
            "the CanaryRollout API is not served by this cluster "
            "(is the CRD installed? kubectl apply -f crds/)"
        ) from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise CliError(explain(exc, session.server)) from exc


async def get_rollout(session: Session, name: str, namespace: str | None = None) -> JsonObj:
    """The rollout, or a CliError naming what is missing."""
    ns = namespace or session.namespace
    return await _read(
        session, rollout_path(ns, name), f'canaryrollout "{name}" not found in namespace "{ns}"'
    )


async def list_rollouts(session: Session, namespace: str | None) -> list[JsonObj]:
    """Rollouts of one namespace (None: all namespaces)."""
    result = await _read(session, rollout_path(namespace), "no canaryrollouts")
    items: list[JsonObj] = result.get("items", [])
    return items


async def follow(
    session: Session, name: str, namespace: str | None = None
) -> AsyncIterator[JsonObj]:
    """Yield the rollout now and after every change, forever (the caller stops).

    A watch on the one object (fieldSelector on its name); when a watch ends or
    breaks, the object is read again, so nothing is missed."""
    ns = namespace or session.namespace
    body = await get_rollout(session, name, ns)
    yield body
    failures = 0
    while True:
        version = body["metadata"]["resourceVersion"]
        try:
            async for event in _watch(session.kube, ns, name, version):
                kind = event.get("type")
                if kind == "DELETED":
                    raise CliError(f'canaryrollout "{name}" was deleted')
                if kind in ("ADDED", "MODIFIED"):
                    body = event["object"]
                    yield body
                elif kind == "ERROR":
                    break  # e.g. 410 Gone: the version is too old; read afresh
            failures = 0
        except (aiohttp.ClientError, OSError, TimeoutError, ApiException) as exc:
            failures += 1
            if failures >= 5:
                raise CliError(explain(exc, session.server)) from exc
            await asyncio.sleep(min(2.0**failures, 10.0))
        body = await get_rollout(session, name, ns)
        yield body


async def _watch(
    kube: Kube, namespace: str, name: str, resource_version: str
) -> AsyncIterator[JsonObj]:
    query: list[tuple[str, Any]] = [
        ("watch", "true"),
        ("fieldSelector", f"metadata.name={name}"),
        ("resourceVersion", resource_version),
        ("allowWatchBookmarks", "false"),
        ("timeoutSeconds", WATCH_SECONDS),
    ]
    raw = await kube.api_client.call_api(
        rollout_path(namespace),
        "GET",
        query_params=query,
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=WATCH_SECONDS + 15,
    )
    response = raw[0] if isinstance(raw, tuple) else raw
    async with response:
        if response.status >= 400:
            data = await response.read()
            raise ApiException(status=response.status, reason=data.decode(errors="replace"))
        async for line in response.content:
            if line.strip():
                yield json.loads(line)


@dataclass
class AbortRequest:
    """What asking for an abort did: `aborted` is False when there was nothing to
    abort (`body` None: no such rollout; else its run had already ended)."""

    aborted: bool
    body: JsonObj | None


async def request_abort(kube: Kube, namespace: str, name: str, attempts: int = 5) -> AbortRequest:
    """Set spec.abort=true on a rollout whose current run has not ended.

    An ended run is left alone: the operator would not act on it, and the spec
    change would only bump the generation (the rollout would then read Pending
    everywhere). The merge patch carries the resourceVersion it was decided on, so a
    rollout that ends meanwhile is read again rather than aborted."""
    resource = rollout_path(namespace, name)
    for _ in range(attempts):
        body = await kube.get(resource)
        if body is None:
            return AbortRequest(False, None)
        if settled(body):
            return AbortRequest(False, body)
        if (body.get("spec") or {}).get("abort") is True:
            return AbortRequest(True, body)  # asked for already
        patch = {
            "metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
            "spec": {"abort": True},
        }
        try:
            patched: JsonObj = await kube.merge_patch(resource, patch)
        except Conflict:
            continue
        return AbortRequest(True, patched)
    raise Conflict(f"canaryrollout {namespace}/{name} kept changing; abort not applied")
