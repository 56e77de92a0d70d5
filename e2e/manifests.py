"""Builders of the manifests the end-to-end tests apply."""

from __future__ import annotations

from typing import Any

import yaml


def app(
    name: str = "web",
    replicas: int = 3,
    image: str = "registry.example.com/web:1.0",
    min_ready_seconds: int | None = None,
) -> str:
    """A stable Deployment and its Service. With `min_ready_seconds` (e.g. 3600), its
    pods are ready but not available for that long: a promotion of it stays under way."""
    docs = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                **(
                    {
                        "minReadySeconds": min_ready_seconds,
                        "progressDeadlineSeconds": min_ready_seconds + 600,
                    }
                    if min_ready_seconds
                    else {}
                ),
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "containers": [
                            {
                                "name": "app",
                                "image": image,
                                "ports": [{"name": "http", "containerPort": 8080}],
                            }
                        ]
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {
                "selector": {"app": name},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        },
    ]
    return yaml.safe_dump_all(docs)


def http_route(name: str = "web", service: str = "web") -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": name},
            "spec": {
                "parentRefs": [{"name": "gw"}],
                "rules": [{"backendRefs": [{"name": service, "port": 80}]}],
            },
        }
    )


def job_test(name: str, *, fail: bool = False, duration: str | None = None) -> dict[str, Any]:
    """A Job test step; on the kwok cluster the annotations decide its pod's fate."""
    annotations = {}
    if fail:
        annotations["sim.canary-operator.dev/result"] = "fail"
    if duration:
        annotations["sim.canary-operator.dev/duration"] = duration
    script = "exit 1" if fail else "true"
    template: dict[str, Any] = {
        "spec": {
            "containers": [{"name": "t", "image": "busybox:1.36", "command": ["sh", "-c", script]}]
        }
    }
    if annotations:
        template["metadata"] = {"annotations": annotations}
    return {"name": name, "test": {"job": {"spec": {"template": template}}}}


def cleanup_job(
    name: str = "user-cleanup", duration: str | None = None, fail: bool = False
) -> dict[str, Any]:
    step = job_test(name, duration=duration, fail=fail)
    return {"name": name, "job": step["test"]["job"]}


def rollout(
    name: str,
    steps: list[dict[str, Any]],
    *,
    target: str = "web",
    service: str | None = "web",
    image: str = "registry.example.com/web:2.0",
    cleanup: list[dict[str, Any]] | None = None,
    policy: str | None = None,
    gateway_route: str | None = None,
    **extra: Any,
) -> str:
    spec: dict[str, Any] = {
        "target": {"deployment": target, **({"service": service} if service else {})},
        "images": [{"container": "app", "image": image}],
        "steps": steps,
    }
    if cleanup:
        spec["cleanup"] = cleanup
    if policy:
        spec["concurrency"] = {"policy": policy}
    if gateway_route:
        spec["trafficRouting"] = {"gatewayAPI": {"httpRoute": gateway_route}}
    spec.update(extra)
    return yaml.safe_dump(
        {
            "apiVersion": "canary-operator.dev/v1alpha1",
            "kind": "CanaryRollout",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def refusing_canary_webhook(namespace: str, dry_runs_too: bool) -> str:
    """An admission webhook nobody serves (loopback, a port nothing listens on; failure
    policy Fail): the API server answers every create/update of this namespace's canary
    Deployments with a 500. With `dry_runs_too` false, the server-side dry-runs with which
    the operator checks a spec before its run get through (so the run starts, takes the
    lock, and then its real writes fail)."""
    webhook: dict[str, Any] = {
        "name": "refuse-canary.canary-operator.dev",
        "clientConfig": {"url": "https://127.0.0.1:9/refuse"},
        "rules": [
            {
                "apiGroups": ["apps"],
                "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["deployments"],
            }
        ],
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "objectSelector": {"matchLabels": {"canary-operator.dev/role": "canary"}},
        "failurePolicy": "Fail",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 2,
    }
    if not dry_runs_too:
        webhook["matchConditions"] = [{"name": "not-a-dry-run", "expression": "!request.dryRun"}]
    prefix = "refuse-all-canary" if dry_runs_too else "refuse-canary"
    return yaml.safe_dump(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": f"{prefix}-{namespace}"},
            "webhooks": [webhook],
        }
    )


def refusing_target_webhook(namespace: str, target: str = "web") -> str:
    """An admission webhook nobody serves (loopback, a port nothing listens on; failure
    policy Fail): every update of the target Deployment `target` (labelled app=<target>,
    not a canary object) is answered with a 500, so a write to it cannot go through
    until the webhook is deleted."""
    webhook: dict[str, Any] = {
        "name": "refuse-target.canary-operator.dev",
        "clientConfig": {"url": "https://127.0.0.1:9/refuse"},
        "rules": [
            {
                "apiGroups": ["apps"],
                "apiVersions": ["v1"],
                "operations": ["UPDATE"],
                "resources": ["deployments"],
            }
        ],
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "objectSelector": {
            "matchLabels": {"app": target},
            "matchExpressions": [{"key": "canary-operator.dev/role", "operator": "DoesNotExist"}],
        },
        "failurePolicy": "Fail",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 2,
    }
    return yaml.safe_dump(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": f"refuse-target-{namespace}"},
            "webhooks": [webhook],
        }
    )
