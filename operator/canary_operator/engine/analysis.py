"""Analysis steps, pure: when to measure, and what the measurements so far mean.

Measurements live in the step's status, so a restarted operator continues the series
where it was. A measurement is taken in the background (`Measure` action) and handed
back as an observation. Its key names the step and the measurement's index
(``s3-m0``, ``s3-m1``, ...), so an answer is recorded exactly once: a late duplicate
(for an index already recorded) matches no key the step still waits for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from canary_operator.analysis import conditions, kayenta, thresholds
from canary_operator.analysis.queries import QUERY_VARIABLES, render_query
from canary_operator.api.models import (
    AnalysisStatus,
    AnalysisStepSpec,
    JudgeKind,
    MeasurementStatus,
    MetricVerdictStatus,
    parse_duration,
)
from canary_operator.engine.types import Measure


@dataclass
class AnalysisProgress:
    result: tuple[bool, str] | None = None  # None: still running
    actions: list[Measure] = field(default_factory=list)
    requeue: float | None = None
    waiting_for_resume: bool = False


def roles(spec: AnalysisStepSpec, baseline: bool) -> tuple[str, ...]:
    if spec.judge == JudgeKind.KAYENTA:
        return ("canary", "baseline" if baseline else "stable")
    return ("canary",)


def measurement_key(step_key: str, index: int) -> str:
    return f"{step_key}-m{index}"


def progress(
    spec: AnalysisStepSpec,
    status: AnalysisStatus,
    started_at: datetime,
    now: datetime,
    key: str,
    baseline: bool,
    answers: Mapping[str, MeasurementStatus],
    resumed: bool,
) -> AnalysisProgress:
    """Advance one analysis step; `status` is updated in place. `answers` are the
    measurements that came back, by key; only the next one of this step is taken."""
    new_measurement = answers.get(measurement_key(key, len(status.measurements)))
    if new_measurement is not None and status.phase == "Running":
        status.measurements.append(new_measurement)
    if status.phase == "Running":
        _judge(spec, status)
    if status.phase == "Successful":
        return AnalysisProgress(result=(True, status.message or "analysis passed"))
    if status.phase == "Failed":
        return AnalysisProgress(result=(False, status.message or "analysis failed"))
    if status.phase == "Inconclusive":
        if spec.inconclusive == "Pause":
            if resumed:
                return AnalysisProgress(result=(True, "inconclusive analysis accepted by resume"))
            return AnalysisProgress(waiting_for_resume=True)
        return AnalysisProgress(result=(False, f"inconclusive: {status.message}"))
    taken = len(status.measurements)
    delay = parse_duration(spec.initial_delay).total_seconds() if spec.initial_delay else 0.0
    due = delay + taken * parse_duration(spec.interval).total_seconds()
    elapsed = (now - started_at).total_seconds()
    if elapsed >= due:
        # Asked for until it answers (a slow provider delays the series, never doubles it).
        return AnalysisProgress(
            actions=[Measure(measurement_key(key, taken), spec, roles(spec, baseline))],
            requeue=parse_duration(spec.interval).total_seconds(),
        )
    return AnalysisProgress(requeue=due - elapsed)


def spec_errors(spec: AnalysisStepSpec, field: str) -> list[str]:
    """What the schema cannot check (invariant 4: refuse before touching anything):
    condition expressions and query variables. Each problem starts with its field path;
    `field` is the analysis step's (`spec.steps[1].analysis`)."""
    errors = []
    for m, metric in enumerate(spec.metrics):
        at = f"{field}.metrics[{m}]"
        if spec.judge == JudgeKind.THRESHOLDS:
            expressions = {
                "successCondition": metric.success_condition,
                "failureCondition": metric.failure_condition,
            }
            if all(e is None for e in expressions.values()):
                errors.append(
                    f"{at}: the thresholds judge needs a successCondition or a failureCondition"
                )
            for name, expression in expressions.items():
                if expression is not None:
                    try:
                        conditions.validate(expression)
                    except ValueError as exc:
                        errors.append(f"{at}.{name}: {exc}")
        try:
            render_query(metric.query, dict.fromkeys(QUERY_VARIABLES, "x"))
        except ValueError as exc:
            errors.append(f"{at}.query: {exc}")
    return errors


def _judge(spec: AnalysisStepSpec, status: AnalysisStatus) -> None:
    errors = [m.error for m in status.measurements if m.error]
    if errors:
        # A provider that cannot answer is not evidence either way.
        status.phase = "Inconclusive"
        status.message = f"measurement failed: {errors[-1]}"
        return
    if spec.judge == JudgeKind.KAYENTA:
        if len(status.measurements) >= spec.count:
            _judge_kayenta(spec, status)
        return
    verdicts = [
        thresholds.judge_metric(
            metric,
            [m.values.get(metric.name, {}).get("canary") for m in status.measurements],
            spec.count,
        )
        for metric in spec.metrics
    ]
    status.metrics = [
        MetricVerdictStatus(
            name=v.name,
            verdict=v.phase,
            successful=v.successful,
            failed=v.failed,
            inconclusive=v.inconclusive,
            no_data=v.no_data,
            last_value=_finite(v.last_value),
            message=v.message,
        )
        for v in verdicts
    ]
    phase = thresholds.judge_analysis(verdicts)
    if phase == "Running":
        return
    status.phase = phase
    bad = [v for v in verdicts if v.phase == phase] if phase != "Successful" else []
    status.message = (
        "; ".join(f"metric {v.name}: {v.message}" for v in bad)
        if bad
        else f"{len(verdicts)} metrics passed"
    )


def _judge_kayenta(spec: AnalysisStepSpec, status: AnalysisStatus) -> None:
    control_role = (
        "baseline"
        if any("baseline" in v for m in status.measurements for v in m.values.values())
        else "stable"
    )
    try:
        result = kayenta.judge(_kayenta_request(spec, status, control_role))
    except ValueError as exc:  # e.g. a weight for a group that no metric uses
        status.phase = "Failed"
        status.message = f"cannot judge: {exc}"
        return
    status.score = result.score
    status.classification = result.classification.value
    status.metrics = [
        MetricVerdictStatus(
            name=m.name,
            verdict=m.classification.value,
            ratio=_finite(m.ratio),
            estimate=_finite(m.estimate),
            lower_ci=_finite(m.lower_ci),
            upper_ci=_finite(m.upper_ci),
            message=m.message or None,
        )
        for m in result.metrics
    ]
    failing = [m.name for m in result.metrics if m.classification.value not in ("Pass", "Nodata")]
    summary = f"score {result.score:g} ({result.classification.value}) vs {control_role}"
    if failing:
        summary += "; failing metrics: " + ", ".join(failing)
    status.message = summary
    status.phase = {"Pass": "Successful", "Marginal": "Inconclusive"}.get(
        result.classification.value, "Failed"
    )


def _kayenta_request(
    spec: AnalysisStepSpec, status: AnalysisStatus, control_role: str
) -> kayenta.JudgeRequest:
    return kayenta.JudgeRequest.model_validate(
        {
            "thresholds": {"pass": spec.pass_score, "marginal": spec.marginal_score},
            "groupWeights": spec.group_weights or {},
            "metrics": [
                {
                    "name": metric.name,
                    "group": metric.group or metric.name,
                    "direction": metric.direction.value,
                    "critical": metric.critical,
                    "mustHaveData": metric.no_data.value == "Fail",
                    "effectSize": {
                        "allowedIncrease": metric.allowed_increase,
                        "allowedDecrease": metric.allowed_decrease,
                    },
                    "control": _series(status, metric.name, control_role),
                    "experiment": _series(status, metric.name, "canary"),
                }
                for metric in spec.metrics
            ],
        }
    )


def _series(status: AnalysisStatus, metric: str, role: str) -> list[float | None]:
    return [m.values.get(metric, {}).get(role) for m in status.measurements]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
