"""The nginx and istio routers end to end: a real API server (Ingress is built in;
Istio's networking CRDs installed from the istio.io/api module, see
tests/harness/cluster.py ensure_istio_crds), the operator as a separate process.

What the routers write is held to the upstream rules: the canary Ingress's annotations
to ingress-nginx's (internal/ingress/annotations/canary/main.go and
parser/validators.go, via `check_canary_annotations`), the VirtualService weights to
Istio's (networking/v1alpha3/virtual_service.proto, via `route_share`). No data plane
runs here (no nginx, no Envoy): the weights are read back from the objects a real
controller would read.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from canary_operator.traffic.istio import Sides, route_share
from canary_operator.traffic.nginx import check_canary_annotations
from e2e import manifests as m
from e2e.conftest import (
    EXAMPLES,
    TERMINAL,
    OperatorProcess,
    canary_objects,
    get_rollout,
    stable_image,
    wait_phase,
)
from e2e.watch import Seen, Watch, verified_end
from tests.harness.cluster import Cluster, ensure_istio_crds, wait_for

pytestmark = pytest.mark.cluster

P = "nginx.ingress.kubernetes.io"
OLD, NEW = "registry.example.com/web:1.0", "registry.example.com/web:2.0"
VOLATILE = ("resourceVersion", "generation", "managedFields")


@pytest.fixture(scope="session")
def istio_crds(kube_cluster: Cluster) -> Cluster:
    ensure_istio_crds(kube_cluster, timeout=120)
    return kube_cluster


# ----------------------------------------------------------------------- helpers


def seed_with(routing: dict[str, Any]) -> str:
    """The seed example (Deployment, Service, the rollout) with a traffic router."""
    docs = list(yaml.safe_load_all((EXAMPLES / "seed-pipeline.yaml").read_text()))
    for doc in docs:
        if doc and doc["kind"] == "CanaryRollout":
            doc["spec"]["trafficRouting"] = routing
    return yaml.safe_dump_all([d for d in docs if d])


def user_view(cluster: Cluster, kind: str, name: str, namespace: str) -> dict[str, Any]:
    """The object as stored, minus what the API server changes on every write."""
    body: dict[str, Any] = cluster.get_json(kind, name, "-n", namespace)
    for key in VOLATILE:
        body["metadata"].pop(key, None)
    return body


def exists(cluster: Cluster, kind: str, name: str, namespace: str) -> bool:
    result = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "name", check=False)
    return result.returncode == 0


def revision(event: Seen) -> int:
    return int(event.object["metadata"]["resourceVersion"])


def distinct(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if not out or out[-1] != v:
            out.append(v)
    return out


def step_messages(cluster: Cluster, namespace: str, name: str) -> list[str]:
    return [s.get("message", "") for s in get_rollout(cluster, namespace, name)["status"]["steps"]]


def condition_true(body: dict[str, Any], type_: str) -> bool:
    return any(
        c["type"] == type_ and c["status"] == "True"
        for c in (body.get("status") or {}).get("conditions") or []
    )


def end_the_rollout(cluster: Cluster, namespace: str, name: str, how: str) -> None:
    """Abort it, or delete it, and wait until it is over (gone, for a deletion)."""
    if how == "abort":
        cluster.kubectl(
            "patch", "cro", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"abort":true}}'
        )
        body = wait_phase(cluster, namespace, name, TERMINAL, timeout=120)
        assert body["status"]["phase"] == "Aborted"
        assert condition_true(body, "CleanupVerified")
    else:
        cluster.kubectl("delete", "cro", name, "-n", namespace, "--wait=false")
        wait_for(
            lambda: not exists(cluster, "cro", name, namespace),
            120,
            interval=0.3,
            message=f"{name} to be deleted after its cleanup",
        )


OUTCOME_STEPS: dict[str, list[dict[str, Any]]] = {
    # fails at step 3 while 30 % goes to the canary
    "failure": [{"canary": {}}, {"setWeight": 30}, m.job_test("broken", fail=True)],
    "abort": [{"canary": {}}, {"setWeight": 30}, {"pause": {}}],
    "deletion": [{"canary": {}}, {"setWeight": 30}, {"pause": {}}],
}


# ------------------------------------------------------------------------- nginx


def stable_ingress(name: str = "web") -> str:
    """A user's Ingress with more in it than the router uses."""
    return yaml.safe_dump(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                "name": name,
                "labels": {"app": "web", "team": "checkout"},
                "annotations": {
                    f"{P}/rewrite-target": "/",
                    f"{P}/proxy-body-size": "8m",
                    "example.com/owner": "checkout",
                },
            },
            "spec": {
                "ingressClassName": "nginx",
                "tls": [{"hosts": ["shop.example.com"], "secretName": "shop-tls"}],
                "rules": [
                    {
                        "host": "shop.example.com",
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {"service": {"name": "web", "port": {"number": 80}}},
                                },
                                {
                                    "path": "/static",
                                    "pathType": "Prefix",
                                    "backend": {"service": {"name": "cdn", "port": {"number": 80}}},
                                },
                            ]
                        },
                    },
                    {
                        "host": "admin.example.com",
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Exact",
                                    "backend": {
                                        "service": {"name": "admin", "port": {"number": 8080}}
                                    },
                                }
                            ]
                        },
                    },
                ],
            },
        }
    )


NGINX = {"nginx": {"stableIngress": "web", "header": {"name": "X-Canary", "value": "beta"}}}


def canary_ingress_events(watch: Watch) -> list[Seen]:
    return watch.of("web-canary")


def assert_valid_canary_ingress(event: Seen) -> None:
    body = event.object
    annotations = body["metadata"]["annotations"]
    assert check_canary_annotations(annotations, P) == [], annotations
    assert annotations[f"{P}/canary"] == "true"
    assert annotations[f"{P}/canary-by-header"] == "X-Canary"
    assert annotations[f"{P}/canary-by-header-value"] == "beta"
    assert body["spec"]["ingressClassName"] == "nginx"
    # the stable Service's host and path only, pointed at the canary Service
    assert body["spec"]["rules"] == [
        {
            "host": "shop.example.com",
            "http": {
                "paths": [
                    {
                        "path": "/",
                        "pathType": "Prefix",
                        "backend": {"service": {"name": "web-canary", "port": {"number": 80}}},
                    }
                ]
            },
        }
    ]
    assert body["metadata"]["labels"]["canary-operator.dev/role"] == "canary"


def test_nginx_seed_example_weights_read_back_and_cleanup(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(stable_ingress(), namespace)
    before = user_view(kube_cluster, "ingress", "web", namespace)
    with (
        Watch(kube_cluster, namespace, "ingresses") as watch,
        Watch(kube_cluster, namespace, "canaryrollouts") as rollouts,
    ):
        kube_cluster.apply(seed_with(NGINX), namespace)
        body = wait_phase(kube_cluster, namespace, "web-seed", TERMINAL, timeout=240)
        watch.wait("web-canary", lambda e: e.type == "DELETED", timeout=30)
        verified = rollouts.wait("web-seed", verified_end, timeout=30)
    assert body["status"]["phase"] == "Succeeded", body["status"]
    assert condition_true(body, "CleanupVerified")
    events = canary_ingress_events(watch)
    # the canary Ingress was gone before the cleanup was declared verified (one etcd:
    # resourceVersions of all kinds are its revisions, in commit order)
    assert revision(events[-1]) < revision(verified)
    written = [e for e in events if e.type in ("ADDED", "MODIFIED")]
    for event in written:
        assert_valid_canary_ingress(event)
    weights = [int(e.object["metadata"]["annotations"][f"{P}/canary-weight"]) for e in written]
    # the seed's steps: 10 %, then 50 %, then promote; nothing else was ever written
    assert distinct(weights) == [10, 50]
    assert events[-1].type == "DELETED"
    messages = step_messages(kube_cluster, namespace, "web-seed")
    assert "weight 10% read back" in messages[2] and "weight 50% read back" in messages[4]
    assert not exists(kube_cluster, "ingress", "web-canary", namespace)
    assert user_view(kube_cluster, "ingress", "web", namespace) == before
    assert stable_image(kube_cluster, namespace) == NEW
    assert canary_objects(kube_cluster, namespace) == []


@pytest.mark.parametrize("outcome", ["failure", "abort", "deletion"])
def test_nginx_failure_abort_and_deletion_leave_100_percent_stable(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, outcome: str
) -> None:
    kube_cluster.apply(m.app("web") + "---\n" + stable_ingress(), namespace)
    before = user_view(kube_cluster, "ingress", "web", namespace)
    with Watch(kube_cluster, namespace, "ingresses") as watch:
        kube_cluster.apply(m.rollout("r", OUTCOME_STEPS[outcome], trafficRouting=NGINX), namespace)
        seen = watch.wait(
            "web-canary",
            lambda e: (
                (e.object["metadata"].get("annotations") or {}).get(f"{P}/canary-weight") == "30"
            ),
            timeout=120,
        )
        assert_valid_canary_ingress(seen)
        if outcome == "failure":
            body = wait_phase(kube_cluster, namespace, "r", TERMINAL, timeout=120)
            assert body["status"]["phase"] == "Failed"
            assert condition_true(body, "CleanupVerified")
        else:
            wait_phase(kube_cluster, namespace, "r", "Paused", timeout=60)
            end_the_rollout(kube_cluster, namespace, "r", outcome)
        watch.wait("web-canary", lambda e: e.type == "DELETED", timeout=30)
    assert not exists(kube_cluster, "ingress", "web-canary", namespace)
    assert user_view(kube_cluster, "ingress", "web", namespace) == before
    assert stable_image(kube_cluster, namespace) == OLD
    assert canary_objects(kube_cluster, namespace) == []


# ------------------------------------------------------------------------- istio


def dest(host: str, weight: int | None = None, subset: str | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"destination": {"host": host, "port": {"number": 80}}}
    if subset:
        d["destination"]["subset"] = subset
    if weight is not None:
        d["weight"] = weight
    return d


def virtual_service(name: str, host: str, subset: str | None = None) -> dict[str, Any]:
    """A user's VirtualService: two routes to stable (one matched on a header, named),
    one to another service, a redirect, TCP, and metadata the router must not touch."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "name": name,
            "labels": {"app": "web"},
            "annotations": {"example.com/owner": "checkout"},
        },
        "spec": {
            "hosts": ["shop.example.com", "web"],
            "gateways": ["mesh", "shop-gw"],
            "http": [
                {
                    "name": "beta",
                    "match": [{"headers": {"x-beta": {"exact": "1"}}}],
                    "route": [dest(host, subset=subset)],
                    "retries": {"attempts": 3, "perTryTimeout": "2s"},
                },
                {
                    "name": "primary",
                    "route": [dest(host, 100, subset)],
                    "timeout": "10s",
                },
                {"name": "static", "route": [dest("cdn")]},
                {
                    "name": "legacy",
                    "match": [{"uri": {"prefix": "/v1"}}],
                    "redirect": {"uri": "/v2"},
                },
            ],
            "tcp": [{"route": [{"destination": {"host": host, "port": {"number": 5432}}}]}],
        },
    }


ISTIO = {
    "istio": {
        "virtualServices": [
            {"name": "web"},  # every route to stable
            {"name": "web-internal", "routes": ["primary"]},  # only the named one
        ]
    }
}


def istio_weights(body: dict[str, Any], namespace: str, routes: list[str]) -> list[int]:
    sides = Sides(namespace, "web", "web-canary")
    http = {h["name"]: h for h in body["spec"]["http"]}
    return [route_share(http[r]["route"], sides) for r in routes]


def apply_virtual_services(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    docs = [
        virtual_service("web", "web"),
        virtual_service("web-internal", f"web.{namespace}.svc.cluster.local"),
    ]
    cluster.apply(yaml.safe_dump_all(docs), namespace)
    return {n: user_view(cluster, "virtualservice", n, namespace) for n in ("web", "web-internal")}


def weights_seen(watch: Watch, name: str, namespace: str, routes: list[str]) -> list[list[int]]:
    return distinct([istio_weights(e.object, namespace, routes) for e in watch.of(name)])


def test_istio_seed_example_weights_read_back_and_originals_restored(
    istio_crds: Cluster, kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    before = apply_virtual_services(kube_cluster, namespace)
    with (
        Watch(kube_cluster, namespace, "virtualservices") as watch,
        Watch(kube_cluster, namespace, "canaryrollouts") as rollouts,
    ):
        kube_cluster.apply(seed_with(ISTIO), namespace)
        body = wait_phase(kube_cluster, namespace, "web-seed", TERMINAL, timeout=240)
        verified = rollouts.wait("web-seed", verified_end, timeout=30)
    assert body["status"]["phase"] == "Succeeded", body["status"]
    assert condition_true(body, "CleanupVerified")
    for name in ("web", "web-internal"):  # restored before the cleanup was verified
        assert revision(watch.of(name)[-1]) < revision(verified)
    # both VirtualServices went 0 -> 10 -> 50 -> 0 in step; the unnamed route of the
    # second one never changed
    assert weights_seen(watch, "web", namespace, ["beta", "primary"]) == [
        [0, 0],
        [10, 10],
        [50, 50],
        [0, 0],
    ]
    assert weights_seen(watch, "web-internal", namespace, ["primary"]) == [[0], [10], [50], [0]]
    assert weights_seen(watch, "web-internal", namespace, ["beta"]) == [[0]]
    for event in watch.of("web-internal"):
        assert event.object["spec"]["http"][0] == before["web-internal"]["spec"]["http"][0]
    messages = step_messages(kube_cluster, namespace, "web-seed")
    assert "weight 10% read back" in messages[2] and "weight 50% read back" in messages[4]
    for name, original in before.items():
        assert user_view(kube_cluster, "virtualservice", name, namespace) == original, name
    assert stable_image(kube_cluster, namespace) == NEW
    assert canary_objects(kube_cluster, namespace) == []


@pytest.mark.parametrize("outcome", ["failure", "abort", "deletion"])
def test_istio_failure_abort_and_deletion_restore_the_original_weights(
    istio_crds: Cluster,
    kube_cluster: Cluster,
    namespace: str,
    operator: OperatorProcess,
    outcome: str,
) -> None:
    kube_cluster.apply(m.app("web"), namespace)
    before = apply_virtual_services(kube_cluster, namespace)
    with Watch(kube_cluster, namespace, "virtualservices") as watch:
        kube_cluster.apply(m.rollout("r", OUTCOME_STEPS[outcome], trafficRouting=ISTIO), namespace)
        watch.wait(
            "web-internal",
            lambda e: istio_weights(e.object, namespace, ["primary"]) == [30],
            timeout=120,
        )
        assert istio_weights(
            istio_crds.get_json("virtualservice", "web", "-n", namespace),
            namespace,
            ["beta", "primary"],
        ) == [30, 30]
        if outcome == "failure":
            body = wait_phase(kube_cluster, namespace, "r", TERMINAL, timeout=120)
            assert body["status"]["phase"] == "Failed"
            assert condition_true(body, "CleanupVerified")
        else:
            wait_phase(kube_cluster, namespace, "r", "Paused", timeout=60)
            end_the_rollout(kube_cluster, namespace, "r", outcome)
    for name, original in before.items():
        assert user_view(kube_cluster, "virtualservice", name, namespace) == original, name
    assert stable_image(kube_cluster, namespace) == OLD
    assert canary_objects(kube_cluster, namespace) == []


def test_istio_destination_rule_subsets(
    istio_crds: Cluster, kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """Subset routing: the VirtualService splits one host between the DestinationRule's
    stable and canary subsets; the canary pods stay behind the stable Service (the host)
    and lose the label only the stable subset selects by, so the subsets do not overlap."""
    app = yaml.safe_load_all(m.app("web"))
    docs = list(app)
    template_labels = docs[0]["spec"]["template"]["metadata"]["labels"]
    template_labels["track"] = "stable"
    rule = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "web"},
        "spec": {
            "host": f"web.{namespace}.svc.cluster.local",
            "subsets": [
                {"name": "stable", "labels": {"app": "web", "track": "stable"}},
                {
                    "name": "canary",
                    "labels": {
                        "canary-operator.dev/target": "web",
                        "canary-operator.dev/role": "canary",
                    },
                },
            ],
        },
    }
    kube_cluster.apply(
        yaml.safe_dump_all([*docs, rule, virtual_service("web", "web", "stable")]), namespace
    )
    vs_before = user_view(kube_cluster, "virtualservice", "web", namespace)
    dr_before = user_view(kube_cluster, "destinationrule", "web", namespace)
    routing = {
        "istio": {
            "virtualServices": [{"name": "web", "routes": ["primary"]}],
            "destinationRule": {
                "name": "web",
                "stableSubsetName": "stable",
                "canarySubsetName": "canary",
            },
        }
    }
    kube_cluster.apply(
        m.rollout("r", [{"canary": {}}, {"setWeight": 40}, {"pause": {}}], trafficRouting=routing),
        namespace,
    )
    wait_phase(kube_cluster, namespace, "r", "Paused", timeout=90)
    primary = kube_cluster.get_json("virtualservice", "web", "-n", namespace)["spec"]["http"][1]
    assert primary["route"] == [dest("web", 60, "stable"), dest("web", 40, "canary")]
    pods = kube_cluster.get_json("pods", "-n", namespace, "-l", "canary-operator.dev/role=canary")
    labels = [p["metadata"]["labels"] for p in pods["items"]]
    assert labels and all(lb.get("app") == "web" and "track" not in lb for lb in labels)
    end_the_rollout(kube_cluster, namespace, "r", "abort")
    assert user_view(kube_cluster, "virtualservice", "web", namespace) == vs_before
    assert user_view(kube_cluster, "destinationrule", "web", namespace) == dr_before
    assert canary_objects(kube_cluster, namespace) == []


# -------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("routing", "message"),
    [
        # The replicas router's Shift options (e2e/test_replicas_shift.py runs them).
        # (minStableReplicas with no mode is valid: a new rollout's mode is Shift.)
        (
            {"replicas": {"mode": "Add", "minStableReplicas": 2}},
            "minStableReplicas applies to mode Shift only",
        ),
        ({"replicas": {"mode": "Half"}}, 'supported values: "Add", "Shift"'),
        (
            {"replicas": {"mode": "Shift", "minStableReplicas": 0}},
            "should be greater than or equal to 1",
        ),
        ({"nginx": {"stableIngress": "web", "cookie": "a;b"}}, "cookie"),
        (
            {
                "nginx": {
                    "stableIngress": "web",
                    "header": {"name": "X", "value": "a", "pattern": "b"},
                }
            },
            "not both",
        ),
        (
            {
                "nginx": {
                    "stableIngress": "web",
                    "canaryIngressAnnotations": {f"{P}/canary-weight": "5"},
                }
            },
            "the operator's",
        ),
        ({"istio": {"virtualServices": [{"name": "a"}, {"name": "a"}]}}, "named once"),
        (
            {
                "istio": {
                    "virtualServices": [{"name": "a"}],
                    "destinationRule": {
                        "name": "d",
                        "stableSubsetName": "s",
                        "canarySubsetName": "s",
                    },
                }
            },
            "must differ",
        ),
        (
            {"nginx": {"stableIngress": "web"}, "istio": {"virtualServices": [{"name": "a"}]}},
            "at most one",
        ),
    ],
)
def test_invalid_router_specs_are_rejected_at_apply(
    kube_cluster: Cluster,
    namespace: str,
    crd_installed: Cluster,
    routing: dict[str, Any],
    message: str,
) -> None:
    result = kube_cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=m.rollout("bad", [{"canary": {}}], trafficRouting=routing),
        check=False,
    )
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert not exists(kube_cluster, "cro", "bad", namespace)


def test_a_step_of_100_percent_is_allowed_with_a_real_router(
    kube_cluster: Cluster, namespace: str, crd_installed: Cluster
) -> None:
    for routing in (NGINX, ISTIO):
        kube_cluster.apply(
            m.rollout("full", [{"canary": {}}, {"setWeight": 100}], trafficRouting=routing),
            namespace,
        )
        kube_cluster.kubectl("delete", "cro", "full", "-n", namespace)


@pytest.mark.parametrize(
    ("example", "kind", "rollout"),
    [
        ("canary-nginx.yaml", "ingress", "web-nginx"),
        ("canary-istio.yaml", "virtualservice", "web-istio"),
    ],
)
def test_router_examples_succeed_and_leave_the_users_object_as_it_was(
    istio_crds: Cluster,
    kube_cluster: Cluster,
    namespace: str,
    operator: OperatorProcess,
    example: str,
    kind: str,
    rollout: str,
) -> None:
    docs = [d for d in yaml.safe_load_all((EXAMPLES / example).read_text()) if d]
    users = [d for d in docs if d["kind"] != "CanaryRollout"]
    kube_cluster.apply(yaml.safe_dump_all(users), namespace)
    before = user_view(kube_cluster, kind, "web", namespace)
    kube_cluster.apply(
        yaml.safe_dump_all([d for d in docs if d["kind"] == "CanaryRollout"]), namespace
    )
    body = wait_phase(kube_cluster, namespace, rollout, TERMINAL, timeout=300)
    assert body["status"]["phase"] == "Succeeded", body["status"]
    messages = step_messages(kube_cluster, namespace, rollout)
    assert "weight 10% read back" in messages[1] and "weight 50% read back" in messages[3]
    assert user_view(kube_cluster, kind, "web", namespace) == before
    assert not exists(kube_cluster, "ingress", "web-canary", namespace)
    assert stable_image(kube_cluster, namespace) == NEW
