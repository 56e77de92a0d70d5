"""The thresholds judge: per-metric success/failure conditions, pure, no I/O.

Semantics follow Argo Rollouts' AnalysisRun:

One measurement (:func:`measurement_outcome`):

* only ``successCondition``: Successful if it holds, else Failed;
* only ``failureCondition``: Failed if it holds, else Successful;
* both: Failed if the failure condition holds (it wins when both hold), Successful if
  only the success condition holds, Inconclusive if neither does;
* no data (``None``): what ``noData`` says (Fail / Inconclusive / Pass), counted
  under that outcome *and* in ``noData``.

NaN is a value, not "no data": every comparison with NaN is false (see
:mod:`canary_operator.analysis.conditions`), so NaN fails a success-only metric and is
inconclusive when both conditions are set; ``isNaN(result)`` handles it explicitly.

A metric over ``count`` planned measurements (:func:`judge_metric`):

* **Failed** as soon as the failed measurements exceed ``failureLimit``;
* **Successful** as soon as ``consecutiveSuccessLimit`` (when > 0) successes in a row
  are reached, provided no measurement was inconclusive;
* after ``count`` measurements: Failed if failed > failureLimit; else **Inconclusive**
  if any measurement was inconclusive (Argo's ``inconclusiveLimit`` defaults to 0: one
  inconclusive measurement makes success impossible), or if ``consecutiveSuccessLimit``
  is set and was never reached (Argo: "both limits applicable" ends Inconclusive at
  count); else **Successful**;
* before that: Running. Unlike Argo, an inconclusive measurement does not end the
  metric at once: the remaining measurements may still turn it into Failed.

The analysis (:func:`judge_analysis`) is the worst metric: any Failed -> Failed, else
any Running -> Running, else any Inconclusive -> Inconclusive, else Successful.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from canary_operator.analysis import conditions
from canary_operator.api.models import AnalysisMetricSpec, NoDataPolicy

__all__ = [
    "AnalysisPhase",
    "MetricVerdict",
    "Outcome",
    "judge_analysis",
    "judge_metric",
    "measurement_outcome",
    "validate_metric",
]

AnalysisPhase = Literal["Running", "Successful", "Failed", "Inconclusive"]
Outcome = Literal["Successful", "Failed", "Inconclusive"]

_NO_DATA_OUTCOME: dict[NoDataPolicy, Outcome] = {
    NoDataPolicy.FAIL: "Failed",
    NoDataPolicy.INCONCLUSIVE: "Inconclusive",
    NoDataPolicy.PASS: "Successful",
}


class MetricVerdict(BaseModel):
    """One metric's verdict so far (camelCase on the wire)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    name: str
    phase: AnalysisPhase
    successful: int = 0
    failed: int = 0
    inconclusive: int = 0
    no_data: int = 0
    last_value: float | None = None
    message: str = ""


def validate_metric(spec: AnalysisMetricSpec) -> None:
    """Raise :class:`ValueError` naming the metric unless it has at least one condition
    and every condition it has is valid."""
    if spec.success_condition is None and spec.failure_condition is None:
        raise ValueError(
            f"metric {spec.name}: the thresholds judge needs a successCondition or a "
            "failureCondition"
        )
    for field, expression in (
        ("successCondition", spec.success_condition),
        ("failureCondition", spec.failure_condition),
    ):
        if expression is not None:
            try:
                conditions.validate(expression)
            except ValueError as exc:
                raise ValueError(f"metric {spec.name}: {field}: {exc}") from None


def measurement_outcome(spec: AnalysisMetricSpec, value: float | None) -> Outcome:
    """What one measurement counts as (see the module docstring)."""
    if value is None:
        return _NO_DATA_OUTCOME[spec.no_data]
    validate_metric(spec)
    success = failure = False
    if spec.success_condition is not None:
        success = conditions.evaluate(spec.success_condition, value)
    if spec.failure_condition is not None:
        failure = conditions.evaluate(spec.failure_condition, value)
    if spec.success_condition is None:
        success = not failure
    if spec.failure_condition is None:
        failure = not success
    if failure:
        return "Failed"
    return "Successful" if success else "Inconclusive"


def judge_metric(
    spec: AnalysisMetricSpec, values: Sequence[float | None], count: int
) -> MetricVerdict:
    """Judge the measurements taken so far (``None`` = no data) of one metric with
    ``count`` planned; measurements past ``count`` are ignored. Raises
    :class:`ValueError` if the metric's conditions are invalid (:func:`validate_metric`)."""
    validate_metric(spec)
    limit = spec.failure_limit
    streak_limit = spec.consecutive_success_limit
    verdict = MetricVerdict(name=spec.name, phase="Running")
    streak = longest = 0
    last: tuple[float | None, Outcome] | None = None
    taken = list(values[: max(count, 0)])
    for value in taken:
        outcome = measurement_outcome(spec, value)
        last = (value, outcome)
        verdict.last_value = value
        if value is None:
            verdict.no_data += 1
        if outcome == "Successful":
            verdict.successful += 1
            streak += 1
            longest = max(longest, streak)
        else:
            streak = 0
            if outcome == "Failed":
                verdict.failed += 1
            else:
                verdict.inconclusive += 1
        if verdict.failed > limit:
            verdict.phase = "Failed"
            verdict.message = (
                f"{verdict.failed} failed measurements > failureLimit {limit}; "
                f"last: {_describe(spec, value, outcome)}"
            )
            return verdict
        if streak_limit > 0 and streak >= streak_limit and verdict.inconclusive == 0:
            verdict.phase = "Successful"
            verdict.message = (
                f"{streak} consecutive successful measurements "
                f"(consecutiveSuccessLimit {streak_limit})"
            )
            return verdict
    tally = (
        f"{verdict.successful} successful, {verdict.failed} failed, "
        f"{verdict.inconclusive} inconclusive"
        + (f" ({verdict.no_data} without data)" if verdict.no_data else "")
    )
    if len(taken) < count:
        verdict.message = f"{len(taken)}/{count} measurements: {tally}"
        return verdict
    if verdict.inconclusive:
        assert last is not None
        verdict.phase = "Inconclusive"
        verdict.message = (
            f"{verdict.inconclusive} of {count} measurements inconclusive ({tally}); "
            f"last: {_describe(spec, *last)}"
        )
    elif streak_limit > 0:
        verdict.phase = "Inconclusive"
        never = f" (it exceeds count {count})" if streak_limit > count else ""
        verdict.message = (
            f"consecutiveSuccessLimit {streak_limit} not reached{never}: longest run of "
            f"successes {longest} in {count} measurements ({tally})"
        )
    else:
        verdict.phase = "Successful"
        verdict.message = f"{count} measurements: {tally} (failureLimit {limit})"
    return verdict


def judge_analysis(verdicts: Iterable[MetricVerdict]) -> AnalysisPhase:
    """The analysis phase from its metrics' verdicts: the worst one wins."""
    phases = {v.phase for v in verdicts}
    if not phases:
        raise ValueError("an analysis needs at least one metric verdict")
    if "Failed" in phases:
        return "Failed"
    if "Running" in phases:
        return "Running"
    if "Inconclusive" in phases:
        return "Inconclusive"
    return "Successful"


def _describe(spec: AnalysisMetricSpec, value: float | None, outcome: Outcome) -> str:
    if value is None:
        return f"no data (noData: {spec.no_data.value})"
    shown = _number(value)
    if outcome == "Failed":
        if spec.failure_condition is not None and conditions.evaluate(
            spec.failure_condition, value
        ):
            return f"{shown} meets failureCondition `{spec.failure_condition}`"
        return f"{shown} does not meet successCondition `{spec.success_condition}`"
    if outcome == "Inconclusive":
        return f"{shown} meets neither condition"
    return f"{shown} passed"


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.6g}"
