"""The nginx router, held to ingress-nginx's own rules.

Rules read from kubernetes/ingress-nginx:
- internal/ingress/annotations/canary/main.go: the annotations (canary, canary-weight,
  canary-weight-total defaulting to 100, canary-by-header, -value, -pattern,
  canary-by-cookie), their validators, and "configured but not enabled" when a weight
  or a match is set without `canary: "true"`.
- internal/ingress/annotations/parser/validators.go: ValidateBool (strconv.ParseBool),
  ValidateInt (strconv.Atoi), BasicCharsRegex and IsValidRegex (alphaNumericChars
  `-._~a-zA-Z0-9/:`, plus `^$[](){}*+?|&=\\` for patterns); spaces removed first for
  header/cookie values.
- internal/ingress/controller/controller.go, mergeAlternativeBackends: a canary path is
  merged into the primary location of the same host and path, and its backend must not
  be a primary backend elsewhere (hence a separate canary Service).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from canary_operator.api.models import NginxRouting
from canary_operator.kube.api import Conflict
from canary_operator.kube.objects import FENCING
from canary_operator.traffic.base import PermanentRouteError
from canary_operator.traffic.nginx import (
    NginxRouter,
    canary_annotations,
    canary_ingress_name,
    canary_spec,
    check_canary_annotations,
    to_nginx_weight,
    to_percent,
)
from tests.harness.fake_api import FakeApi

P = "nginx.ingress.kubernetes.io"
NS = "shop"
INGRESSES = f"/apis/networking.k8s.io/v1/namespaces/{NS}/ingresses"
META = {
    "labels": {
        "app.kubernetes.io/managed-by": "canary-operator",
        "canary-operator.dev/role": "canary",
    },
    "ownerReferences": [
        {
            "apiVersion": "canary-operator.dev/v1alpha1",
            "kind": "CanaryRollout",
            "name": "r",
            "uid": "u",
        }
    ],
}


def stable_ingress() -> dict[str, Any]:
    """A user's Ingress with fields the router must neither copy wrongly nor touch."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": "web",
            "namespace": NS,
            "resourceVersion": "7",
            "annotations": {
                "kubernetes.io/ingress.class": "nginx",
                f"{P}/rewrite-target": "/",
                "team": "checkout",
            },
            "labels": {"app": "web"},
        },
        "spec": {
            "ingressClassName": "nginx",
            "tls": [{"hosts": ["shop.example.com"], "secretName": "shop-tls"}],
            "rules": [
                {
                    "host": "shop.example.com",
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": "web", "port": {"number": 80}}},
                            },
                            {
                                "path": "/static",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": "cdn", "port": {"name": "http"}}},
                            },
                        ]
                    },
                },
                {
                    "host": "admin.example.com",
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Exact",
                                "backend": {"service": {"name": "admin", "port": {"number": 80}}},
                            }
                        ]
                    },
                },
            ],
        },
    }


def router(api: FakeApi, **config: Any) -> NginxRouter:
    return NginxRouter(
        api,  # type: ignore[arg-type]
        NS,
        NginxRouting.model_validate({"stableIngress": "web", **config}),
        "web",
        "web-canary",
        copy.deepcopy(META),
        "r/3",
    )


# ------------------------------------------------------------------ arithmetic


@pytest.mark.parametrize("total", [100, 101, 333, 1000, 10000, 1000000])
def test_every_percent_survives_the_round_trip_through_canary_weight(total: int) -> None:
    for percent in range(0, 101):
        weight = to_nginx_weight(percent, total)
        assert 0 <= weight <= total
        assert to_percent(weight, total) == percent


def test_weight_total_below_100_is_refused() -> None:
    # 15 % of a total of 10 cannot be written, so the step could never read it back.
    with pytest.raises(ValidationError):
        NginxRouting.model_validate({"stableIngress": "web", "weightTotal": 10})


@pytest.mark.parametrize(
    ("weight", "total", "expected"),
    [(10, 100, "10"), (50, 100, "50"), (10, 1000, "100"), (33, 1000, "330"), (100, 100, "100")],
)
def test_canary_weight_annotation(weight: int, total: int, expected: str) -> None:
    annotations = canary_annotations(
        NginxRouting.model_validate({"stableIngress": "web", "weightTotal": total}), weight
    )
    assert annotations[f"{P}/canary"] == "true"
    assert annotations[f"{P}/canary-weight"] == expected
    # canary-weight-total defaults to 100 in ingress-nginx: only written when different
    assert annotations.get(f"{P}/canary-weight-total") == (None if total == 100 else str(total))


# ----------------------------------------------- generated annotations vs the rules


CONFIGS: list[dict[str, Any]] = [
    {},
    {"weightTotal": 1000},
    {"header": {"name": "X-Canary"}},
    {"header": {"name": "X-Canary", "value": "beta-users"}},
    {"header": {"name": "X-Region", "pattern": "^(eu|us)-[a-z]+$"}},
    {"cookie": "canary_opt_in"},
    {"header": {"name": "X-Canary", "value": "1"}, "cookie": "c", "weightTotal": 500},
    {"annotationPrefix": "ingress.example.com", "header": {"name": "X-C"}},
]


@pytest.mark.parametrize("config", CONFIGS)
def test_generated_annotations_pass_ingress_nginx_validation(config: dict[str, Any]) -> None:
    routing = NginxRouting.model_validate({"stableIngress": "web", **config})
    for weight in (0, 1, 10, 50, 99, 100):
        annotations = canary_annotations(routing, weight)
        assert check_canary_annotations(annotations, routing.annotation_prefix) == []
        prefix = routing.annotation_prefix
        assert all(k.startswith(prefix + "/canary") for k in annotations)
    if "header" in config:
        assert (
            annotations[f"{routing.annotation_prefix}/canary-by-header"] == config["header"]["name"]
        )


@pytest.mark.parametrize(
    ("annotations", "problem"),
    [
        ({f"{P}/canary-weight": "10"}, "configured but not enabled"),
        ({f"{P}/canary": "false", f"{P}/canary-by-header": "X"}, "configured but not enabled"),
        ({f"{P}/canary": "yes"}, "not a bool"),  # ParseBool knows 1/t/true/TRUE/True...
        ({f"{P}/canary": "true", f"{P}/canary-weight": "1.5"}, "not an integer"),
        ({f"{P}/canary": "true", f"{P}/canary-weight-total": "0"}, "not positive"),
        ({f"{P}/canary": "true", f"{P}/canary-weight": "-1"}, "outside"),
        (
            {f"{P}/canary": "true", f"{P}/canary-weight": "50", f"{P}/canary-weight-total": "40"},
            "outside",
        ),
        ({f"{P}/canary": "true", f"{P}/canary-by-header": "X;rm"}, "refuses"),
        ({f"{P}/canary": "true", f"{P}/canary-by-cookie": 'a"b'}, "refuses"),
        ({f"{P}/canary": "true", f"{P}/canary-by-header-pattern": "a#b"}, "refuses"),
    ],
)
def test_the_rule_checker_finds_what_ingress_nginx_refuses(
    annotations: dict[str, str], problem: str
) -> None:
    found = check_canary_annotations(annotations, P)
    assert any(problem in p for p in found), found


@pytest.mark.parametrize(
    "annotations",
    [
        {f"{P}/canary": "True", f"{P}/canary-weight": "0"},
        {f"{P}/canary": "1", f"{P}/canary-by-header": "X Canary"},  # spaces are stripped first
        {f"{P}/canary": "t", f"{P}/canary-by-header-pattern": "^v[0-9]+(\\.[0-9]+)?$"},
        {f"{P}/canary": "false"},  # a disabled canary without configuration is fine
    ],
)
def test_the_rule_checker_accepts_what_ingress_nginx_accepts(annotations: dict[str, str]) -> None:
    assert check_canary_annotations(annotations, P) == []


@pytest.mark.parametrize(
    "config",
    [
        {"header": {"name": "X;Canary"}},
        {"header": {"name": "X-Canary", "value": "a b"}},
        {"header": {"name": "X-Canary", "pattern": "a#b"}},
        {"cookie": "c=1;"},
        {"weightTotal": 0},
    ],
)
def test_the_schema_refuses_values_ingress_nginx_would_drop(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        NginxRouting.model_validate({"stableIngress": "web", **config})


# ------------------------------------------------------------------- the clone


def test_the_clone_keeps_only_host_and_paths_of_the_stable_service() -> None:
    spec = canary_spec(stable_ingress(), "web", "web-canary")
    assert spec == {
        "ingressClassName": "nginx",
        "rules": [
            {
                "host": "shop.example.com",
                "http": {
                    "paths": [
                        {
                            "path": "/",
                            "pathType": "Prefix",
                            "backend": {"service": {"name": "web-canary", "port": {"number": 80}}},
                        }
                    ]
                },
            }
        ],
    }


def test_a_default_backend_to_stable_is_cloned_too() -> None:
    stable = {
        "metadata": {"name": "web"},
        "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 8080}}}},
    }
    assert canary_spec(stable, "web", "web-canary") == {
        "defaultBackend": {"service": {"name": "web-canary", "port": {"number": 8080}}}
    }


def test_canary_ingress_name_is_a_valid_name() -> None:
    assert canary_ingress_name("web") == "web-canary"
    long = canary_ingress_name("a" * 253)
    assert len(long) <= 253 and long.endswith("-canary")


# ------------------------------------------------------------- the round trip


async def test_create_weight_read_back_and_remove_keeping_the_stable_ingress() -> None:
    api = FakeApi()
    api.objects[f"{INGRESSES}/web"] = stable_ingress()
    before = copy.deepcopy(api.objects[f"{INGRESSES}/web"])
    r = router(api, header={"name": "X-Canary", "value": "yes"}, cookie="beta")

    assert (await r.read()).reset
    await r.set_weight(10)
    canary = api.objects[f"{INGRESSES}/web-canary"]
    annotations = canary["metadata"]["annotations"]
    assert annotations[f"{P}/canary"] == "true"
    assert annotations[f"{P}/canary-weight"] == "10"
    assert annotations[f"{P}/canary-by-header"] == "X-Canary"
    assert annotations[f"{P}/canary-by-header-value"] == "yes"
    assert annotations[f"{P}/canary-by-cookie"] == "beta"
    assert annotations["kubernetes.io/ingress.class"] == "nginx"
    assert annotations[FENCING] == "r/3"
    assert f"{P}/rewrite-target" not in annotations  # the stable Ingress's own stay there
    assert check_canary_annotations(annotations, P) == []
    assert canary["metadata"]["labels"] == META["labels"]
    assert canary["metadata"]["ownerReferences"] == META["ownerReferences"]
    view = await r.read()
    assert (view.weight, view.references_canary) == (10, True)

    await r.set_weight(50)
    assert (await r.read()).weight == 50
    version = api.objects[f"{INGRESSES}/web-canary"]["metadata"]["resourceVersion"]
    await r.set_weight(50)  # nothing to change: no write
    assert api.objects[f"{INGRESSES}/web-canary"]["metadata"]["resourceVersion"] == version

    await r.set_weight(0)  # header and cookie still reach the canary at 0 %
    view = await r.read()
    assert view.weight == 0 and not view.reset

    await r.reset()
    assert f"{INGRESSES}/web-canary" not in api.objects
    assert (await r.read()).reset
    assert api.objects[f"{INGRESSES}/web"] == before  # never written


async def test_a_weight_total_is_read_back_as_percent() -> None:
    api = FakeApi()
    api.objects[f"{INGRESSES}/web"] = stable_ingress()
    r = router(api, weightTotal=1000)
    await r.set_weight(33)
    annotations = api.objects[f"{INGRESSES}/web-canary"]["metadata"]["annotations"]
    assert (annotations[f"{P}/canary-weight"], annotations[f"{P}/canary-weight-total"]) == (
        "330",
        "1000",
    )
    assert (await r.read()).weight == 33


async def test_a_canary_ingress_edited_into_something_invalid_counts_as_all_traffic() -> None:
    api = FakeApi()
    api.objects[f"{INGRESSES}/web"] = stable_ingress()
    r = router(api)
    await r.set_weight(10)
    api.objects[f"{INGRESSES}/web-canary"]["metadata"]["annotations"][f"{P}/canary"] = "false"
    view = await r.read()
    assert view.weight == 100  # ingress-nginx would treat it as a primary Ingress
    await r.reset()
    assert (await r.read()).reset


async def test_an_ingress_of_the_canary_name_that_is_not_ours_is_never_touched() -> None:
    api = FakeApi()
    api.objects[f"{INGRESSES}/web"] = stable_ingress()
    theirs = {"metadata": {"name": "web-canary", "resourceVersion": "3"}, "spec": {}}
    api.objects[f"{INGRESSES}/web-canary"] = copy.deepcopy(theirs)
    r = router(api)
    assert (await r.read()).reset
    with pytest.raises(PermanentRouteError, match="not the operator's"):
        await r.set_weight(10)
    await r.reset()
    assert api.objects[f"{INGRESSES}/web-canary"] == theirs


async def test_bad_stable_ingresses_fail_the_step_and_change_nothing() -> None:
    api = FakeApi()
    r = router(api)
    with pytest.raises(PermanentRouteError, match="not found"):
        await r.set_weight(10)
    other = stable_ingress()
    other["spec"]["rules"] = other["spec"]["rules"][1:]  # only the admin host
    api.objects[f"{INGRESSES}/web"] = other
    with pytest.raises(PermanentRouteError, match="no path to Service web"):
        await r.set_weight(10)
    assert list(api.objects) == [f"{INGRESSES}/web"]


async def test_reset_deletes_only_the_version_it_read() -> None:
    """Fencing: the delete carries the resourceVersion read just before; a concurrent
    write (another holder) makes it fail, to be decided again."""
    api = FakeApi()
    api.objects[f"{INGRESSES}/web"] = stable_ingress()
    r = router(api)
    await r.set_weight(10)
    original_get = api.get

    async def racing_get(path: str) -> dict[str, Any] | None:
        body = await original_get(path)
        if path.endswith("/web-canary") and body is not None:
            current = api.objects[path]
            api.objects[path] = api._stamp(current)  # changed between read and delete
        return body

    api.get = racing_get  # type: ignore[method-assign]
    with pytest.raises(Conflict):
        await r.reset()
    assert f"{INGRESSES}/web-canary" in api.objects
