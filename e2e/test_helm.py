"""The Helm chart (charts/canary-operator): `helm template` of each mode renders the
same objects as the kustomize overlays, passes a server-side dry-run, and
`helm install`/`uninstall` leaves the CRD and existing rollouts in place."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import manifests as m
from e2e.conftest import REPO, get_rollout
from tests.harness.cluster import Cluster, wait_for
from tests.harness.helm import ObjectKey, by_key, helm_binary, template

pytestmark = [pytest.mark.cluster, pytest.mark.needs_build("helm")]

MANIFESTS = REPO / "manifests"
CRD_NAME = "canaryrollouts.canary-operator.dev"
MONITORING_KINDS = {"ServiceMonitor", "PrometheusRule"}
# Each mode: the kustomizations a user applies, and the chart values that match them.
MODES: dict[str, tuple[list[str], list[str]]] = {
    "cluster": (["crds", "cluster"], ["--set", "namespace.create=true"]),
    "namespaced": (
        ["namespaced"],
        [
            "--set",
            "namespace.create=true",
            "--set",
            "watchNamespaces={my-app}",
            "--set",
            "crds.install=false",
        ],
    ),
}


@pytest.fixture(scope="module")
def helm() -> Path:
    return helm_binary()


def kustomize(cluster: Cluster, *paths: Path) -> dict[ObjectKey, dict[str, Any]]:
    out: dict[ObjectKey, dict[str, Any]] = {}
    for path in paths:
        out.update(by_key(cluster.kubectl("kustomize", str(path)).stdout))
    return out


def assert_same_objects(
    kustomized: dict[ObjectKey, dict[str, Any]], charted: dict[ObjectKey, dict[str, Any]]
) -> None:
    assert sorted(charted) == sorted(kustomized)
    for key, obj in kustomized.items():
        assert charted[key] == obj, f"{key} differs:\n{yaml.safe_dump(charted[key])}"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_helm_template_equals_kustomize(mode: str, kube_cluster: Cluster, helm: Path) -> None:
    overlays, values = MODES[mode]
    kustomized = kustomize(kube_cluster, *(MANIFESTS / o for o in overlays))
    charted = by_key(template(helm, *values))
    assert_same_objects(kustomized, charted)
    kinds = {kind for kind, _, _ in charted}
    assert {"Deployment", "ServiceAccount", "Service", "PodDisruptionBudget"} <= kinds
    assert ("CustomResourceDefinition" in kinds) == (mode == "cluster")


@pytest.mark.parametrize("mode", sorted(MODES))
def test_webhook_secret_opt_in_equals_the_kustomize_component(
    mode: str, kube_cluster: Cluster, helm: Path, tmp_path: Path
) -> None:
    overlays, values = MODES[mode]
    operator_overlay = overlays[-1]
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(MANIFESTS / operator_overlay, tmp_path)],
                "components": [
                    os.path.relpath(MANIFESTS / "components" / "webhook-secrets", tmp_path)
                ],
            }
        )
    )
    kustomized = kustomize(kube_cluster, *(MANIFESTS / o for o in overlays[:-1]), tmp_path)
    charted = by_key(template(helm, *values, "--set", "webhookSecrets={webhook-credentials}"))
    assert_same_objects(kustomized, charted)
    role = next(
        o
        for (kind, _, name), o in charted.items()
        if name == "canary-operator" and kind in ("Role", "ClusterRole")
    )
    assert role["rules"][-1]["resourceNames"] == ["webhook-credentials"]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_notifications_opt_in_equals_the_kustomize_component(
    mode: str, kube_cluster: Cluster, helm: Path, tmp_path: Path
) -> None:
    overlays, values = MODES[mode]
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(MANIFESTS / overlays[-1], tmp_path)],
                "components": [
                    os.path.relpath(MANIFESTS / "components" / "notifications", tmp_path)
                ],
            }
        )
    )
    kustomized = kustomize(kube_cluster, *(MANIFESTS / o for o in overlays[:-1]), tmp_path)
    charted = by_key(template(helm, *values, "--set", "notifications=true"))
    assert_same_objects(kustomized, charted)


def test_monitoring_toggles_equal_manifests_monitoring(kube_cluster: Cluster, helm: Path) -> None:
    overlays, values = MODES["cluster"]
    kustomized = kustomize(
        kube_cluster, *(MANIFESTS / o for o in overlays), MANIFESTS / "monitoring"
    )
    toggles = ["serviceMonitor", "prometheusRule", "dashboard"]
    on = [arg for t in toggles for arg in ("--set", f"metrics.{t}.enabled=true")]
    assert_same_objects(kustomized, by_key(template(helm, *values, *on)))
    off = by_key(template(helm, *values))
    assert not [k for k in off if k[0] in MONITORING_KINDS or k[2].endswith("-dashboard")]


def test_values_reach_the_deployment(helm: Path) -> None:
    charted = by_key(
        template(
            helm,
            "--set",
            "image.repository=registry.example.com/cro,image.tag=1.2.3,replicas=3",
            "--set",
            "resources.limits.memory=512Mi",
            "--set",
            "watchNamespaces={a,b}",
            "--set",
            "allowJobServiceAccounts={tester,ci/smoke}",
            release="cro",
            namespace="ops",
        )
    )
    deployment = charted[("Deployment", "ops", "cro-canary-operator")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/cro:1.2.3"
    assert deployment["spec"]["replicas"] == 3
    assert container["resources"]["limits"]["memory"] == "512Mi"
    assert container["args"][-3:] == [
        "--namespace=a",
        "--namespace=b",
        "--allow-job-service-accounts=tester,ci/smoke",
    ]
    roles = {(kind, ns) for kind, ns, name in charted if name == "cro-canary-operator"}
    assert {("Role", "a"), ("Role", "b"), ("RoleBinding", "a"), ("RoleBinding", "b")} <= roles
    assert not [k for k in charted if k[0] in ("ClusterRoleBinding",)]
    binding = charted[("RoleBinding", "a", "cro-canary-operator")]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "cro-canary-operator", "namespace": "ops"}
    ]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_helm_template_passes_a_server_side_dry_run(
    mode: str, crd_installed: Cluster, namespace: str, helm: Path
) -> None:
    """Rendered into the test's namespace (which exists), watching it."""
    values = ["--set", "crds.install=false"] if mode == "namespaced" else []
    if mode == "namespaced":
        values += ["--set", f"watchNamespaces={{{namespace}}}"]
    rendered = template(helm, *values, release=f"dry-{mode}", namespace=namespace)
    result = crd_installed.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=rendered, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "deployment.apps/dry-" in result.stdout


# ------------------------------------------------------------------- install


def run_helm(
    helm: Path, cluster: Cluster, *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(helm), *args],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"helm {' '.join(args)}: {result.stderr}"
    return result


@pytest.fixture
def adopted_crd(crd_installed: Cluster, namespace: str) -> Iterator[str]:
    """The session's CRD, marked as belonging to a release in `namespace` (what Helm
    needs to take over an existing object), restored afterwards. Returns the release."""
    release = f"cro-{secrets.token_hex(3)}"
    owner = [
        f"meta.helm.sh/release-name={release}",
        f"meta.helm.sh/release-namespace={namespace}",
    ]
    crd_installed.kubectl("annotate", "crd", CRD_NAME, "--overwrite", *owner)
    crd_installed.kubectl(
        "label", "crd", CRD_NAME, "--overwrite", "app.kubernetes.io/managed-by=Helm"
    )
    try:
        yield release
    finally:
        crd_installed.kubectl(
            "annotate",
            "crd",
            CRD_NAME,
            "meta.helm.sh/release-name-",
            "meta.helm.sh/release-namespace-",
            "helm.sh/resource-policy-",
            check=False,
        )
        crd_installed.kubectl(
            "label",
            "crd",
            CRD_NAME,
            "app.kubernetes.io/managed-by-",
            "helm.sh/chart-",
            "app.kubernetes.io/instance-",
            "app.kubernetes.io/name-",
            check=False,
        )
        for suffix in ("aggregate-to-view", "aggregate-to-edit"):
            crd_installed.kubectl(
                "delete",
                "clusterrole",
                f"{release}-canary-operator-{suffix}",
                "--ignore-not-found",
                check=False,
            )


def test_helm_install_and_uninstall_keep_the_crd_and_rollouts(
    crd_installed: Cluster, namespace: str, helm: Path, adopted_crd: str
) -> None:
    cluster, release = crd_installed, adopted_crd
    cluster.apply(m.rollout("web-v001", [{"canary": {}}]), namespace)
    rollout_uid = get_rollout(cluster, namespace, "web-v001")["metadata"]["uid"]
    crd_uid = cluster.get_json("crd", CRD_NAME)["metadata"]["uid"]

    run_helm(
        helm,
        cluster,
        "install",
        release,
        str(REPO / "charts" / "canary-operator"),
        "--namespace",
        namespace,
        "--set",
        f"watchNamespaces={{{namespace}}}",
        "--wait",
        "--timeout",
        "3m",
    )
    fullname = f"{release}-canary-operator"
    deployment = cluster.get_json("deployment", fullname, "-n", namespace)
    assert deployment["status"].get("availableReplicas") == 2
    crd = cluster.get_json("crd", CRD_NAME)
    assert crd["metadata"]["uid"] == crd_uid  # adopted, not recreated
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    run_helm(helm, cluster, "uninstall", release, "--namespace", namespace, "--wait")
    wait_for(
        lambda: (
            not cluster.kubectl(
                "get", "deployment", fullname, "-n", namespace, "--ignore-not-found", "-o", "name"
            ).stdout.strip()
        ),
        60,
        message="the operator Deployment to be removed",
    )
    assert cluster.get_json("crd", CRD_NAME)["metadata"]["uid"] == crd_uid
    assert get_rollout(cluster, namespace, "web-v001")["metadata"]["uid"] == rollout_uid
    # The aggregated roles went with the CRD's keep policy; the operator's own did not.
    assert cluster.kubectl(
        "get", "clusterrole", f"{fullname}-aggregate-to-edit", "-o", "name"
    ).stdout.strip()
    assert not cluster.kubectl(
        "get", "role", fullname, "-n", namespace, "--ignore-not-found", "-o", "name"
    ).stdout.strip()
