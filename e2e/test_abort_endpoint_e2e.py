"""POST /abort/{namespace}/{name} on a real API server: the caller's token is
reviewed by the API server (TokenReview) and its permission checked
(SubjectAccessReview, verb patch on that rollout); only then is spec.abort set,
and the rollout ends Aborted with a verified cleanup. Without a token, with a
forged one or without permission: 401/403 and the rollout is untouched."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import manifests as m
from e2e.conftest import (
    OperatorProcess,
    canary_objects,
    get_rollout,
    serving_operator,
    stable_image,
    wait_phase,
)
from tests.harness.cluster import Cluster

pytestmark = pytest.mark.cluster

CANARY = {"name": "start canary", "canary": {"replicas": 1}}
HOLD = {"name": "hold", "pause": {}}
PROMOTE = {"promote": {}}


def identities(namespace: str) -> str:
    """deployer: may patch web-v001 only (resourceNames); viewer: may only read."""
    docs: list[dict[str, Any]] = []
    rules = {
        "deployer": [
            {
                "apiGroups": ["canary-operator.dev"],
                "resources": ["canaryrollouts"],
                "resourceNames": ["web-v001"],
                "verbs": ["get", "patch"],
            }
        ],
        "viewer": [
            {
                "apiGroups": ["canary-operator.dev"],
                "resources": ["canaryrollouts"],
                "verbs": ["get", "list", "watch"],
            }
        ],
    }
    for name, role_rules in rules.items():
        meta = {"name": name, "namespace": namespace}
        docs.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta})
        docs.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": meta,
                "rules": role_rules,
            }
        )
        docs.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": meta,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            }
        )
    return yaml.safe_dump_all(docs)


def post(url: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, method="POST", data=b"{}")
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


@pytest.fixture
def endpoint(
    kube_cluster: Cluster, namespace: str, operators: list[OperatorProcess], tmp_path: Path
) -> str:
    return serving_operator(kube_cluster, namespace, operators, tmp_path / "op.log")


def test_abort_endpoint(kube_cluster: Cluster, namespace: str, endpoint: str) -> None:
    kube_cluster.apply(identities(namespace), namespace)
    token = {
        who: kube_cluster.kubectl("create", "token", who, "-n", namespace).stdout.strip()
        for who in ("deployer", "viewer")
    }
    kube_cluster.apply(m.app(), namespace)
    kube_cluster.apply(m.rollout("web-v001", [CANARY, HOLD, PROMOTE]), namespace)
    kube_cluster.apply(m.rollout("web-v002", [CANARY, PROMOTE]), namespace)
    wait_phase(kube_cluster, namespace, "web-v001", "Paused")
    wait_phase(kube_cluster, namespace, "web-v002", "Queued")
    url = f"{endpoint}/abort/{namespace}"
    before = get_rollout(kube_cluster, namespace, "web-v001")

    refused = [
        (post(f"{url}/web-v001"), 401),
        (post(f"{url}/web-v001", "not-a-token"), 401),
        (post(f"{url}/web-v001", token["deployer"] + "x"), 401),  # a forged signature
        (post(f"{url}/web-v001", token["viewer"]), 403),  # may read, not patch
        (post(f"{url}/web-v002", token["deployer"]), 403),  # may patch web-v001 only
    ]
    for (code, body), expected in refused:
        assert code == expected, body
        assert body["aborted"] is False
    _, denied = refused[3][0]
    assert denied["error"] == (
        f"system:serviceaccount:{namespace}:viewer may not patch "
        f"canaryrollouts.canary-operator.dev 'web-v001' in namespace '{namespace}'"
    )
    # Nothing changed: the same spec and generation (the operator's own status
    # writes may move the resourceVersion), no abort, still paused / queued.
    after = get_rollout(kube_cluster, namespace, "web-v001")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"] == before["spec"] and "abort" not in after["spec"]
    assert after["status"]["phase"] == "Paused"
    assert "abort" not in get_rollout(kube_cluster, namespace, "web-v002")["spec"]

    code, body = post(f"{url}/web-v001", token["deployer"])
    assert code == 202, body
    assert body == {
        "aborted": True,
        "phase": "Paused",
        "requestedBy": f"system:serviceaccount:{namespace}:deployer",
        "name": "web-v001",
        "namespace": namespace,
    }
    aborted = wait_phase(kube_cluster, namespace, "web-v001", "Aborted")
    assert aborted["spec"]["abort"] is True
    assert aborted["status"]["outcome"]["result"] == "Aborted"
    verified = next(c for c in aborted["status"]["conditions"] if c["type"] == "CleanupVerified")
    assert verified["status"] == "True"
    # The next version ran once the aborted one had cleaned up and let the lock go.
    wait_phase(kube_cluster, namespace, "web-v002", "Succeeded")
    assert canary_objects(kube_cluster, namespace) == []
    assert stable_image(kube_cluster, namespace) == "registry.example.com/web:2.0"

    # Orca also calls the cancel endpoint after a terminal status: an ended run is
    # left alone (no new generation), 409.
    generation = get_rollout(kube_cluster, namespace, "web-v001")["metadata"]["generation"]
    code, body = post(f"{url}/web-v001", token["deployer"])
    assert code == 409 and body["phase"] == "Aborted", body
    assert get_rollout(kube_cluster, namespace, "web-v001")["metadata"]["generation"] == generation
    assert post(f"{url}/nope", token["deployer"])[0] == 403  # no name leaks to the unauthorised
