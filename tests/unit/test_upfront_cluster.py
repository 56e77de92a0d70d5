"""What is checked before a run touches anything (issue 24), against the fake cluster:
the Secrets a webhook names (each read once; an API error waits), the NGINX Ingress and
the Istio VirtualServices and DestinationRule, and a whole reconcile of a rollout whose
cleanup could never succeed (it ends InvalidSpec before the lock is even asked for).
The pure checks are in test_upfront_checks.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.engine.types import Rollout
from canary_operator.kube.api import JsonObj, path
from canary_operator.reconcile.reconciler import Reconciler
from canary_operator.validation import ClusterValidator
from tests.harness.reconcile_fixtures import (
    LEASES,
    NAME,
    NS,
    Cluster,
    fake_cluster,
    rollout_body,
    service,
    target,
)
from tests.harness.reconcile_fixtures import spec as spec_body
from tests.unit.test_upfront_checks import HEADER, URL_FROM, ingress, rollout, secret

SECRETS = path("", "v1", "secrets", NS)
INGRESSES = path("networking.k8s.io", "v1", "ingresses", NS)
VIRTUAL_SERVICES = path("networking.istio.io", "v1", "virtualservices", NS)
DESTINATION_RULES = path("networking.istio.io", "v1", "destinationrules", NS)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with fake_cluster() as made:
        made.with_target()
        yield made


async def problems_of(cluster: Cluster, r: Rollout) -> list[str]:
    return await ClusterValidator(cluster.fresh).problems(r, target(), service())


async def test_a_cleanup_webhook_url_from_a_missing_secret_is_found_before_the_run(
    cluster: Cluster,
) -> None:
    r = rollout(cleanup=[{"name": "notify", "webhook": {"urlFrom": {**URL_FROM}}}])
    assert await problems_of(cluster, r) == [
        "spec.cleanup[0].webhook.urlFrom.secretKeyRef: Secret 'hook' not found in namespace shop"
    ]
    cluster.kube.put(f"{SECRETS}/hook", secret("hook", url="https://chat.example.com/x"))
    assert await problems_of(cluster, r) == []


async def test_each_secret_is_read_once_however_many_fields_name_it(cluster: Cluster) -> None:
    hook = {"urlFrom": URL_FROM, "headers": [HEADER]}
    r = rollout(
        steps=[{"canary": {}}, {"test": {"webhook": hook}}, {"promote": {}}],
        cleanup=[{"webhook": hook}],
    )
    cluster.kube.put(f"{SECRETS}/tok", secret("tok", t="token"))
    cluster.clear()
    assert await problems_of(cluster, r) == [
        "spec.steps[1].test.webhook.urlFrom.secretKeyRef: Secret 'hook' not found in "
        "namespace shop",
        "spec.cleanup[0].webhook.urlFrom.secretKeyRef: Secret 'hook' not found in namespace shop",
    ]
    reads = [q for q in cluster.fresh.requests if q.startswith("GET secrets")]
    assert sorted(reads) == ["GET secrets/hook", "GET secrets/tok"]


async def test_a_secret_that_cannot_be_read_yet_waits_and_one_forbidden_is_said(
    cluster: Cluster,
) -> None:
    r = rollout(cleanup=[{"webhook": {"urlFrom": URL_FROM}}])
    cluster.fresh.fail_next("GET", "secrets/hook", ApiException(status=500, reason="etcd"))
    with pytest.raises(ApiException):
        await problems_of(cluster, r)
    cluster.fresh.fail_next("GET", "secrets/hook", ApiException(status=403, reason="no"))
    assert await problems_of(cluster, r) == [
        "spec.cleanup[0].webhook.urlFrom.secretKeyRef: the operator may not read Secret 'hook'"
    ]


NGINX = {"nginx": {"stableIngress": "web"}}


async def test_the_nginx_stable_ingress_is_checked_up_front(cluster: Cluster) -> None:
    r = rollout(trafficRouting=NGINX)
    assert await problems_of(cluster, r) == [
        "spec.trafficRouting.nginx.stableIngress: Ingress 'web' not found"
    ]
    cluster.kube.put(f"{INGRESSES}/web", ingress("web", "web"))
    assert await problems_of(cluster, r) == []
    cluster.kube.put(f"{INGRESSES}/web-canary", ingress("web-canary", "web"))
    [taken] = await problems_of(cluster, r)
    assert "'web-canary'" in taken and "not the operator's" in taken
    cluster.fresh.fail_next("GET", "ingresses/web", ApiException(status=503, reason="busy"))
    with pytest.raises(ApiException):  # cannot be checked yet: the run waits
        await problems_of(cluster, r)


def virtual_service(name: str, host: str, subset: str | None = None) -> JsonObj:
    destination = {"host": host, **({"subset": subset} if subset else {})}
    return {
        "metadata": {"name": name},
        "spec": {"http": [{"name": "primary", "route": [{"destination": destination}]}]},
    }


def destination_rule(canary_labels: dict[str, str], host: str = "web") -> JsonObj:
    return {
        "metadata": {"name": "web"},
        "spec": {
            "host": host,
            "subsets": [
                {"name": "stable", "labels": {"app": "web", "track": "stable"}},
                {"name": "canary", "labels": canary_labels},
            ],
        },
    }


async def test_istio_virtual_services_are_checked_up_front(cluster: Cluster) -> None:
    field = "spec.trafficRouting.istio.virtualServices"
    routing = {"istio": {"virtualServices": [{"name": "web"}, {"name": "api"}]}}
    r = rollout(trafficRouting=routing)
    cluster.kube.put(f"{VIRTUAL_SERVICES}/web", virtual_service("web", "web"))
    assert await problems_of(cluster, r) == [f"{field}[1].name: VirtualService 'api' not found"]
    cluster.kube.put(f"{VIRTUAL_SERVICES}/api", virtual_service("api", "api"))
    assert await problems_of(cluster, r) == [
        f"{field}[1]: VirtualService api has no HTTP route to stable"
    ]
    named = {"istio": {"virtualServices": [{"name": "web", "routes": ["primary", "mirror"]}]}}
    assert await problems_of(cluster, rollout(trafficRouting=named)) == [
        f"{field}[0]: VirtualService web has no HTTP route named mirror"
    ]


async def test_the_istio_destination_rule_is_checked_up_front(cluster: Cluster) -> None:
    field = "spec.trafficRouting.istio.destinationRule"
    rule = {"name": "web", "stableSubsetName": "stable", "canarySubsetName": "canary"}
    r = rollout(
        trafficRouting={"istio": {"virtualServices": [{"name": "web"}], "destinationRule": rule}}
    )
    cluster.kube.put(f"{VIRTUAL_SERVICES}/web", virtual_service("web", "web", "stable"))
    assert await problems_of(cluster, r) == [f"{field}.name: DestinationRule 'web' not found"]
    cluster.kube.put(f"{DESTINATION_RULES}/web", destination_rule({"track": "canary"}))
    [labels] = await problems_of(cluster, r)
    assert labels.startswith(f"{field}: DestinationRule web: subset canary must select")
    canary = {"canary-operator.dev/role": "canary"}
    cluster.kube.put(f"{DESTINATION_RULES}/web", destination_rule(canary))
    assert await problems_of(cluster, r) == []
    # With the subsets usable, the VirtualService is weighed by them.
    cluster.kube.put(f"{VIRTUAL_SERVICES}/web", virtual_service("web", "web"))
    assert await problems_of(cluster, r) == [
        "spec.trafficRouting.istio.virtualServices[0]: VirtualService web has no HTTP route "
        "to stable"
    ]
    # The stable destinations are told by the DestinationRule's host, not the Service's.
    cluster.kube.put(f"{DESTINATION_RULES}/web", destination_rule(canary, host="web-all"))
    cluster.kube.put(f"{VIRTUAL_SERVICES}/web", virtual_service("web", "web", "stable"))
    assert len(await problems_of(cluster, r)) == 1
    cluster.kube.put(f"{VIRTUAL_SERVICES}/web", virtual_service("web", "web-all", "stable"))
    assert await problems_of(cluster, r) == []


async def test_a_cleanup_that_could_never_succeed_ends_the_run_before_anything(
    cluster: Cluster,
) -> None:
    body = rollout_body(spec_body(cleanup=[{"name": "notify", "webhook": {"urlFrom": URL_FROM}}]))
    cluster.add_rollout(body)
    cluster.clear()
    assert await Reconciler(cluster.deps).reconcile(NS, NAME) is None
    status = cluster.rollout()["status"]
    assert (status["phase"], status["outcome"]["result"]) == ("Failed", "InvalidSpec")
    assert status["outcome"]["message"] == (
        "spec.cleanup[0].webhook.urlFrom.secretKeyRef: Secret 'hook' not found in namespace shop"
    )
    assert status.get("startedAt") is None
    assert cluster.kube.stored(f"{LEASES}/cro-lock-web") is None  # the lock never taken
    writes = [
        q for q in cluster.kube.store.requests if not q.startswith("GET") and "?dryRun" not in q
    ]
    assert all("canaryrollouts" in w or w == "POST events" for w in writes), writes
