"""Bad input that the schema cannot refuse is found at the start of the run, before
anything is touched (issue 10, must-show 5): each of these specs ends within seconds
Failed/InvalidSpec with a message naming the field, and no object of the namespace is
created or changed (a diff of every namespaced object, the rollouts and Events aside).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import pytest
import yaml

from e2e import manifests as m
from e2e.conftest import OperatorProcess, get_rollout
from tests.harness.cluster import Cluster, KubectlError, wait_for

pytestmark = pytest.mark.cluster

GOOD = "registry.example.com/web:2.0"
IGNORED_KINDS = {"Event", "CanaryRollout"}
# "ValueError: ...", "PermanentRouteError: ...": implementation names are not messages.
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b:")


def snapshot(cluster: Cluster, ns: str) -> dict[tuple[str, str], str]:
    """(kind, name) -> resourceVersion of every listable namespaced object."""
    kinds = cluster.kubectl(
        "api-resources", "--namespaced", "--verbs=list", "-o", "name"
    ).stdout.split()
    items = cluster.get_json(",".join(kinds), "-n", ns)["items"]
    return {
        (f"{o['apiVersion']}/{o['kind']}", o["metadata"]["name"]): o["metadata"]["resourceVersion"]
        for o in items
        if o["kind"] not in IGNORED_KINDS
    }


def settled_snapshot(cluster: Cluster, ns: str) -> dict[tuple[str, str], str]:
    """A snapshot once controllers have stopped writing (two equal reads in a row)."""
    previous: list[dict[tuple[str, str], str]] = [snapshot(cluster, ns)]

    def same_twice() -> dict[tuple[str, str], str] | None:
        now = snapshot(cluster, ns)
        if now == previous[0]:
            return now
        previous[0] = now
        return None

    return wait_for(same_twice, 60, interval=1.0, message="the namespace to settle")


def rollout_doc(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "target": {"deployment": "web", "service": "web"},
        "images": [{"container": "app", "image": GOOD}],
        "steps": [{"canary": {}}, {"setWeight": 25}, {"promote": {}}],
    }
    base.update(spec)
    return {
        "apiVersion": "canary-operator.dev/v1alpha1",
        "kind": "CanaryRollout",
        "metadata": {"name": name},
        "spec": base,
    }


def header_test(secret: str, key: str = "token") -> dict[str, Any]:
    return {
        "name": "smoke",
        "test": {
            "webhook": {
                "url": "http://127.0.0.1:9/smoke",
                "headers": [
                    {
                        "name": "Authorization",
                        "valueFrom": {"secretKeyRef": {"name": secret, "key": key}},
                    }
                ],
            }
        },
    }


def no_image_job(name: str) -> dict[str, Any]:
    return {"name": name, "job": {"spec": {"template": {"spec": {"containers": [{"name": "t"}]}}}}}


# name -> (spec changes, the field the message must name, a word it must contain)
CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "unknown-container": (
        {"images": [{"container": "sidecar", "image": GOOD}]},
        "spec.images[0].container",
        "sidecar",
    ),
    "missing-route": (
        {"trafficRouting": {"gatewayAPI": {"httpRoute": "absent"}}},
        "spec.trafficRouting.gatewayAPI.httpRoute",
        "not found",
    ),
    "route-without-rule": (
        {"trafficRouting": {"gatewayAPI": {"httpRoute": "elsewhere"}}},
        "spec.trafficRouting.gatewayAPI.httpRoute",
        "no rule",
    ),
    "missing-service": (
        {"target": {"deployment": "web", "service": "ghost"}},
        "spec.target.service",
        "not found",
    ),
    "missing-header-secret": (
        {"steps": [{"canary": {}}, header_test("absent"), {"promote": {}}]},
        "spec.steps[1].test.webhook.headers[0].valueFrom.secretKeyRef",
        "not found",
    ),
    "missing-secret-key": (
        {"steps": [{"canary": {}}, header_test("creds", key="nope"), {"promote": {}}]},
        "spec.steps[1].test.webhook.headers[0].valueFrom.secretKeyRef",
        "no key",
    ),
    "ill-typed-template": (
        {
            "images": None,
            "template": {"spec": {"containers": "oops"}},
        },
        "spec.template",
        "containers",
    ),
    "whitespace-image": (
        {"images": [{"container": "app", "image": " " + GOOD}]},
        "spec.images[0].image",
        "whitespace",
    ),
    "whitespace-in-template": (
        {
            "images": None,
            "template": {"spec": {"containers": [{"name": "app", "image": GOOD + " "}]}},
        },
        "spec.template.spec.containers[0].image",
        "whitespace",
    ),
    "huge-image": (
        {"images": [{"container": "app", "image": "registry.example.com/" + "a" * 200_000}]},
        "spec.images[0].image",
        "characters",
    ),
    "invalid-job-last-step": (
        {
            "steps": [
                {"canary": {}},
                {"setWeight": 25},
                {"name": "smoke", "test": {"job": no_image_job("smoke")["job"]}},
            ]
        },
        "spec.steps[2].test.job",
        "image",
    ),
    "invalid-cleanup-job": (
        {"cleanup": [no_image_job("notify")]},
        "spec.cleanup[0].job",
        "image",
    ),
}


def test_invalid_at_runtime_specs_fail_at_once_and_touch_nothing(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    kube_cluster.apply(m.app(replicas=2), ns)
    kube_cluster.apply(m.http_route("web", "web"), ns)
    kube_cluster.apply(m.http_route("elsewhere", "other-service"), ns)
    kube_cluster.kubectl("create", "secret", "generic", "creds", "--from-literal=token=t", "-n", ns)
    kube_cluster.kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=90s")
    before = settled_snapshot(kube_cluster, ns)

    docs = []
    for name, (changes, _, _) in CASES.items():
        doc = rollout_doc(name)
        for key, value in changes.items():
            if value is None:
                doc["spec"].pop(key, None)
            else:
                doc["spec"][key] = value
        docs.append(doc)
    # Server-side: a 200,000-character image would not fit kubectl's last-applied annotation.
    kube_cluster.kubectl(
        "apply", "--server-side", "-n", ns, "-f", "-", input=yaml.safe_dump_all(docs), timeout=120
    )

    def all_ended() -> dict[str, dict[str, Any]] | None:
        bodies = {name: get_rollout(kube_cluster, ns, name) for name in CASES}
        done = all((b.get("status") or {}).get("phase") == "Failed" for b in bodies.values())
        return bodies if done else None

    bodies = wait_for(
        all_ended,
        120,
        interval=0.5,
        message=lambda: json.dumps(
            {
                n: (get_rollout(kube_cluster, ns, n).get("status") or {}).get("message")
                for n in CASES
            }
        )[:3000],
    )
    for name, (_, field, word) in CASES.items():
        status = bodies[name]["status"]
        outcome = status["outcome"]
        assert outcome["result"] == "InvalidSpec", (name, outcome)
        message = outcome["message"]
        assert field in message and word in message, (name, message)
        assert not CLASS_NAME.search(message), (name, message)
        assert status.get("startedAt") is None and status.get("lock") is None, (name, status)
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert failed["status"] == "True" and failed["reason"] == "InvalidSpec", (name, failed)
        created = datetime.strptime(
            bodies[name]["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ"
        )
        ended = datetime.strptime(status["completedAt"], "%Y-%m-%dT%H:%M:%SZ")
        # Within seconds (generous for a shared 2-core machine), not at a deadline.
        assert (ended - created).total_seconds() <= 30, (name, created, ended)

    after = snapshot(kube_cluster, ns)
    assert after == before, {
        "created": sorted(set(after) - set(before)),
        "deleted": sorted(set(before) - set(after)),
        "changed": sorted(k for k in before if k in after and before[k] != after[k]),
    }


def test_set_weight_before_any_canary_step_is_refused_at_apply(
    kube_cluster: Cluster, namespace: str, crd_installed: Cluster
) -> None:
    doc = rollout_doc("weight-first", steps=[{"setWeight": 20}, {"canary": {}}, {"promote": {}}])
    with pytest.raises(KubectlError) as refused:
        kube_cluster.apply(yaml.safe_dump(doc), namespace)
    assert "a setWeight step needs a canary step before it" in str(refused.value)
    none = rollout_doc("weight-only", steps=[{"setWeight": 20}, {"promote": {}}])
    with pytest.raises(KubectlError):
        kube_cluster.apply(yaml.safe_dump(none), namespace)
    fine = rollout_doc("canary-first", steps=[{"canary": {}}, {"setWeight": 20}, {"promote": {}}])
    assert "created" in kube_cluster.apply(yaml.safe_dump(fine), namespace)


def test_a_spec_that_cannot_be_checked_yet_waits_untouched_and_says_why(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    kube_cluster.apply(m.app(replicas=2), ns)
    kube_cluster.kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=90s")
    webhook = f"refuse-all-canary-{ns}"
    kube_cluster.apply(m.refusing_canary_webhook(ns, dry_runs_too=True))
    try:
        before = settled_snapshot(kube_cluster, ns)
        kube_cluster.apply(yaml.safe_dump(rollout_doc("web-v2")), ns)

        def says_why() -> dict[str, Any] | None:
            status = get_rollout(kube_cluster, ns, "web-v2").get("status") or {}
            for c in status.get("conditions") or []:
                if c["type"] == "ReconcileError" and c["status"] == "True":
                    return status
            return None

        status = wait_for(says_why, 60, interval=0.5, message="web-v2 to say why it waits")
        message = next(c for c in status["conditions"] if c["type"] == "ReconcileError")["message"]
        assert "cannot check the spec yet" in message and "500" in message, message
        assert status.get("phase", "Pending") == "Pending", status
        assert snapshot(kube_cluster, ns) == before  # no Lease, no canary: nothing touched
    finally:
        kube_cluster.kubectl("delete", "validatingwebhookconfiguration", webhook, check=False)
    # Checkable again: the run goes ahead.
    body = wait_for(
        lambda: (
            (get_rollout(kube_cluster, ns, "web-v2").get("status") or {}).get("phase")
            in ("Progressing", "Succeeded")
        ),
        120,
        interval=0.5,
        message="web-v2 to start once the webhook is gone",
    )
    assert body
