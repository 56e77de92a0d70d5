"""The operator's HTTP endpoints and metrics, without a cluster (aiohttp test client)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.api.models import (
    CanaryRolloutStatus,
    CleanupStatus,
    Condition,
    LockStatus,
    Outcome,
    Phase,
    QueueStatus,
    Result,
    StepPhase,
    StepStatus,
)
from canary_operator.metrics import Metrics
from canary_operator.web import RUNNING, STANDBY, STARTING, WebState, build_app

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def stamp(offset: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(T0 + offset, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def rollout(
    phase: str | None,
    generation: int = 1,
    observed: int | None = 1,
    annotations: dict[str, str] | None = None,
    **status: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {
            "name": "web-v001",
            "namespace": "apps",
            "generation": generation,
            "annotations": annotations or {},
        },
        "spec": {},
    }
    if phase is not None:
        body["status"] = {"phase": phase, "observedGeneration": observed, "run": 1, **status}
    return body


# ------------------------------------------------------------------- metrics


def lifecycle(metrics: Metrics, clock: Clock) -> None:
    """One rollout through queue, a test step, a failed cleanup attempt, success."""
    queued = CanaryRolloutStatus(
        phase=Phase.QUEUED,
        run=1,
        queue=QueueStatus(lock="cro-lock-web", holder="other", position=1, waiting=2),
        conditions=[
            Condition(
                type="Progressing", status="True", reason="Queued", last_transition_time=stamp(0)
            )
        ],
    )
    metrics.record("apps", "web-v001", CanaryRolloutStatus(), queued)
    clock.now = T0 + 42
    running = queued.model_copy(deep=True)
    running.phase = Phase.PROGRESSING
    running.queue = QueueStatus(lock="cro-lock-web", holder="web-v001", position=0, waiting=1)
    running.lock = LockStatus(name="cro-lock-web", token=3, acquired_at=stamp(42))
    running.steps = [
        StepStatus(name="smoke", kind="test", phase=StepPhase.RUNNING, started_at=stamp(42))
    ]
    metrics.record("apps", "web-v001", queued, running)
    done = running.model_copy(deep=True)
    done.steps = [
        StepStatus(
            name="smoke",
            kind="test",
            phase=StepPhase.SUCCEEDED,
            started_at=stamp(42),
            finished_at=stamp(52),
        )
    ]
    done.phase = Phase.CLEANING_UP
    done.outcome = Outcome(result=Result.SUCCEEDED, message="ok", decided_at=stamp(52))
    done.cleanup = CleanupStatus(started_at=stamp(52))
    metrics.record("apps", "web-v001", running, done)
    blocked = done.model_copy(deep=True)
    assert blocked.cleanup is not None
    blocked.cleanup.attempts = 1
    blocked.cleanup.last_error = "route unreachable"
    metrics.record("apps", "web-v001", done, blocked)
    finished = blocked.model_copy(deep=True)
    assert finished.cleanup is not None
    finished.cleanup.finished_at = stamp(60)
    finished.phase = Phase.SUCCEEDED
    finished.queue = None
    metrics.record("apps", "web-v001", blocked, finished)
    metrics.record("apps", "web-v001", finished, finished)  # a rewrite counts nothing twice


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in an exposition, by name and exact labels."""
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)", line)
        assert match, f"not a valid sample line: {line!r}"
        found = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', match[3] or ""))
        if match[1] == name and found == labels:
            return float(match[4])
    raise AssertionError(f"no sample {name}{labels} in:\n{text}")


def test_metrics_follow_a_rollout_through_its_status() -> None:
    clock = Clock()
    metrics = Metrics(clock=clock)
    lifecycle(metrics, clock)
    text = metrics.render()
    assert sample(text, "canary_operator_rollouts", namespace="apps", phase="Succeeded") == 1
    completed = "canary_operator_rollouts_completed_total"
    assert sample(text, completed, namespace="apps", result="Succeeded") == 1
    steps = "canary_operator_step_duration_seconds"
    assert sample(text, f"{steps}_count", kind="test", result="Succeeded") == 1
    assert sample(text, f"{steps}_sum", kind="test", result="Succeeded") == 10
    # prometheus_client writes bucket bounds as Go floats ("5.0"); Prometheus reads
    # them as the same numbers as "5".
    assert sample(text, f"{steps}_bucket", kind="test", result="Succeeded", le="5.0") == 0
    assert sample(text, f"{steps}_bucket", kind="test", result="Succeeded", le="15.0") == 1
    cleanup = "canary_operator_cleanup_duration_seconds"
    assert sample(text, f"{cleanup}_sum", result="Succeeded") == 8
    assert sample(text, "canary_operator_cleanup_failures_total", namespace="apps") == 1
    assert sample(text, "canary_operator_lock_wait_seconds_sum", namespace="apps") == 42
    assert sample(text, "canary_operator_lock_wait_seconds_count", namespace="apps") == 1
    assert sample(text, "canary_operator_status_writes_total") == 6
    # The run ended: it no longer counts in its lock's queue.
    assert "canary_operator_queue_length{" not in text


def test_queue_length_is_the_largest_waiting_count_reported_for_a_lock() -> None:
    metrics = Metrics()
    for name, waiting in (("a", 2), ("b", 1)):
        status = CanaryRolloutStatus(
            phase=Phase.QUEUED, run=1, queue=QueueStatus(lock="cro-lock-web", waiting=waiting)
        )
        metrics.record("apps", name, None, status)
    text = metrics.render()
    assert sample(text, "canary_operator_queue_length", namespace="apps", lock="cro-lock-web") == 2
    assert sample(text, "canary_operator_rollouts", namespace="apps", phase="Queued") == 2
    metrics.observe("apps", "a", None)  # deleted
    metrics.observe("apps", "c", "Succeeded")  # seen by the watch only
    text = metrics.render()
    assert sample(text, "canary_operator_queue_length", namespace="apps", lock="cro-lock-web") == 1
    assert sample(text, "canary_operator_rollouts", namespace="apps", phase="Queued") == 1
    assert sample(text, "canary_operator_rollouts", namespace="apps", phase="Succeeded") == 1


def test_histogram_buckets_are_cumulative_and_end_with_inf() -> None:
    metrics = Metrics()
    for seconds in (0.5, 3, 40, 9000):
        metrics.step_duration.labels(kind="pause", result="Succeeded").observe(seconds)
    text = metrics.render()
    buckets = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("canary_operator_step_duration_seconds_bucket")
    ]
    assert buckets == sorted(buckets)
    assert buckets[-1] == 4
    assert 'le="+Inf"' in text
    assert (
        sample(
            text, "canary_operator_step_duration_seconds_count", kind="pause", result="Succeeded"
        )
        == 4
    )


def test_label_values_are_escaped() -> None:
    metrics = Metrics()
    metrics.observe('we"ird\\ns', "x", "Pending")
    text = metrics.render()
    assert 'namespace="we\\"ird\\\\ns"' in text


# ----------------------------------------------------------------- endpoints


@pytest.fixture
def state() -> WebState:
    bodies = {
        ("apps", "done"): rollout("Succeeded", outcome={"result": "Succeeded", "message": "ok"}),
        ("apps", "new-spec"): rollout("Succeeded", generation=2, observed=1),
        ("apps", "failed"): rollout(
            "Failed",
            steps=[{"name": "canary"}, {"name": "smoke"}],
            outcome={"result": "StepFailed", "message": "smoke failed", "failedStep": 2},
        ),
        ("apps", "retrying"): rollout("Failed", annotations={"canary-operator.dev/retry": "2"}),
        ("apps", "paused"): rollout(
            "Paused",
            generation=2,
            observed=1,
            conditions=[{"type": "Paused", "status": "True", "observedGeneration": 2}],
        ),
    }

    async def lookup(namespace: str, name: str) -> dict[str, Any] | None:
        if name == "forbidden":
            raise ApiException(status=403, reason="cannot get canaryrollouts")
        return bodies.get((namespace, name))

    return WebState(lookup=lookup)


async def test_health_and_readiness(state: WebState) -> None:
    async with TestClient(TestServer(build_app(state))) as http:
        assert (await http.get("/healthz")).status == 200
        assert state.mode == STARTING
        assert (await http.get("/readyz")).status == 503
        state.set_mode(STANDBY)
        response = await http.get("/readyz")
        assert response.status == 200
        assert "standby" in await response.text()
        assert state.metrics.leader == 0
        state.set_mode(RUNNING)
        assert (await http.get("/readyz")).status == 200
        assert state.metrics.leader == 1


async def test_metrics_endpoint_serves_the_text_format(state: WebState) -> None:
    clock = Clock()
    state.metrics = Metrics(clock=clock)
    lifecycle(state.metrics, clock)
    async with TestClient(TestServer(build_app(state))) as http:
        response = await http.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    assert "# TYPE canary_operator_step_duration_seconds histogram" in text
    assert sample(text, "canary_operator_rollouts", namespace="apps", phase="Succeeded") == 1


@pytest.mark.parametrize(
    ("name", "code", "phase"),
    [
        ("done", 200, "Succeeded"),
        ("new-spec", 200, "Pending"),  # the operator has not seen generation 2 yet
        ("failed", 200, "Failed"),
        ("retrying", 200, "Pending"),  # a retry was asked for and has not started
        ("paused", 200, "Paused"),  # conditions carry generation 2: it was seen
        ("missing", 404, "NotFound"),
        ("forbidden", 403, "Unknown"),
    ],
)
async def test_status_endpoint_reports_one_generation_aware_phase(
    state: WebState, name: str, code: int, phase: str
) -> None:
    async with TestClient(TestServer(build_app(state))) as http:
        response = await http.get(f"/status/apps/{name}")
        assert response.status == code
        document = await response.json()
    assert document["phase"] == phase


async def test_status_endpoint_explains_a_failure(state: WebState) -> None:
    async with TestClient(TestServer(build_app(state))) as http:
        document = await (await http.get("/status/apps/failed")).json()
    assert document["done"] is True
    assert document["reason"] == "StepFailed"
    assert document["failedStep"] == 2
    assert document["failedStepName"] == "smoke"


async def test_status_endpoint_is_read_only(state: WebState) -> None:
    async with TestClient(TestServer(build_app(state))) as http:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            response = await http.request(method, "/status/apps/done")
            assert response.status == 405, method


def test_record_never_raises() -> None:
    """The hook runs inside a reconcile: bad data must not fail it."""
    metrics = Metrics()
    broken = CanaryRolloutStatus(
        phase=Phase.PROGRESSING,
        run=1,
        steps=[
            StepStatus(
                name="x",
                kind="test",
                phase=StepPhase.SUCCEEDED,
                started_at="yesterday",
                finished_at="today",
            )
        ],
    )
    metrics.record("apps", "x", None, broken)
    assert metrics.status_writes == 1
