"""Real metrics from the demo app's pods on the real node, for analysis steps.

The demo app (hack/realnode/images/demo_app.py) counts its answers in
``demo_http_requests_total{path,code,version}`` and times them in the histogram
``demo_http_request_duration_seconds``. A real Prometheus (tests/harness/prometheus.py)
scrapes every app pod on the real node directly by pod IP: Debian's Prometheus has no
Kubernetes discovery, so :class:`PodScrapeTargets` lists the pods and writes them as
file_sd targets, labelled ``role`` (``canary`` for the operator's pods, else
``stable``), ``namespace`` and ``pod``, the labels the queries below select on.
:class:`Load` sends steady requests through a Service while an analysis measures.

Nothing here sends a packet off the machine: scrape targets are only pods of the real
node with an address in its pod range (the host reaches them on the node's bridge),
and :class:`Load` checks the traffic guards before its first request.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tests.harness.cluster import Cluster
from tests.harness.prometheus import PrometheusServer
from tests.harness.realnode import NODE_NAME, POD_CIDR, RealNode, one_request

ROLE_LABEL = "canary-operator.dev/role"
APP_PORT = 8080
WINDOW = "10s"  # 10 scrapes at the harness's 1 s interval

# {{namespace}} and {{role}} are the operator's query variables (render_query). The
# numerator is 0, not empty, when no 5xx series exists yet (a healthy pod never
# created one); the ratio is empty (no data) when the pods answered nothing.
ERROR_RATE_QUERY = (
    "(sum(rate(demo_http_requests_total"
    '{namespace="{{namespace}}",role="{{role}}",code=~"5.."}[' + WINDOW + "])) or vector(0))"
    " / sum(rate(demo_http_requests_total"
    '{namespace="{{namespace}}",role="{{role}}"}[' + WINDOW + "]))"
)
LATENCY_P99_QUERY = (
    "histogram_quantile(0.99, sum by (le) (rate(demo_http_request_duration_seconds_bucket"
    '{namespace="{{namespace}}",role="{{role}}"}[' + WINDOW + "])))"
)


def scrape_target_groups(
    pods: Iterable[Mapping[str, Any]], port: int = APP_PORT
) -> list[dict[str, Any]]:
    """file_sd groups for the running pods of the real node, one per pod (by name).

    Pods elsewhere (kwok nodes' addresses lead nowhere), pods without an address in
    the real node's pod range, and terminating pods are left out."""
    pod_range = ipaddress.ip_network(POD_CIDR)
    groups = []
    for pod in pods:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        ip = status.get("podIP")
        if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not ip:
            continue
        if spec.get("nodeName") != NODE_NAME or ipaddress.ip_address(ip) not in pod_range:
            continue
        role = (meta.get("labels") or {}).get(ROLE_LABEL) or "stable"
        groups.append(
            {
                "targets": [f"{ip}:{port}"],
                "labels": {"namespace": meta["namespace"], "pod": meta["name"], "role": role},
            }
        )
    return sorted(groups, key=lambda g: g["labels"]["pod"])


class PodScrapeTargets:
    """Keeps Prometheus's ``files`` job scraping the app's pods of one namespace on the
    real node, refreshed from the API every ``interval`` seconds while in the ``with``."""

    def __init__(
        self,
        prometheus: PrometheusServer,
        cluster: Cluster,
        namespace: str,
        selector: str = "app=web",
        interval: float = 0.5,
    ) -> None:
        self.prometheus = prometheus
        self.cluster = cluster
        self.namespace = namespace
        self.selector = selector
        self.interval = interval
        self.groups: list[dict[str, Any]] = []
        self.seen: dict[str, set[str]] = {}  # role -> every pod ever listed with it
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scrape-targets", daemon=True)

    def __enter__(self) -> PodScrapeTargets:
        self.refresh()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.prometheus.set_file_targets([])

    def refresh(self) -> None:
        pods = self.cluster.get_json("pods", "-n", self.namespace, "-l", self.selector, timeout=20)[
            "items"
        ]
        groups = scrape_target_groups(pods)
        for g in groups:
            self.seen.setdefault(g["labels"]["role"], set()).add(g["labels"]["pod"])
        if groups != self.groups:
            self.prometheus.set_file_targets(groups)
            self.groups = groups

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception as exc:  # a transient API error: try again next round
                self.errors.append(repr(exc))

    def pods(self, role: str) -> set[str]:
        return {g["labels"]["pod"] for g in self.groups if g["labels"]["role"] == role}


def targets_up(prometheus: PrometheusServer, pods: Sequence[str] | set[str]) -> bool:
    """Every one of ``pods`` is an active target Prometheus scraped successfully."""
    up = {t["labels"].get("pod") for t in prometheus.active_targets() if t.get("health") == "up"}
    return bool(pods) and set(pods) <= up


def describe_targets(prometheus: PrometheusServer) -> str:
    """The ``files`` job's targets as Prometheus sees them (for failure messages)."""
    return "; ".join(
        f"{t['labels'].get('pod')} {t.get('health')} {t.get('lastError') or ''}".strip()
        for t in prometheus.active_targets()
    )


class Load:
    """Steady GETs to host:port (a Service's ClusterIP, through kube-proxy) from
    ``workers`` threads, each at most ``per_worker`` requests a second, until stopped;
    counts the answers by (version, outcome) and by pod. Checks the guards first."""

    def __init__(
        self,
        real_node: RealNode,
        host: str,
        port: int,
        workers: int = 4,
        per_worker: float = 5.0,
        path: str = "/version",
    ) -> None:
        self.real_node = real_node
        self.host, self.port, self.path = host, port, path
        self.period = 1.0 / per_worker
        self.answers: Counter[tuple[str, str]] = Counter()  # (version, "ok" | error)
        self.by_pod: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            for i in range(workers)
        ]

    def __enter__(self) -> Load:
        self.real_node.assert_guarded()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            version, pod, error = one_request(self.host, self.port, self.path)
            with self._lock:
                self.answers[(version, error or "ok")] += 1
                self.by_pod[pod] += 1
            # Pacing, not synchronisation: keeps the load light on a shared machine.
            self._stop.wait(max(0.0, self.period - (time.monotonic() - started)))

    def total(self) -> int:
        with self._lock:
            return sum(self.answers.values())

    def describe(self) -> str:
        with self._lock:
            parts = [f"{v} {o}: {n}" for (v, o), n in sorted(self.answers.items())]
        return f"{sum(n for n in self.answers.values())} requests: " + ", ".join(parts)
