"""Installing and operating: the CRD lives apart from the operator overlays, the
standard roles reach CanaryRollouts through aggregation, `kubectl canary status`
degrades without Events access, and `canary-operator run --kubeconfig --context`
is honoured."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import manifests as m
from e2e.conftest import REPO, OperatorProcess, get_rollout, wait_phase
from e2e.identity import PLUGIN, run_cli, service_account_kubeconfig
from tests.harness.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

MANIFESTS = REPO / "manifests"
SYSTEM_NS = "canary-operator-system"
CRD_NAME = "canaryrollouts.canary-operator.dev"
CRO = "canaryrollouts.canary-operator.dev"


def exists(cluster: Cluster, *args: str) -> bool:
    out = cluster.kubectl("get", *args, "--ignore-not-found", "-o", "name").stdout
    return bool(out.strip())


def wait_namespace_gone_or_active(cluster: Cluster, name: str) -> None:
    """Another test may have just deleted the operator's namespace."""

    def settled() -> bool:
        found = cluster.kubectl("get", "namespace", name, "--ignore-not-found", "-o", "json")
        if not found.stdout.strip():
            return True
        return bool(yaml.safe_load(found.stdout)["status"]["phase"] == "Active")

    wait_for(settled, 120, message=f"namespace {name} to be gone or active")


def test_deleting_the_operator_overlay_keeps_the_crd_and_rollouts(
    crd_installed: Cluster, namespace: str
) -> None:
    cluster = crd_installed
    wait_namespace_gone_or_active(cluster, SYSTEM_NS)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(MANIFESTS / "crds"))
    cluster.kubectl("apply", "-k", str(MANIFESTS / "cluster"))
    try:
        assert exists(cluster, "deployment", "canary-operator", "-n", SYSTEM_NS)
        cluster.apply(m.rollout("web-v001", [{"canary": {}}]), namespace)
        cluster.apply(m.rollout("web-v002", [{"canary": {}}]), namespace)
        uids = {
            name: get_rollout(cluster, namespace, name)["metadata"]["uid"]
            for name in ("web-v001", "web-v002")
        }
        crd_uid = cluster.get_json("crd", CRD_NAME)["metadata"]["uid"]

        deleted = cluster.kubectl("delete", "-k", str(MANIFESTS / "cluster"), timeout=180)
        assert "customresourcedefinition" not in deleted.stdout
        assert "deployment" in deleted.stdout
    finally:
        cluster.kubectl(
            "delete",
            "-k",
            str(MANIFESTS / "cluster"),
            "--ignore-not-found",
            check=False,
            timeout=180,
        )
    assert not exists(cluster, "namespace", SYSTEM_NS)
    assert not exists(cluster, "clusterrole", "canary-operator")
    assert not exists(cluster, "clusterrolebinding", "canary-operator")
    crd = cluster.get_json("crd", CRD_NAME)
    assert crd["metadata"]["uid"] == crd_uid
    assert not crd["metadata"].get("deletionTimestamp")
    for name, uid in uids.items():
        assert get_rollout(cluster, namespace, name)["metadata"]["uid"] == uid
    # The API base stays usable: the aggregated roles are still there.
    assert exists(cluster, "clusterrole", "canary-operator-aggregate-to-edit")


def can_i(
    cluster: Cluster,
    user: str,
    verb: str,
    resource: str,
    namespace: str,
    subresource: str | None = None,
) -> bool:
    extra = [f"--subresource={subresource}"] if subresource else []
    answer = cluster.kubectl(
        "auth", "can-i", verb, resource, "-n", namespace, f"--as={user}", *extra, check=False
    ).stdout.strip()
    assert answer in ("yes", "no"), answer
    return answer == "yes"


@pytest.fixture
def aggregated_roles(crd_installed: Cluster) -> Cluster:
    crd_installed.kubectl(
        "apply", "--server-side", "--force-conflicts", "-k", str(MANIFESTS / "crds")
    )
    return crd_installed


def test_namespace_users_reach_rollouts_through_the_standard_roles(
    aggregated_roles: Cluster, namespace: str
) -> None:
    cluster = aggregated_roles
    for user, role in (("jane", "edit"), ("vic", "view"), ("ada", "admin")):
        cluster.kubectl(
            "create",
            "rolebinding",
            f"{user}-{role}",
            f"--clusterrole={role}",
            f"--user={user}",
            "-n",
            namespace,
        )
    # The clusterrole-aggregation controller fills the built-in roles.
    wait_for(
        lambda: can_i(cluster, "jane", "create", CRO, namespace),
        60,
        message="edit to include canaryrollouts (aggregation)",
    )
    manifest = m.rollout("web-v001", [{"canary": {}}])
    created = cluster.kubectl("apply", "-n", namespace, "-f", "-", "--as=jane", input=manifest)
    assert "created" in created.stdout
    listed = cluster.kubectl("get", "cro", "-n", namespace, "--as=jane", "-o", "name").stdout
    assert "canaryrollout.canary-operator.dev/web-v001" in listed
    cluster.kubectl(
        "annotate",
        "cro",
        "web-v001",
        "-n",
        namespace,
        "--as=jane",
        "example.com/reviewed=yes",
    )
    # The status is the operator's alone.
    for user in ("jane", "ada"):
        assert not can_i(cluster, user, "update", CRO, namespace, subresource="status")
        assert not can_i(cluster, user, "patch", CRO, namespace, subresource="status")

    # view: read only.
    wait_for(lambda: can_i(cluster, "vic", "list", CRO, namespace), 60, message="view aggregated")
    assert can_i(cluster, "vic", "get", CRO, namespace, subresource="status")
    shown = cluster.get_json("cro", "web-v001", "-n", namespace, "--as=vic")
    assert shown["metadata"]["name"] == "web-v001"
    refused = cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        "--as=vic",
        check=False,
        input=m.rollout("web-v002", [{"canary": {}}]),
    )
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()
    # Nothing outside the namespace.
    assert not can_i(cluster, "jane", "list", CRO, "default")

    assert can_i(cluster, "ada", "delete", CRO, namespace)
    cluster.kubectl("delete", "cro", "web-v001", "-n", namespace, "--as=ada", "--wait=false")


def reader_role(namespace: str) -> str:
    """A ServiceAccount that may read rollouts and nothing else (no Events)."""
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "rollout-reader"},
            "rules": [
                {
                    "apiGroups": ["canary-operator.dev"],
                    "resources": ["canaryrollouts"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "rollout-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "rollout-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    ]
    return yaml.safe_dump_all(docs)


def test_kubectl_canary_status_without_events_access(
    crd_installed: Cluster, namespace: str, tmp_path: Path
) -> None:
    cluster = crd_installed
    cluster.apply(reader_role(namespace), namespace)
    cluster.apply(m.rollout("web-v001", [{"canary": {}}]), namespace)
    kubeconfig = service_account_kubeconfig(cluster, namespace, "reader", tmp_path / "reader")
    result = run_cli(PLUGIN, cluster, "status", "web-v001", kubeconfig=kubeconfig)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Name:        web-v001" in result.stdout
    assert "Phase:" in result.stdout
    assert "Events:      unavailable (permission denied" in result.stdout
    # With Events access, the same command lists them.
    admin = run_cli(PLUGIN, cluster, "status", "web-v001", "-n", namespace)
    assert admin.returncode == 0, admin.stderr
    assert "Events (last" in admin.stdout and "unavailable" not in admin.stdout


# ------------------------------------------------------------ --kubeconfig/--context


def kubeconfig_with_broken_current_context(cluster: Cluster, path: Path) -> tuple[Path, str]:
    """The admin kubeconfig whose current-context points at nothing; returns it and
    the name of the context that works."""
    config: dict[str, Any] = yaml.safe_load(cluster.kubeconfig.read_text())
    base = cluster.kubeconfig.parent
    for entry in config["clusters"] + config["users"]:
        body = entry.get("cluster") or entry.get("user") or {}
        for key in ("certificate-authority", "client-certificate", "client-key"):
            if key in body and not Path(body[key]).is_absolute():
                body[key] = str(base / body[key])
    working = config["current-context"]
    user = config["contexts"][0]["context"]["user"]
    config["clusters"].append({"name": "nowhere", "cluster": {"server": "https://127.0.0.1:9"}})
    config["contexts"].append({"name": "broken", "context": {"cluster": "nowhere", "user": user}})
    config["current-context"] = "broken"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path, working


def test_run_uses_the_given_kubeconfig_and_context(
    crd_installed: Cluster,
    namespace: str,
    operators: list[OperatorProcess],
    tmp_path: Path,
) -> None:
    """KUBECONFIG names a file that does not exist and the given kubeconfig's current
    context is unreachable: only --kubeconfig with --context leads to the cluster."""
    kubeconfig, context = kubeconfig_with_broken_current_context(crd_installed, tmp_path / "config")
    op = OperatorProcess(
        crd_installed,
        namespace,
        tmp_path / "operator.log",
        env={"KUBECONFIG": str(tmp_path / "absent")},
        args=["--http-port", "0", "--kubeconfig", str(kubeconfig), "--context", context],
    ).start()
    operators.append(op)
    crd_installed.apply(m.app(), namespace)
    crd_installed.apply(m.rollout("web-v001", [{"canary": {}}, {"promote": {}}]), namespace)
    body = wait_phase(crd_installed, namespace, "web-v001", {"Succeeded", "Failed"}, timeout=120)
    assert body["status"]["phase"] == "Succeeded", op.log()[-5000:]
    assert op.running()


def test_run_with_an_unusable_kubeconfig_exits_with_one_line(
    crd_installed: Cluster, tmp_path: Path
) -> None:
    kubeconfig, _ = kubeconfig_with_broken_current_context(crd_installed, tmp_path / "config")
    result = run_cli(
        [sys.executable, "-m", "canary_operator.cli.main"],
        crd_installed,
        "run",
        "--kubeconfig",
        str(kubeconfig),
        "--context",
        "no-such-context",
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "no-such-context" in result.stderr
