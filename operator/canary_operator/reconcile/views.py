"""Kubernetes objects (dicts) as the state machine sees them: WorkloadView, JobView,
PromotionRecord. Pure: no I/O."""

from __future__ import annotations

import json
from typing import Any

from canary_operator.api.timestamps import parse_time
from canary_operator.engine.types import (
    JobView,
    Lingering,
    PrePromotion,
    PromotionRecord,
    WorkloadView,
)
from canary_operator.kube import objects
from canary_operator.kube.api import JsonObj
from canary_operator.traffic.replicas import stable_record

EVIDENCE = "evidence"  # purpose label of a failed test Job kept for its logs

# Container states that no wait cures: the image cannot be had, or the container
# cannot even be created from its configuration.
POD_START_FAILURES = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "ImageInspectError",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


def workload(body: JsonObj | None, pods: list[JsonObj] | None = None) -> WorkloadView | None:
    """A Deployment; with `pods`, also why they cannot come up (if known)."""
    if body is None:
        return None
    status = body.get("status") or {}
    replicas = int(body["spec"].get("replicas", 1))
    return WorkloadView(
        replicas=replicas,
        ready=int(status.get("readyReplicas") or 0),
        available=int(status.get("availableReplicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        current=int(status.get("observedGeneration") or 0)
        >= int(body["metadata"].get("generation") or 0)
        and int(status.get("replicas") or 0) == replicas,
        promoted_by=(body["metadata"].get("annotations") or {}).get(objects.PROMOTED_BY),
        promotion=promotion(body),
        images=objects.template_images(body["spec"].get("template") or {}),
        failure=workload_failure(body, pods) if pods is not None else None,
        stable_record=stable_record(body),
        template_hash=objects.template_hash(body["spec"].get("template") or {}),
        pre_promotion=pre_promotion(body),
    )


def workload_failure(body: JsonObj, pods: list[JsonObj]) -> str | None:
    """Why a Deployment's pods cannot come up, if that is already known: its
    ReplicaSet could not create them (ReplicaFailure), its progress deadline passed, a
    pod cannot pull its image or create a container, or cannot be scheduled."""
    for condition in (body.get("status") or {}).get("conditions") or []:
        kind, value = condition.get("type"), condition.get("status")
        if (kind == "ReplicaFailure" and value == "True") or (
            kind == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            reason = condition.get("reason") or kind
            return f"{reason}: {condition.get('message') or kind}"
    for pod in pods:
        if not pod["metadata"].get("deletionTimestamp"):
            failure = _pod_failure(pod)
            if failure is not None:
                return failure
    return None


def _pod_failure(pod: JsonObj) -> str | None:
    status = pod.get("status") or {}
    name = pod["metadata"]["name"]
    for container in [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in POD_START_FAILURES:
            message = waiting.get("message") or ""
            return (
                f"pod {name} container {container.get('name')}: {waiting['reason']}"
                + (f": {message}" if message else "")
            )[:600]
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return f"pod {name} cannot be scheduled: {condition.get('message') or ''}"[:600]
    return None


def lingering(objs: list[tuple[str, JsonObj | None]]) -> tuple[Lingering, ...]:
    """The (kind, object) pairs that are being deleted but are still there."""
    found = []
    for kind, body in objs:
        meta = (body or {}).get("metadata") or {}
        due = meta.get("deletionTimestamp")
        if body is None or not due:
            continue
        spec = body.get("spec") or {}
        found.append(
            Lingering(
                kind=kind,
                name=meta["name"],
                due=parse_time(due),
                finalizers=tuple(meta.get("finalizers") or ()),
                node=spec.get("nodeName") if kind == "pod" else None,
                node_problem=_node_problem(body) if kind == "pod" else None,
            )
        )
    return tuple(found)


# Why a pod's node cannot confirm it stopped, as the pod's own status says it
# (condition DisruptionTarget's reason; the older status.reason NodeLost).
_NODE_PROBLEMS = {
    "DeletionByTaintManager": "evicted because node {node} is not ready or unreachable",
    "DeletionByPodGC": "node {node} is gone (deleted by the pod garbage collector)",
    "NodeLost": "node {node} was lost",
}


def _node_problem(pod: JsonObj) -> str | None:
    status = pod.get("status") or {}
    node = (pod.get("spec") or {}).get("nodeName") or "?"
    reasons = [status.get("reason")] + [
        c.get("reason")
        for c in status.get("conditions") or []
        if c.get("type") == "DisruptionTarget" and c.get("status") == "True"
    ]
    found = next((r for r in reasons if r in _NODE_PROBLEMS), None)
    return _NODE_PROBLEMS[found].format(node=node) if found else None


def promotion(body: JsonObj) -> PromotionRecord | None:
    """The promotion record on a target (None when absent or unreadable: a record
    edited into nonsense is no reason to refuse anything)."""
    raw = (body["metadata"].get("annotations") or {}).get(objects.PROMOTION)
    try:
        data = json.loads(raw) if raw else None
        if not isinstance(data, dict):
            return None
        return PromotionRecord(
            rollout=str(data["rollout"]),
            uid=str(data["uid"]),
            run=int(data["run"]),
            fingerprint=str(data["fingerprint"]),
            images={str(k): str(v) for k, v in dict(data["images"]).items()},
            version_since=str(data["versionSince"]),
            promoted_at=str(data["promotedAt"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def pre_promotion(body: JsonObj) -> PrePromotion | None:
    """What the target's last promotion replaced (None when absent or unreadable)."""
    data = pre_promotion_data(body)
    if data is None:
        return None
    template = data["template"]
    return PrePromotion(
        run_id=str(data["run"]),
        images=objects.template_images(template),
        template_hash=objects.template_hash(template),
    )


def pre_promotion_data(body: JsonObj) -> dict[str, Any] | None:
    """The annotation canary-operator.dev/pre-promotion as written with a promotion:
    run, template, and the previous promotion record and promoted-by (None if absent)."""
    raw = (body["metadata"].get("annotations") or {}).get(objects.PRE_PROMOTION)
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("template"), dict):
        return None
    if not isinstance(data.get("run"), str):
        return None
    return data


def job(body: JsonObj) -> JobView:
    conditions = {
        c["type"]: c
        for c in (body.get("status") or {}).get("conditions") or []
        if c.get("status") == "True"
    }
    failed = conditions.get("Failed")
    return JobView(
        name=body["metadata"]["name"],
        succeeded="Complete" in conditions,
        failed=failed is not None,
        message=(failed or {}).get("message") or (failed or {}).get("reason") or "",
        cleanup=purpose(body) == "cleanup",
        kept=purpose(body) == EVIDENCE,
    )


def purpose(body: JsonObj) -> str:
    return str((body["metadata"].get("labels") or {}).get(objects.PURPOSE_LABEL, ""))


def with_role(pods: list[JsonObj], role: str) -> list[JsonObj]:
    return [p for p in pods if (p["metadata"].get("labels") or {}).get(objects.ROLE_LABEL) == role]


def owned_by(body: JsonObj, uid: str) -> bool:
    return any(o.get("uid") == uid for o in body["metadata"].get("ownerReferences") or [])


def first_port(service: JsonObj) -> int | None:
    ports: list[Any] = service.get("spec", {}).get("ports") or []
    return int(ports[0]["port"]) if ports else None
