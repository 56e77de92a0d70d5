"""Everything a run will need from the cluster is checked before it touches anything
(issue 24, must-show 1): the Secrets and keys its webhooks name (`urlFrom` and headers;
tests, parallel items, metric providers, cleanup steps), the router's objects (the NGINX
stable Ingress, Istio VirtualServices and DestinationRule), analysis conditions and
webhook body variables. Each case applies a spec and ends Failed/InvalidSpec with a
message naming the field, and a diff of every namespaced object before and after (the
rollouts and Events aside) shows nothing created or changed. Containers and item names
given twice are refused at apply. A cleanup step that could never succeed is found
before the run, even when it turns bad while the run waits for its lock: the run ends
InvalidSpec, the target untouched and the lock released for the next run.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from e2e import manifests as m
from e2e.conftest import OperatorProcess, get_rollout, lease, stable_image, wait_phase
from e2e.test_runtime_validation import CLASS_NAME, rollout_doc, settled_snapshot, snapshot
from tests.harness.cluster import Cluster, KubectlError, ensure_istio_crds, wait_for

pytestmark = pytest.mark.cluster

WEBHOOK = "http://127.0.0.1:9/hook"  # never called: every case ends before a step runs
URL_FROM = {"secretKeyRef": {"name": "no-such-secret", "key": "url"}}
CANARY: dict[str, Any] = {"canary": {}}
PROMOTE: dict[str, Any] = {"promote": {}}


def secret_header(name: str) -> dict[str, Any]:
    return {"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": name, "key": "token"}}}


def webhook_test(**webhook: Any) -> dict[str, Any]:
    return {"name": "smoke", "test": {"webhook": webhook}}


def analysis(provider: dict[str, Any] | None = None, **metric: Any) -> dict[str, Any]:
    step: dict[str, Any] = {
        "name": "errors",
        "analysis": {
            "count": 1,
            "interval": "1s",
            "metrics": [
                {"name": "errors", "query": "q", "successCondition": "result < 1", **metric}
            ],
        },
    }
    if provider is not None:
        step["analysis"]["provider"] = provider
    return step


def steps(*middle: dict[str, Any]) -> dict[str, Any]:
    return {"steps": [CANARY, *middle, PROMOTE]}


def virtual_service(name: str, host: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name},
        "spec": {
            "hosts": [host],
            "http": [{"name": "primary", "route": [{"destination": {"host": host}}]}],
        },
    }


def ingress(name: str, service: str) -> dict[str, Any]:
    backend = {"service": {"name": service, "port": {"number": 80}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name},
        "spec": {
            "rules": [
                {
                    "host": f"{name}.example.com",
                    "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]},
                }
            ]
        },
    }


def istio(*names: str, rule: str | None = None) -> dict[str, Any]:
    routing: dict[str, Any] = {"virtualServices": [{"name": n} for n in names]}
    if rule:
        routing["destinationRule"] = {
            "name": rule,
            "stableSubsetName": "stable",
            "canarySubsetName": "canary",
        }
    return {"trafficRouting": {"istio": routing}}


# name -> (spec changes, the field the message must name, words it must contain)
CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "url-secret-missing": (
        steps(webhook_test(urlFrom=URL_FROM)),
        "spec.steps[1].test.webhook.urlFrom.secretKeyRef",
        "Secret 'no-such-secret' not found",
    ),
    "url-key-missing": (
        steps(webhook_test(urlFrom={"secretKeyRef": {"name": "creds", "key": "url"}})),
        "spec.steps[1].test.webhook.urlFrom.secretKeyRef",
        "Secret 'creds' has no key 'url'",
    ),
    "url-not-a-url": (
        steps(webhook_test(urlFrom={"secretKeyRef": {"name": "creds", "key": "token"}})),
        "spec.steps[1].test.webhook.urlFrom.secretKeyRef",
        "holds no http(s) URL",
    ),
    "parallel-url-secret": (
        steps({"parallel": [{"pause": {"duration": "1s"}}, webhook_test(urlFrom=URL_FROM)]}),
        "spec.steps[1].parallel[1].test.webhook.urlFrom.secretKeyRef",
        "not found",
    ),
    "provider-header-secret": (
        steps(analysis({"webhook": {"url": WEBHOOK, "headers": [secret_header("absent")]}})),
        "spec.steps[1].analysis.provider.webhook.headers[0].valueFrom.secretKeyRef",
        "Secret 'absent' not found",
    ),
    "cleanup-url-secret": (
        {"cleanup": [{"name": "notify", "webhook": {"urlFrom": URL_FROM}}]},
        "spec.cleanup[0].webhook.urlFrom.secretKeyRef",
        "Secret 'no-such-secret' not found",
    ),
    "cleanup-header-key": (
        {
            "cleanup": [
                {
                    "name": "notify",
                    "required": False,
                    "webhook": {"url": WEBHOOK, "headers": [secret_header("hook")]},
                }
            ]
        },
        "spec.cleanup[0].webhook.headers[0].valueFrom.secretKeyRef",
        "Secret 'hook' has no key 'token'",
    ),
    "nginx-ingress-missing": (
        {"trafficRouting": {"nginx": {"stableIngress": "no-such-ingress"}}},
        "spec.trafficRouting.nginx.stableIngress",
        "Ingress 'no-such-ingress' not found",
    ),
    "nginx-ingress-elsewhere": (
        {"trafficRouting": {"nginx": {"stableIngress": "elsewhere"}}},
        "spec.trafficRouting.nginx.stableIngress",
        "no path",
    ),
    "istio-vs-missing": (
        istio("web", "no-such-vs"),
        "spec.trafficRouting.istio.virtualServices[1].name",
        "VirtualService 'no-such-vs' not found",
    ),
    "istio-vs-elsewhere": (
        istio("api"),
        "spec.trafficRouting.istio.virtualServices[0]",
        "no HTTP route to stable",
    ),
    "istio-rule-missing": (
        istio("web", rule="no-such-rule"),
        "spec.trafficRouting.istio.destinationRule.name",
        "DestinationRule 'no-such-rule' not found",
    ),
    "bad-condition": (
        steps(analysis(successCondition="result <")),
        "spec.steps[1].analysis.metrics[0].successCondition",
        "not a valid expression",
    ),
    "bad-query-variable": (
        steps(analysis(query="rate(x{pod=~'{{pods}}'}[1m])")),
        "spec.steps[1].analysis.metrics[0].query",
        "{{pods}}",
    ),
    "bad-body-variable": (
        steps(webhook_test(url=WEBHOOK, body='{"text": "{{rollout}} {{secret}}"}')),
        "spec.steps[1].test.webhook.body",
        "unknown template variable {{secret}}",
    ),
    "bad-cleanup-body": (
        {"cleanup": [{"webhook": {"url": WEBHOOK, "body": "{{token}}"}}]},
        "spec.cleanup[0].webhook.body",
        "{{token}}",
    ),
}


def test_what_a_run_needs_is_checked_before_anything_is_touched(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    ensure_istio_crds(kube_cluster, timeout=120)
    kube_cluster.apply(m.app(replicas=2), ns)
    kube_cluster.apply(yaml.safe_dump(ingress("elsewhere", "other-service")), ns)
    kube_cluster.apply(yaml.safe_dump(virtual_service("web", "web")), ns)
    kube_cluster.apply(yaml.safe_dump(virtual_service("api", "api")), ns)
    kube_cluster.kubectl("create", "secret", "generic", "creds", "--from-literal=token=t", "-n", ns)
    kube_cluster.kubectl(
        "create", "secret", "generic", "hook", "--from-literal=url=http://x", "-n", ns
    )
    kube_cluster.kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=90s")
    before = settled_snapshot(kube_cluster, ns)

    docs = []
    for name, (changes, _, _) in CASES.items():
        doc = rollout_doc(name)
        doc["spec"].update(changes)
        docs.append(doc)
    kube_cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(docs), timeout=120)

    def all_ended() -> dict[str, dict[str, Any]] | None:
        bodies = {name: get_rollout(kube_cluster, ns, name) for name in CASES}
        done = all((b.get("status") or {}).get("phase") == "Failed" for b in bodies.values())
        return bodies if done else None

    bodies = wait_for(
        all_ended,
        120,
        interval=0.5,
        message=lambda: json.dumps(
            {n: (get_rollout(kube_cluster, ns, n).get("status") or {}).get("phase") for n in CASES}
        ),
    )
    assert bodies is not None
    for name, (_, field, words) in CASES.items():
        status = bodies[name]["status"]
        outcome = status["outcome"]
        assert outcome["result"] == "InvalidSpec", (name, outcome)
        message = outcome["message"]
        assert f"{field}: " in message and words in message, (name, message)
        assert not CLASS_NAME.search(message), (name, message)
        assert status.get("startedAt") is None and status.get("lock") is None, (name, status)
    # The example of the issue, word for word.
    assert bodies["cleanup-url-secret"]["status"]["outcome"]["message"] == (
        "spec.cleanup[0].webhook.urlFrom.secretKeyRef: Secret 'no-such-secret' not found in "
        f"namespace {ns}"
    )

    after = snapshot(kube_cluster, ns)
    assert after == before, {
        "created": sorted(set(after) - set(before)),
        "deleted": sorted(set(before) - set(after)),
        "changed": sorted(k for k in before if k in after and before[k] != after[k]),
    }


GOOD = "registry.example.com/web:2.0"
NAMED = {"name": "wait", "pause": {"duration": "1s"}}
METRIC = {"name": "errors", "query": "q", "successCondition": "result < 1"}

# name -> (spec changes, the field the refusal names, words it must contain)
REFUSED_AT_APPLY: dict[str, tuple[dict[str, Any], str, str]] = {
    "images-twice": (
        {"images": [{"container": "app", "image": GOOD}, {"container": "app", "image": "x:3"}]},
        "spec.images[1]",
        "Duplicate value",
    ),
    "steps-named-twice": (
        {"steps": [{"name": "ui", "canary": {}}, {"name": "ui", "pause": {}}, PROMOTE]},
        "spec.steps",
        "two steps have the same name",
    ),
    "parallel-named-twice": (
        steps({"parallel": [NAMED, NAMED]}),
        "spec.steps[1].parallel",
        "two parallel items have the same name",
    ),
    "cleanup-named-twice": (
        {"cleanup": [m.cleanup_job("notify"), m.cleanup_job("notify")]},
        "spec.cleanup",
        "two cleanup steps have the same name",
    ),
    "metrics-named-twice": (
        steps({"analysis": {"count": 1, "metrics": [METRIC, {**METRIC, "query": "r"}]}}),
        "spec.steps[1].analysis.metrics[1]",
        "Duplicate value",
    ),
}


def test_containers_and_names_given_twice_are_refused_at_apply(
    kube_cluster: Cluster, namespace: str, crd_installed: Cluster
) -> None:
    ns = namespace
    kube_cluster.apply(m.app(replicas=1), ns)
    before = settled_snapshot(kube_cluster, ns)
    for name, (changes, field, words) in REFUSED_AT_APPLY.items():
        doc = rollout_doc(name)
        doc["spec"].update(changes)
        with pytest.raises(KubectlError) as refused:
            kube_cluster.apply(yaml.safe_dump(doc), ns)
        said = str(refused.value)
        assert f"{field}: " in said and words in said, (name, said)
    assert kube_cluster.kubectl("get", "cro", "-n", ns, "-o", "name").stdout.split() == []
    assert snapshot(kube_cluster, ns) == before
    # Unnamed items are shown by their kind: they may repeat.
    unnamed = rollout_doc(
        "unnamed",
        steps=[CANARY, {"pause": {"duration": "1s"}}, {"pause": {"duration": "1s"}}, PROMOTE],
        cleanup=[
            {"job": m.cleanup_job()["job"]},
            {"job": m.cleanup_job()["job"]},
        ],
    )
    out = kube_cluster.kubectl(
        "apply", "--dry-run=server", "-n", ns, "-f", "-", input=yaml.safe_dump(unnamed)
    ).stdout
    assert "unnamed" in out and "dry run" in out, out


def test_a_cleanup_that_turns_bad_while_queued_ends_the_run_and_frees_the_lock(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """The issue's case: a cleanup webhook whose URL Secret does not exist. Here the
    Secret is there when the rollout is applied (it passes its first check and queues
    behind a run holding the lock) and goes while it waits: the check made again once
    it holds the lock, before its first step, ends it InvalidSpec, nothing touched and
    the lock given back, so the next rollout of the target runs."""
    ns = namespace
    kube_cluster.apply(m.app(replicas=2), ns)
    kube_cluster.kubectl(
        "create", "secret", "generic", "hook", "--from-literal=url=http://127.0.0.1:9/x", "-n", ns
    )
    kube_cluster.kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=90s")
    kube_cluster.apply(m.rollout("holder", [CANARY, {"pause": {}}]), ns)
    wait_phase(kube_cluster, ns, "holder", "Paused", timeout=90)
    holder_uid = get_rollout(kube_cluster, ns, "holder")["metadata"]["uid"]
    cleanup = [
        {"name": "notify", "webhook": {"urlFrom": {"secretKeyRef": {"name": "hook", "key": "url"}}}}
    ]
    kube_cluster.apply(
        m.rollout("typo", [CANARY, PROMOTE], image="registry.example.com/web:3.0", cleanup=cleanup),
        ns,
    )
    wait_phase(kube_cluster, ns, "typo", "Queued", timeout=60)
    kube_cluster.kubectl("delete", "secret", "hook", "-n", ns)
    target_before = kube_cluster.get_json("deployment", "web", "-n", ns)

    kube_cluster.kubectl(
        "patch", "cro", "holder", "-n", ns, "--type=merge", "-p", '{"spec":{"abort":true}}'
    )
    wait_phase(kube_cluster, ns, "holder", "Aborted", timeout=90)
    body = wait_phase(kube_cluster, ns, "typo", "Failed", timeout=60)
    status = body["status"]
    assert status["outcome"]["result"] == "InvalidSpec", status["outcome"]
    assert status["outcome"]["message"] == (
        f"spec.cleanup[0].webhook.urlFrom.secretKeyRef: Secret 'hook' not found in namespace {ns}"
    )
    assert status.get("startedAt") is None, status  # it never began: no step, no cleanup
    typo_uid = body["metadata"]["uid"]

    # The target untouched: neither promoted nor written at all.
    target_after = kube_cluster.get_json("deployment", "web", "-n", ns)
    assert target_after["metadata"]["generation"] == target_before["metadata"]["generation"]
    assert target_after["spec"] == target_before["spec"]
    assert stable_image(kube_cluster, ns) == "registry.example.com/web:1.0"
    typo_objects = kube_cluster.kubectl(
        "get", "deployments,services,jobs", "-n", ns, "-o", "json"
    ).stdout
    assert typo_uid not in typo_objects  # nothing of the run was created (none owned by it)

    # The lock released: no holder; it was the typo's run that held it last.
    held = lease(kube_cluster, ns)
    assert not held["spec"].get("holderIdentity"), held
    history = json.loads(held["metadata"]["annotations"]["canary-operator.dev/history"])
    assert [h["uid"] for h in history[-2:]] == [holder_uid, typo_uid], history
    assert "released" in history[-1], history  # it took the lock, then gave it back

    # And the next rollout of the target takes it and runs.
    kube_cluster.apply(m.rollout("next", [CANARY, {"pause": {}}]), ns)
    wait_phase(kube_cluster, ns, "next", "Paused", timeout=90)
    next_uid = get_rollout(kube_cluster, ns, "next")["metadata"]["uid"]
    holder = str(lease(kube_cluster, ns)["spec"]["holderIdentity"])
    assert holder.partition("/")[0] == next_uid, holder  # the uid, or the uid/run
