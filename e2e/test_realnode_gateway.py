"""The Gateway API router's split, measured by requests through a real data plane.

Traefik (built from its Go module by hack/realnode/traefik.sh, run on the host by
tests/harness/traefik.py) implements the Gateway: its kubernetesgateway provider
watches the local API server, turns the HTTPRoute into a weighted service whose two
children are the stable and the canary Service's endpoints (pod IPs on the real
node's bridge), and serves the Gateway's listener on 127.0.0.1. The operator only
writes the HTTPRoute's backendRef weights; every request here goes through Traefik to
a demo-app pod (hack/realnode/images/demo_app.py), which names its version and pod.

How close the measured split must be: Traefik's weighted round robin
(pkg/server/service/loadbalancer/wrr/wrr.go) is not random. It is earliest-deadline-
first scheduling: each child's next deadline grows by 1/weight per pick and the
earliest deadline is picked, under a lock. Over any run of n picks with fixed weights,
each child's count stays within one pick of its deadline-time share, so the canary's
count is within 1 + 2 * w / 100 (< 3) requests of n * w / 100, whatever state the
balancer started in. The tests assert |canary - n * w / 100| <= 3 (0.15 points of
2,000) — far inside the 4.5-sigma binomial band a random split would need
(+/-3.0 points at 10 %, +/-5.0 at 50 %, printed beside it) — and check before and
after each measurement that Traefik's API reports exactly the weights the operator
wrote, so no configuration reload (which restarts the schedule) falls inside it.

Skipped, loudly, where a real node cannot run (see tests/harness/realnode_fixtures.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import OperatorProcess, get_rollout, wait_phase
from e2e.realnode_manifests import dump, ready_endpoints, real_example
from tests.harness import traefik as traefik_harness
from tests.harness.cluster import Cluster, wait_for
from tests.harness.realnode import Measurement, RealNode, binomial_tolerance, measure
from tests.harness.realnode_fixtures import warn_real_node_skipped
from tests.harness.traefik import Traefik

REQUESTS = 2000
ROLLOUT_TIMEOUT = 600
STABLE_REPLICAS = 2
# See the module docstring: Traefik's EDF schedule keeps the canary's count within
# 1 + 2 * w / 100 requests of n * w / 100.
WRR_TOLERANCE_REQUESTS = 3
ROLE_LABEL = "canary-operator.dev/role"
ORIGINAL_WEIGHTS = "canary-operator.dev/original-weights"


@dataclass
class Gateway:
    cluster: Cluster
    namespace: str
    traefik: Traefik
    gateway_class: str
    # The HTTPRoute's rules as the API server stored them (defaults filled in),
    # before any rollout: cleanup must leave exactly these.
    original_rules: list[dict[str, Any]] | None = None

    def http_route(self) -> dict[str, Any]:
        return {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "web"},
            "spec": {
                "parentRefs": [{"name": "web"}],
                "rules": [{"backendRefs": [{"name": "web", "port": 80}]}],
            },
        }


def _rbac(namespace: str, name: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "traefik", "namespace": namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": traefik_harness.RBAC_RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": "traefik", "namespace": namespace}],
        },
    ]


@pytest.fixture
def traefik_gateway(
    real_node: RealNode, crd_installed: Cluster, namespace: str, request: pytest.FixtureRequest
) -> Iterator[Gateway]:
    """A GatewayClass of Traefik's, a Traefik process watching the test's namespace
    with a ServiceAccount token, and a Gateway whose HTTP listener is Traefik's
    loopback entrypoint. Traefik is stopped, and checked gone, afterwards."""
    cluster = crd_installed
    real_node.assert_guarded()
    binary = traefik_harness.binary_path()
    if not binary.exists():  # normally built before the session (realnode_fixtures)
        if shutil.which("go") is None:
            # The real node's own parts may come from a cache (realnode.unavailable_reason);
            # Traefik then needs its cache too. Said as loudly as the node's own skip.
            warn_real_node_skipped(
                request, f"Traefik is not built ({binary} missing) and go is not installed"
            )
        binary = traefik_harness.build()
    name = f"canary-traefik-{namespace}"[:63]
    rbac = _rbac(namespace, name)
    work = Path(tempfile.mkdtemp(prefix="canary-traefik-"))
    traefik: Traefik | None = None
    try:
        cluster.apply(dump(rbac))
        token = cluster.kubectl(
            "create", "token", "traefik", "-n", namespace, "--duration=2h"
        ).stdout.strip()
        cluster.apply(
            dump(
                [
                    {
                        "apiVersion": "gateway.networking.k8s.io/v1",
                        "kind": "GatewayClass",
                        "metadata": {"name": name},
                        "spec": {"controllerName": traefik_harness.CONTROLLER_NAME},
                    }
                ]
            )
        )
        traefik = Traefik(binary, cluster, namespace, token, work)
        traefik.start()
        listening = traefik.listening()
        print(f"Traefik {traefik_harness.version()} (pid {traefik.pid}) listens on {listening}")
        assert listening and all(a.startswith("127.0.0.1:") for a in listening), listening
        cluster.apply(
            dump(
                [
                    {
                        "apiVersion": "gateway.networking.k8s.io/v1",
                        "kind": "Gateway",
                        "metadata": {"name": "web"},
                        "spec": {
                            "gatewayClassName": name,
                            "listeners": [
                                {
                                    "name": "http",
                                    "protocol": "HTTP",
                                    "port": traefik.web_port,
                                    "allowedRoutes": {"namespaces": {"from": "Same"}},
                                }
                            ],
                        },
                    }
                ]
            ),
            namespace,
        )
        gw = Gateway(cluster, namespace, traefik, name)

        def accepted() -> bool:
            body = cluster.get_json("gateway", "web", "-n", namespace)
            conds = (body.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Accepted" and c["status"] == "True" for c in conds)

        wait_for(
            accepted,
            60,
            interval=0.5,
            message=lambda: (
                "Traefik to accept the Gateway: "
                f"{json.dumps(cluster.get_json('gateway', 'web', '-n', namespace).get('status'))}"
                f"\nTraefik log:\n{traefik.log()[-4000:] if traefik else ''}"
            ),
        )
        yield gw
    finally:
        if traefik is not None:
            traefik.stop()
            print(f"Traefik log (tail):\n{traefik.log()[-3000:]}")
            traefik_harness.wait_gone(traefik)
        shutil.rmtree(work, ignore_errors=True)  # its token and CA copy
        cluster.kubectl(
            "delete", "gatewayclass", name, "--ignore-not-found", "--wait=false", check=False
        )
        cluster.kubectl(
            "delete", "clusterrolebinding,clusterrole", name, "--ignore-not-found", check=False
        )
    assert traefik is None or traefik.gone()


# --------------------------------------------------------------------------- helpers


def _pods(cluster: Cluster, namespace: str) -> dict[str, dict[str, str]]:
    """Live pods by role ("stable": the target's, "canary": the operator's): name -> IP."""
    roles: dict[str, dict[str, str]] = {"stable": {}, "canary": {}}
    for pod in cluster.get_json("pods", "-n", namespace)["items"]:
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        if meta.get("deletionTimestamp") or "batch.kubernetes.io/job-name" in labels:
            continue
        role = labels.get(ROLE_LABEL)
        if role == "canary":
            roles["canary"][meta["name"]] = (pod.get("status") or {}).get("podIP", "")
        elif labels.get("app") == "web" and not role:
            roles["stable"][meta["name"]] = (pod.get("status") or {}).get("podIP", "")
    return roles


def _endpoint_ips(cluster: Cluster, namespace: str, service: str) -> set[str]:
    slices = cluster.get_json(
        "endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={service}"
    )["items"]
    return {
        addr
        for s in slices
        for ep in s.get("endpoints") or []
        if (ep.get("conditions") or {}).get("ready")
        for addr in ep.get("addresses") or []
    }


@dataclass
class Applied:
    """What Traefik applied for the HTTPRoute: each Kubernetes Service's weight in
    the route's weighted service and the server addresses behind it."""

    weights: dict[str, int]
    servers: dict[str, set[str]]


def _applied(gw: Gateway) -> Applied | None:
    services = {s["name"]: s for s in gw.traefik.services()}
    route = [
        s
        for s in services.values()
        if s.get("provider") == "kubernetesgateway" and "weighted" in s and "httproute" in s["name"]
    ]
    if len(route) != 1:
        return None
    weights: dict[str, int] = {}
    servers: dict[str, set[str]] = {}
    for child in route[0]["weighted"].get("services") or []:
        lb = services.get(f"{child['name']}@kubernetesgateway") or services.get(child["name"])
        svc = _kube_service_of(gw.namespace, child["name"])
        weights[svc] = int(child.get("weight", 1))
        urls = ((lb or {}).get("loadBalancer") or {}).get("servers") or []
        servers[svc] = {u["url"].split("//", 1)[1].rsplit(":", 1)[0] for u in urls}
    return Applied(weights, servers)


def _kube_service_of(namespace: str, traefik_service: str) -> str:
    """Traefik names a backendRef's service <namespace>-<service>-<port...>."""
    rest = traefik_service.split("@", 1)[0].removeprefix(f"{namespace}-")
    return (
        "web-canary"
        if rest.startswith("web-canary-")
        else "web"
        if rest.startswith("web-")
        else rest
    )


def _wait_applied(gw: Gateway, weights: dict[str, int], label: str) -> Applied:
    """Until Traefik routes by exactly these weights, each Service's ready endpoints
    behind it (and nothing else)."""

    def ready() -> Applied | None:
        applied = _applied(gw)
        if applied is None or applied.weights != weights:
            return None
        for svc in weights:
            ips = _endpoint_ips(gw.cluster, gw.namespace, svc)
            if not ips or applied.servers.get(svc) != ips:
                return None
        return applied

    applied = wait_for(
        ready,
        120,
        interval=0.3,
        message=lambda: (
            f"[{label}] Traefik to apply {weights}: it has {_applied(gw)}; endpoints "
            + str({s: _endpoint_ips(gw.cluster, gw.namespace, s) for s in weights})
        ),
    )
    assert applied is not None
    return applied


def _route_weights(gw: Gateway) -> dict[str, int]:
    """The HTTPRoute's backendRef weights as the operator wrote them."""
    body = gw.cluster.get_json("httproute", "web", "-n", gw.namespace)
    refs = body["spec"]["rules"][0]["backendRefs"]
    return {r["name"]: int(r.get("weight", 1)) for r in refs}


def _measure(gw: Gateway, real_node: RealNode, label: str) -> Measurement:
    real_node.assert_guarded()
    m = measure("127.0.0.1", gw.traefik.web_port, REQUESTS)
    print(f"[{label}] through Traefik: {m.describe()}")
    return m


def _measure_at(gw: Gateway, real_node: RealNode, weight: int, label: str) -> Measurement:
    """At the operator's weight: Traefik applied it, 2,000 requests, and the same
    configuration still applied afterwards (no reload inside the measurement)."""
    want = {"web": 100 - weight, "web-canary": weight}
    assert _route_weights(gw) == want, _route_weights(gw)
    before = _wait_applied(gw, want, label)
    m = _measure(gw, real_node, label)
    after = _applied(gw)
    assert after == before, f"Traefik's configuration changed during the measurement: {after}"
    assert not m.errors, m.describe()
    pods = _pods(gw.cluster, gw.namespace)
    canary = sum(m.by_pod.get(p, 0) for p in pods["canary"])
    stable = sum(m.by_pod.get(p, 0) for p in pods["stable"])
    assert canary + stable == REQUESTS, (m.by_pod, pods)
    assert m.by_version.get("v2", 0) == canary, (m.by_version, canary)
    exact = REQUESTS * weight / 100
    binomial = binomial_tolerance(weight / 100, REQUESTS)
    print(
        f"setWeight {weight} %: canary {canary} of {REQUESTS} = {100 * canary / REQUESTS:.2f} % "
        f"(exact share {exact:.0f}; off by {canary - exact:+.0f}; allowed "
        f"+/-{WRR_TOLERANCE_REQUESTS} requests, a random split would need "
        f"+/-{100 * binomial:.1f} points)"
    )
    assert abs(canary - exact) <= WRR_TOLERANCE_REQUESTS, (
        f"setWeight {weight}: {canary} canary answers of {REQUESTS}, expected {exact:.0f} "
        f"+/- {WRR_TOLERANCE_REQUESTS}"
    )
    return m


def _assert_all_stable(gw: Gateway, real_node: RealNode, version: str, label: str) -> None:
    """The route names only the stable Service, Traefik routes only to it, and every
    request is answered by a stable pod of ``version``."""
    route = gw.cluster.get_json("httproute", "web", "-n", gw.namespace)
    assert route["spec"]["rules"] == gw.original_rules, route["spec"]
    assert ORIGINAL_WEIGHTS not in (route["metadata"].get("annotations") or {}), route["metadata"]
    wait_for(
        lambda: not _pods(gw.cluster, gw.namespace)["canary"],
        120,
        interval=0.5,
        message="the canary pods to be gone",
    )
    _wait_applied(gw, {"web": 1}, label)
    m = _measure(gw, real_node, label)
    assert m.errors == {}, m.describe()
    assert m.by_version == {version: REQUESTS}, m.describe()
    stable = set(_pods(gw.cluster, gw.namespace)["stable"])
    strangers = set(m.by_pod) - stable
    assert not strangers, f"answered by pods that are not stable pods: {strangers}"


def _gateway_rollout(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    docs = real_example("seed-pipeline.yaml", "v1", "v2", replicas=STABLE_REPLICAS, steps=steps)
    spec = docs[2]["spec"]
    spec.pop("cleanup", None)
    spec["trafficRouting"] = {"gatewayAPI": {"httpRoute": "web"}}
    return docs


def _start(gw: Gateway, real_node: RealNode, docs: list[dict[str, Any]]) -> None:
    """The target (Deployment, Service), the HTTPRoute; all of it served by v1."""
    cluster, ns = gw.cluster, gw.namespace
    cluster.apply(dump(docs[:2]), ns)
    wait_for(
        lambda: len(ready_endpoints(cluster, ns, "web")) == STABLE_REPLICAS,
        180,
        interval=0.5,
        message=f"{STABLE_REPLICAS} ready endpoints behind the web Service",
    )
    cluster.apply(dump([gw.http_route()]), ns)
    gw.original_rules = cluster.get_json("httproute", "web", "-n", ns)["spec"]["rules"]
    _wait_applied(gw, {"web": 1}, "before the rollout")
    before = _measure(gw, real_node, "before the rollout")
    assert before.by_version == {"v1": REQUESTS} and not before.errors, before.describe()


def _wait_step(cluster: Cluster, namespace: str, index: int, what: str) -> dict[str, Any]:
    def at() -> dict[str, Any] | None:
        body = get_rollout(cluster, namespace, "web-seed")
        status = body.get("status") or {}
        return body if status.get("currentStep") == index else None

    body = wait_for(
        at,
        ROLLOUT_TIMEOUT,
        interval=0.5,
        message=lambda: (
            f"{what}: {json.dumps(get_rollout(cluster, namespace, 'web-seed').get('status'))}"
        ),
    )
    assert body is not None
    return body


def _resume(cluster: Cluster, namespace: str, body: dict[str, Any]) -> None:
    step = body["status"]["currentStep"]
    run = body["status"].get("run") or 1
    cluster.kubectl(
        "annotate",
        "cro",
        "web-seed",
        "-n",
        namespace,
        "--overwrite",
        f"canary-operator.dev/resume={step + 1}@{run}",
    )


# --------------------------------------------------------------------------- tests


def test_gateway_api_split_measured_through_traefik(
    real_node: RealNode, traefik_gateway: Gateway, namespace: str, operator: OperatorProcess
) -> None:
    """canary -> 10 % -> 50 % -> 90 % -> promote, held by a pause at each weight and
    measured there by 2,000 requests through Traefik; after promotion and cleanup every
    request reaches the stable pods, now on v2."""
    gw = traefik_gateway
    steps: list[dict[str, Any]] = [{"name": "start canary", "canary": {"replicas": 1}}]
    for weight in (10, 50, 90):
        steps += [{"setWeight": weight}, {"name": f"hold at {weight}", "pause": {}}]
    steps.append({"promote": {}})
    docs = _gateway_rollout(steps)
    _start(gw, real_node, docs)
    gw.cluster.apply(dump(docs[2:]), namespace)
    measured: list[tuple[int, float]] = []
    for weight, pause_index in ((10, 2), (50, 4), (90, 6)):
        body = _wait_step(gw.cluster, namespace, pause_index, f"the pause at {weight} %")
        assert body["status"].get("weight") == weight, body["status"]
        m = _measure_at(gw, real_node, weight, f"setWeight {weight}")
        measured.append((weight, m.share("v2")))
        _resume(gw.cluster, namespace, body)
    body = wait_phase(gw.cluster, namespace, "web-seed", {"Succeeded", "Failed"}, ROLLOUT_TIMEOUT)
    assert body["status"]["phase"] == "Succeeded", body["status"]
    print("measured vs set: " + ", ".join(f"{w} % -> {100 * s:.2f} %" for w, s in measured))
    _assert_all_stable(gw, real_node, "v2", "after success (promoted, cleaned up)")


def test_gateway_api_abort_routes_everything_to_stable(
    real_node: RealNode, traefik_gateway: Gateway, namespace: str, operator: OperatorProcess
) -> None:
    """Held at 50 % (measured), the rollout is aborted: cleanup resets the HTTPRoute and
    every request through Traefik reaches the stable v1 pods again."""
    gw = traefik_gateway
    steps: list[dict[str, Any]] = [
        {"name": "start canary", "canary": {"replicas": 1}},
        {"setWeight": 50},
        {"name": "hold", "pause": {}},
        {"promote": {}},
    ]
    docs = _gateway_rollout(steps)
    _start(gw, real_node, docs)
    gw.cluster.apply(dump(docs[2:]), namespace)
    _wait_step(gw.cluster, namespace, 2, "the hold at 50 %")
    _measure_at(gw, real_node, 50, "held at 50 %")
    gw.cluster.kubectl(
        "patch", "cro", "web-seed", "-n", namespace, "--type=merge", "-p", '{"spec":{"abort":true}}'
    )
    body = wait_phase(gw.cluster, namespace, "web-seed", {"Aborted", "Failed"}, ROLLOUT_TIMEOUT)
    assert body["status"]["phase"] == "Aborted", body["status"]
    _assert_all_stable(gw, real_node, "v1", "after the abort")


@pytest.fixture(autouse=True)
def _show_guard_drops(real_node: RealNode) -> Any:
    yield
    print(f"guard drops so far: {real_node.guard_drops()}")
