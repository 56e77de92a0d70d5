"""A loopback HTTP proxy in front of the API server, for one operator process.

The operator gets a kubeconfig of its own (`ApiProxy.kubeconfig`) that points at
``http://127.0.0.1:PORT``: plain HTTP on loopback, no credentials. The proxy speaks
TLS upstream with the client certificate and CA of the cluster's kubeconfig, so the
API server sees the same user as without it. Every request is forwarded as it came;
responses are streamed back (watches stay watches).

Rules make one request misbehave, in order of registration (the first rule that
matches and still has uses left applies):

* ``hold_response``: forward the request (the API server commits it), read the whole
  answer, and keep it from the client until the test releases it. The client is frozen
  between a write it made and whatever it does next.
* ``hold_request``: keep the request itself until released, then forward it (a write
  that arrives late).
* ``delay``: forward after ``seconds``.

Every exchange is logged (method, path, query, status, and for writes the metadata of
the object the API server answered with), so a test can say what this process wrote,
when, and at which resourceVersion.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import yaml
from aiohttp import web

from tests.harness.cluster import Cluster, wait_for

WRITES = {"POST", "PUT", "PATCH", "DELETE"}
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-encoding",
    "accept-encoding",
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any  # parsed JSON, or None

    @property
    def dry_run(self) -> bool:
        return "dryRun" in self.query

    @property
    def watch(self) -> bool:
        return self.query.get("watch", [""])[0] in {"true", "1"}


@dataclass
class Exchange:
    seq: int
    started: float  # monotonic
    request: Request
    status: int = 0
    answered: float = 0.0  # monotonic, when the client got the answer (0: not yet)
    # For a write: the metadata (and kind) of the object the API server answered with.
    answer: dict[str, Any] = field(default_factory=dict)
    rule: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def resource_version(self) -> int | None:
        rv = (self.answer.get("metadata") or {}).get("resourceVersion")
        return int(rv) if rv and str(rv).isdigit() else None


Match = Callable[[Request], bool]


@dataclass
class Rule:
    name: str
    match: Match
    action: str  # "hold_response" | "hold_request" | "delay"
    seconds: float = 0.0
    uses: int | None = 1  # None: every match
    released: threading.Event = field(default_factory=threading.Event)
    engaged: threading.Event = field(default_factory=threading.Event)  # first use began
    exchanges: list[Exchange] = field(default_factory=list)

    def release(self) -> None:
        self.released.set()

    def wait_engaged(self, timeout: float) -> Exchange:
        wait_for(self.engaged.is_set, timeout, interval=0.05, message=f"rule {self.name}")
        return self.exchanges[0]

    def wait_answered(self, timeout: float) -> Exchange:
        """The first exchange this rule applied to has been answered to the client."""

        def answered() -> Exchange | None:
            first = self.exchanges[0] if self.exchanges else None
            return first if first is not None and first.answered else None

        found = wait_for(
            answered, timeout, interval=0.05, message=f"the answer of rule {self.name}'s request"
        )
        assert found is not None
        return found


def _write_secret(directory: Path, name: str, data: str) -> str:
    target = directory / name
    target.write_bytes(base64.b64decode(data))
    target.chmod(0o600)
    return str(target)


class Credentials:
    """The API server's URL, CA and client credentials, from the cluster's kubeconfig
    (certificate files in a private temporary directory until `close()`)."""

    def __init__(self, cluster: Cluster, directory: Path | None = None) -> None:
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="api-credentials-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = yaml.safe_load(cluster.kubeconfig.read_text())
        contexts = {c["name"]: c["context"] for c in config["contexts"]}
        context = contexts[config["current-context"]]
        cluster_entry = next(
            c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"]
        )
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        self.server = str(cluster_entry["server"]).rstrip("/")
        self.ssl = ssl.create_default_context()
        if "certificate-authority-data" in cluster_entry:
            ca = _write_secret(self.dir, "ca.crt", cluster_entry["certificate-authority-data"])
            self.ssl = ssl.create_default_context(cafile=ca)
        elif "certificate-authority" in cluster_entry:
            self.ssl = ssl.create_default_context(cafile=cluster_entry["certificate-authority"])
        self.headers: dict[str, str] = {}
        if "client-certificate-data" in user:
            cert = _write_secret(self.dir, "client.crt", user["client-certificate-data"])
            key = _write_secret(self.dir, "client.key", user["client-key-data"])
            self.ssl.load_cert_chain(cert, key)
        elif "token" in user:
            self.headers["Authorization"] = f"Bearer {user['token']}"

    def close(self) -> None:
        if self._own_dir and self.dir.exists():
            for child in self.dir.iterdir():
                child.unlink(missing_ok=True)
            self.dir.rmdir()


class ApiProxy:
    def __init__(self, cluster: Cluster, directory: Path | None = None) -> None:
        self.cluster = cluster
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="api-proxy-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.credentials = Credentials(cluster, self.dir)
        self.upstream = self.credentials.server
        self._ssl = self.credentials.ssl
        self._headers = self.credentials.headers
        self.rules: list[Rule] = []
        self.log: list[Exchange] = []
        self._log_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stopping = threading.Event()
        self.port = 0
        self.kubeconfig = self.dir / "kubeconfig"

    # ------------------------------------------------------------------ rules

    def hold_response(self, name: str, match: Match, uses: int | None = 1) -> Rule:
        return self._add(Rule(name, match, "hold_response", uses=uses))

    def hold_request(self, name: str, match: Match, uses: int | None = 1) -> Rule:
        return self._add(Rule(name, match, "hold_request", uses=uses))

    def delay(self, name: str, match: Match, seconds: float, uses: int | None = None) -> Rule:
        rule = self._add(Rule(name, match, "delay", seconds=seconds, uses=uses))
        rule.released.set()
        return rule

    def _add(self, rule: Rule) -> Rule:
        self.rules.append(rule)
        return rule

    def _rule_for(self, request: Request) -> Rule | None:
        for rule in self.rules:
            if rule.uses is not None and len(rule.exchanges) >= rule.uses:
                continue
            try:
                matched = rule.match(request)
            except (KeyError, TypeError, ValueError, AttributeError):
                matched = False
            if matched:
                return rule
        return None

    def exchanges(self) -> list[Exchange]:
        with self._log_lock:
            return list(self.log)

    def writes(self) -> list[Exchange]:
        """Writes the API server accepted (not dry-runs), in the order they were sent."""
        return [
            e
            for e in self.exchanges()
            if e.request.method in WRITES and not e.request.dry_run and e.ok
        ]

    # -------------------------------------------------------------- lifecycle

    def __enter__(self) -> ApiProxy:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="api-proxy", daemon=True)
        self._thread.start()
        started.wait(30)
        if failure:
            raise failure[0]
        if not self.port:
            raise RuntimeError("the API proxy did not start")
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "proxy", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}
                    ],
                    "users": [{"name": "proxy", "user": {}}],
                    "contexts": [
                        {"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}
                    ],
                    "current-context": "proxy",
                }
            )
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        for rule in self.rules:
            rule.release()
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=20)
        if self._own_dir:
            for child in self.dir.iterdir():
                child.unlink(missing_ok=True)
            self.dir.rmdir()

    async def _start(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self._ssl, limit=0)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=True
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # ---------------------------------------------------------------- forward

    async def _until(self, event: threading.Event) -> None:
        # stop() releases every rule, so this returns on shutdown too.
        await asyncio.to_thread(event.wait)

    async def _handle(self, incoming: web.Request) -> web.StreamResponse:
        raw = await incoming.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = Request(incoming.method, incoming.path, parse_qs(incoming.query_string), body)
        with self._log_lock:
            exchange = Exchange(len(self.log), time.monotonic(), request)
            self.log.append(exchange)
            rule = self._rule_for(request)
            if rule is not None:
                rule.exchanges.append(exchange)
                exchange.rule = rule.name
        if rule is not None and rule.action == "delay":
            rule.engaged.set()
            await asyncio.sleep(rule.seconds)
        if rule is not None and rule.action == "hold_request":
            rule.engaged.set()
            await self._until(rule.released)
        headers = {k: v for k, v in incoming.headers.items() if k.lower() not in HOP_BY_HOP}
        headers.update(self._headers)
        assert self._session is not None
        url = f"{self.upstream}{incoming.rel_url}"
        try:
            upstream = await self._session.request(
                incoming.method, url, data=raw or None, headers=headers
            )
        except aiohttp.ClientError as exc:
            exchange.status = 502
            exchange.answered = time.monotonic()
            return web.Response(status=502, text=f"api proxy: {exc}")
        async with upstream:
            exchange.status = upstream.status
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
            if request.watch:
                response = web.StreamResponse(status=upstream.status, headers=out_headers)
                await response.prepare(incoming)
                try:
                    async for chunk in upstream.content.iter_any():
                        await response.write(chunk)
                except (aiohttp.ClientError, ConnectionResetError, asyncio.CancelledError):
                    pass
                exchange.answered = time.monotonic()
                return response
            content = await upstream.read()
        if request.method in WRITES:
            exchange.answer = _metadata_of(content)
        if rule is not None and rule.action == "hold_response":
            rule.engaged.set()
            await self._until(rule.released)
        exchange.answered = time.monotonic()
        return web.Response(status=exchange.status, body=content, headers=out_headers)


def _metadata_of(content: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(content)
    except ValueError:
        return {}
    if not isinstance(answer, dict):
        return {}
    meta = answer.get("metadata") or {}
    keep = {
        k: meta[k]
        for k in ("name", "uid", "resourceVersion", "labels", "annotations", "deletionTimestamp")
        if k in meta
    }
    return {"kind": answer.get("kind"), "metadata": keep, "spec": answer.get("spec")}


# ------------------------------------------------------------------ matchers


def is_dry_run(request: Request) -> bool:
    return request.dry_run


def deletes(
    namespace: str, name: str, kinds: tuple[str, ...] = ("deployments", "services", "jobs")
) -> Match:
    """A DELETE of the object `name` of one of `kinds` in `namespace`."""

    def match(request: Request) -> bool:
        return request.method == "DELETE" and any(
            request.path.endswith(f"/namespaces/{namespace}/{kind}/{name}") for kind in kinds
        )

    return match


def releases_lease(namespace: str, lease: str) -> Match:
    """A write of the Lease that leaves it without a holder (a release)."""

    def match(request: Request) -> bool:
        if request.method not in {"PUT", "PATCH"} or request.dry_run:
            return False
        if not request.path.endswith(f"/namespaces/{namespace}/leases/{lease}"):
            return False
        spec = (request.body or {}).get("spec") or {}
        return "holderIdentity" in spec and not spec["holderIdentity"]

    return match
