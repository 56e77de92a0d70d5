"""reconcile/checks.py: webhook tests and measurements started as background work, their
answers (failures included) coming back as observations; Secrets read through the
reconcile's Kube."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from canary_operator.api.models import (
    AnalysisStepSpec,
    CanaryRolloutSpec,
    CanaryRolloutStatus,
    MeasurementStatus,
    WebhookSpec,
)
from canary_operator.checks.webhook import lock_headers, with_lock
from canary_operator.engine.types import CallWebhook, CheckResult, Measure, Plan, Rollout
from canary_operator.kube.api import path
from canary_operator.reconcile import act, checks
from canary_operator.reconcile.context import ReconcileContext
from tests.harness.fake_http import FakeServer, Reply
from tests.harness.reconcile_fixtures import NAME, NS, Cluster, fake_cluster, spec

SECRETS = path("", "v1", "secrets", NS)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with fake_cluster() as made:
        yield made


def secret(cluster: Cluster, name: str, **data: str) -> None:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    cluster.kube.put(f"{SECRETS}/{name}", {"metadata": {"name": name}, "data": encoded})


def webhook(**fields: Any) -> CallWebhook:
    spec = WebhookSpec.model_validate({"retries": 0, **fields})
    return CallWebhook(key="s1-webhook", webhook=spec, step_label="1/2 smoke")


async def answer(cluster: Cluster, ctx: ReconcileContext, key: str) -> Any:
    """The answer of a check started in the background, once it is in (the rollout
    is woken for it)."""
    for _ in range(500):
        answers, running = cluster.deps.checks.observe(ctx.ref)
        if key in answers:
            assert (NS, NAME) in cluster.wakes and key not in running
            return answers[key]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no answer for {key}")


async def test_a_url_from_a_missing_secret_is_a_failed_check_naming_it(cluster: Cluster) -> None:
    ctx = await cluster.running()
    action = webhook(urlFrom={"secretKeyRef": {"name": "hook", "key": "url"}})
    checks.start(ctx, action)
    assert cluster.deps.checks.known(ctx.ref, action.key)
    assert await answer(cluster, ctx, action.key) == CheckResult(
        False, "urlFrom: Secret 'hook' has no key 'url' (or is missing)"
    )
    assert cluster.kube.requests == ["GET secrets/hook"]


async def test_a_url_from_a_secret_holding_no_url(cluster: Cluster) -> None:
    ctx = await cluster.running()
    secret(cluster, "hook", url="ftp://example.com\n")
    action = webhook(urlFrom={"secretKeyRef": {"name": "hook", "key": "url"}})
    checks.start(ctx, action)
    assert await answer(cluster, ctx, action.key) == CheckResult(
        False, "urlFrom: Secret 'hook' key 'url' holds no http(s) URL"
    )


async def test_a_header_from_a_missing_secret(cluster: Cluster) -> None:
    ctx = await cluster.running()
    header = {"name": "X-Token", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "v"}}}
    action = webhook(url="http://127.0.0.1:9/never", headers=[header])
    checks.start(ctx, action)
    result = await answer(cluster, ctx, action.key)
    assert not result.ok and "Secret 'tok' has no key 'v'" in result.message


async def test_a_webhook_from_secrets_is_called_once_and_keeps_its_url_secret(
    cluster: Cluster,
) -> None:
    ctx = await cluster.running()
    async with FakeServer(Reply(200, {"ok": True})) as server:
        secret(cluster, "hook", url=f"{server.url}/smoke?token=s3cret\n", token="t0k\n")
        header = {
            "name": "X-Token",
            "valueFrom": {"secretKeyRef": {"name": "hook", "key": "token"}},
        }
        action = webhook(urlFrom={"secretKeyRef": {"name": "hook", "key": "url"}}, headers=[header])
        checks.start(ctx, action)
        checks.start(ctx, action)  # already running: not started again
        result = await answer(cluster, ctx, action.key)
        assert result.ok and "HTTP 200" in result.message
        assert "s3cret" not in result.message
        assert len(server.requests) == 1
        sent = server.requests[0]
        assert sent.path == "/smoke" and sent.headers["X-Token"] == "t0k"
        context = sent.json()
        assert (context["rollout"], context["namespace"], context["step"]) == (
            NAME,
            NS,
            "1/2 smoke",
        )
        assert context["canaryService"] == "web-canary.shop.svc"


def test_what_webhooks_are_told() -> None:
    rollout = Rollout(
        NAME,
        NS,
        "uid",
        1,
        CanaryRolloutSpec.model_validate(spec()),
        CanaryRolloutStatus.model_validate({"phase": "Progressing", "run": 4, "weight": 20}),
    )
    told = checks.webhook_context(rollout, None)
    assert told == {
        "rollout": NAME,
        "namespace": NS,
        "run": 4,
        "target": "web",
        "weight": 20,
        "canaryService": "web-canary.shop.svc",
        "stableService": "web.shop.svc",
        "newVersion": [{"container": "app", "image": "web:2"}],
        "version": "app=web:2",
        "phase": "Progressing",
        "outcome": "",
        "message": "",
    }


def analysis(**fields: Any) -> AnalysisStepSpec:
    return AnalysisStepSpec.model_validate(
        {"metrics": [{"name": "errors", "query": "sum(errors)"}], **fields}
    )


async def test_a_measurement_without_a_provider(cluster: Cluster) -> None:
    ctx = await cluster.running()
    action = Measure(key="s1-m1", analysis=analysis(), roles=("canary",))
    checks.start(ctx, action)
    result = await answer(cluster, ctx, action.key)
    assert isinstance(result, MeasurementStatus)
    assert result.error == "metric errors: no provider configured" and not result.values


async def test_a_measurement_whose_provider_header_secret_is_missing(cluster: Cluster) -> None:
    ctx = await cluster.running()
    header = {"name": "X-Token", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "v"}}}
    provider = {"webhook": {"url": "http://127.0.0.1:9/metrics", "headers": [header]}}
    action = Measure(key="s1-m1", analysis=analysis(provider=provider), roles=("canary",))
    result = await checks.measure(cluster.kube, ctx.rollout, action)
    assert result.error is not None and result.error.startswith("metric errors: header X-Token")


async def test_a_check_starts_under_the_lock_and_only_once(cluster: Cluster) -> None:
    ctx = await cluster.running()
    action = webhook(urlFrom={"secretKeyRef": {"name": "hook", "key": "url"}})
    plan = Plan(status=ctx.rollout.status, actions=[action])
    await act.act(ctx, plan)
    assert cluster.fresh.requests == ["GET leases/cro-lock-web"]  # the fence
    await answer(cluster, ctx, action.key)
    cluster.clear()
    await act.act(ctx, plan)  # known (answered, not yet recorded): neither fenced nor started
    assert cluster.fresh.requests == [] and cluster.kube.requests == []


async def test_webhooks_are_told_the_lock_and_its_fencing_token(cluster: Cluster) -> None:
    """So that a system outside the cluster can fence too: a call carrying a lower
    token than one it has seen comes from a run that lost its lock."""
    ctx = await cluster.running()
    assert ctx.obs.lock.held and ctx.obs.lock.token == 1
    async with FakeServer(Reply(200, {"value": 0.5})) as server:
        forged = {"name": "x-canary-lock-token", "value": "99"}  # the spec cannot set it
        action = webhook(url=f"{server.url}/smoke", headers=[forged])
        checks.start(ctx, action)
        assert (await answer(cluster, ctx, action.key)).ok
        provider = {"webhook": {"url": f"{server.url}/metrics"}}
        measure = Measure(key="s1-m1", analysis=analysis(provider=provider), roles=("canary",))
        checks.start(ctx, measure)
        measured = await answer(cluster, ctx, measure.key)
        assert measured.values == {"errors": {"canary": 0.5}}, measured
        assert len(server.requests) == 2
        for sent in server.requests:
            told = {k.lower(): v for k, v in sent.headers.items()}
            assert told["x-canary-lock-lease"] == f"{NS}/cro-lock-web"
            assert told["x-canary-lock-token"] == "1"


def test_the_lock_headers_win_over_the_specs_and_there_are_none_without_a_lock() -> None:
    lock = lock_headers(NS, "cro-lock-web", 3)
    assert lock == {"X-Canary-Lock-Lease": f"{NS}/cro-lock-web", "X-Canary-Lock-Token": "3"}
    assert with_lock({"x-canary-lock-token": "99", "X-Token": "t"}, lock) == {
        "X-Token": "t",
        **lock,
    }
    assert lock_headers(NS, "cro-lock-web", None) == {}
    assert with_lock({"X-Token": "t"}, {}) == {"X-Token": "t"}
