"""Manifests of the objects a rollout creates. Pure functions of the rollout and target.

Every created object carries the labels below, so cleanup (including recovery cleanup
by a later rollout that took the lock over) finds them by label, not by memory.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable
from typing import Any

from canary_operator.api import models
from canary_operator.api.models import CanaryRolloutSpec, JobTemplate

JsonObj = dict[str, Any]

MANAGED_BY = "app.kubernetes.io/managed-by"
OPERATOR = "canary-operator"
TARGET_LABEL = "canary-operator.dev/target"
ROLE_LABEL = "canary-operator.dev/role"
ROLLOUT_LABEL = "canary-operator.dev/rollout"
PURPOSE_LABEL = "canary-operator.dev/purpose"
PROMOTED_BY = "canary-operator.dev/promoted-by"
FENCING = "canary-operator.dev/fencing-token"
# JSON: which rollout/run promoted which images, and how old that version is.
PROMOTION = "canary-operator.dev/promotion"
# JSON, written with a promotion: what it replaced (the run promoting, the pod template,
# the previous promotion record and promoted-by), so that a cleanup can undo it.
PRE_PROMOTION = "canary-operator.dev/pre-promotion"
REVISION = "deployment.kubernetes.io/revision"  # set by the Deployment controller
# JSON on the target while a Shift run (replicas router) has it scaled down: the replicas
# to restore, the replicas last written and the floor (engine.types.StableRecord).
STABLE_REPLICAS = "canary-operator.dev/stable-replicas"
FIELD_MANAGER = "canary-operator"  # as kube.api.FIELD_MANAGER (objects stays import-free)


def _name_base(spec: CanaryRolloutSpec, room: int) -> str:
    return _base_of(spec.target.deployment, room)


def _base_of(deployment: str, room: int) -> str:
    """The target's name made the start of an RFC 1035 label (letters, digits, '-',
    starting with a letter) of at most `room` characters: a Service name must be one,
    a Deployment name (a DNS subdomain) may contain dots."""
    base = deployment.replace(".", "-")
    if not base[:1].isalpha():
        base = f"c-{base}"
    return base[:room].rstrip("-")


def target_name_base(deployment: str) -> str:
    """The start every object name and label derived from the target Deployment shares
    (the shortest of them): two targets with the same base can collide in those names,
    and two with different bases cannot."""
    return _base_of(deployment, 54)


def canary_name(spec: CanaryRolloutSpec) -> str:
    """Name of the canary Deployment and Service."""
    return f"{_name_base(spec, 56)}-canary"


def canary_service_name(spec: CanaryRolloutSpec) -> str:
    """Name of the canary Service (a blue-green's preview Service: its previewService)."""
    blue_green = spec.blue_green
    if blue_green is not None and blue_green.preview_service:
        return blue_green.preview_service
    return canary_name(spec)


def baseline_name(spec: CanaryRolloutSpec) -> str:
    return f"{_name_base(spec, 54)}-baseline"


def selector_labels(spec: CanaryRolloutSpec, role: str = "canary") -> dict[str, str]:
    return {TARGET_LABEL: _label_value(spec.target.deployment), ROLE_LABEL: role}


def target_selector(spec: CanaryRolloutSpec) -> str:
    """Label selector of everything the operator created for this target."""
    return f"{TARGET_LABEL}={_label_value(spec.target.deployment)}"


def operator_jobs_selector(spec: CanaryRolloutSpec) -> str:
    """The test and cleanup Jobs of rollouts of this target (all carry managed-by)."""
    return f"{MANAGED_BY}={OPERATOR},{target_selector(spec)}"


def any_role_selector(spec: CanaryRolloutSpec) -> str:
    """Label selector of every pod/object the operator created for this target."""
    return f"{TARGET_LABEL}={_label_value(spec.target.deployment)},{ROLE_LABEL}"


def _label_value(text: str) -> str:
    return text[:63].rstrip("-.")


def owner_reference(name: str, uid: str) -> JsonObj:
    return {
        "apiVersion": f"{models.GROUP}/{models.VERSION}",
        "kind": models.KIND,
        "name": name,
        "uid": uid,
        "blockOwnerDeletion": True,
    }


def new_pod_template(spec: CanaryRolloutSpec, target: JsonObj) -> JsonObj:
    """The new version's pod template: spec.template, or the target's with new images."""
    current: JsonObj = copy.deepcopy(target["spec"]["template"])
    if spec.template is not None:
        template: JsonObj = spec.template.model_dump(by_alias=True, exclude_none=True)
        meta = template.setdefault("metadata", {})
        # Keep the target's pod labels: its Deployment selector must still match after
        # promotion; the user's labels are added on top.
        labels = dict(current.get("metadata", {}).get("labels") or {})
        labels.update(meta.get("labels") or {})
        meta["labels"] = labels
        return template
    containers = {c["name"]: c for c in current["spec"].get("containers", [])}
    for override in spec.images or []:
        if override.container not in containers:
            raise ValueError(
                f"spec.images: container {override.container!r} not in the target "
                f"(has {', '.join(sorted(containers)) or 'none'})"
            )
        containers[override.container]["image"] = override.image
    return current


def template_images(template: JsonObj) -> dict[str, str]:
    """container -> image of a pod template."""
    return {
        str(c.get("name")): str(c.get("image", ""))
        for c in (template.get("spec") or {}).get("containers") or []
    }


def template_hash(template: JsonObj) -> str:
    """A short hash of a pod template as the API server returns it: equal templates
    (a template put back as it was read) have equal hashes."""
    text = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def owned_metadata(
    spec: CanaryRolloutSpec,
    role: str,
    name: str,
    namespace: str,
    rollout_name: str,
    rollout_uid: str,
) -> JsonObj:
    return {
        "name": name,
        "namespace": namespace,
        "labels": {
            **selector_labels(spec, role),
            MANAGED_BY: OPERATOR,
            ROLLOUT_LABEL: _label_value(rollout_name),
        },
        "ownerReferences": [owner_reference(rollout_name, rollout_uid)],
    }


def _role_deployment(
    spec: CanaryRolloutSpec,
    role: str,
    name: str,
    namespace: str,
    rollout_name: str,
    rollout_uid: str,
    template: JsonObj,
    replicas: int,
    drop_labels: Iterable[str] = (),
) -> JsonObj:
    """A Deployment of `role` (canary, baseline) whose selector only matches its own pods."""
    meta = template.setdefault("metadata", {})
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in drop_labels}
    labels.update(selector_labels(spec, role))
    labels[ROLLOUT_LABEL] = _label_value(rollout_name)
    meta["labels"] = labels
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owned_metadata(spec, role, name, namespace, rollout_name, rollout_uid),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(spec, role)},
            "template": template,
        },
    }


def canary_deployment(
    spec: CanaryRolloutSpec,
    rollout_name: str,
    rollout_uid: str,
    namespace: str,
    target: JsonObj,
    service_selector: dict[str, str] | None,
    replicas: int,
    drop_labels: Iterable[str] | None = None,
) -> JsonObj:
    # With a real router the stable Service must not reach canary pods: drop the labels
    # its selector uses; the canary Service selects ours instead. The router may say
    # otherwise (Istio subsets: the stable host must reach them, the stable subset not).
    if drop_labels is not None:
        drop: Iterable[str] = drop_labels
    else:
        drop = (service_selector or {}) if spec.router_kind != models.ROUTER_REPLICAS else {}
    return _role_deployment(
        spec,
        "canary",
        canary_name(spec),
        namespace,
        rollout_name,
        rollout_uid,
        new_pod_template(spec, target),
        replicas,
        drop,
    )


def baseline_deployment(
    spec: CanaryRolloutSpec,
    rollout_name: str,
    rollout_uid: str,
    namespace: str,
    target: JsonObj,
    replicas: int,
) -> JsonObj:
    """A fresh Deployment of the *stable* version at the canary's size: the control a
    statistical judge compares the canary with (both start at the same time)."""
    return _role_deployment(
        spec,
        "baseline",
        baseline_name(spec),
        namespace,
        rollout_name,
        rollout_uid,
        copy.deepcopy(target["spec"]["template"]),
        replicas,
    )


def canary_service(
    spec: CanaryRolloutSpec,
    rollout_name: str,
    rollout_uid: str,
    namespace: str,
    stable_service: JsonObj | None,
    target: JsonObj,
) -> JsonObj:
    if stable_service is not None:
        ports = [
            {k: v for k, v in p.items() if k in ("name", "port", "targetPort", "protocol")}
            for p in stable_service["spec"].get("ports", [])
        ]
    else:
        ports = [
            {
                "name": p.get("name") or f"p{p['containerPort']}",
                "port": p["containerPort"],
                "targetPort": p["containerPort"],
                "protocol": p.get("protocol", "TCP"),
            }
            for c in target["spec"]["template"]["spec"].get("containers", [])
            for p in c.get("ports", [])
        ] or [{"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"}]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owned_metadata(
            spec, "canary", canary_service_name(spec), namespace, rollout_name, rollout_uid
        ),
        "spec": {"selector": selector_labels(spec), "ports": ports},
    }


def job_manifest(
    spec: CanaryRolloutSpec,
    rollout_name: str,
    rollout_uid: str,
    namespace: str,
    job_name: str,
    template: JobTemplate,
    step_label: str,
    cleanup: bool,
    service_port: int | None,
) -> JsonObj:
    body = template.model_dump(by_alias=True, exclude_none=True)
    job_spec: JsonObj = copy.deepcopy(body["spec"])
    job_spec.setdefault("backoffLimit", 0)
    pod = job_spec.setdefault("template", {}).setdefault("spec", {})
    pod.setdefault("restartPolicy", "Never")
    canary_host = f"{canary_service_name(spec)}.{namespace}.svc"
    env = [
        {"name": "ROLLOUT_NAME", "value": rollout_name},
        {"name": "ROLLOUT_NAMESPACE", "value": namespace},
        {"name": "ROLLOUT_STEP", "value": step_label},
        {"name": "CANARY_SERVICE", "value": canary_host},
        {
            "name": "CANARY_URL",
            "value": f"http://{canary_host}" + (f":{service_port}" if service_port else ""),
        },
        {
            "name": "STABLE_SERVICE",
            "value": f"{spec.target.service or spec.target.deployment}.{namespace}.svc",
        },
    ]
    for container in pod.get("containers", []):
        names = {e.get("name") for e in container.get("env", [])}
        container["env"] = list(container.get("env", [])) + [
            e for e in env if e["name"] not in names
        ]
    meta = body.get("metadata") or {}
    labels = {
        **(meta.get("labels") or {}),
        MANAGED_BY: OPERATOR,
        TARGET_LABEL: _label_value(spec.target.deployment),
        ROLLOUT_LABEL: _label_value(rollout_name),
        PURPOSE_LABEL: "cleanup" if cleanup else "test",
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {
                **(meta.get("annotations") or {}),
                "canary-operator.dev/step": step_label,
            },
            "ownerReferences": [owner_reference(rollout_name, rollout_uid)],
        },
        "spec": job_spec,
    }


# What the operator last applied to an object it owns, as a digest of the manifest.
APPLIED_DIGEST_ANNOTATION = "canary-operator.dev/applied-digest"


def stamp_digest(manifest: JsonObj) -> str:
    """Put into the manifest a digest of itself (its annotations included, this one
    left out), and return it."""
    annotations = manifest.setdefault("metadata", {}).setdefault("annotations", {})
    annotations.pop(APPLIED_DIGEST_ANNOTATION, None)
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:20]
    annotations[APPLIED_DIGEST_ANNOTATION] = digest
    return digest


def applied_as(current: JsonObj | None, digest: str, manifest: JsonObj) -> bool:
    """Whether `current` (as read) is what the manifest with this digest made it: the
    same digest, not being deleted, and the replicas it asked for (a scale by someone
    else leaves the annotation as it was)."""
    if current is None or current["metadata"].get("deletionTimestamp"):
        return False
    annotations = current["metadata"].get("annotations") or {}
    if annotations.get(APPLIED_DIGEST_ANNOTATION) != digest:
        return False
    wanted = (manifest.get("spec") or {}).get("replicas")
    return wanted is None or (current.get("spec") or {}).get("replicas") == wanted
