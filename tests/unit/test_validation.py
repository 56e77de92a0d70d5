"""The pure parts of the start-of-run validation (validation.py), of reading why a
canary cannot start (reconcile/views.py workload_failure), and of bounding log tails
(checks/evidence.py)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.api.models import CanaryRolloutSpec
from canary_operator.checks.evidence import TAIL_BYTES, tail_of
from canary_operator.reconcile.errors import refused as _refused
from canary_operator.reconcile.views import workload_failure
from canary_operator.validation import (
    REFERENCE_MAX,
    api_refusal,
    image_problem,
    image_problems,
    job_templates,
    refused_for_good,
    route_problem,
    webhook_headers,
)

TARGET: dict[str, Any] = {
    "spec": {
        "template": {
            "spec": {
                "initContainers": [{"name": "init", "image": "busybox:1"}],
                "containers": [{"name": "app", "image": "web:1"}],
            }
        }
    }
}
JOB = {"spec": {"template": {"spec": {"containers": [{"name": "t", "image": "busybox"}]}}}}


def spec(**fields: Any) -> CanaryRolloutSpec:
    body: dict[str, Any] = {
        "target": {"deployment": "web", "service": "web"},
        "images": [{"container": "app", "image": "web:2"}],
        "steps": [{"canary": {}}],
    }
    body.update(fields)
    return CanaryRolloutSpec.model_validate(body)


@pytest.mark.parametrize(
    "image",
    [
        "busybox",
        "busybox:1.36",
        "registry.example.com/team/web:2.0",
        "localhost:5000/web",
        "ghcr.io/org/app-name_x__y.z:v1.2.3-rc.1",
        "web@sha256:" + "a" * 64,
        "registry.example.com:443/web:2@sha256:" + "0123456789abcdef" * 4,
        "[::1]:5000/web:1",
    ],
)
def test_valid_image_references_pass(image: str) -> None:
    assert image_problem(image) is None


@pytest.mark.parametrize(
    ("image", "words"),
    [
        (" web:2", "leading or trailing whitespace"),
        ("web:2\n", "leading or trailing whitespace"),
        ("web :2", "must not contain whitespace"),
        ("Web:2", "not a valid image reference"),
        ("web:", "not a valid image reference"),
        ("web:" + "t" * 129, "not a valid image reference"),
        ("web@sha256:abc", "not a valid image reference"),
        ("", "an image is required"),
        (None, "an image is required"),
        ("r.io/" + "a" * 300, "repository name is longer than 255"),
        ("a" * 200_000, f"200000 characters long (at most {REFERENCE_MAX})"),
    ],
)
def test_invalid_image_references_say_why(image: Any, words: str) -> None:
    problem = image_problem(image)
    assert problem is not None and words in problem
    assert len(problem) < 300, "a huge image is never echoed whole"


def test_image_problems_name_the_field_and_the_containers_the_target_has() -> None:
    problems = image_problems(
        spec(
            images=[{"container": "sidecar", "image": "x:1"}, {"container": "app", "image": " y"}]
        ),
        TARGET,
    )
    assert problems == [
        "spec.images[0].container: the target Deployment web has no container 'sidecar' "
        "(it has: app, init)",
        "spec.images[1].image: ' y' must not have leading or trailing whitespace",
    ]
    assert image_problems(spec(images=[{"container": "init", "image": "busybox:2"}]), TARGET) == []


def test_template_images_are_checked_even_when_the_template_is_ill_typed() -> None:
    template = {
        "spec": {"containers": [{"name": "a", "image": "ok:1"}, {"name": "b", "image": "bad "}]}
    }
    assert image_problems(spec(images=None, template=template), TARGET) == [
        "spec.template.spec.containers[1].image: 'bad ' must not have leading or trailing "
        "whitespace"
    ]
    ill_typed = spec(images=None, template={"spec": {"containers": "oops"}})
    assert image_problems(ill_typed, TARGET) == []  # left to the API server's dry-run


def test_route_problems() -> None:
    field = "spec.trafficRouting.gatewayAPI.httpRoute"
    assert route_problem(None, "web", "web") == f"{field}: HTTPRoute 'web' not found"
    other = {"spec": {"rules": [{"backendRefs": [{"name": "api", "port": 80}]}]}}
    problem = route_problem(other, "web", "web")
    assert problem is not None and problem.startswith(field) and "no rule" in problem
    ok = {"spec": {"rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}
    assert route_problem(ok, "web", "web") is None
    not_a_service = {"spec": {"rules": [{"backendRefs": [{"name": "web", "kind": "Backend"}]}]}}
    assert route_problem(not_a_service, "web", "web") is not None


def test_every_webhook_header_and_job_is_found_with_its_field() -> None:
    header = {"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    webhook = {"url": "http://x", "headers": [header]}
    provider = {"webhook": {"url": "http://m", "headers": [header]}}
    analysis = {
        "provider": provider,
        "metrics": [{"name": "m", "query": "q", "successCondition": "result > 0"}],
    }
    metric_override = {**analysis["metrics"][0], "provider": provider}  # type: ignore[dict-item]
    s = spec(
        steps=[
            {"canary": {}},
            {"test": {"webhook": webhook}},
            {"parallel": [{"test": {"job": JOB}}, {"test": {"webhook": webhook}}]},
            {"analysis": {**analysis, "metrics": [metric_override]}},
            {"test": {"job": JOB}},
        ],
        cleanup=[{"name": "notify", "webhook": webhook}, {"name": "wipe", "job": JOB}],
    )
    assert [f for f, _ in webhook_headers(s)] == [
        "spec.steps[1].test.webhook.headers[0]",
        "spec.steps[2].parallel[1].test.webhook.headers[0]",
        "spec.steps[3].analysis.provider.webhook.headers[0]",
        "spec.steps[3].analysis.metrics[0].provider.webhook.headers[0]",
        "spec.cleanup[0].webhook.headers[0]",
    ]
    assert [(f, suffix, label) for f, suffix, label, _ in job_templates(s)] == [
        ("spec.steps[2].parallel[0].test.job", "s3-1", "step 3.1"),
        ("spec.steps[4].test.job", "s5", "step 5"),
        ("spec.cleanup[1].job", "c2-a0", "cleanup 2/2 wipe"),
    ]


def test_api_refusals_in_plain_words() -> None:
    typed = ApiException(
        status=400,
        reason='Deployment in version "v1" cannot be handled as a Deployment: json: cannot '
        "unmarshal string into Go struct field PodSpec.spec.template.spec.containers of type "
        "[]v1.Container",
    )
    assert api_refusal(typed) == "spec.template.spec.containers must be a list, not a string"
    invalid = ApiException(
        status=422,
        reason='Job.batch "web-s3" is invalid: spec.template.spec.containers[0].image: '
        "Required value",
    )
    assert api_refusal(invalid) == "spec.template.spec.containers[0].image: Required value"


@pytest.mark.parametrize(
    ("status", "reason", "for_good", "step_fails"),
    [
        (400, "bad", True, True),
        (422, "invalid", True, True),
        (403, "forbidden", True, False),  # RBAC may be fixed: a run keeps retrying
        (500, "failed to create typed patch object (...): expected list, got string", True, True),
        (500, "etcdserver: request timed out", False, False),
        (503, "unavailable", False, False),
        (409, "conflict", False, False),
    ],
)
def test_which_api_answers_cannot_succeed_on_retry(
    status: int, reason: str, for_good: bool, step_fails: bool
) -> None:
    exc = ApiException(status=status, reason=reason)
    assert refused_for_good(exc) is for_good
    assert _refused(exc) is step_fails
    assert not refused_for_good(TimeoutError())


# ------------------------------------------------------------- workload failure


def deployment(*conditions: dict[str, str]) -> dict[str, Any]:
    return {"status": {"conditions": list(conditions)}}


def pod(name: str = "p", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": status}


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"name": "app", "state": {"waiting": {"reason": reason, "message": message}}}


def test_replica_failure_and_deadline_are_read_from_the_deployment() -> None:
    failure = {
        "type": "ReplicaFailure",
        "status": "True",
        "reason": "FailedCreate",
        "message": 'pods "web-canary-1" is forbidden: exceeded quota',
    }
    assert workload_failure(deployment(failure), []) == (
        'FailedCreate: pods "web-canary-1" is forbidden: exceeded quota'
    )
    assert workload_failure(deployment({**failure, "status": "False"}), []) is None
    deadline = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    assert workload_failure(deployment(deadline), []).startswith("ProgressDeadlineExceeded")
    fine = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
    assert workload_failure(deployment(fine), []) is None


@pytest.mark.parametrize(
    "reason",
    ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"],
)
def test_pods_that_cannot_start_are_read_from_their_container_states(reason: str) -> None:
    pods = [pod("ok", containerStatuses=[]), pod("bad", containerStatuses=[waiting(reason, "m")])]
    assert workload_failure(deployment(), pods) == f"pod bad container app: {reason}: m"


def test_slow_starts_and_deleted_pods_are_not_failures() -> None:
    slow = pod(containerStatuses=[waiting("ContainerCreating")])
    crashing = pod(containerStatuses=[waiting("CrashLoopBackOff")])
    gone = pod(containerStatuses=[waiting("ErrImagePull")])
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert workload_failure(deployment(), [slow, crashing, gone]) is None


def test_unschedulable_pods_are_a_failure() -> None:
    unschedulable = pod(
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient cpu.",
            }
        ]
    )
    message = workload_failure(deployment(), [unschedulable])
    assert message == "pod p cannot be scheduled: 0/3 nodes are available: 3 Insufficient cpu."


# ------------------------------------------------------------------- log tails


def test_log_tails_are_bounded_and_say_when_cut() -> None:
    assert tail_of(b"short\n") == ("short\n", False)
    text, cut = tail_of(b"a" * 10_000 + b"END\n")
    assert cut and text.endswith("END\n") and len(text.encode()) == TAIL_BYTES
    # A multi-byte character cut in two at the start is dropped, not garbled.
    raw = "é".encode() * 3000
    text, cut = tail_of(raw)
    assert cut and set(text) == {"é"} and len(text.encode()) <= TAIL_BYTES


@pytest.mark.parametrize(
    ("exc", "said"),
    [
        (ValueError("spec.images: container 'x' not in the target"), "spec.images: container"),
        (TimeoutError(), "timed out"),
        (ConnectionRefusedError(111, "refused"), "connection failed: [Errno 111] refused"),
        (ApiException(status=422, reason="bad"), "API error 422 bad"),
    ],
)
def test_failures_are_described_without_python_class_names(exc: BaseException, said: str) -> None:
    from canary_operator.kube.api import describe as _describe

    described = _describe(exc)
    assert described.startswith(said), described
    assert type(exc).__name__ not in described
