"""A small, standard-library-only client for the plugin's read-only fast path.

`kubectl canary list` makes one request; importing the kubernetes client, aiohttp and
pydantic costs seconds on a loaded machine, an order of magnitude more than the
request (bench/bench_plugin_list.py). This module reads the kubeconfig as kubectl
does (KUBECONFIG files merged first-wins, --context, the context's namespace; token,
token file, client certificates, CA, insecure-skip-tls-verify, exec credential
plugins) and GETs one path with http.client. Anything it does not handle (a legacy
auth-provider, a proxy) raises Unsupported, and the caller uses the full client.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class Unsupported(Exception):
    """This configuration needs the full client."""


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Connection:
    server: str
    namespace: str
    context: ssl.SSLContext | None
    headers: dict[str, str]

    def get(self, resource_path: str, query: dict[str, str] | None = None) -> Any:
        url = urlsplit(self.server)
        target = url.path.rstrip("/") + resource_path + (f"?{urlencode(query)}" if query else "")
        if url.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                url.hostname or "", url.port or 443, context=self.context, timeout=30
            )
        else:
            conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=30)
        try:
            conn.request("GET", target, headers={"Accept": "application/json", **self.headers})
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status >= 400:
            try:
                message = json.loads(data).get("message") or response.reason
            except ValueError:
                message = data.decode(errors="replace")[:200] or response.reason
            raise ApiError(response.status, str(message))
        return json.loads(data)


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml  # PyYAML's C loader when present; tens of milliseconds

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    doc = yaml.load(path.read_text(), Loader=loader)
    return doc if isinstance(doc, dict) else {}


def _merged(files: list[Path]) -> dict[str, Any]:
    """KUBECONFIG semantics: the first file that sets a value wins."""
    merged: dict[str, Any] = {"clusters": {}, "users": {}, "contexts": {}, "current-context": None}
    for file in files:
        if not file.exists():
            continue
        doc = _load_yaml(file)
        base = file.parent
        for kind, inner in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            for entry in doc.get(kind) or []:
                merged[kind].setdefault(entry.get("name"), (entry.get(inner) or {}, base))
        if merged["current-context"] is None and doc.get("current-context"):
            merged["current-context"] = doc["current-context"]
    return merged


def _file(value: str, base: Path) -> str:
    path = Path(value)
    return str(path if path.is_absolute() else base / path)


def connect(kubeconfig: str | None, context: str | None, namespace: str | None) -> Connection:
    explicit = kubeconfig or context or os.environ.get("KUBECONFIG")
    if not explicit and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return _in_cluster(namespace)
    if kubeconfig:
        files = [Path(kubeconfig)]
    elif os.environ.get("KUBECONFIG"):
        files = [Path(p) for p in os.environ["KUBECONFIG"].split(os.pathsep) if p]
    else:
        files = [Path.home() / ".kube" / "config"]
    cfg = _merged(files)
    name = context or cfg["current-context"]
    if not name or name not in cfg["contexts"]:
        raise Unsupported(f"context {name!r} not found")
    ctx, _ = cfg["contexts"][name]
    if ctx.get("cluster") not in cfg["clusters"]:
        raise Unsupported("cluster not found")
    cluster, cbase = cfg["clusters"][ctx["cluster"]]
    user, ubase = cfg["users"].get(ctx.get("user"), ({}, Path(".")))
    if cluster.get("proxy-url") or user.get("auth-provider") or user.get("username"):
        raise Unsupported("proxy, auth-provider or basic auth")
    server = str(cluster.get("server") or "")
    if not server:
        raise Unsupported("no server")
    headers: dict[str, str] = {}
    ssl_context = None
    if server.startswith("https"):
        # Like kubectl, a cluster's own CA replaces the system roots (and skipping the
        # system bundle saves most of the connection's setup time).
        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        has_ca = cluster.get("certificate-authority-data") or cluster.get("certificate-authority")
        if not has_ca and not cluster.get("insecure-skip-tls-verify"):
            ssl_context.load_default_certs()
        if cluster.get("insecure-skip-tls-verify"):
            ssl_context.check_hostname = False
            ssl_context.verify_mode = ssl.CERT_NONE
        elif cluster.get("certificate-authority-data"):
            ssl_context.load_verify_locations(
                cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
            )
        elif cluster.get("certificate-authority"):
            ssl_context.load_verify_locations(cafile=_file(cluster["certificate-authority"], cbase))
        if cluster.get("tls-server-name"):
            raise Unsupported("tls-server-name")
    cert, key = _client_cert(user, ubase)
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(_file(user["tokenFile"], ubase)).read_text().strip()
    if user.get("exec"):
        token, cert, key = _exec(user["exec"], cert, key)
    if cert and key:
        if ssl_context is None:
            raise Unsupported("client certificate over http")
        _load_chain(ssl_context, cert, key)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    ns = namespace or ctx.get("namespace") or "default"
    return Connection(server, ns, ssl_context, headers)


def _client_cert(user: dict[str, Any], base: Path) -> tuple[bytes | None, bytes | None]:
    cert = key = None
    if user.get("client-certificate-data"):
        cert = base64.b64decode(user["client-certificate-data"])
    elif user.get("client-certificate"):
        cert = Path(_file(user["client-certificate"], base)).read_bytes()
    if user.get("client-key-data"):
        key = base64.b64decode(user["client-key-data"])
    elif user.get("client-key"):
        key = Path(_file(user["client-key"], base)).read_bytes()
    return cert, key


def _load_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """ssl wants files: write them to a private directory, load, and delete at once."""
    with tempfile.TemporaryDirectory(prefix="kubectl-canary-") as tmp:
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        for file, data in ((cert_file, cert), (key_file, key)):
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        context.load_cert_chain(str(cert_file), str(key_file))


def _exec(
    spec: dict[str, Any], cert: bytes | None, key: bytes | None
) -> tuple[str | None, bytes | None, bytes | None]:
    """client.authentication.k8s.io ExecCredential: run the command, read its status."""
    env = {**os.environ, **{e["name"]: e["value"] for e in spec.get("env") or []}}
    try:
        out = subprocess.run(
            [spec["command"], *(spec.get("args") or [])],
            env=env,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        status = json.loads(out).get("status") or {}
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        raise Unsupported(f"exec credential plugin: {exc}") from exc
    token = status.get("token")
    if status.get("clientCertificateData") and status.get("clientKeyData"):
        cert = status["clientCertificateData"].encode()
        key = status["clientKeyData"].encode()
    return token, cert, key


def _in_cluster(namespace: str | None) -> Connection:
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT")
    try:
        token = (SA_DIR / "token").read_text().strip()
        context = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
        default_ns = (SA_DIR / "namespace").read_text().strip() or "default"
    except OSError as exc:
        raise Unsupported(f"in-cluster configuration: {exc}") from exc
    server = f"https://{host}:{port or 443}" if ":" not in host else f"https://[{host}]:{port}"
    return Connection(
        server, namespace or default_ns, context, {"Authorization": f"Bearer {token}"}
    )
