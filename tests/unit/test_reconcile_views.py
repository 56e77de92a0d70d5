"""reconcile/views.py: Kubernetes objects (dicts) as the state machine sees them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from canary_operator.engine.types import PromotionRecord
from canary_operator.kube import objects
from canary_operator.reconcile import views

RECORD = {
    "rollout": "web-v2",
    "uid": "uid-1",
    "run": 2,
    "fingerprint": "f",
    "images": {"app": "web:2"},
    "versionSince": "2026-12-07T10:00:00Z",
    "promotedAt": "2026-12-07T10:05:00.000000Z",
}


def deployment(*conditions: dict[str, str], annotations: dict[str, str] | None = None) -> Any:
    return {
        "metadata": {"name": "web-canary", "generation": 2, "annotations": annotations or {}},
        "spec": {
            "replicas": 2,
            "template": {"spec": {"containers": [{"name": "app", "image": "web:2"}]}},
        },
        "status": {
            "observedGeneration": 2,
            "replicas": 2,
            "readyReplicas": 1,
            "availableReplicas": 1,
            "updatedReplicas": 2,
            "conditions": list(conditions),
        },
    }


def pod(name: str = "web-canary-1", deleting: bool = False, **status: Any) -> Any:
    meta: dict[str, Any] = {"name": name, "labels": {objects.ROLE_LABEL: "canary"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-07T10:00:00Z"
    return {"metadata": meta, "status": status}


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"name": "app", "state": {"waiting": {"reason": reason, "message": message}}}


def test_a_deployment_as_a_workload_view() -> None:
    view = views.workload(deployment(), [])
    assert view is not None
    assert (view.replicas, view.ready, view.available, view.updated) == (2, 1, 1, 2)
    assert view.current and not view.rolled_out
    assert view.images == {"app": "web:2"} and view.failure is None
    assert views.workload(None) is None
    # Without pods, no failure is looked for (the target's own pods are not read).
    stuck = deployment({"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate"})
    unread = views.workload(stuck)
    assert unread is not None and unread.failure is None


def test_a_controller_behind_the_latest_generation_is_not_current() -> None:
    body = deployment()
    body["status"]["observedGeneration"] = 1
    view = views.workload(body)
    assert view is not None and not view.current


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": "quota",
            },
            "FailedCreate: quota",
        ),
        (
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"},
            "ProgressDeadlineExceeded: Progressing",
        ),
    ],
)
def test_a_failure_the_deployment_reports(condition: dict[str, str], expected: str) -> None:
    assert views.workload_failure(deployment(condition), []) == expected


def test_conditions_that_are_no_failure() -> None:
    fine = deployment(
        {"type": "ReplicaFailure", "status": "False", "reason": "FailedCreate"},
        {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
    )
    assert (
        views.workload_failure(fine, [pod(containerStatuses=[waiting("ContainerCreating")])])
        is None
    )


@pytest.mark.parametrize("reason", sorted(views.POD_START_FAILURES))
def test_a_container_that_cannot_start(reason: str) -> None:
    failing = pod(containerStatuses=[waiting(reason, "no such image")])
    assert views.workload_failure(deployment(), [failing]) == (
        f"pod web-canary-1 container app: {reason}: no such image"
    )


def test_an_init_container_that_cannot_start_without_a_message() -> None:
    failing = pod(initContainerStatuses=[waiting("ErrImagePull")])
    assert views.workload_failure(deployment(), [failing]) == (
        "pod web-canary-1 container app: ErrImagePull"
    )


def test_a_pod_that_cannot_be_scheduled() -> None:
    unschedulable = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available",
    }
    failure = views.workload_failure(deployment(), [pod(conditions=[unschedulable])])
    assert failure == "pod web-canary-1 cannot be scheduled: 0/3 nodes are available"


def test_a_pod_being_deleted_is_ignored() -> None:
    going = pod("old", deleting=True, containerStatuses=[waiting("ImagePullBackOff")])
    assert views.workload_failure(deployment(), [going]) is None
    coming = pod("new", containerStatuses=[waiting("ImagePullBackOff")])
    failure = views.workload_failure(deployment(), [going, coming])
    assert failure is not None and failure.startswith("pod new ")


def test_a_long_message_is_cut() -> None:
    failing = pod(containerStatuses=[waiting("CreateContainerError", "x" * 2000)])
    failure = views.workload_failure(deployment(), [failing])
    assert failure is not None and len(failure) == 600


def test_the_promotion_record() -> None:
    body = deployment(annotations={objects.PROMOTION: json.dumps(RECORD)})
    assert views.promotion(body) == PromotionRecord(
        rollout="web-v2",
        uid="uid-1",
        run=2,
        fingerprint="f",
        images={"app": "web:2"},
        version_since="2026-12-07T10:00:00Z",
        promoted_at="2026-12-07T10:05:00.000000Z",
    )
    view = views.workload(body)
    assert view is not None and view.promotion == views.promotion(body)


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1, 2]",
        json.dumps({k: v for k, v in RECORD.items() if k != "uid"}),
        json.dumps({**RECORD, "run": "two"}),
        json.dumps({**RECORD, "images": ["web:2"]}),
        "",
    ],
)
def test_an_unreadable_promotion_record_is_none(raw: str) -> None:
    assert views.promotion(deployment(annotations={objects.PROMOTION: raw})) is None


def job(purpose: str, *conditions: dict[str, str]) -> Any:
    return {
        "metadata": {
            "name": "web-v2-1-smoke",
            "labels": {objects.PURPOSE_LABEL: purpose},
            "ownerReferences": [{"uid": "uid-1"}],
        },
        "status": {"conditions": list(conditions)},
    }


def test_job_views() -> None:
    failed = views.job(
        job("test", {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"})
    )
    assert failed.failed and not failed.succeeded and failed.message == "BackoffLimitExceeded"
    assert not failed.kept and not failed.cleanup
    done = views.job(job("cleanup", {"type": "Complete", "status": "True"}))
    assert done.succeeded and done.cleanup and not done.kept
    kept = views.job(job(views.EVIDENCE, {"type": "Failed", "status": "True", "message": "exit 1"}))
    assert kept.kept and kept.failed and kept.message == "exit 1"
    # A condition not (yet) true says nothing.
    running = views.job(job("test", {"type": "Failed", "status": "False"}))
    assert not running.failed and not running.succeeded


def test_helpers() -> None:
    pods = [pod("a"), {"metadata": {"name": "b", "labels": {objects.ROLE_LABEL: "baseline"}}}]
    assert [p["metadata"]["name"] for p in views.with_role(pods, "baseline")] == ["b"]
    assert views.owned_by(job("test"), "uid-1") and not views.owned_by(job("test"), "uid-2")
    assert views.purpose({"metadata": {}}) == ""
    assert views.first_port({"spec": {"ports": [{"port": 8080}, {"port": 9090}]}}) == 8080
    assert views.first_port({"spec": {}}) is None
