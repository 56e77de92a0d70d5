"""A small async REST client over kubernetes_asyncio's ApiClient, working in plain dicts.

Plain dicts keep objects exactly as the API server sent them (no model round-trip
dropping unknown fields), which matters when we write them back with a
resourceVersion precondition.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from yarl import URL

from canary_operator import __version__

JsonObj = dict[str, Any]
# Every write names its field manager, so `managedFields` (and with it server-side
# apply conflicts, Argo CD's diff) attribute the operator's fields to the operator,
# not to the client library's default ("OpenAPI-Generator"). The User-Agent says the same
# to audit logs and to the API server's default manager for the one write that takes
# no fieldManager (DELETE).
FIELD_MANAGER = "canary-operator"


class Conflict(Exception):
    """A write lost an optimistic-concurrency race (HTTP 409)."""


def describe(exc: BaseException) -> str:
    """What failed, in words for the user (never the name of a Python class)."""
    if isinstance(exc, ApiException):
        return f"API error {exc.status} {exc.reason}"
    if isinstance(exc, TimeoutError):
        return f"timed out{': ' + str(exc) if str(exc) else ''}"
    if isinstance(exc, aiohttp.ClientError | OSError):
        # An exception is always true: its words are what may be missing.
        return f"connection failed: {str(exc) or 'no answer'}"
    return str(exc) or "unexpected error"


def _reason(data: bytes, default: str | None) -> str:
    try:
        return str(json.loads(data).get("message") or default)
    except (ValueError, AttributeError):
        return default or ""


# Set by `canary-operator run --kubeconfig/--context` (the kopf startup takes no arguments).
KUBECONFIG_ENV = "CANARY_OPERATOR_KUBECONFIG"
CONTEXT_ENV = "CANARY_OPERATOR_CONTEXT"


async def load_config(
    kubeconfig: str | None = None, context: str | None = None
) -> client.ApiClient:
    """An explicit kubeconfig/context (arguments, else KUBECONFIG_ENV/CONTEXT_ENV) wins;
    otherwise in-cluster config when running in a pod, else the default kubeconfig."""
    kubeconfig = kubeconfig or os.environ.get(KUBECONFIG_ENV) or None
    context = context or os.environ.get(CONTEXT_ENV) or None
    if kubeconfig is None and context is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return api_client()
        except config.ConfigException:
            pass
    cfg = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    return api_client(cfg)


# As kubernetes_asyncio sizes it: a watch event of a large object exceeds aiohttp's default.
READ_BUFSIZE = 2**21


def api_client(configuration: client.Configuration | None = None) -> client.ApiClient:
    """An ApiClient whose HTTP session does not look in the environment on each request.

    kubernetes_asyncio's session trusts the environment, and aiohttp then reads the proxy
    variables and ~/.netrc for every request, each in a worker thread: measured here,
    1.1 ms of CPU and 1.5 ms of wall time a GET (a GET's own CPU is 0.4 ms). The proxy is
    worked out once instead, from the same variables (HTTPS_PROXY, NO_PROXY, ...), unless
    the kubeconfig names one; netrc is no way to authenticate to the Kubernetes API."""
    api = client.ApiClient(configuration=configuration)
    rest = api.rest_client
    if not rest.proxy:
        with contextlib.suppress(LookupError, ValueError):
            proxy, auth = get_env_proxy_for_url(URL(api.configuration.host or ""))
            rest.proxy = str(proxy)
            if auth is not None:
                rest.proxy_headers = {
                    **(rest.proxy_headers or {}),
                    "Proxy-Authorization": auth.encode(),
                }
    trusting = rest.pool_manager
    connector = trusting.connector
    trusting.detach()  # the connector (its pool, its TLS context) goes to the new session
    rest.pool_manager = aiohttp.ClientSession(
        connector=connector, trust_env=False, read_bufsize=READ_BUFSIZE
    )
    return api


def path(
    group: str, version: str, plural: str, namespace: str | None = None, name: str | None = None
) -> str:
    base = f"/api/{version}" if group in ("", "core") else f"/apis/{group}/{version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    if name:
        base += f"/{name}"
    return base


@dataclass(frozen=True)
class ResourceKind:
    group: str
    version: str
    plural: str

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        return path(self.group, self.version, self.plural, namespace, name)


def parse_path(resource_path: str) -> tuple[ResourceKind, str | None, str | None, str] | None:
    """(kind, namespace, name, subresource) of a REST path this module builds."""
    parts = resource_path.strip("/").split("/")
    if parts[:1] == ["api"]:
        group, rest = "", parts[1:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[2:]
    else:
        return None
    if not rest:
        return None
    version, rest = rest[0], rest[1:]
    namespace = None
    if len(rest) >= 2 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return None
    plural, rest = rest[0], rest[1:]
    name = rest[0] if rest else None
    subresource = "/".join(rest[1:])
    return ResourceKind(group, version, plural), namespace, name, subresource


def verb(method: str, resource_path: str, query: Mapping[str, Any] | None) -> str:
    """The API server's name for a request's verb (get/list/watch/create/...)."""
    if method == "GET":
        if query and str(dict(query).get("watch") or "") == "true":
            return "watch"
        where = parse_path(resource_path)
        return "list" if where is not None and where[2] is None else "get"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
        method, method.lower()
    )


# (verb, resource e.g. "deployments" or "canaryrollouts/status", HTTP status)
RequestHook = Callable[[str, str, int], None]


class Kube:
    def __init__(
        self,
        api_client: client.ApiClient,
        field_manager: str = FIELD_MANAGER,
        on_request: RequestHook | None = None,
    ) -> None:
        self.api_client = api_client
        self.field_manager = field_manager
        api_client.user_agent = f"{field_manager}/{__version__}"
        # Told of every request this client makes (the operator's request counter).
        self.on_request = on_request

    def _count(
        self, method: str, resource_path: str, query: Mapping[str, Any] | None, status: int
    ) -> None:
        if self.on_request is None:
            return
        where = parse_path(resource_path)
        resource = "?" if where is None else where[0].plural + (f"/{where[3]}" if where[3] else "")
        with contextlib.suppress(Exception):  # a counter must never fail a request
            self.on_request(verb(method, resource_path, query), resource, status)

    async def request(
        self,
        method: str,
        resource_path: str,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        raw = await self.api_client.call_api(
            resource_path,
            method,
            query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=30,
        )
        response = raw[0] if isinstance(raw, tuple) else raw
        self._count(method, resource_path, query, response.status)
        async with response:
            data = await response.read()
            if response.status >= 400:
                # Without preloading, the client leaves error statuses to us.
                exc = ApiException(status=response.status, reason=_reason(data, response.reason))
                exc.body = data
                if response.status == 409:
                    raise Conflict(f"{method} {resource_path}: {exc.reason}") from exc
                raise exc
        return json.loads(data) if data else None

    async def watch(self, resource_path: str, query: Mapping[str, Any]) -> AsyncIterator[JsonObj]:
        """The events of a watch, one JSON object per line, until the server ends it.
        Lines are split here rather than by the stream's readline, whose line limit a
        large object can exceed."""
        timeout = float(query.get("timeoutSeconds") or 300)
        raw = await self.api_client.call_api(
            resource_path,
            "GET",
            query_params=list(query.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            # Connect quickly or not at all; a watch silent for longer than the server's
            # own timeout is a dead connection.
            _request_timeout=aiohttp.ClientTimeout(connect=10, sock_read=timeout + 30),
        )
        response = raw[0] if isinstance(raw, tuple) else raw
        self._count("GET", resource_path, query, response.status)
        async with response:
            if response.status >= 400:
                data = await response.read()
                exc = ApiException(status=response.status, reason=_reason(data, response.reason))
                exc.body = data
                raise exc
            pending = b""
            async for chunk in response.content.iter_any():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
            if pending.strip():
                yield json.loads(pending)

    async def get(self, resource_path: str) -> JsonObj | None:
        try:
            result: JsonObj = await self.request("GET", resource_path)
            return result
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, resource_path: str, label_selector: str | None = None
    ) -> builtins.list[JsonObj]:
        query = {"labelSelector": label_selector} if label_selector else None
        result = await self.request("GET", resource_path, query=query)
        items: builtins.list[JsonObj] = result.get("items", [])
        return items

    async def create(self, resource_path: str, body: JsonObj) -> JsonObj:
        result: JsonObj = await self.request(
            "POST", resource_path, body, query={"fieldManager": self.field_manager}
        )
        return result

    async def replace(self, resource_path: str, body: JsonObj) -> JsonObj:
        """PUT; the body's metadata.resourceVersion makes it conditional."""
        result: JsonObj = await self.request(
            "PUT", resource_path, body, query={"fieldManager": self.field_manager}
        )
        return result

    async def merge_patch(self, resource_path: str, patch: JsonObj) -> JsonObj:
        result: JsonObj = await self.request(
            "PATCH",
            resource_path,
            patch,
            query={"fieldManager": self.field_manager},
            content_type="application/merge-patch+json",
        )
        return result

    async def apply(self, resource_path: str, body: JsonObj, force: bool = True) -> JsonObj:
        """Server-side apply: idempotent create-or-update of the fields we own. With
        `force`, fields another manager owns with a different value become ours (the
        conflict moves to that manager's next apply)."""
        query = {"fieldManager": self.field_manager, **({"force": "true"} if force else {})}
        result: JsonObj = await self.request(
            "PATCH", resource_path, body, query=query, content_type="application/apply-patch+yaml"
        )
        return result

    async def delete(
        self,
        resource_path: str,
        propagation: str = "Background",
        resource_version: str | None = None,
        uid: str | None = None,
    ) -> bool:
        """Delete; False if it was already gone. With `uid`, only that object is deleted
        (one deleted and made again under its name raises Conflict); with
        `resource_version`, only that version of it."""
        body: JsonObj = {"propagationPolicy": propagation}
        preconditions = {
            key: value
            for key, value in (("uid", uid), ("resourceVersion", resource_version))
            if value is not None
        }
        if preconditions:
            body["preconditions"] = preconditions
        try:
            await self.request("DELETE", resource_path, body)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise


def is_dry_run(query: Any) -> bool:
    """Whether a request's query asks for a dry run (no side effect, nothing stored)."""
    return bool(query and dict(query).get("dryRun"))


class WrappedKube(Kube):
    """A Kube in front of another: the same client and field manager (its User-Agent
    already set), requests sent (and counted) by the one behind."""

    def __init__(self, kube: Kube) -> None:
        self.api_client = kube.api_client
        self.field_manager = kube.field_manager
        self.on_request = None  # the direct client counts the requests
        self.direct = kube

    async def request(
        self,
        method: str,
        resource_path: str,
        body: Any = None,
        query: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        await self.sending(method, query)
        result = await self.direct.request(method, resource_path, body, query, content_type)
        self.answered(method, resource_path, query, result)
        return result

    async def sending(self, method: str, query: Any) -> None:
        """Awaited before each request goes out (a write may have to wait for a check)."""

    def answered(self, method: str, resource_path: str, query: Any, result: Any) -> None:
        """Told of each answer (a cache keeps what this process wrote)."""


class ReadOnce(WrappedKube):
    """A Kube for one fresh observation: each GET and LIST goes to the API server once,
    however many readers of that observation ask for it (the reconciler and the traffic
    router both read the target and the canary), and the answers live no longer than
    the observation. Writes pass through. Callers treat the answers as read-only."""

    def __init__(self, kube: Kube) -> None:
        super().__init__(kube)
        self._reads: dict[tuple[str, str | None, str | None], asyncio.Future[Any]] = {}

    async def _once(
        self, key: tuple[str, str | None, str | None], read: Callable[[], Awaitable[Any]]
    ) -> Any:
        pending = self._reads.get(key)
        if pending is None:
            pending = self._reads[key] = asyncio.ensure_future(read())
        # Shielded: one reader cancelled (its gather failed) leaves the read to the others.
        return await asyncio.shield(pending)

    def known(self, resource_path: str, answer: JsonObj | None) -> None:
        """`answer` stands for this observation's GET of `resource_path` (a read made
        moments ago that is known to be as good as a new one)."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(answer)
        self._reads[("get", resource_path, None)] = done

    async def get(self, resource_path: str) -> JsonObj | None:
        found: JsonObj | None = await self._once(
            ("get", resource_path, None), lambda: self.direct.get(resource_path)
        )
        return found

    async def list(
        self, resource_path: str, label_selector: str | None = None
    ) -> builtins.list[JsonObj]:
        items: builtins.list[JsonObj] = await self._once(
            ("list", resource_path, label_selector),
            lambda: self.direct.list(resource_path, label_selector),
        )
        return items


class FencedWrites(WrappedKube):
    """Reads as the Kube behind it; each write (not a dry run) waits for `confirm`, the
    fencing check that the run still holds its lock, started after that write was
    issued: no answer is ever shared by writes made one after another (a write after a
    list, or after a 409, is confirmed again). Writes issued together (an action's
    `asyncio.gather` of independent objects) share one confirmation, which starts on
    the event loop's next turn, after every one of them was issued. An action that
    finds nothing to write (a reset already done, objects already being deleted) costs
    no fencing read."""

    def __init__(self, kube: Kube, confirm: Callable[[], Awaitable[None]]) -> None:
        super().__init__(kube)
        self._confirm = confirm
        self._pending: asyncio.Future[None] | None = None  # not started yet
        self.confirmations = 0  # how many were made (started)

    async def get(self, resource_path: str) -> JsonObj | None:
        return await self.direct.get(resource_path)

    async def list(
        self, resource_path: str, label_selector: str | None = None
    ) -> builtins.list[JsonObj]:
        return await self.direct.list(resource_path, label_selector)

    async def sending(self, method: str, query: Any) -> None:
        if method == "GET" or is_dry_run(query):
            return
        pending = self._pending
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = self._pending = loop.create_future()
            loop.call_soon(self._start, pending)
        # Shielded: one write cancelled (its gather failed) leaves the check to the others.
        await asyncio.shield(pending)

    def _start(self, pending: asyncio.Future[None]) -> None:
        """Start the confirmation every write issued so far waits for; a later write
        waits for a confirmation of its own."""
        self._pending = None
        self.confirmations += 1
        check = asyncio.ensure_future(self._confirm())

        def settle(done: asyncio.Future[None]) -> None:
            if pending.cancelled():
                return
            if done.cancelled():
                pending.cancel()
            elif (error := done.exception()) is not None:
                pending.set_exception(error)
            else:
                pending.set_result(None)

        check.add_done_callback(settle)
        # Retrieved even when every waiter was cancelled (no "never retrieved" warning).
        pending.add_done_callback(lambda f: f.cancelled() or f.exception())
