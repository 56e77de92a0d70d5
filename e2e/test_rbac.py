"""The install manifests' permissions, end to end: the operator runs under the
ServiceAccount from `manifests/` (its own token, not the admin's) and a rollout
touching every kind it manages succeeds; the account can do nothing else."""

from __future__ import annotations

import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import manifests as m
from e2e.conftest import REPO, OperatorProcess, events_of, stable_image, wait_phase
from e2e.identity import WAITER, free_port, run_cli, service_account_kubeconfig
from tests.harness.cluster import Cluster, ensure_istio_crds, wait_for

pytestmark = pytest.mark.cluster

SYSTEM_NS = "canary-operator-system"
ACCOUNT = "canary-operator"
IDENTITY = f"system:serviceaccount:{SYSTEM_NS}:{ACCOUNT}"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
NEW = "registry.example.com/web:2.0"

# What the operator may do, resource by resource (docs/install.md explains each line).
EXPECTED_RULES = {
    "canary-operator.dev/canaryrollouts": {"get", "list", "watch", "patch"},
    "canary-operator.dev/canaryrollouts/status": {"update"},
    "canary-operator.dev/canaryrollouts/finalizers": {"update"},
    "coordination.k8s.io/leases": {"get", "list", "watch", "create", "update"},
    "apps/deployments": {"get", "list", "watch", "create", "patch", "delete"},
    "/services": {"get", "list", "watch", "create", "patch", "delete"},
    "batch/jobs": {"list", "watch", "create", "patch", "delete"},
    "/pods": {"list", "watch", "delete"},
    "/pods/log": {"get"},
    "/events": {"create", "patch"},
    "gateway.networking.k8s.io/httproutes": {"get", "list", "watch", "update"},
    "networking.k8s.io/ingresses": {"get", "create", "update", "delete"},
    "networking.istio.io/virtualservices": {"get", "update"},
    "networking.istio.io/destinationrules": {"get"},
    "authentication.k8s.io/tokenreviews": {"create"},
    "authorization.k8s.io/subjectaccessreviews": {"create"},
}


def render(overlay: str, cluster: Cluster) -> list[dict[str, Any]]:
    out = cluster.kubectl("kustomize", str(REPO / "manifests" / overlay)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def rename_namespaces(docs: list[dict[str, Any]], mapping: dict[str, str]) -> None:
    """Point the rendered objects at the test's namespaces."""
    for doc in docs:
        meta = doc["metadata"]
        if meta.get("namespace") in mapping:
            meta["namespace"] = mapping[meta["namespace"]]
        for subject in doc.get("subjects") or []:
            subject["namespace"] = mapping.get(subject["namespace"], subject["namespace"])
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            for old, new in mapping.items():
                container["args"] = [a.replace(f"={old}", f"={new}") for a in container["args"]]


def apply_rbac(cluster: Cluster, docs: list[dict[str, Any]]) -> None:
    wanted = [d for d in docs if d["kind"] in RBAC_KINDS]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(wanted))


@pytest.fixture(scope="module")
def installed(crd_installed: Cluster) -> Iterator[list[dict[str, Any]]]:
    """The cluster-wide identity from manifests/cluster (not the Deployment: there is
    no image to run here; the operator process runs with the same token instead).
    Istio's CRDs are installed so that `kubectl auth can-i` knows their resources (it
    answers "no" for a resource the API server does not serve, whatever the rules)."""
    ensure_istio_crds(crd_installed, timeout=120)
    docs = render("cluster", crd_installed)
    namespace = next(d for d in docs if d["kind"] == "Namespace")
    crd_installed.kubectl("apply", "-f", "-", input=yaml.safe_dump(namespace))
    apply_rbac(crd_installed, docs)
    yield docs
    for kind in ("clusterrolebinding", "clusterrole"):
        crd_installed.kubectl("delete", kind, ACCOUNT, "--ignore-not-found", check=False)
    crd_installed.kubectl(
        "delete", "namespace", SYSTEM_NS, "--wait=false", "--ignore-not-found", check=False
    )


def can_i(
    cluster: Cluster,
    identity: str,
    verb: str,
    resource: str,
    namespace: str,
    subresource: str | None = None,
) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={identity}"]
    args += ["--all-namespaces"] if namespace == "*" else ["-n", namespace]
    if subresource:
        args.append(f"--subresource={subresource}")
    result = cluster.kubectl(*args, check=False)
    assert result.stdout.strip() in ("yes", "no"), result.stdout + result.stderr
    return result.stdout.strip() == "yes"


def assert_no_permission_errors(op: OperatorProcess) -> None:
    log = op.log()
    for needle in ("Forbidden", "forbidden", " 403", "Unauthorized", "Not enough permissions"):
        assert needle not in log, f"{needle!r} in the operator log:\n{log[-5000:]}"


def full_rollout(name: str) -> str:
    """A rollout touching every kind the operator manages: Deployments, Services, Jobs,
    pods, the HTTPRoute, its Lease, Events, its own status and finalizer."""
    steps = [
        {"canary": {"replicas": 1}},
        m.job_test("smoke"),
        {"setWeight": 50},
        {"promote": {}},
    ]
    return m.rollout(name, steps, gateway_route="web", cleanup=[m.cleanup_job()])


def run_full_rollout_as(
    cluster: Cluster, namespace: str, kubeconfig: Path, args: list[str], log: Path
) -> OperatorProcess:
    """Start an operator with this identity; a full rollout must succeed with no
    permission error in its log. Returns the (running) operator."""
    op = OperatorProcess(
        cluster, namespace, log, env={"KUBECONFIG": str(kubeconfig)}, args=args
    ).start()
    try:
        cluster.apply(m.app() + "---\n" + m.http_route(), namespace)
        cluster.apply(full_rollout("web-v001"), namespace)
        body = wait_phase(
            cluster, namespace, "web-v001", {"Succeeded", "Failed", "Aborted"}, timeout=120
        )
        assert body["status"]["phase"] == "Succeeded", body["status"]
        assert_no_permission_errors(op)
    except BaseException:
        op.stop()
        print(f"--- operator log ---\n{op.log()[-10000:]}")
        raise
    return op


def test_rbac_rules_are_exactly_the_documented_ones(installed: list[dict[str, Any]]) -> None:
    role = next(d for d in installed if d["kind"] == "ClusterRole")
    granted: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault(f"{group}/{resource}", set()).update(rule["verbs"])
    assert granted == EXPECTED_RULES
    assert all("*" not in verbs for verbs in granted.values())


def test_operator_runs_under_its_service_account(
    kube_cluster: Cluster,
    namespace: str,
    installed: list[dict[str, Any]],
    operators: list[OperatorProcess],
    tmp_path: Path,
) -> None:
    kubeconfig = service_account_kubeconfig(
        kube_cluster, SYSTEM_NS, ACCOUNT, tmp_path / "operator.kubeconfig"
    )
    leader = f"leader-{namespace}"[:63]
    args = ["--leader-elect", "--leader-election-namespace", SYSTEM_NS]
    args += ["--leader-election-id", leader, "--http-port", "0"]
    op = run_full_rollout_as(kube_cluster, namespace, kubeconfig, args, tmp_path / "op.log")
    operators.append(op)
    assert stable_image(kube_cluster, namespace) == NEW
    route = kube_cluster.get_json("httproute", "web", "-n", namespace)
    assert [r["name"] for r in route["spec"]["rules"][0]["backendRefs"]] == ["web"]
    reasons = {e["reason"] for e in events_of(kube_cluster, namespace, "web-v001")}
    assert {"LockAcquired", "CleanupFinished"} <= reasons
    lease = kube_cluster.get_json("lease", leader, "-n", SYSTEM_NS)
    assert lease["spec"]["holderIdentity"]  # it led through leader election
    assert_no_permission_errors(op)
    op.stop()
    wait_for(
        lambda: (
            not kube_cluster.get_json("lease", leader, "-n", SYSTEM_NS)["spec"].get(
                "holderIdentity"
            )
        ),
        10,
        message="the leader Lease released on shutdown",
    )


@pytest.mark.parametrize(
    ("verb", "resource", "subresource"),
    [
        ("get", "secrets", None),
        ("list", "secrets", None),
        ("watch", "secrets", None),
        ("get", "configmaps", None),
        ("create", "configmaps", None),
        ("create", "pods", None),
        ("update", "pods", None),
        ("create", "pods", "exec"),
        ("update", "services", None),
        ("update", "deployments.apps", None),
        ("delete", "events", None),
        ("create", "canaryrollouts.canary-operator.dev", None),
        ("update", "canaryrollouts.canary-operator.dev", None),
        ("delete", "canaryrollouts.canary-operator.dev", None),
        ("delete", "leases.coordination.k8s.io", None),
        ("create", "httproutes.gateway.networking.k8s.io", None),
        ("patch", "httproutes.gateway.networking.k8s.io", None),
        ("list", "ingresses.networking.k8s.io", None),
        ("patch", "ingresses.networking.k8s.io", None),
        ("create", "virtualservices.networking.istio.io", None),
        ("delete", "virtualservices.networking.istio.io", None),
        ("update", "destinationrules.networking.istio.io", None),
        ("get", "gateways.networking.istio.io", None),
        ("create", "statefulsets.apps", None),
        ("get", "replicasets.apps", None),
        ("get", "daemonsets.apps", None),
        ("create", "rolebindings.rbac.authorization.k8s.io", None),
        ("create", "serviceaccounts", "token"),
        ("impersonate", "serviceaccounts", None),
        ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("list", "namespaces", None),
        ("get", "nodes", None),
    ],
)
def test_service_account_cannot_do_anything_else(
    kube_cluster: Cluster,
    namespace: str,
    installed: list[dict[str, Any]],
    verb: str,
    resource: str,
    subresource: str | None,
) -> None:
    assert not can_i(kube_cluster, IDENTITY, verb, resource, namespace, subresource)


def test_service_account_can_do_what_it_needs(
    kube_cluster: Cluster, namespace: str, installed: list[dict[str, Any]]
) -> None:
    """The positive side of the minimal test, so the negative answers above mean
    something (the identity and the bindings are really in place)."""
    for verb, resource, sub in [
        ("watch", "canaryrollouts.canary-operator.dev", None),
        ("update", "canaryrollouts.canary-operator.dev", "status"),
        ("update", "leases.coordination.k8s.io", None),
        ("patch", "deployments.apps", None),
        ("delete", "pods", None),
        ("get", "pods", "log"),
        ("patch", "jobs.batch", None),
        ("create", "events", None),
        ("patch", "events", None),
        ("update", "httproutes.gateway.networking.k8s.io", None),
        ("delete", "ingresses.networking.k8s.io", None),
        ("update", "virtualservices.networking.istio.io", None),
        ("get", "destinationrules.networking.istio.io", None),
        ("create", "tokenreviews.authentication.k8s.io", None),
        ("create", "subjectaccessreviews.authorization.k8s.io", None),
    ]:
        assert can_i(kube_cluster, IDENTITY, verb, resource, namespace, sub), (verb, resource)


def test_namespaced_mode(
    kube_cluster: Cluster,
    namespace: str,
    operators: list[OperatorProcess],
    tmp_path: Path,
    crd_installed: Cluster,
) -> None:
    """manifests/namespaced: a Role in the watched namespace only. Its own operator
    namespace (a fresh one) gives it an identity no ClusterRoleBinding names."""
    system = f"cro-sys-{secrets.token_hex(3)}"
    kube_cluster.kubectl("create", "namespace", system)
    try:
        docs = render("namespaced", kube_cluster)
        assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
        rename_namespaces(docs, {SYSTEM_NS: system, "my-app": namespace})
        apply_rbac(kube_cluster, docs)
        identity = f"system:serviceaccount:{system}:{ACCOUNT}"
        assert can_i(
            kube_cluster, identity, "list", "canaryrollouts.canary-operator.dev", namespace
        )
        assert not can_i(
            kube_cluster, identity, "list", "canaryrollouts.canary-operator.dev", "default"
        )
        assert not can_i(kube_cluster, identity, "list", "canaryrollouts.canary-operator.dev", "*")
        kubeconfig = service_account_kubeconfig(
            kube_cluster, system, ACCOUNT, tmp_path / "ns.kubeconfig"
        )
        args = ["--leader-elect", "--leader-election-namespace", system, "--http-port", "0"]
        op = run_full_rollout_as(kube_cluster, namespace, kubeconfig, args, tmp_path / "op.log")
        operators.append(op)
        op.stop()
    finally:
        kube_cluster.kubectl("delete", "namespace", system, "--wait=false", check=False)


def test_install_manifests_pass_server_validation(
    kube_cluster: Cluster, namespace: str, installed: list[dict[str, Any]]
) -> None:
    for overlay in ("cluster", "namespaced"):
        docs = render(overlay, kube_cluster)
        rename_namespaces(docs, {"my-app": namespace})
        kinds = {d["kind"] for d in docs}
        assert {"Deployment", "Service", "ServiceAccount", "RoleBinding"} <= kinds
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert deployment["spec"]["replicas"] == 2
        assert "--leader-elect" in container["args"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        kube_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs))


def test_waiter_runs_with_read_only_access(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    docs = [
        d
        for d in yaml.safe_load_all(
            (REPO / "manifests" / "spinnaker" / "waiter-rbac.yaml").read_text()
        )
        if d
    ]
    rename_namespaces(docs, {"my-app": namespace})
    kube_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    identity = f"system:serviceaccount:{namespace}:canary-rollout-waiter"
    for verb in ("patch", "update", "delete", "create"):
        assert not can_i(
            kube_cluster, identity, verb, "canaryrollouts.canary-operator.dev", namespace
        )
    assert not can_i(kube_cluster, identity, "get", "secrets", namespace)

    kube_cluster.apply(m.app(), namespace)
    kube_cluster.apply(
        m.rollout("web-v001", [{"canary": {"replicas": 1}}, {"promote": {}}]), namespace
    )
    kubeconfig = service_account_kubeconfig(
        kube_cluster, namespace, "canary-rollout-waiter", tmp_path / "waiter.kubeconfig"
    )
    result = run_cli(WAITER, kube_cluster, "web-v001", "--timeout", "2m", kubeconfig=kubeconfig)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SPINNAKER_PROPERTY_PHASE=Succeeded" in result.stdout


@pytest.mark.parametrize("overlay", ["cluster", "namespaced"])
def test_secret_access_is_opt_in_and_named(
    overlay: str, kube_cluster: Cluster, tmp_path: Path
) -> None:
    """Webhook headers may take values from Secrets; reading them needs the
    webhook-secrets component, which grants `get` on the listed Secrets only."""
    assert not any(
        "secrets" in r["resources"]
        for d in render(overlay, kube_cluster)
        if d["kind"] in ("ClusterRole", "Role")
        for r in d["rules"]
    )
    manifests = REPO / "manifests"
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(manifests / overlay, tmp_path)],
                "components": [
                    os.path.relpath(manifests / "components" / "webhook-secrets", tmp_path)
                ],
            }
        )
    )
    out = kube_cluster.kubectl("kustomize", str(tmp_path)).stdout
    roles = [
        d
        for d in yaml.safe_load_all(out)
        if d and d["kind"] in ("ClusterRole", "Role") and d["metadata"]["name"] == ACCOUNT
    ]
    assert len(roles) == 1
    secret_rules = [r for r in roles[0]["rules"] if "secrets" in r["resources"]]
    assert secret_rules == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "verbs": ["get"],
            "resourceNames": ["webhook-credentials"],
        }
    ]


def _http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except urllib.error.URLError:  # nothing listening (any more)
        return 0, "down"


def test_two_replicas_one_active(
    kube_cluster: Cluster, namespace: str, operators: list[OperatorProcess], tmp_path: Path
) -> None:
    """The Deployment's two replicas: only the Lease holder runs the controller, the
    other is a ready standby that takes over when the leader shuts down."""
    ports = {}
    for name in ("a", "b"):
        ports[name] = free_port()
        args = ["--leader-elect", "--leader-election-namespace", namespace]
        args += ["--http-port", str(ports[name]), "--http-host", "127.0.0.1"]
        op = OperatorProcess(kube_cluster, namespace, tmp_path / f"{name}.log", args=args)
        operators.append(op.start())

    def modes() -> dict[str, str]:
        found = {}
        for name, port in ports.items():
            code, text = _http(f"http://127.0.0.1:{port}/readyz")
            found[name] = text.strip() if code == 200 else f"{code}"
        return found

    wait_for(
        lambda: sorted(modes().values()) == ["ok (running)", "ok (standby)"],
        30,
        ignore=(OSError,),
        message=lambda: f"one leader, one standby: {modes()}",
    )
    leader = next(n for n, mode in modes().items() if mode == "ok (running)")
    standby = "b" if leader == "a" else "a"
    kube_cluster.apply(m.app(), namespace)
    kube_cluster.apply(
        m.rollout("web-v001", [{"canary": {"replicas": 1}}, {"pause": {}}, {"promote": {}}]),
        namespace,
    )
    wait_phase(kube_cluster, namespace, "web-v001", "Paused")
    metrics = {n: _http(f"http://127.0.0.1:{p}/metrics")[1] for n, p in ports.items()}
    assert "canary_operator_leader 1" in metrics[leader]
    assert "canary_operator_leader 0" in metrics[standby]
    assert "canary_operator_status_writes_total 0" in metrics[standby]  # it did no work
    assert "canary_operator_status_writes_total 0" not in metrics[leader]

    operators[0 if leader == "a" else 1].stop()  # graceful: the Lease is handed back
    wait_for(
        lambda: modes().get(standby) == "ok (running)",
        15,
        ignore=(OSError,),
        message=lambda: f"the standby to take over: {modes()}",
    )
    kube_cluster.kubectl(
        "annotate", "cro", "web-v001", "-n", namespace, "canary-operator.dev/resume=2"
    )
    wait_phase(kube_cluster, namespace, "web-v001", "Succeeded")
    taken_over = _http(f"http://127.0.0.1:{ports[standby]}/metrics")[1]
    assert "canary_operator_status_writes_total 0" not in taken_over
