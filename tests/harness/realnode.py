"""A real node (containerd, runc, kubelet, kube-proxy, CoreDNS) next to the local control plane.

``hack/realnode/up.sh`` adds it to a cluster started by ``hack/cluster/up.sh``;
``hack/realnode/down.sh`` (also run by the cluster's down.sh) removes it and every
host change it made. This module wraps both for the tests, checks the traffic guards
before any test traffic, measures traffic through a Service by real requests, and
lists what a stopped node left behind.

The node is tainted ``realnode=true:NoSchedule``: :data:`POD_PLACEMENT` is what a
pod template needs to run there (the kwok nodes keep every other pod).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.cluster import cache_root, read_env_file

REPO = Path(__file__).resolve().parent.parent.parent
SCRIPTS = REPO / "hack" / "realnode"
NODE_NAME = "realnode-0"
BRIDGE = "rn-cni0"
POD_CIDR = "198.51.100.0/24"
NODE_IP = "198.51.100.1"
SERVICE_CIDR = "10.96.0.0/16"
GUARD_TABLE = "canary_realnode_guard"
GUARD_RULES = (
    "pod-to-uplink",
    "service-unresolved",
    "pod-ipv6",
    "pod-source-off-bridge",
    "pod-or-service-off-bridge",
)
OWNER_FILE = Path("/run/canary-realnode/owner")
CGROUP_NAME = "kubepods"
# What a pod spec needs to run on the real node (and only there).
POD_PLACEMENT: dict[str, Any] = {
    "nodeSelector": {"realnode": "true"},
    "tolerations": [{"key": "realnode", "operator": "Exists", "effect": "NoSchedule"}],
}
DEMO_IMAGE = "registry.local/canary-demo"
RUNNER_IMAGE = "registry.local/busybox:local"


def read_versions() -> dict[str, str]:
    return read_env_file(REPO / "hack" / "cluster" / "versions.env", SCRIPTS / "versions.env")


def cache_dir() -> Path:
    """Where hack/realnode/build.sh puts this version set (mirrors its key)."""
    v = read_versions()
    key = (
        f"realnode-k8s-{v['KUBERNETES_VERSION']}_containerd-{v['CONTAINERD_VERSION']}"
        f"_runc-{v['RUNC_VERSION']}_cni-{v['CNI_PLUGINS_VERSION']}_coredns-{v['COREDNS_VERSION']}"
    )
    return cache_root() / key


def unavailable_reason() -> str | None:
    """Why a real node cannot run here (None: it can). Never builds anything."""
    if os.uname().sysname != "Linux":
        return "a real node needs Linux"
    if os.geteuid() != 0:
        return "a real node needs root (network namespaces, cgroups, mounts, netfilter)"
    for tool in ("nft", "ip", "iptables-save", "mountpoint", "openssl"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (run hack/realnode/deps.sh)"
    if (
        not Path("/sys/fs/cgroup/memory").is_dir()
        and not Path("/sys/fs/cgroup/cgroup.controllers").exists()
    ):
        return "no usable cgroup hierarchy"
    if shutil.which("go") is None and not (cache_dir() / "bin" / "kubelet").exists():
        return "the real node's binaries are not built and go is not installed"
    return None


def _run(args: list[str], timeout: float = 30) -> str:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False).stdout


def guard_problems() -> list[str]:
    """What is wrong with the traffic guards (empty: all in place)."""
    problems = []
    table = _run(["nft", "list", "table", "inet", GUARD_TABLE])
    if not table:
        return [f"nft table inet {GUARD_TABLE} is missing"]
    for rule in GUARD_RULES:
        if f'comment "{rule}"' not in table:
            problems.append(f"guard rule {rule!r} is missing from inet {GUARD_TABLE}")
    for chain in ("forward", "output", "postrouting"):
        # nft prints the priority by name: "filter - 10" is -10.
        hooked = rf"chain {chain} \{{\s*type filter hook {chain} priority (-10|filter - 10);"
        if not re.search(hooked, table):
            problems.append(f"guard chain {chain} is not hooked at priority -10")
    return problems


@dataclass
class Leftovers:
    processes: list[str] = field(default_factory=list)
    netfilter: list[str] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    sysctls: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not any(vars(self).values())


def _cmdlines() -> Iterable[tuple[int, str]]:
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            raw = (p / "cmdline").read_bytes()
            state = (p / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if raw and state not in ("Z", "X"):
            yield int(p.name), raw.replace(b"\0", b" ").decode(errors="replace")


def leftovers(
    node_dir: Path, created_paths: list[str], sysctls_before: dict[str, str]
) -> Leftovers:
    """Everything of a stopped node still on the host."""
    found = Leftovers()
    needle = f"{node_dir}/"
    for pid, cmd in _cmdlines():
        if pid != os.getpid() and (needle in cmd or f"-address {node_dir}" in cmd):
            found.processes.append(f"{pid}: {cmd[:200]}")
    ruleset = _run(["nft", "list", "tables"])
    for line in ruleset.splitlines():
        if GUARD_TABLE in line or "kube-proxy" in line:
            found.netfilter.append(line.strip())
    for tool in ("iptables-save", "ip6tables-save"):
        for line in _run([tool]).splitlines():
            if "KUBE-" in line:
                found.netfilter.append(f"{tool}: {line}")
    for iface in os.listdir("/sys/class/net"):
        master = Path(f"/sys/class/net/{iface}/master")
        if iface == BRIDGE or (master.exists() and master.resolve().name == BRIDGE):
            found.interfaces.append(iface)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4].replace("\\040", " ")
        if mount_point == str(node_dir) or mount_point.startswith(needle):
            found.mounts.append(mount_point)
        for p in created_paths:
            if mount_point == p or mount_point.startswith(p + "/"):
                found.mounts.append(mount_point)
    cgroot = Path("/sys/fs/cgroup")
    for d in [*cgroot.glob(f"*/{CGROUP_NAME}"), cgroot / CGROUP_NAME]:
        if d.is_dir():
            found.cgroups.append(str(d))
    for p in [*created_paths, str(node_dir), str(OWNER_FILE)]:
        if os.path.lexists(p):
            found.paths.append(p)
    for name, before in sysctls_before.items():
        now = _run(["sysctl", "-n", name]).strip()
        if now != before:
            found.sysctls.append(f"{name}: {before} before, {now} now")
    return found


class RealNode:
    """The real node of the local cluster whose state is in ``cluster_dir``."""

    def __init__(self, cluster_dir: Path, kubectl: list[str]) -> None:
        self.cluster_dir = cluster_dir.resolve()
        self.node_dir = self.cluster_dir / "realnode"
        self.kubectl = kubectl
        self.up_seconds: float | None = None
        self.down_seconds: float | None = None
        self.created_paths: list[str] = []
        self.sysctls_before: dict[str, str] = {}

    def up(self, timeout: float = 3600) -> None:
        """Start it (builds on a cold cache first: up to tens of minutes)."""
        t0 = time.monotonic()
        proc = subprocess.run(
            [str(SCRIPTS / "up.sh"), str(self.cluster_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"hack/realnode/up.sh failed ({proc.returncode}):\n"
                f"{proc.stdout}\n{proc.stderr[-8000:]}"
            )
        self.up_seconds = time.monotonic() - t0
        self.created_paths = [p for p in (self.node_dir / "created-paths").read_text().split() if p]
        self.sysctls_before = dict(
            line.split("=", 1)
            for line in (self.node_dir / "sysctl.saved").read_text().splitlines()
            if "=" in line
        )

    def down(self) -> str:
        t0 = time.monotonic()
        proc = subprocess.run(
            [str(SCRIPTS / "down.sh"), str(self.cluster_dir)],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        self.down_seconds = time.monotonic() - t0
        return proc.stdout + proc.stderr

    def leftovers(self) -> Leftovers:
        return leftovers(self.node_dir, self.created_paths, self.sysctls_before)

    def assert_guarded(self) -> None:
        """Fail unless every guard rule is in place: call before sending test traffic."""
        problems = guard_problems()
        assert not problems, "traffic guards are not in place: " + "; ".join(problems)

    def import_image(self, archive: Path, base_name: str) -> list[str]:
        """Import an OCI archive into the node's containerd as ``base_name:<tag>``
        (pinned: image GC never removes it); returns the image names."""
        bin_dir = Path((self.node_dir / "bin-dir").read_text().strip())
        ctr = [
            str(bin_dir / "ctr"),
            "--address",
            str(self.node_dir / "containerd" / "containerd.sock"),
            "-n",
            "k8s.io",
        ]
        subprocess.run(
            [*ctr, "images", "import", "--base-name", base_name, str(archive)],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        names = [n for n in _run([*ctr, "images", "ls", "-q"]).split() if n.startswith(base_name)]
        for name in names:
            _run([*ctr, "images", "label", name, "io.cri-containerd.pinned=pinned"])
        return names

    def guard_drops(self) -> dict[str, int]:
        """Packets each guard rule dropped so far (by its comment)."""
        table = _run(["nft", "list", "table", "inet", GUARD_TABLE])
        counts: Counter[str] = Counter()
        for m in re.finditer(r'counter packets (\d+) bytes \d+ drop comment "([^"]+)"', table):
            counts[m.group(2)] += int(m.group(1))
        return dict(counts)


# --------------------------------------------------------------------------- traffic


@dataclass
class Measurement:
    total: int
    by_version: dict[str, int]
    by_pod: dict[str, int]
    errors: dict[str, int]  # "HTTP 500" / exception name -> count

    def share(self, version: str) -> float:
        return self.by_version.get(version, 0) / self.total if self.total else 0.0

    def describe(self) -> str:
        parts = [
            f"{v}: {n} ({100 * n / self.total:.1f} %)" for v, n in sorted(self.by_version.items())
        ]
        if self.errors:
            parts.append(f"errors: {dict(self.errors)}")
        return f"{self.total} requests -> " + ", ".join(parts)


def one_request(host: str, port: int, path: str) -> tuple[str, str, str | None]:
    """One GET on a fresh connection (kube-proxy picks an endpoint per connection)."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        version = resp.getheader("X-App-Version") or "?"
        pod = resp.getheader("X-Pod-Name") or "?"
        return version, pod, (None if resp.status < 400 else f"HTTP {resp.status}")
    except (OSError, http.client.HTTPException) as exc:
        return "unreachable", "-", type(exc).__name__
    finally:
        conn.close()


def measure(host: str, port: int, requests: int = 2000, path: str = "/version") -> Measurement:
    """Send ``requests`` GETs to host:port (a Service's ClusterIP, through kube-proxy)
    and count the answers by the version the app reports."""
    by_version: Counter[str] = Counter()
    by_pod: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for version, pod, error in pool.map(
            lambda _: one_request(host, port, path), range(requests)
        ):
            by_version[version] += 1
            by_pod[pod] += 1
            if error:
                errors[error] += 1
    return Measurement(requests, dict(by_version), dict(by_pod), dict(errors))


def binomial_tolerance(p: float, n: int, sigmas: float = 4.5) -> float:
    """Half-width of the band a share measured by n independent requests stays in,
    when each request reaches the canary with probability p: ``sigmas`` standard
    deviations of the binomial share, sqrt(p (1 - p) / n). At 4.5 sigmas a correct
    split falls outside with probability below 1e-5 per measurement (normal
    approximation; n p >= 100 here), while a wrong split (one pod more or less)
    is several bands away."""
    return sigmas * (p * (1 - p) / n) ** 0.5


def resolve(name: str) -> list[str]:
    """A-record lookup of ``name`` at the node's CoreDNS (one UDP query)."""
    query = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(query, (NODE_IP, 53))
        answer = s.recv(1500)
    count = struct.unpack(">H", answer[6:8])[0]
    ips: list[str] = []
    off = 12  # skip the question, then read `count` answers
    while answer[off] != 0:
        off += answer[off] + 1
    off += 5
    for _ in range(count):
        if answer[off] & 0xC0 == 0xC0:
            off += 2
        else:
            while answer[off] != 0:
                off += answer[off] + 1
            off += 1
        rtype, _cls, _ttl, length = struct.unpack(">HHIH", answer[off : off + 10])
        off += 10
        if rtype == 1 and length == 4:
            ips.append(socket.inet_ntoa(answer[off : off + 4]))
        off += length
    return ips


def kubectl_json(kubectl: list[str], *args: str) -> Any:
    out = subprocess.run(
        [*kubectl, *args, "-o", "json"], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(out.stdout)
