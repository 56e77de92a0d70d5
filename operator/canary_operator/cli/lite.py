"""A small, standard-library-only client for the plugin's read-only fast path.

`kubectl canary list` makes one request; importing the kubernetes client, aiohttp and
pydantic costs seconds on a loaded machine, an order of magnitude more than the
request (bench/bench_plugin_list.py). This module reads the kubeconfig as kubectl
does (KUBECONFIG files merged first-wins, --context, the context's namespace; token,
token file, client certificates, CA, insecure-skip-tls-verify, exec credential
plugins) and GETs one path over one TLS socket. Anything it does not handle (a legacy
auth-provider, a proxy, YAML beyond the block style kubectl writes) raises
Unsupported, and the caller uses the full client. Imports are kept to the few
modules it needs (no http.client, dataclasses, pathlib or subprocess unless used):
on a loaded machine each import costs tens of milliseconds.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class Unsupported(Exception):
    """This configuration needs the full client."""


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Connection:
    def __init__(
        self,
        server: str,
        namespace: str,
        context: ssl.SSLContext | None,
        headers: dict[str, str],
    ) -> None:
        self.server = server
        self.namespace = namespace
        self.context = context
        self.headers = headers

    def get(self, resource_path: str) -> object:
        """GET over HTTP/1.0 (no chunked encoding: the body runs to the close)."""
        scheme, _, rest = self.server.partition("://")
        hostport, _, base = rest.partition("/")
        host, port = _split_host(hostport, 443 if scheme == "https" else 80)
        target = ("/" + base).rstrip("/") + resource_path
        lines = [f"GET {target} HTTP/1.0", f"Host: {hostport}", "Accept: application/json"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        with socket.create_connection((host, port), timeout=30) as raw:
            sock = (
                self.context.wrap_socket(raw, server_hostname=host)
                if scheme == "https" and self.context is not None
                else raw
            )
            sock.sendall(request)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        data = b"".join(chunks)
        head, _, body = data.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
        status = int(parts[1])
        if status >= 400:
            try:
                message = json.loads(body).get("message") or status_line
            except ValueError:
                message = body.decode(errors="replace")[:200] or status_line
            raise ApiError(status, str(message))
        return json.loads(body)


def _split_host(hostport: str, default: int) -> tuple[str, int]:
    if hostport.startswith("["):  # [::1]:6443
        host, _, port = hostport[1:].partition("]")
        return host, int(port.lstrip(":") or default)
    host, _, port = hostport.partition(":")
    return host, int(port or default)


# ----------------------------------------------------------------- kubeconfig


def _scalar(text: str) -> object:
    text = text.strip()
    if not text or text in ("~", "null"):
        return None
    if text[0] in "\"'":
        if len(text) < 2 or text[-1] != text[0]:
            raise Unsupported("multi-line quoted YAML string")
        if text[0] == '"':
            return json.loads(text)
        return text[1:-1].replace("''", "'")
    if text in ("{}", "[]"):  # kubectl writes `preferences: {}`
        return {} if text == "{}" else []
    if text[0] in "{[&*!|>%@`":
        raise Unsupported("YAML beyond the block style")
    if text in ("true", "True"):
        return True
    if text in ("false", "False"):
        return False
    if " #" in text:
        text = text.split(" #", 1)[0].rstrip()
    return text


def parse_kubeconfig(text: str) -> dict[str, object]:
    """The block-style YAML subset kubectl writes: nested mappings, lists of
    mappings, plain and quoted scalars; or JSON (which is YAML too). Anything else
    raises Unsupported."""
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise Unsupported("YAML flow style") from exc
        if not isinstance(doc, dict):
            raise Unsupported("not a mapping")
        return doc
    root: dict[str, object] = {}
    # (indent, container, key awaiting a nested value or None)
    stack: list[tuple[int, object]] = [(-1, root)]
    pending: tuple[int, dict[str, object], str] | None = None
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#") or raw.strip() in ("---", "..."):
            continue
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise Unsupported("tab indentation")
        indent = len(raw) - len(raw.lstrip(" "))
        line = raw.strip()
        if pending is not None:
            p_indent, p_map, p_key = pending
            pending = None
            if indent > p_indent or (indent == p_indent and line.startswith("- ")):
                new: object = [] if line.startswith("-") else {}
                p_map[p_key] = new
                stack.append((indent, new))
            else:
                p_map[p_key] = None
        item_line = line.startswith("- ") or line == "-"
        while stack and (
            indent < stack[-1][0]
            or (indent == stack[-1][0] and isinstance(stack[-1][1], list) and not item_line)
        ):
            stack.pop()
        if not stack:
            raise Unsupported("bad indentation")
        container = stack[-1][1]
        if item_line:
            if not isinstance(container, list):
                raise Unsupported("list item outside a list")
            item_text = line[1:].strip()
            if not item_text:
                raise Unsupported("nested list item")
            if ":" in item_text and not item_text.startswith(("'", '"')):
                item: dict[str, object] = {}
                container.append(item)
                stack.append((indent + 2, item))
                pending = _mapping_line(item_text, item, indent + 2)
            else:
                container.append(_scalar(item_text))
            continue
        if not isinstance(container, dict):
            raise Unsupported("mapping inside a list without a dash")
        pending = _mapping_line(line, container, indent)
    if pending is not None:
        pending[1][pending[2]] = None
    return root


def _mapping_line(
    line: str, container: dict[str, object], indent: int
) -> tuple[int, dict[str, object], str] | None:
    key, sep, value = line.partition(":")
    if not sep or (value and not value.startswith(" ")):
        raise Unsupported(f"not a mapping line: {line[:40]!r}")
    key = key.strip()
    if key[:1] in "\"'":
        key = str(_scalar(key))
    if value.strip() in ("|", ">", "|-", ">-"):
        raise Unsupported("block scalar")
    if value.strip():
        container[key] = _scalar(value)
        return None
    return indent, container, key


def _read(file: str) -> str | None:
    try:
        with open(file, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _merged(files: list[str]) -> dict[str, dict[str, tuple[dict[str, object], str]]]:
    """KUBECONFIG semantics: the first file that sets a value wins."""
    merged: dict[str, dict[str, tuple[dict[str, object], str]]] = {
        "clusters": {},
        "users": {},
        "contexts": {},
    }
    current = ""
    for file in files:
        text = _read(file)
        if text is None:
            continue
        doc = parse_kubeconfig(text)
        base = os.path.dirname(os.path.abspath(file))
        for kind, inner in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            for entry in doc.get(kind) or []:  # type: ignore[attr-defined]
                if isinstance(entry, dict):
                    body = entry.get(inner) or {}
                    merged[kind].setdefault(str(entry.get("name")), (body, base))
        if not current and doc.get("current-context"):
            current = str(doc["current-context"])
    merged["current"] = {"": ({"name": current}, "")}
    return merged


def _file(value: object, base: str) -> str:
    return os.path.join(base, str(value))  # join keeps an absolute value as is


def connect(kubeconfig: str | None, context: str | None, namespace: str | None) -> Connection:
    explicit = kubeconfig or context or os.environ.get("KUBECONFIG")
    if not explicit and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return _in_cluster(namespace)
    if kubeconfig:
        files = [kubeconfig]
    elif os.environ.get("KUBECONFIG"):
        files = [p for p in os.environ["KUBECONFIG"].split(os.pathsep) if p]
    else:
        files = [os.path.join(os.path.expanduser("~"), ".kube", "config")]
    cfg = _merged(files)
    name = context or str(cfg["current"][""][0]["name"])
    if not name or name not in cfg["contexts"]:
        raise Unsupported(f"context {name!r} not found")
    ctx, _ = cfg["contexts"][name]
    cluster_name = str(ctx.get("cluster"))
    if cluster_name not in cfg["clusters"]:
        raise Unsupported("cluster not found")
    cluster, cbase = cfg["clusters"][cluster_name]
    user, ubase = cfg["users"].get(str(ctx.get("user")), ({}, "."))
    if (
        cluster.get("proxy-url")
        or cluster.get("tls-server-name")
        or user.get("auth-provider")
        or user.get("username")
        or user.get("as")
    ):
        raise Unsupported("proxy, tls-server-name, auth-provider, basic auth or impersonation")
    server = str(cluster.get("server") or "")
    if not server.startswith(("https://", "http://")):
        raise Unsupported("no server")
    ssl_context = None
    if server.startswith("https://"):
        # Like kubectl, a cluster's own CA replaces the system roots (and skipping the
        # system bundle saves most of the connection's setup time).
        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if cluster.get("insecure-skip-tls-verify") is True:
            ssl_context.check_hostname = False
            ssl_context.verify_mode = ssl.CERT_NONE
        elif cluster.get("certificate-authority-data"):
            ca = base64.b64decode(str(cluster["certificate-authority-data"])).decode()
            ssl_context.load_verify_locations(cadata=ca)
        elif cluster.get("certificate-authority"):
            ssl_context.load_verify_locations(cafile=_file(cluster["certificate-authority"], cbase))
        else:
            ssl_context.load_default_certs()
    cert, key = _client_cert(user, ubase)
    token = user.get("token")
    if not token and user.get("tokenFile"):
        with open(_file(user["tokenFile"], ubase), encoding="utf-8") as handle:
            token = handle.read().strip()
    if user.get("exec"):
        token, cert, key = _exec(user["exec"], cert, key)
    if cert and key:
        if ssl_context is None:
            raise Unsupported("client certificate over http")
        _load_chain(ssl_context, cert, key)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ns = namespace or str(ctx.get("namespace") or "default")
    return Connection(server, ns, ssl_context, headers)


def _client_cert(user: dict[str, object], base: str) -> tuple[bytes | None, bytes | None]:
    def load(data_key: str, file_key: str) -> bytes | None:
        if user.get(data_key):
            return base64.b64decode(str(user[data_key]))
        if user.get(file_key):
            with open(_file(user[file_key], base), "rb") as handle:
                return handle.read()
        return None

    return load("client-certificate-data", "client-certificate"), load(
        "client-key-data", "client-key"
    )


def _load_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """ssl reads the pair from files: anonymous in-memory files where the system has
    them (the key never touches a disk), else a private temporary directory."""
    if hasattr(os, "memfd_create"):
        fds = [os.memfd_create("kubectl-canary-cert"), os.memfd_create("kubectl-canary-key")]
        try:
            for fd, data in zip(fds, (cert, key), strict=True):
                os.write(fd, data)
            context.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
            return
        except OSError:
            pass  # no /proc: fall through
        finally:
            for fd in fds:
                os.close(fd)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kubectl-canary-") as tmp:
        files = [os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")]
        for file, data in zip(files, (cert, key), strict=True):
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        context.load_cert_chain(files[0], files[1])


def _exec(
    spec: object, cert: bytes | None, key: bytes | None
) -> tuple[str | None, bytes | None, bytes | None]:
    """client.authentication.k8s.io ExecCredential: run the command, read its status."""
    import subprocess

    if not isinstance(spec, dict) or not spec.get("command"):
        raise Unsupported("exec without a command")
    env = dict(os.environ)
    for entry in spec.get("env") or []:
        env[str(entry["name"])] = str(entry["value"])
    try:
        out = subprocess.run(
            [str(spec["command"]), *(str(a) for a in spec.get("args") or [])],
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
        cert = str(status["clientCertificateData"]).encode()
        key = str(status["clientKeyData"]).encode()
    return token, cert, key


def _in_cluster(namespace: str | None) -> Connection:
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT")
    try:
        with open(os.path.join(SA_DIR, "token"), encoding="utf-8") as handle:
            token = handle.read().strip()
        context = ssl.create_default_context(cafile=os.path.join(SA_DIR, "ca.crt"))
        with open(os.path.join(SA_DIR, "namespace"), encoding="utf-8") as handle:
            default_ns = handle.read().strip() or "default"
    except OSError as exc:
        raise Unsupported(f"in-cluster configuration: {exc}") from exc
    hostport = f"[{host}]" if ":" in host else host
    server = f"https://{hostport}:{port or 443}"
    headers = {"Authorization": f"Bearer {token}"}
    return Connection(server, namespace or default_ns, context, headers)
