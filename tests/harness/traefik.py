"""Traefik as the Gateway API data plane of the real node (a host process).

``hack/realnode/traefik.sh`` builds Traefik from its Go module (cached outside the
repository, keyed by ``TRAEFIK_VERSION`` of ``hack/realnode/versions.env``). The tests
run it on the host, next to the real node's own processes: its ``kubernetesgateway``
provider watches the local API server (endpoint, a ServiceAccount token and the
cluster CA; no kubeconfig, no in-cluster environment), one entrypoint carries the
Gateway's listener and one serves Traefik's own API (read-only, to see which weights it
applied); both listen on 127.0.0.1 only. Its backends are the Services' EndpointSlices:
pod IPs on the node's bridge, which the host reaches directly.

Nothing may leave the machine: the version check and the anonymous usage report are
off (``--global.checknewversion=false --global.sendanonymoususage=false``), no plugin
or ACME resolver is configured, and :meth:`Traefik.listening` lets a test check that
the process listens on loopback only.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from tests.harness.cluster import Cluster, cache_root, wait_for
from tests.harness.realnode import SCRIPTS, read_versions

# Traefik's Gateway API controller name (pkg/provider/kubernetes/gateway/kubernetes.go).
CONTROLLER_NAME = "traefik.io/gateway-controller"
BUILD_SCRIPT = SCRIPTS / "traefik.sh"
# What the kubernetesgateway provider reads and writes (its informers in
# pkg/provider/kubernetes/gateway/client.go; statuses are written back). Read
# everywhere is needed for the cluster-scoped GatewayClass; the provider itself
# is restricted to the test's namespace by --providers.kubernetesgateway.namespaces.
RBAC_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": [""],
        "resources": ["namespaces", "services", "secrets", "configmaps"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["gateway.networking.k8s.io"],
        "resources": [
            "gatewayclasses",
            "gateways",
            "httproutes",
            "grpcroutes",
            "referencegrants",
            "backendtlspolicies",
        ],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["gateway.networking.k8s.io"],
        "resources": [
            "gatewayclasses/status",
            "gateways/status",
            "httproutes/status",
            "grpcroutes/status",
            "backendtlspolicies/status",
        ],
        "verbs": ["update", "patch"],
    },
]


def version() -> str:
    return read_versions()["TRAEFIK_VERSION"]


def binary_path() -> Path:
    """Where hack/realnode/traefik.sh caches the binary (mirrors its key)."""
    return cache_root() / f"traefik-{version()}" / "traefik"


def build(timeout: float = 3600) -> Path:
    """Build (or find cached) Traefik; returns the binary."""
    proc = subprocess.run(
        [str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed ({proc.returncode}):\n{proc.stderr[-8000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api_server(cluster: Cluster) -> tuple[str, str]:
    """The API server's URL and its CA (PEM) from the cluster's kubeconfig."""
    cfg = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    c = cfg["clusters"][0]["cluster"]
    if "certificate-authority-data" in c:
        ca = base64.b64decode(c["certificate-authority-data"]).decode()
    else:
        ca = Path(c["certificate-authority"]).read_text()
    return c["server"], ca


class Traefik:
    """One Traefik process watching ``namespace`` of ``cluster``."""

    def __init__(
        self, binary: Path, cluster: Cluster, namespace: str, token: str, work_dir: Path
    ) -> None:
        self.binary = binary
        self.cluster = cluster
        self.namespace = namespace
        self.work_dir = work_dir
        self.web_port = free_loopback_port()
        self.api_port = free_loopback_port()
        self.token_file = work_dir / "token"
        self.ca_file = work_dir / "ca.crt"
        self.log_file = work_dir / "traefik.log"
        self.token_file.write_text(token)
        self.token_file.chmod(0o600)
        self.proc: subprocess.Popen[bytes] | None = None

    def args(self, endpoint: str) -> list[str]:
        p = "--providers.kubernetesgateway"
        return [
            str(self.binary),
            # Nothing leaves the machine: no version check, no usage report.
            "--global.checknewversion=false",
            "--global.sendanonymoususage=false",
            f"--entrypoints.web.address=127.0.0.1:{self.web_port}",
            # Named "traefik", so Traefik never adds its default :8080 (all addresses).
            f"--entrypoints.traefik.address=127.0.0.1:{self.api_port}",
            "--api=true",
            "--api.insecure=true",
            "--api.dashboard=false",
            f"{p}=true",
            f"{p}.endpoint={endpoint}",
            f"{p}.token={self.token_file}",
            f"{p}.certauthfilepath={self.ca_file}",
            f"{p}.namespaces={self.namespace}",
            "--providers.providersthrottleduration=200ms",
            "--log.level=INFO",
            "--accesslog=false",
        ]

    def start(self) -> None:
        endpoint, ca = api_server(self.cluster)
        self.ca_file.write_text(ca)
        # A clean environment: no KUBECONFIG, no KUBERNETES_SERVICE_HOST, so the
        # provider uses exactly the endpoint, token and CA given.
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.work_dir)}
        with self.log_file.open("wb") as log:
            self.proc = subprocess.Popen(
                self.args(endpoint),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.work_dir,
                start_new_session=True,
            )
        wait_for(
            lambda: self._api("/api/version") is not None,
            60,
            interval=0.2,
            message=lambda: f"Traefik's API to answer; log:\n{self.log()[-4000:]}",
        )

    def _api(self, path: str) -> Any:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"Traefik exited ({self.exit_code()}); log:\n{self.log()[-4000:]}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.api_port}{path}", timeout=5
            ) as resp:
                return json.loads(resp.read())
        except OSError:
            return None

    def services(self) -> list[dict[str, Any]]:
        """Traefik's HTTP services as its API reports them (what it applied)."""
        return self._api("/api/http/services") or []

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def listening(self) -> list[str]:
        """Local addresses of the process's listening TCP sockets (``ss -ltnp``)."""
        assert self.proc is not None
        out = subprocess.run(
            ["ss", "-Hltnp"], capture_output=True, text=True, check=True, timeout=10
        ).stdout
        return [line.split()[3] for line in out.splitlines() if f"pid={self.proc.pid}," in line]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s; returns once the process is gone."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def gone(self) -> bool:
        """The process and its session are gone and its ports are free."""
        if self.proc is None:
            return True
        if self.proc.poll() is None:
            return False
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if os.getsid(int(p.name)) == self.proc.pid:
                        return False
                except OSError:
                    continue
        for port in (self.web_port, self.api_port):
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return False
        return True


def wait_gone(traefik: Traefik, timeout: float = 30) -> None:
    wait_for(
        traefik.gone,
        timeout,
        interval=0.2,
        message=lambda: f"Traefik (pid {traefik.proc and traefik.proc.pid}) to be gone",
    )
