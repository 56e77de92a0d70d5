"""What is checked before a run touches anything (issue 24): every Secret and key a
webhook names (`urlFrom` and headers; tests, metric providers, cleanup steps), the
router's objects (NGINX Ingress, Istio VirtualServices and DestinationRule), containers
and item names given twice, and analysis conditions and body templates, each problem
named by its field path; the schema's part (refused at apply) as the CRD has it. The
checks against the (fake) cluster are in test_upfront_cluster.py."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from canary_operator.api import crd
from canary_operator.api.models import (
    CanaryRolloutSpec,
    CanaryRolloutStatus,
    NginxRouting,
    SecretKeyRef,
)
from canary_operator.engine.spec_checks import spec_problems
from canary_operator.engine.types import Rollout
from canary_operator.kube.api import JsonObj
from canary_operator.validation import (
    SecretUse,
    image_problems,
    ingress_problems,
    name_problems,
    secret_problem,
    secret_uses,
)
from tests.harness.reconcile_fixtures import NAME, NS, UID, target
from tests.harness.reconcile_fixtures import spec as spec_body

JOB = {"spec": {"template": {"spec": {"containers": [{"name": "t", "image": "busybox"}]}}}}
URL_FROM = {"secretKeyRef": {"name": "hook", "key": "url"}}
HEADER = {"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "t"}}}


def make(**fields: Any) -> CanaryRolloutSpec:
    return CanaryRolloutSpec.model_validate(spec_body(**fields))


def rollout(**fields: Any) -> Rollout:
    return Rollout(NAME, NS, UID, 1, make(**fields), CanaryRolloutStatus())


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(name: str, **data: str) -> JsonObj:
    return {"metadata": {"name": name}, "data": {k: b64(v) for k, v in data.items()}}


def analysis(*metrics: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"metrics": list(metrics), **fields}


def metric(name: str = "errors", **fields: Any) -> dict[str, Any]:
    return {"name": name, "query": "q", "successCondition": "result < 1", **fields}


# ------------------------------------------------------------------- pure checks


def test_names_that_identify_items_must_differ_unnamed_ones_may_repeat() -> None:
    s = make(
        steps=[
            {"name": "ui", "canary": {}},
            {"pause": {}},
            {"pause": {}},  # unnamed: shown by kind, may repeat
            {
                "name": "checks",
                "parallel": [
                    {"name": "a", "pause": {}},
                    {"pause": {}},
                    {"pause": {}},
                    {"name": "a", "analysis": analysis(metric("x"), metric("y"), metric("x"))},
                ],
            },
            {"name": "ui", "promote": {}},
        ],
        cleanup=[{"name": "notify", "job": JOB}, {"job": JOB}, {"job": JOB}],
    )
    assert name_problems(s) == [
        "spec.steps[4].name: step 'ui' is already the name of spec.steps[0]",
        "spec.steps[3].parallel[3].name: parallel item 'a' is already the name of "
        "spec.steps[3].parallel[0]",
        "spec.steps[3].parallel[3].analysis.metrics[2].name: metric 'x' is already the name "
        "of spec.steps[3].parallel[3].analysis.metrics[0]",
    ]
    twice = make(cleanup=[{"name": "notify", "job": JOB}, {"name": "notify", "job": JOB}])
    assert name_problems(twice) == [
        "spec.cleanup[1].name: cleanup step 'notify' is already the name of spec.cleanup[0]"
    ]
    assert name_problems(make()) == []


def test_a_container_given_twice_in_images_is_refused_with_both_fields() -> None:
    s = make(
        images=[{"container": "app", "image": "web:2"}, {"container": "app", "image": "web:3"}]
    )
    assert image_problems(s, target()) == [
        "spec.images[1].container: container 'app' is already set by spec.images[0]"
    ]


def test_every_secret_key_a_webhook_names_is_found_with_its_field() -> None:
    hook = {"urlFrom": URL_FROM, "headers": [HEADER, {"name": "X-Plain", "value": "v"}]}
    provider = {"webhook": {"url": "http://m", "headers": [HEADER]}}
    s = make(
        steps=[
            {"canary": {}},
            {"test": {"webhook": hook}},
            {"parallel": [{"test": {"job": JOB}}, {"test": {"webhook": {"urlFrom": URL_FROM}}}]},
            {"analysis": analysis({**metric(), "provider": provider}, provider=provider)},
        ],
        cleanup=[{"name": "wipe", "job": JOB}, {"name": "notify", "webhook": hook}],
    )
    assert [(u.field, u.ref.name, u.url) for u in secret_uses(s)] == [
        ("spec.steps[1].test.webhook.urlFrom.secretKeyRef", "hook", True),
        ("spec.steps[1].test.webhook.headers[0].valueFrom.secretKeyRef", "tok", False),
        ("spec.steps[2].parallel[1].test.webhook.urlFrom.secretKeyRef", "hook", True),
        ("spec.steps[3].analysis.provider.webhook.headers[0].valueFrom.secretKeyRef", "tok", False),
        (
            "spec.steps[3].analysis.metrics[0].provider.webhook.headers[0].valueFrom.secretKeyRef",
            "tok",
            False,
        ),
        ("spec.cleanup[1].webhook.urlFrom.secretKeyRef", "hook", True),
        ("spec.cleanup[1].webhook.headers[0].valueFrom.secretKeyRef", "tok", False),
    ]


URL_USE = SecretUse(
    "spec.cleanup[0].webhook.urlFrom.secretKeyRef", SecretKeyRef(name="hook", key="url"), url=True
)


@pytest.mark.parametrize(
    ("found", "problem"),
    [
        (None, "Secret 'hook' not found in namespace shop"),
        (secret("hook", other="x"), "Secret 'hook' has no key 'url'"),
        (
            secret("hook", url="chat.example.com/hooks/T0/B0"),
            "Secret 'hook' key 'url' holds no http(s) URL",
        ),
        (
            {"metadata": {"name": "hook"}, "data": {"url": "%%%"}},
            "Secret 'hook' key 'url' holds no http(s) URL",
        ),
        (secret("hook", url=" https://chat.example.com/hooks/T0/B0\n"), None),
    ],
)
def test_a_secret_a_webhook_cannot_use_is_said_by_its_field_without_the_url(
    found: JsonObj | None, problem: str | None
) -> None:
    said = secret_problem(URL_USE, found, NS)
    if problem is None:
        assert said is None
    else:
        assert said == f"{URL_USE.field}: {problem}"
        assert "chat.example.com" not in said  # a URL from a Secret is a credential
    header = SecretUse("h", URL_USE.ref, url=False)
    assert secret_problem(header, secret("hook", url="any text"), NS) is None


def test_spec_problems_are_named_by_their_field_path() -> None:
    body = '{"text": "{{rollout}} {{secret}}"}'
    s = make(
        steps=[
            {"canary": {}},
            {"analysis": analysis(metric(successCondition="result <"))},
            {
                "parallel": [
                    {"pause": {}},
                    {"analysis": analysis(metric(), metric("lat", query="{{nope}}"))},
                    {"test": {"webhook": {"url": "http://x", "body": body}}},
                ]
            },
        ],
        cleanup=[{"webhook": {"url": "http://x", "body": body}}],
    )
    problems = spec_problems(s)
    assert [p.split(": ", 1)[0] for p in problems] == [
        "spec.steps[1].analysis.metrics[0].successCondition",
        "spec.steps[2].parallel[1].analysis.metrics[1].query",
        "spec.steps[2].parallel[2].test.webhook.body",
        "spec.cleanup[0].webhook.body",
    ]
    assert "{{nope}}" in problems[1] and "{{secret}}" in problems[3]
    no_condition = make(steps=[{"canary": {}}, {"analysis": analysis({"name": "m", "query": "q"})}])
    assert spec_problems(no_condition) == [
        "spec.steps[1].analysis.metrics[0]: the thresholds judge needs a successCondition "
        "or a failureCondition"
    ]
    assert spec_problems(make()) == []


def ingress(name: str, backend: str, labels: dict[str, str] | None = None) -> JsonObj:
    path_ = {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": backend}}}
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"rules": [{"host": "web.example.com", "http": {"paths": [path_]}}]},
    }


def test_ingress_problems_name_the_stable_ingress_field() -> None:
    config = NginxRouting(stable_ingress="web")
    field = "spec.trafficRouting.nginx.stableIngress"
    assert ingress_problems(None, None, config, "web") == [f"{field}: Ingress 'web' not found"]
    [other] = ingress_problems(ingress("web", "api"), None, config, "web")
    assert other.startswith(f"{field}: Ingress 'web' has no path") and "'web'" in other
    foreign = ingress("web-canary", "web")
    [taken] = ingress_problems(ingress("web", "web"), foreign, config, "web")
    assert taken.startswith(field) and "'web-canary'" in taken and "not the operator's" in taken
    ours = ingress("web-canary", "web-canary", {"app.kubernetes.io/managed-by": "canary-operator"})
    assert ingress_problems(ingress("web", "web"), ours, config, "web") == []
    assert ingress_problems(ingress("web", "web"), None, config, "web") == []


# ---------------------------------------------------------------- refused at apply


def test_the_crd_keys_images_and_metrics_and_refuses_names_used_twice() -> None:
    spec = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    props = spec["properties"]
    assert (
        props["images"]["x-kubernetes-list-type"],
        props["images"]["x-kubernetes-list-map-keys"],
    ) == (
        "map",
        ["container"],
    )
    step = props["steps"]["items"]["properties"]
    item = step["parallel"]["items"]["properties"]
    for metrics in (
        step["analysis"]["properties"]["metrics"],
        item["analysis"]["properties"]["metrics"],
    ):
        assert metrics["x-kubernetes-list-type"] == "map"
        assert metrics["x-kubernetes-list-map-keys"] == ["name"]
    for node, what in (
        (props["steps"], "step"),
        (step["parallel"], "parallel item"),
        (props["cleanup"], "cleanup step"),
    ):
        [rule] = node["x-kubernetes-validations"]
        assert rule["rule"] == (
            "self.all(x, !has(x.name) || self.exists_one(y, has(y.name) && y.name == x.name))"
        )
        assert rule["message"] == f"two {what}s have the same name: {what} names must be unique"
