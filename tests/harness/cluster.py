"""A real Kubernetes API for tests, and helpers to wait on it.

Two sources of a cluster:

* an existing one, when ``CANARY_TEST_KUBECONFIG`` names a kubeconfig (kind on
  a laptop, say): :func:`external_cluster`;
* otherwise a local control plane (etcd, kube-apiserver,
  kube-controller-manager, kube-scheduler, kwok) built by
  ``hack/cluster/build.sh`` and started by ``hack/cluster/up.sh`` into a fresh
  directory: :class:`LocalCluster`.

Tests synchronise with :func:`wait_for` / :func:`wait_for_async` (poll a
condition with a deadline), never with bare sleeps.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPTS = REPO_ROOT / "hack" / "cluster"
EXTERNAL_KUBECONFIG_ENV = "CANARY_TEST_KUBECONFIG"
# The processes of a local cluster (what up.sh starts).
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
GATEWAY_API_PROBE_CRD = "httproutes.gateway.networking.k8s.io"


# --------------------------------------------------------------------------- kubectl


class KubectlError(subprocess.CalledProcessError):
    """A kubectl command failed; the message carries its stderr."""

    def __str__(self) -> str:
        cmd = " ".join(str(c) for c in self.cmd)
        err = (self.stderr or "").strip() or (self.output or "").strip()
        return f"`{cmd}` exited with {self.returncode}: {err}"


@dataclass(frozen=True)
class Cluster:
    """A reachable Kubernetes API, and the kubectl to talk to it."""

    kubeconfig: Path
    #: Directory of the locally built binaries; None for an external cluster.
    bin_dir: Path | None
    kubectl_path: str

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl --kubeconfig=<this cluster> *args`` and capture its output.

        Raises :class:`KubectlError` on a non-zero exit when ``check`` is true,
        and ``subprocess.TimeoutExpired`` after ``timeout`` seconds.
        """
        cmd = [self.kubectl_path, f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def get_json(self, *args: str, timeout: float = 60) -> Any:
        """``kubectl get *args -o json``, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json", timeout=timeout).stdout)

    def apply(self, manifest: str, namespace: str | None = None) -> str:
        """``kubectl apply -f -`` of a YAML/JSON manifest; returns kubectl's output."""
        ns = ["--namespace", namespace] if namespace else []
        return self.kubectl("apply", *ns, "-f", "-", input=manifest).stdout

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that should talk to this cluster
        (``KUBECONFIG`` set; ``PATH`` starting with the local binaries)."""
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        if self.bin_dir is not None:
            env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env


# --------------------------------------------------------------------------- waiting


class WaitTimeout(AssertionError):
    """The condition of :func:`wait_for` did not hold before its deadline."""


def _describe(message: str | Callable[[], str]) -> str:
    if callable(message):
        try:
            return message()
        except Exception as exc:
            return f"<message callback failed: {exc!r}>"
    return message


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.2,
    message: str | Callable[[], str] = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``predicate`` until it returns a truthy value, and return that value.

    ``timeout`` is in seconds (monotonic clock). Exceptions of the types in
    ``ignore`` count as "not yet"; others propagate at once. On timeout raises
    :class:`WaitTimeout` naming ``message`` (a string or a callable giving one,
    evaluated only then, e.g. to dump the object's current state) and the last
    result or exception seen.
    """
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    last: object = None
    while True:
        try:
            result = predicate()
        except ignore as exc:
            last = exc
        else:
            if result:
                return result
            last = result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            waited = time.monotonic() - started
            raise WaitTimeout(
                f"timed out after {waited:.1f}s waiting for {_describe(message)} "
                f"(last result: {last!r})"
            )
        time.sleep(min(interval, remaining))


async def wait_for_async(
    predicate: Callable[[], T] | Callable[[], Awaitable[T]],
    timeout: float,  # noqa: ASYNC109 - same signature as wait_for
    interval: float = 0.2,
    message: str | Callable[[], str] = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """:func:`wait_for` for async tests: ``predicate`` may be a plain function or
    a coroutine function; the event loop keeps running between polls."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    started = loop.time()
    last: object = None
    while True:
        try:
            result: Any = predicate()
            if inspect.isawaitable(result):
                result = await result
        except ignore as exc:
            last = exc
        else:
            if result:
                return result  # type: ignore[no-any-return]
            last = result
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise WaitTimeout(
                f"timed out after {loop.time() - started:.1f}s waiting for "
                f"{_describe(message)} (last result: {last!r})"
            )
        await asyncio.sleep(min(interval, remaining))


# --------------------------------------------------------------------------- names


_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def unique_namespace_name(test_name: str, prefix: str = "t") -> str:
    """A fresh DNS-1123 label (<= 63 chars) like ``t-<short test name>-<random>``."""
    suffix = secrets.token_hex(3)
    slug = _NOT_DNS.sub("-", test_name.lower().removeprefix("test_").replace("_", "-"))
    slug = re.sub(r"-{2,}", "-", slug).strip("-") or "x"
    room = 63 - len(prefix) - len(suffix) - 2
    slug = slug[: min(room, 40)].rstrip("-") or "x"
    return f"{prefix}-{slug}-{suffix}"


# --------------------------------------------------------------------------- local cluster


def read_env_file(*files: Path) -> dict[str, str]:
    """KEY=VALUE lines of shell env files (comments and blanks skipped; later files win)."""
    versions: dict[str, str] = {}
    for f in files:
        for line in f.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                versions[key.strip()] = value.strip().strip("'\"")
    return versions


def read_versions() -> dict[str, str]:
    """The pinned versions of ``hack/cluster/versions.env``."""
    return read_env_file(CLUSTER_SCRIPTS / "versions.env")


def cache_root() -> Path:
    """Where the hack/ build scripts cache what they build (their `cache_root`)."""
    return Path(
        os.environ.get("CANARY_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "canary-operator"
    )


def cache_dir() -> Path:
    """Where build.sh puts this version set (mirrors the key in build.sh)."""
    v = read_versions()
    key = (
        f"k8s-{v['KUBERNETES_VERSION']}_etcd-{v['ETCD_VERSION']}"
        f"_kwok-{v['KWOK_VERSION']}_gw-{v['GATEWAY_API_VERSION']}"
    )
    return cache_root() / key


def cached_bin_dir() -> Path | None:
    """The bin dir if every binary is already built, else None (never builds)."""
    bin_dir = cache_dir() / "bin"
    names = (*COMPONENTS, "kubectl")
    return bin_dir if all(os.access(bin_dir / n, os.X_OK) for n in names) else None


def build_binaries(log_path: Path | None = None) -> Path:
    """Run ``hack/cluster/build.sh`` (instant when cached) and return its bin dir.

    Progress goes to ``log_path`` (or is discarded); a failure raises
    RuntimeError with the end of the log.
    """
    with tempfile.TemporaryFile("w+") if log_path is None else open(log_path, "w+") as log:
        proc = subprocess.run(
            [str(CLUSTER_SCRIPTS / "build.sh")],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            log.seek(0)
            tail = "".join(log.readlines()[-40:])
            raise RuntimeError(f"hack/cluster/build.sh failed ({proc.returncode}):\n{tail}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError("hack/cluster/build.sh printed no bin directory")
    return Path(lines[-1])


class LocalCluster:
    """A control plane started by ``up.sh`` in ``state_dir``, stopped by ``down.sh``.

    :meth:`stop` is idempotent and safe to call from ``atexit``. The pytest
    process is registered as the cluster's owner: should it die without
    tearing down (SIGKILL), a watchdog started by up.sh runs down.sh.
    """

    def __init__(self, state_dir: Path, bin_dir: Path, nodes: int = 3) -> None:
        self.state_dir = state_dir
        self.bin_dir = bin_dir
        self.nodes = nodes
        self.startup_seconds: float | None = None
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False

    def start(self, timeout: float = 300) -> Cluster:
        env = dict(
            os.environ,
            CLUSTER_BIN_DIR=str(self.bin_dir),
            CLUSTER_NODES=str(self.nodes),
            CLUSTER_OWNER_PID=str(os.getpid()),
        )
        with self._lock:
            if self._stopped:
                raise RuntimeError("cluster already stopped")
            self._started = True
        t0 = time.monotonic()
        proc = subprocess.run(
            [str(CLUSTER_SCRIPTS / "up.sh"), str(self.state_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"hack/cluster/up.sh {self.state_dir} failed ({proc.returncode}):\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        self.startup_seconds = time.monotonic() - t0
        return Cluster(
            kubeconfig=self.state_dir / "kubeconfig",
            bin_dir=self.bin_dir,
            kubectl_path=str(self.bin_dir / "kubectl"),
        )

    def stop(self) -> None:
        with self._lock:
            if self._stopped or not self._started:
                self._stopped = True
                return
            self._stopped = True
        subprocess.run(
            [str(CLUSTER_SCRIPTS / "down.sh"), str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


# --------------------------------------------------------------------------- external cluster


def external_cluster(kubeconfig: Path) -> Cluster:
    """A Cluster for an existing kubeconfig; checks that the API answers."""
    if not kubeconfig.is_file():
        raise RuntimeError(f"{EXTERNAL_KUBECONFIG_ENV}={kubeconfig}: no such file")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        local = cached_bin_dir()
        if local is None:
            raise RuntimeError("kubectl is not on PATH (and no locally built one is cached)")
        kubectl = str(local / "kubectl")
    cluster = Cluster(kubeconfig=kubeconfig.resolve(), bin_dir=None, kubectl_path=kubectl)
    cluster.kubectl("get", "--raw", "/readyz", timeout=30)
    return cluster


def gateway_api_crd_dir() -> Path:
    """The Gateway API standard CRDs of the pinned version: the build cache's
    copy, else the Go module's (``go mod download``)."""
    cached = cache_dir() / "gateway-api-crds"
    if any(cached.glob("*.yaml")):
        return cached
    version = read_versions()["GATEWAY_API_VERSION"]
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(
            "Gateway API CRDs are not installed in the cluster and cannot be found "
            "locally (no build cache, no Go). Install them: kubectl apply --server-side -f "
            "https://github.com/kubernetes-sigs/gateway-api/releases/download/"
            f"{version}/standard-install.yaml"
        )
    out = subprocess.run(
        [go, "mod", "download", "-json", f"sigs.k8s.io/gateway-api@{version}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env=dict(os.environ, GOFLAGS="-mod=mod", GOTOOLCHAIN="local"),
    )
    return Path(json.loads(out.stdout)["Dir"]) / "config" / "crd" / "standard"


def ensure_gateway_api_crds(cluster: Cluster, timeout: float = 60) -> bool:
    """Install the Gateway API CRDs unless present; wait until Established.

    Returns True if it installed them.
    """
    if cluster.kubectl("get", "crd", GATEWAY_API_PROBE_CRD, check=False).returncode == 0:
        return False
    crd_dir = gateway_api_crd_dir()
    files = sorted(p for p in crd_dir.glob("*.yaml") if p.name != "kustomization.yaml")
    args: list[str] = []
    for f in files:
        args += ["-f", str(f)]
    cluster.kubectl("apply", "--server-side", "--field-manager=canary-tests", *args)
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        f"--timeout={int(timeout)}s",
        *args,
        timeout=timeout + 10,
    )
    return True


ISTIO_PROBE_CRD = "virtualservices.networking.istio.io"
ISTIO_CRD_FILE = "customresourcedefinitions.gen.yaml"


def istio_crd_file() -> Path:
    """Istio's CRDs of the pinned istio.io/api version, cached outside the repo
    (``~/.cache/canary-operator/istio-api-<version>/``), fetched once with
    ``go mod download`` from the module (its ``kubernetes/`` folder)."""
    version = read_versions()["ISTIO_API_VERSION"]
    cached = cache_dir().parent / f"istio-api-{version}" / ISTIO_CRD_FILE
    if cached.is_file() and cached.stat().st_size > 0:
        return cached
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(
            "Istio's CRDs are not installed in the cluster and cannot be fetched (no Go). "
            "Install them (istioctl install, or the istio-base chart) and run again"
        )
    out = subprocess.run(
        [go, "mod", "download", "-json", f"istio.io/api@{version}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env=dict(os.environ, GOFLAGS="-mod=mod", GOTOOLCHAIN="local"),
    )
    source = Path(json.loads(out.stdout)["Dir"]) / "kubernetes" / ISTIO_CRD_FILE
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".partial-{os.getpid()}")
    partial.write_bytes(source.read_bytes())
    partial.replace(cached)
    return cached


def ensure_istio_crds(cluster: Cluster, timeout: float = 60) -> bool:
    """Install Istio's networking.istio.io CRDs unless present; wait until Established.

    Only that group (VirtualService, DestinationRule, Gateway, ...): the router needs no
    other. Returns True if it installed them."""
    import yaml

    if cluster.kubectl("get", "crd", ISTIO_PROBE_CRD, check=False).returncode == 0:
        return False
    docs = [
        d
        for d in yaml.safe_load_all(istio_crd_file().read_text())
        if d
        and d.get("kind") == "CustomResourceDefinition"
        and d["spec"]["group"] == "networking.istio.io"
    ]
    names = [f"crd/{d['metadata']['name']}" for d in docs]
    cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=canary-tests",
        "-f",
        "-",
        input=yaml.safe_dump_all(docs),
        timeout=timeout + 30,
    )
    wait_for(
        lambda: (
            cluster.kubectl(
                "wait",
                "--for=condition=Established",
                "--timeout=10s",
                *names,
                check=False,
                timeout=20,
            ).returncode
            == 0
        ),
        timeout,
        interval=0.5,
        message="Istio's CRDs to be Established",
    )
    return True


# --------------------------------------------------------------------------- processes


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state = stat.rpartition(")")[2].split()[0]
    if state in ("Z", "X"):  # exited, not yet reaped: not running
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def pid_running(pid: int) -> bool:
    """True if ``pid`` is a live (non-zombie) process."""
    return _cmdline(pid) is not None


def processes_referencing(path: Path, pids: Iterable[int] | None = None) -> list[int]:
    """Live pids whose command line mentions ``path/`` (a /proc scan, no psutil).

    Scans ``pids`` if given, else every process; skips the caller.
    """
    needle = f"{os.path.abspath(path)}/"
    if pids is None:
        pids = (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    found = []
    for pid in pids:
        if pid == os.getpid():
            continue
        args = _cmdline(pid)
        if args and any(needle in a for a in args):
            found.append(pid)
    return found


# --------------------------------------------------------------------------- pod logs

KWOK_CLUSTER_LOGS_CRD = "clusterlogs.kwok.x-k8s.io"


def simulate_pod_logs(cluster: Cluster, namespace: str, lines: list[str], directory: Path) -> bool:
    """Make ``kubectl logs`` of every pod in ``namespace`` print ``lines``.

    On the local cluster kwok plays the kubelets: a kwok ``ClusterLogs`` object
    (hack/cluster/up.sh installs the CRD and points the nodes at kwok's server) names a
    file in the CRI log format that kwok serves as the pods' logs. Returns False on a
    cluster without kwok's log simulation (kind: real containers write real logs, so
    a test makes its pods print the same lines).
    """
    if cluster.kubectl("get", "crd", KWOK_CLUSTER_LOGS_CRD, check=False).returncode != 0:
        return False
    directory.mkdir(parents=True, exist_ok=True)
    log_file = directory / f"{namespace}.log"
    # CRI format: RFC 3339 time, stream, F(ull line) or P(artial), the text.
    log_file.write_text(
        "".join(
            f"2026-01-01T00:00:{n % 60:02d}.000000000Z stdout F {line}\n"
            for n, line in enumerate(lines)
        )
    )
    manifest = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "ClusterLogs",
        "metadata": {"name": f"logs-{namespace}"[:253]},
        "spec": {
            "selector": {"matchNamespaces": [namespace]},
            "logs": [{"logsFile": str(log_file)}],
        },
    }
    cluster.apply(json.dumps(manifest))
    return True


def delete_simulated_pod_logs(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl(
        "delete",
        "clusterlogs.kwok.x-k8s.io",
        f"logs-{namespace}"[:253],
        "--ignore-not-found",
        check=False,
    )
