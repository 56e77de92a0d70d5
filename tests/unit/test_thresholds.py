"""The thresholds judge (Argo Rollouts AnalysisRun semantics)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from canary_operator.analysis.thresholds import (
    MetricVerdict,
    judge_analysis,
    judge_metric,
    measurement_outcome,
    validate_metric,
)
from canary_operator.api.models import AnalysisMetricSpec, NoDataPolicy

NAN = math.nan


def metric(
    success: str | None = "result < 0.05",
    failure: str | None = None,
    **fields: Any,
) -> AnalysisMetricSpec:
    return AnalysisMetricSpec(
        name="error-ratio",
        query="q",
        success_condition=success,
        failure_condition=failure,
        **fields,
    )


GOOD, BAD = 0.01, 0.5

# ----------------------------------------------------------------- one measurement


@pytest.mark.parametrize(
    ("success", "failure", "value", "expected"),
    [
        # only successCondition: not meeting it is a failure
        ("result < 0.05", None, GOOD, "Successful"),
        ("result < 0.05", None, BAD, "Failed"),
        # only failureCondition: not meeting it is a success
        (None, "result > 0.1", GOOD, "Successful"),
        (None, "result > 0.1", BAD, "Failed"),
        # both: neither met is inconclusive; failure wins when both are met
        ("result < 0.05", "result > 0.1", GOOD, "Successful"),
        ("result < 0.05", "result > 0.1", BAD, "Failed"),
        ("result < 0.05", "result > 0.1", 0.07, "Inconclusive"),
        ("result < 0.05", "result > 0.001", GOOD, "Failed"),
        # NaN is a value: it meets no comparison (Argo's documented NaN examples)
        ("result >= 0.95", None, NAN, "Failed"),
        ("result >= 0.95", "result < 0.95", NAN, "Inconclusive"),
        ("isNaN(result) or result >= 0.95", None, NAN, "Successful"),
        (None, "isInf(result)", math.inf, "Failed"),
        ("result >= 0.95", None, math.inf, "Successful"),
        (None, "result > 0.1", NAN, "Successful"),  # Argo: failure-only passes NaN
    ],
)
def test_measurement_outcome(
    success: str | None, failure: str | None, value: float, expected: str
) -> None:
    assert measurement_outcome(metric(success, failure), value) == expected


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (NoDataPolicy.FAIL, "Failed"),
        (NoDataPolicy.INCONCLUSIVE, "Inconclusive"),
        (NoDataPolicy.PASS, "Successful"),
    ],
)
def test_no_data_counts_as_the_policy_says(policy: NoDataPolicy, expected: str) -> None:
    assert measurement_outcome(metric(no_data=policy), None) == expected


def test_no_data_fails_by_default() -> None:
    assert measurement_outcome(metric(), None) == "Failed"


# ------------------------------------------------------------------------- a metric


def test_running_until_count_is_reached() -> None:
    verdict = judge_metric(metric(failure_limit=1), [GOOD, BAD], count=3)
    assert verdict.phase == "Running"
    assert (verdict.successful, verdict.failed, verdict.inconclusive) == (1, 1, 0)
    assert verdict.last_value == BAD
    assert verdict.message.startswith("2/3 measurements")


def test_no_measurements_yet_is_running() -> None:
    verdict = judge_metric(metric(), [], count=3)
    assert verdict.phase == "Running"
    assert verdict.last_value is None


def test_successful_at_count_within_failure_limit() -> None:
    verdict = judge_metric(metric(failure_limit=1), [GOOD, BAD, GOOD], count=3)
    assert verdict.phase == "Successful"
    assert (verdict.successful, verdict.failed) == (2, 1)
    assert "failureLimit 1" in verdict.message


def test_first_failure_fails_at_once_with_the_default_limit() -> None:
    verdict = judge_metric(metric(), [BAD], count=5)
    assert verdict.phase == "Failed"
    assert verdict.failed == 1
    assert verdict.message == (
        "1 failed measurements > failureLimit 0; "
        "last: 0.5 does not meet successCondition `result < 0.05`"
    )


def test_fails_early_once_failures_exceed_the_limit() -> None:
    spec = metric(failure_limit=2)
    assert judge_metric(spec, [BAD, GOOD, BAD], count=10).phase == "Running"
    verdict = judge_metric(spec, [BAD, GOOD, BAD, BAD], count=10)
    assert verdict.phase == "Failed"
    assert (verdict.successful, verdict.failed) == (1, 3)


def test_failure_message_names_the_failure_condition() -> None:
    verdict = judge_metric(metric("result < 0.05", "result > 0.1"), [BAD], count=3)
    assert verdict.phase == "Failed"
    assert "0.5 meets failureCondition `result > 0.1`" in verdict.message


def test_verdict_stops_at_the_first_decisive_measurement() -> None:
    verdict = judge_metric(metric(), [BAD, GOOD, GOOD], count=3)
    assert verdict.phase == "Failed"
    assert (verdict.successful, verdict.failed) == (0, 1)
    assert verdict.last_value == BAD


def test_consecutive_success_limit_passes_early() -> None:
    spec = metric(failure_limit=1, consecutive_success_limit=2)
    assert judge_metric(spec, [GOOD, BAD, GOOD], count=10).phase == "Running"
    verdict = judge_metric(spec, [GOOD, BAD, GOOD, GOOD], count=10)
    assert verdict.phase == "Successful"
    assert verdict.message == "2 consecutive successful measurements (consecutiveSuccessLimit 2)"


def test_consecutive_success_limit_not_reached_is_inconclusive() -> None:
    spec = metric(failure_limit=2, consecutive_success_limit=3)
    verdict = judge_metric(spec, [GOOD, GOOD, BAD, GOOD, GOOD], count=5)
    assert verdict.phase == "Inconclusive"
    assert "consecutiveSuccessLimit 3 not reached" in verdict.message
    assert "longest run of successes 2 in 5 measurements" in verdict.message


def test_consecutive_success_limit_above_count_can_never_be_reached() -> None:
    verdict = judge_metric(metric(consecutive_success_limit=4), [GOOD] * 3, count=3)
    assert verdict.phase == "Inconclusive"
    assert "(it exceeds count 3)" in verdict.message


def test_failure_limit_beats_consecutive_successes() -> None:
    spec = metric(failure_limit=0, consecutive_success_limit=2)
    assert judge_metric(spec, [GOOD, BAD, GOOD, GOOD], count=4).phase == "Failed"


def test_an_inconclusive_measurement_makes_the_metric_inconclusive_at_count() -> None:
    spec = metric("result < 0.05", "result > 0.1")
    values = [GOOD, 0.07, GOOD]
    assert judge_metric(spec, values[:2], count=3).phase == "Running"
    verdict = judge_metric(spec, values, count=3)
    assert verdict.phase == "Inconclusive"
    assert (verdict.successful, verdict.failed, verdict.inconclusive) == (2, 0, 1)
    assert "1 of 3 measurements inconclusive" in verdict.message
    assert "last: 0.01 passed" in verdict.message


def test_a_later_failure_still_turns_an_inconclusive_metric_into_failed() -> None:
    spec = metric("result < 0.05", "result > 0.1")
    verdict = judge_metric(spec, [0.07, BAD], count=3)
    assert verdict.phase == "Failed"
    assert verdict.inconclusive == 1


def test_an_inconclusive_measurement_blocks_early_success() -> None:
    spec = metric("result < 0.05", "result > 0.1", consecutive_success_limit=2)
    verdict = judge_metric(spec, [0.07, GOOD, GOOD], count=4)
    assert verdict.phase == "Running"
    assert judge_metric(spec, [0.07, GOOD, GOOD, GOOD], count=4).phase == "Inconclusive"


@pytest.mark.parametrize(
    ("policy", "phase", "counts"),
    [
        (NoDataPolicy.FAIL, "Failed", (1, 1, 0)),
        (NoDataPolicy.INCONCLUSIVE, "Inconclusive", (2, 0, 1)),
        (NoDataPolicy.PASS, "Successful", (3, 0, 0)),
    ],
)
def test_no_data_policy_over_a_series(
    policy: NoDataPolicy, phase: str, counts: tuple[int, int, int]
) -> None:
    verdict = judge_metric(metric(no_data=policy), [GOOD, None, GOOD], count=3)
    assert verdict.phase == phase
    assert (verdict.successful, verdict.failed, verdict.inconclusive) == counts
    assert verdict.no_data == 1


def test_no_data_message() -> None:
    verdict = judge_metric(metric(), [None], count=2)
    assert verdict.message == "1 failed measurements > failureLimit 0; last: no data (noData: Fail)"
    assert verdict.last_value is None
    verdict = judge_metric(metric(no_data=NoDataPolicy.INCONCLUSIVE), [None, None], count=2)
    assert "(2 without data)" in verdict.message
    assert "last: no data (noData: Inconclusive)" in verdict.message


def test_nan_fails_a_success_only_metric() -> None:
    verdict = judge_metric(metric(), [NAN], count=2)
    assert verdict.phase == "Failed"
    assert "NaN does not meet successCondition" in verdict.message
    assert verdict.no_data == 0
    assert verdict.last_value is not None and math.isnan(verdict.last_value)


def test_measurements_past_count_are_ignored() -> None:
    verdict = judge_metric(metric(), [GOOD, GOOD, BAD], count=2)
    assert verdict.phase == "Successful"
    assert verdict.failed == 0


def test_invalid_conditions_are_refused_naming_the_metric() -> None:
    with pytest.raises(
        ValueError, match=r"metric error-ratio: successCondition: .*`os.system\(...\)`"
    ):
        judge_metric(metric("os.system('x') == 0"), [GOOD], count=1)
    with pytest.raises(ValueError, match=r"metric error-ratio: failureCondition: .*`\*\*`"):
        validate_metric(metric(None, "result ** 2 > 1"))
    with pytest.raises(ValueError, match="needs a successCondition or a failureCondition"):
        validate_metric(metric(None, None))
    validate_metric(metric("result < 1", "result > 2"))


def test_verdict_serialises_in_camel_case() -> None:
    verdict = judge_metric(metric(no_data=NoDataPolicy.PASS), [None], count=1)
    wire = verdict.model_dump(by_alias=True)
    assert wire == {
        "name": "error-ratio",
        "phase": "Successful",
        "successful": 1,
        "failed": 0,
        "inconclusive": 0,
        "noData": 1,
        "lastValue": None,
        "message": wire["message"],
    }
    assert MetricVerdict.model_validate(wire) == verdict
    assert MetricVerdict(name="m", phase="Running", no_data=2, last_value=1.0).no_data == 2


# ------------------------------------------------------------------------ analysis


def verdicts(*phases: str) -> list[MetricVerdict]:
    return [
        MetricVerdict.model_validate({"name": f"m{i}", "phase": p}) for i, p in enumerate(phases)
    ]


@pytest.mark.parametrize(
    ("phases", "expected"),
    [
        (("Successful",), "Successful"),
        (("Successful", "Successful"), "Successful"),
        (("Successful", "Running"), "Running"),
        (("Inconclusive", "Running"), "Running"),
        (("Inconclusive", "Successful"), "Inconclusive"),
        (("Failed", "Running"), "Failed"),
        (("Successful", "Inconclusive", "Failed"), "Failed"),
    ],
)
def test_judge_analysis_takes_the_worst_metric(phases: tuple[str, ...], expected: str) -> None:
    assert judge_analysis(verdicts(*phases)) == expected


def test_judge_analysis_needs_a_verdict() -> None:
    with pytest.raises(ValueError, match="at least one"):
        judge_analysis([])
