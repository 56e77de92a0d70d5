"""Unit tests of the manifest builders (`kube/objects.py`)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from canary_operator.api.models import CanaryRolloutSpec, JobTemplate
from canary_operator.kube import objects
from canary_operator.kube.objects import (
    APPLIED_DIGEST_ANNOTATION,
    MANAGED_BY,
    PURPOSE_LABEL,
    ROLE_LABEL,
    ROLLOUT_LABEL,
    TARGET_LABEL,
    applied_as,
    stamp_digest,
)

NS = "shop"
UID = "uid-123"
RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
STABLE_SELECTOR = {"app": "web", "tier": "front"}
SPINNAKER = {
    "moniker.spinnaker.io/application": "web",
    "artifact.spinnaker.io/name": "web",
}


def target(**pod_labels: str) -> dict[str, Any]:
    labels = {**STABLE_SELECTOR, "version": "1", **pod_labels}
    return {
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": STABLE_SELECTOR},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {"name": "app", "image": "web:1", "ports": [{"containerPort": 8080}]},
                        {"name": "sidecar", "image": "proxy:1"},
                    ]
                },
            },
        },
    }


def stable_service() -> dict[str, Any]:
    return {
        "spec": {
            "selector": STABLE_SELECTOR,
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}],
        }
    }


def spec(router: str = "replicas", **fields: Any) -> CanaryRolloutSpec:
    body: dict[str, Any] = {
        "target": {"deployment": "web", "service": "web"},
        "images": [{"container": "app", "image": "web:2"}],
        "steps": [{"canary": {}}],
        **fields,
    }
    if router == "gatewayAPI":
        body["trafficRouting"] = {"gatewayAPI": {"httpRoute": "web"}}
    return CanaryRolloutSpec.model_validate(body)


def canary(spec_: CanaryRolloutSpec, body: dict[str, Any] | None = None) -> dict[str, Any]:
    return objects.canary_deployment(
        spec_, "web-v2", UID, NS, body or target(), STABLE_SELECTOR, replicas=3
    )


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def env_of(job: dict[str, Any], container: int = 0) -> dict[str, str]:
    containers = job["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in containers[container].get("env", [])}


def job(
    template: dict[str, Any] | None = None, cleanup: bool = False, port: int | None = 80
) -> dict[str, Any]:
    body = template or {
        "spec": {"template": {"spec": {"containers": [{"name": "t", "image": "busybox"}]}}}
    }
    return objects.job_manifest(
        spec(),
        "web-v2",
        UID,
        NS,
        "web-v2-uid-1-r1-s2",
        JobTemplate.model_validate(body),
        "step 2",
        cleanup=cleanup,
        service_port=port,
    )


# ------------------------------------------------------------- canary Deployment


@pytest.mark.parametrize("router", ["replicas", "gatewayAPI"])
def test_canary_selector_never_matches_the_stable_pods(router: str) -> None:
    deployment = canary(spec(router))
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {TARGET_LABEL: "web", ROLE_LABEL: "canary"}
    assert not matches(selector, target()["spec"]["template"]["metadata"]["labels"])
    assert matches(selector, pod_labels(deployment)), "the selector must match its own pods"


def test_gateway_api_canary_pods_are_not_reached_by_the_stable_service() -> None:
    labels = pod_labels(canary(spec("gatewayAPI")))
    assert not set(STABLE_SELECTOR) & set(labels)
    assert labels["version"] == "1", "other labels are kept"
    assert labels[ROLLOUT_LABEL] == "web-v2"


def test_replicas_canary_pods_keep_the_stable_service_labels() -> None:
    labels = pod_labels(canary(spec("replicas")))
    assert matches(STABLE_SELECTOR, labels), "the stable Service must reach canary pods"
    assert labels[ROLE_LABEL] == "canary"


def test_canary_deployment_metadata_and_owner() -> None:
    deployment = canary(spec())
    meta = deployment["metadata"]
    assert (meta["name"], meta["namespace"]) == ("web-canary", NS)
    assert meta["labels"] == {
        TARGET_LABEL: "web",
        ROLE_LABEL: "canary",
        MANAGED_BY: "canary-operator",
        ROLLOUT_LABEL: "web-v2",
    }
    assert meta["ownerReferences"] == [objects.owner_reference("web-v2", UID)]
    assert deployment["spec"]["replicas"] == 3


def test_owner_reference_points_at_the_rollout() -> None:
    assert objects.owner_reference("web-v2", UID) == {
        "apiVersion": "canary-operator.dev/v1alpha1",
        "kind": "CanaryRollout",
        "name": "web-v2",
        "uid": UID,
        "blockOwnerDeletion": True,
    }


# ---------------------------------------------------------------- pod template


def test_image_overrides_change_only_the_named_container_and_not_the_target() -> None:
    body = target()
    before = copy.deepcopy(body)
    template = objects.new_pod_template(spec(), body)
    images = {c["name"]: c["image"] for c in template["spec"]["containers"]}
    assert images == {"app": "web:2", "sidecar": "proxy:1"}
    assert body == before


def test_image_override_of_an_unknown_container_names_it() -> None:
    bad = spec(images=[{"container": "nope", "image": "x:1"}])
    with pytest.raises(ValueError, match=r"'nope'.*app, sidecar"):
        objects.new_pod_template(bad, target())


def test_template_mode_keeps_target_labels_and_spinnaker_metadata() -> None:
    template = {
        "metadata": {"labels": {"app.kubernetes.io/name": "web"}, "annotations": SPINNAKER},
        "spec": {"containers": [{"name": "app", "image": "web:3"}]},
    }
    body = objects.new_pod_template(spec(images=None, template=template), target())
    assert body["metadata"]["labels"] == {
        **STABLE_SELECTOR,
        "version": "1",
        "app.kubernetes.io/name": "web",
    }
    assert body["metadata"]["annotations"] == SPINNAKER
    assert body["spec"]["containers"] == [{"name": "app", "image": "web:3"}]


@pytest.mark.parametrize(
    ("deployment", "name"),
    [
        ("web", "web-canary"),
        ("web.v1", "web-v1-canary"),
        ("1web", "c-1web-canary"),
        ("a" * 253, "a" * 56 + "-canary"),
        ("a" * 55 + ".b", "a" * 55 + "-canary"),
        ("a" * 53 + ".bc", "a" * 53 + "-bc-canary"),  # the baseline is cut at the dot
    ],
)
def test_canary_name_is_a_valid_service_name(deployment: str, name: str) -> None:
    s = spec(target={"deployment": deployment})
    assert objects.canary_name(s) == name
    baseline = objects.baseline_name(s)
    for value in (name, baseline):
        assert RFC1035.match(value) and len(value) <= 63
    assert baseline.endswith("-baseline") and baseline != name


def test_long_target_names_make_valid_label_values() -> None:
    s = spec(target={"deployment": "a" * 62 + ".b" + "c" * 100})
    value = objects.selector_labels(s)[TARGET_LABEL]
    assert len(value) <= 63 and re.match(r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$", value)


# ---------------------------------------------------------------- canary Service


def test_canary_service_copies_the_stable_ports_and_selects_canary_pods() -> None:
    service = objects.canary_service(spec(), "web-v2", UID, NS, stable_service(), target())
    assert service["metadata"]["name"] == "web-canary"
    assert service["spec"]["selector"] == {TARGET_LABEL: "web", ROLE_LABEL: "canary"}
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
    assert service["metadata"]["ownerReferences"][0]["uid"] == UID


def test_canary_service_without_a_stable_service_uses_container_ports() -> None:
    service = objects.canary_service(spec(), "web-v2", UID, NS, None, target())
    ports = [{"name": "p8080", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]
    assert service["spec"]["ports"] == ports
    bare = target()
    for container in bare["spec"]["template"]["spec"]["containers"]:
        container.pop("ports", None)
    service = objects.canary_service(spec(), "web-v2", UID, NS, None, bare)
    assert [p["port"] for p in service["spec"]["ports"]] == [80]


# ------------------------------------------------------------------------- Jobs


def test_job_environment_names_the_canary_and_the_rollout() -> None:
    env = env_of(job())
    assert env == {
        "ROLLOUT_NAME": "web-v2",
        "ROLLOUT_NAMESPACE": NS,
        "ROLLOUT_STEP": "step 2",
        "CANARY_SERVICE": f"web-canary.{NS}.svc",
        "CANARY_URL": f"http://web-canary.{NS}.svc:80",
        "STABLE_SERVICE": f"web.{NS}.svc",
    }
    assert env_of(job(port=None))["CANARY_URL"] == f"http://web-canary.{NS}.svc"


def test_job_user_env_wins_and_every_container_gets_the_context() -> None:
    containers: list[dict[str, Any]] = [
        {"name": "a", "image": "x", "env": [{"name": "CANARY_URL", "value": "http://mine"}]},
        {"name": "b", "image": "y"},
    ]
    body = {"spec": {"template": {"spec": {"containers": containers}}}}
    manifest = job(body)
    assert env_of(manifest, 0)["CANARY_URL"] == "http://mine"
    assert [e["name"] for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]].count(
        "CANARY_URL"
    ) == 1
    assert env_of(manifest, 1)["CANARY_SERVICE"] == f"web-canary.{NS}.svc"
    assert containers[1].get("env") is None, "the spec's template is not mutated"


def test_job_defaults_fail_fast_without_overriding_the_user() -> None:
    manifest = job()
    assert manifest["spec"]["backoffLimit"] == 0
    assert manifest["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    custom = {
        "spec": {
            "backoffLimit": 2,
            "template": {"spec": {"restartPolicy": "OnFailure", "containers": []}},
        }
    }
    manifest = job(custom)
    assert manifest["spec"]["backoffLimit"] == 2
    assert manifest["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"


@pytest.mark.parametrize(("cleanup", "purpose"), [(False, "test"), (True, "cleanup")])
def test_job_labels_annotations_and_owner(cleanup: bool, purpose: str) -> None:
    body = {
        "metadata": {"labels": {"team": "a", PURPOSE_LABEL: "spoofed"}, "annotations": SPINNAKER},
        "spec": {"template": {"spec": {"containers": []}}},
    }
    manifest = job(body, cleanup=cleanup)
    meta = manifest["metadata"]
    assert (meta["name"], meta["namespace"]) == ("web-v2-uid-1-r1-s2", NS)
    assert meta["labels"] == {
        "team": "a",
        MANAGED_BY: "canary-operator",
        TARGET_LABEL: "web",
        ROLLOUT_LABEL: "web-v2",
        PURPOSE_LABEL: purpose,
    }
    assert meta["annotations"] == {**SPINNAKER, "canary-operator.dev/step": "step 2"}
    assert meta["ownerReferences"] == [objects.owner_reference("web-v2", UID)]


def test_a_manifest_carries_a_digest_of_itself_and_is_known_as_applied() -> None:
    manifest = {"metadata": {"name": "web-canary", "labels": {"a": "1"}}, "spec": {"replicas": 2}}
    digest = stamp_digest(manifest)
    assert manifest["metadata"]["annotations"][APPLIED_DIGEST_ANNOTATION] == digest
    assert stamp_digest(manifest) == digest, "stamping again gives the same digest"
    applied = {
        "metadata": {"name": "web-canary", "annotations": {APPLIED_DIGEST_ANNOTATION: digest}},
        "spec": {"replicas": 2},
    }
    assert applied_as(applied, digest, manifest)
    # Anything else: applied again.
    assert not applied_as(None, digest, manifest)
    scaled = {**applied, "spec": {"replicas": 5}}
    assert not applied_as(scaled, digest, manifest), "scaled by someone else"
    going = {**applied, "metadata": {**applied["metadata"], "deletionTimestamp": "now"}}
    assert not applied_as(going, digest, manifest)
    changed = {"metadata": {"name": "web-canary", "labels": {"a": "2"}}, "spec": {"replicas": 2}}
    assert stamp_digest(changed) != digest
