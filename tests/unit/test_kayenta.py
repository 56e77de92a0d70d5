"""Tests for the Kayenta-style judge.

Expected statistics come from independent computations: scipy's Mann-Whitney U test
(asymptotic, continuity and tie correction), confidence bounds found by inverting that
test (a grid over candidate shifts and scipy's brentq), numpy medians of pairwise
differences and numpy percentiles for the outlier fences.
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import optimize, stats

from canary_operator.analysis import judge_cli
from canary_operator.analysis.kayenta import (
    Classification,
    Direction,
    JudgeRequest,
    JudgeResult,
    MetricClassification,
    MetricInput,
    NanStrategy,
    judge,
    mann_whitney,
    remove_outliers,
)

ALPHA = 0.02  # 98 % confidence interval
DATA = Path(__file__).parent / "data"
BASE = [float(v) for v in range(50)]


# --------------------------------------------------------------------------- helpers


def scipy_test(experiment: Any, control: Any, shift: float = 0.0) -> Any:
    return stats.mannwhitneyu(
        np.asarray(experiment, dtype=float) - shift,
        np.asarray(control, dtype=float),
        alternative="two-sided",
        method="asymptotic",
        use_continuity=True,
    )


def p_at(experiment: Any, control: Any, shift: float) -> float:
    return float(scipy_test(experiment, control, shift).pvalue)


def pairwise(experiment: Any, control: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    diffs = np.subtract.outer(np.asarray(experiment, float), np.asarray(control, float))
    return np.asarray(diffs, dtype=np.float64).ravel()


def ci_by_brentq(experiment: list[float], control: list[float]) -> tuple[float, float]:
    """Bounds where scipy's test stops rejecting, clamped to the extreme differences."""
    diffs = pairwise(experiment, control)
    d_min, d_max = float(diffs.min()), float(diffs.max())
    centre = float(np.median(diffs))
    if p_at(experiment, control, d_min - 1) >= ALPHA:
        lower = d_min
    else:
        lower = optimize.brentq(
            lambda d: p_at(experiment, control, d) - ALPHA, d_min - 1, centre, xtol=1e-13
        )
    if p_at(experiment, control, d_max + 1) >= ALPHA:
        upper = d_max
    else:
        upper = optimize.brentq(
            lambda d: p_at(experiment, control, d) - ALPHA, centre, d_max + 1, xtol=1e-13
        )
    return lower, upper


def ci_by_grid(experiment: list[float], control: list[float]) -> tuple[float, float]:
    """Test every gap between distinct pairwise differences; bounds = edges of accepted gaps."""
    points = np.unique(pairwise(experiment, control))
    probes = [points[0] - 1, *((points[:-1] + points[1:]) / 2), points[-1] + 1]
    accepted = [p_at(experiment, control, d) >= ALPHA for d in probes]
    assert any(accepted)
    first = accepted.index(True)
    last = len(accepted) - 1 - accepted[::-1].index(True)
    # Gap i lies between points[i-1] and points[i]; gap 0 and the last gap are unbounded.
    lower = points[max(first - 1, 0)]
    upper = points[min(last, len(points) - 1)]
    # The accepted gaps must be contiguous, otherwise "the interval" is not an interval.
    assert all(accepted[first : last + 1])
    return float(lower), float(upper)


def sample_sets() -> list[tuple[str, list[float], list[float]]]:
    rng = np.random.default_rng(20240501)
    return [
        ("continuous", list(rng.normal(10.5, 2, 23)), list(rng.normal(10, 2, 31))),
        (
            "ties-rounded",
            list(np.round(rng.normal(11, 2, 40), 0)),
            list(np.round(rng.normal(10, 2, 35), 0)),
        ),
        (
            "heavy-ties",
            list(rng.integers(0, 4, 30).astype(float)),
            list(rng.integers(0, 3, 30).astype(float)),
        ),
        ("unequal-sizes", list(rng.normal(14, 1, 3)), list(rng.normal(10, 1, 25))),
        ("one-vs-many", [12.0], list(rng.normal(10, 1, 40))),
        ("separated", list(rng.normal(30, 1, 12)), list(rng.normal(10, 1, 12))),
        ("shared-values", [1.0, 2.0, 2.0, 3.0, 5.0, 5.0, 8.0], [0.0, 1.0, 2.0, 2.0, 2.0, 3.0]),
        # Ties across the samples exist only at shift 0; the CI's sigma must ignore them.
        ("cross-ties", [0.0, 4.5, 5.0, 5.0, 1.0], [5.0, 5.0, 1.0, 2.0, 3.0, 5.0]),
    ]


SAMPLES = sample_sets()
SAMPLE_IDS = [name for name, _, _ in SAMPLES]


def metric(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "m", "control": BASE, "experiment": BASE}
    body.update(fields)
    return body


def run(*metrics: dict[str, Any], **request: Any) -> JudgeResult:
    return judge(JudgeRequest.model_validate({"metrics": list(metrics), **request}))


def only(result: JudgeResult) -> Any:
    assert len(result.metrics) == 1
    return result.metrics[0]


# --------------------------------------------------------------------------- Mann-Whitney


@pytest.mark.parametrize(("name", "experiment", "control"), SAMPLES, ids=SAMPLE_IDS)
def test_u_statistic_and_p_value_match_scipy(
    name: str, experiment: list[float], control: list[float]
) -> None:
    ours = mann_whitney(experiment, control)
    ref = scipy_test(experiment, control)
    assert ours.u == pytest.approx(float(ref.statistic), abs=1e-9)
    assert ours.p_value == pytest.approx(float(ref.pvalue), rel=1e-10, abs=1e-15)


@pytest.mark.parametrize(("name", "experiment", "control"), SAMPLES, ids=SAMPLE_IDS)
def test_estimate_is_median_of_pairwise_differences(
    name: str, experiment: list[float], control: list[float]
) -> None:
    expected = float(np.median(pairwise(experiment, control)))
    assert mann_whitney(experiment, control).estimate == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("name", "experiment", "control"), SAMPLES, ids=SAMPLE_IDS)
def test_ci_matches_inverted_test_by_root_finding(
    name: str, experiment: list[float], control: list[float]
) -> None:
    ours = mann_whitney(experiment, control)
    lower, upper = ci_by_brentq(experiment, control)
    assert ours.lower == pytest.approx(lower, abs=1e-9)
    assert ours.upper == pytest.approx(upper, abs=1e-9)
    assert ours.lower <= ours.estimate <= ours.upper


@pytest.mark.parametrize(("name", "experiment", "control"), SAMPLES, ids=SAMPLE_IDS)
def test_ci_matches_inverted_test_on_every_gap(
    name: str, experiment: list[float], control: list[float]
) -> None:
    ours = mann_whitney(experiment, control)
    assert (ours.lower, ours.upper) == ci_by_grid(experiment, control)
    # The bounds are actual pairwise differences, as the step function's jumps are.
    diffs = set(pairwise(experiment, control).tolist())
    assert ours.lower in diffs and ours.upper in diffs


def test_large_samples_use_selection_and_stay_exact() -> None:
    rng = np.random.default_rng(7)
    experiment = list(np.round(rng.normal(100.4, 5, 420), 1))
    control = list(np.round(rng.normal(100, 5, 380), 1))
    ours = mann_whitney(experiment, control)
    assert ours.estimate == pytest.approx(float(np.median(pairwise(experiment, control))), abs=1e-9)
    lower, upper = ci_by_brentq(experiment, control)
    assert ours.lower == pytest.approx(lower, abs=1e-9)
    assert ours.upper == pytest.approx(upper, abs=1e-9)
    assert ours.p_value == pytest.approx(float(scipy_test(experiment, control).pvalue), rel=1e-9)


def test_tiny_samples_clamp_ci_to_extreme_differences() -> None:
    experiment, control = [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]
    # Too few points to reject any shift: the interval spans all pairwise differences.
    assert p_at(experiment, control, -100) >= ALPHA and p_at(experiment, control, 100) >= ALPHA
    ours = mann_whitney(experiment, control)
    assert (ours.lower, ours.upper) == (-3.0, 1.0)
    assert ours.estimate == -1.0


def test_two_constant_samples_give_a_point_interval() -> None:
    experiment, control = [2.0] * 10, [1.0] * 10
    ours = mann_whitney(experiment, control)
    assert (ours.estimate, ours.lower, ours.upper) == (1.0, 1.0, 1.0)
    assert p_at(experiment, control, 0.999) < ALPHA and p_at(experiment, control, 1.001) < ALPHA


def test_all_tied_and_empty_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="tied"):
        mann_whitney([3.0, 3.0], [3.0])
    with pytest.raises(ValueError, match="non-empty"):
        mann_whitney([], [1.0])


# --------------------------------------------------------------------------- preprocessing


def test_outlier_fences_follow_numpy_percentiles() -> None:
    values = [10.0, 11.0, 12.0, 11.0, 10.0, 12.0, 11.0, 500.0, 10.0, -300.0, 11.5, 10.5]
    for factor in (3.0, 1.5, 50.0):
        q1, q3, p1, p99 = np.percentile(values, [25, 75, 1, 99])
        low, high = min(p1, q1 - factor * (q3 - q1)), max(p99, q3 + factor * (q3 - q1))
        expected = [v for v in values if low <= v <= high]
        assert remove_outliers(values, factor) == expected
    assert 500.0 not in remove_outliers(values, 3.0)
    assert -300.0 not in remove_outliers(values, 3.0)
    # Reduced sensitivity: the fence never sits inside the 1st..99th percentile range,
    # so -200 survives although it is far below Q1 - 3*IQR.
    wide = [-300.0, -200.0, 10.0, 11.0, 12.0, 11.0, 10.0, 12.0, 11.0, 10.0, 11.5, 10.5]
    q1, q3, p1 = np.percentile(wide, [25, 75, 1])
    assert p1 < -200.0 < q1 - 3 * (q3 - q1)
    assert remove_outliers(wide, 3.0) == wide[1:]
    mirrored = [-v for v in wide]
    assert remove_outliers(mirrored, 3.0) == mirrored[1:]
    assert remove_outliers([], 3.0) == []
    assert remove_outliers([4.0], 3.0) == [4.0]


def test_outliers_keep_versus_remove_changes_the_effect_size() -> None:
    control = [float(v) for v in range(100, 140)]
    experiment = [v + 20 for v in control] + [5000.0]
    spiky = {"control": control, "experiment": experiment, "effectSize": {"allowedIncrease": 1.5}}
    q1, q3, p99 = np.percentile(experiment, [25, 75, 99])
    assert max(p99, q3 + 3 * (q3 - q1)) < 5000.0  # the spike is an outlier by definition

    kept = only(run(metric(**spiky)))
    assert kept.ratio == pytest.approx(np.mean(experiment) / np.mean(control))
    assert kept.ratio >= 1.5
    assert kept.classification == MetricClassification.HIGH

    removed = only(run(metric(**spiky, outliers={"strategy": "remove"})))
    assert removed.ratio == pytest.approx(np.mean(experiment[:-1]) / np.mean(control))
    assert removed.ratio < 1.5
    assert removed.classification == MetricClassification.PASS
    assert removed.estimate == pytest.approx(float(np.median(pairwise(experiment[:-1], control))))


def test_nan_remove_drops_missing_values() -> None:
    control = [5.0, None, 6.0, "NaN", 7.0, 8.0, math.nan, 9.0, 10.0, 11.0]
    experiment = [15.0, 16.0, None, 17.0, 18.0, 19.0, 20.0, 21.0, "nan"]
    clean_c = [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]
    clean_e = [15.0, 16.0, 17.0, 18.0, 19.0, 20.0, 21.0]
    result = only(run(metric(control=control, experiment=experiment)))
    assert result.estimate == pytest.approx(float(np.median(pairwise(clean_e, clean_c))))
    assert result.ratio == pytest.approx(np.mean(clean_e) / np.mean(clean_c))
    assert (result.lower_ci, result.upper_ci) == pytest.approx(ci_by_brentq(clean_e, clean_c))


def test_nan_replace_uses_zero_and_can_change_the_verdict() -> None:
    control = [5.0] * 20
    experiment = [5.0] * 5 + [None] * 15
    removed = only(run(metric(control=control, experiment=experiment)))
    # Only fives remain on both sides: nothing to test.
    assert removed.classification == MetricClassification.PASS
    assert removed.estimate is None

    replaced = only(run(metric(control=control, experiment=experiment, nanStrategy="replace")))
    zeros = [5.0] * 5 + [0.0] * 15
    assert p_at(zeros, control, 0) < ALPHA
    assert replaced.classification == MetricClassification.LOW
    assert replaced.ratio == pytest.approx(0.25)
    assert replaced.estimate == pytest.approx(float(np.median(pairwise(zeros, control))))


def test_all_nan_is_nodata_with_remove_and_zeros_with_replace() -> None:
    missing = [None, None, None]
    assert only(run(metric(experiment=missing))).classification == MetricClassification.NODATA
    both = metric(control=missing, experiment=missing, nanStrategy="replace")
    replaced = only(run(both))
    assert replaced.classification == MetricClassification.PASS
    assert replaced.ratio is None  # both means are 0


# --------------------------------------------------------------------------- classification


def test_identical_samples_pass_without_a_test() -> None:
    result = only(run(metric(control=[3.0, 1.0, 2.0], experiment=[1.0, 2.0, 3.0])))
    assert result.classification == MetricClassification.PASS
    assert result.ratio == 1.0
    assert (result.estimate, result.lower_ci, result.upper_ci) == (None, None, None)
    assert "identical" in (result.message or "")


def test_single_distinct_value_passes() -> None:
    result = only(run(metric(control=[0.0] * 6, experiment=[0.0] * 4)))
    assert result.classification == MetricClassification.PASS
    assert result.ratio is None and result.estimate is None


@pytest.mark.parametrize(
    ("shift", "direction", "expected"),
    [
        (10, "either", MetricClassification.HIGH),
        (10, "increase", MetricClassification.HIGH),
        (10, "decrease", MetricClassification.PASS),
        (-10, "either", MetricClassification.LOW),
        (-10, "decrease", MetricClassification.LOW),
        (-10, "increase", MetricClassification.PASS),
        (0, "either", MetricClassification.PASS),
    ],
)
def test_direction_decides_which_change_fails(
    shift: int, direction: str, expected: MetricClassification
) -> None:
    control = [v + 100 for v in BASE]
    experiment = [v + shift for v in control]
    result = only(run(metric(control=control, experiment=experiment, direction=direction)))
    assert result.classification == expected
    if shift:
        ref = scipy_test(experiment, control)
        assert ref.pvalue < ALPHA
        lower, upper = ci_by_brentq(experiment, control)
        assert (result.lower_ci, result.upper_ci) == pytest.approx((lower, upper))
        assert result.estimate == pytest.approx(shift)


def test_default_direction_is_either() -> None:
    control = [v + 100 for v in BASE]
    assert only(
        run(metric(control=control, experiment=[v - 10 for v in control]))
    ).classification == (MetricClassification.LOW)


@pytest.mark.parametrize(("shift", "classification"), [(8, "Pass"), (10, "High")])
def test_ci_must_clear_a_quarter_of_the_estimate(shift: int, classification: str) -> None:
    experiment = [v + shift for v in BASE]
    lower, _ = ci_by_brentq(experiment, BASE)
    if classification == "Pass":
        # Significant (CI excludes 0) but within the 25 % tolerance of the estimate.
        assert 0 < lower <= 0.25 * shift
    else:
        assert lower > 0.25 * shift
    assert only(run(metric(experiment=experiment))).classification == classification


@pytest.mark.parametrize(
    ("shift", "limits", "expected"),
    [
        # control mean 44.5: +10 gives a ratio of ~1.22, -10 one of ~0.78
        (10, {"allowedIncrease": 1.3}, MetricClassification.PASS),
        (10, {"allowedIncrease": 1.2}, MetricClassification.HIGH),
        (-10, {"allowedDecrease": 0.7}, MetricClassification.PASS),
        (-10, {"allowedDecrease": 0.8}, MetricClassification.LOW),
    ],
)
def test_effect_size_limits_use_the_mean_ratio(
    shift: int, limits: dict[str, float], expected: MetricClassification
) -> None:
    control = [v + 20 for v in BASE]
    experiment = [v + shift for v in control]
    result = only(run(metric(control=control, experiment=experiment, effectSize=limits)))
    assert result.ratio == pytest.approx(np.mean(experiment) / np.mean(control))
    assert result.classification == expected


def test_undefined_ratio_skips_the_effect_size_check() -> None:
    control = [-2.0, -1.0, 0.0, 1.0, 2.0] * 4  # mean 0
    experiment = [v + 10 for v in control]
    limits = {"allowedIncrease": 100.0, "criticalIncrease": 100.0}
    result = run(metric(control=control, experiment=experiment, critical=True, effectSize=limits))
    assert only(result).ratio is None
    assert only(result).classification == MetricClassification.HIGH
    assert only(result).critical is True
    assert result.classification == Classification.FAIL


def test_critical_high_fails_the_whole_analysis() -> None:
    result = run(
        metric(name="bad", experiment=[v + 10 for v in BASE], critical=True),
        metric(name="fine-1", group="other"),
        metric(name="fine-2", group="other"),
    )
    assert result.score == 0.0
    assert result.classification == Classification.FAIL
    assert result.metrics[0].critical is True
    assert "bad" in (result.message or "")


def test_critical_effect_size_below_limit_is_an_ordinary_failure() -> None:
    control = [v + 20 for v in BASE]
    bad = metric(
        name="bad",
        control=control,
        experiment=[v + 10 for v in control],
        critical=True,
        effectSize={"criticalIncrease": 2.0},
    )
    result = run(bad, metric(name="fine"))
    assert result.metrics[0].classification == MetricClassification.HIGH
    assert result.metrics[0].critical is False
    assert result.score == 50.0
    assert result.classification == Classification.MARGINAL


def test_critical_decrease_limit() -> None:
    control = [v + 20 for v in BASE]
    low = {"control": control, "experiment": [v - 10 for v in control], "critical": True}
    ratio = (np.mean(control) - 10) / np.mean(control)  # ~0.78
    mild = only(run(metric(**low, effectSize={"criticalDecrease": ratio - 0.1})))
    assert (mild.classification, mild.critical) == (MetricClassification.LOW, False)
    severe = only(run(metric(**low, effectSize={"criticalDecrease": ratio + 0.1})))
    assert (severe.classification, severe.critical) == (MetricClassification.LOW, True)


def test_missing_data_classifications() -> None:
    plain = only(run(metric(control=[])))
    assert (plain.classification, plain.critical) == (MetricClassification.NODATA, False)
    required = only(run(metric(control=[], mustHaveData=True)))
    assert required.classification == MetricClassification.NODATA_FAIL_METRIC
    assert required.ratio is None
    critical = run(metric(experiment=[None], mustHaveData=True, critical=True))
    assert only(critical).classification == MetricClassification.NODATA
    assert only(critical).critical is True
    assert critical.classification == Classification.FAIL


def test_infinite_values_are_an_error() -> None:
    plain = run(metric(name="a", experiment=[1.0, math.inf]), metric(name="b"))
    assert plain.metrics[0].classification == MetricClassification.ERROR
    assert plain.score == 50.0  # the error counts against its group
    critical = run(metric(experiment=[1.0, math.inf], critical=True))
    assert critical.classification == Classification.FAIL


# --------------------------------------------------------------------------- scoring

HIGH = {"experiment": [v + 10 for v in BASE]}
LOW = {"experiment": [v - 10 for v in BASE], "control": BASE}


def weighted_request() -> list[dict[str, Any]]:
    return [
        metric(name="e1", group="errors"),
        metric(name="e2", group="errors", **HIGH),
        metric(name="lat"),  # ungrouped: its own group "lat"
        metric(name="cpu", group="cpu", **LOW),
    ]


def test_group_weights_share_the_remainder_equally() -> None:
    result = run(*weighted_request(), groupWeights={"errors": 60})
    groups = {g.name: (g.score, g.weight) for g in result.groups}
    assert groups == {"errors": (50.0, 60.0), "lat": (100.0, 20.0), "cpu": (0.0, 20.0)}
    assert result.score == 50.0  # 0.6*50 + 0.2*100 + 0.2*0
    assert result.classification == Classification.MARGINAL
    assert result.metrics[2].group == "lat"


@pytest.mark.parametrize(
    ("thresholds", "expected"),
    [
        ({}, Classification.MARGINAL),
        ({"pass": 50, "marginal": 40}, Classification.PASS),
        ({"pass": 90, "marginal": 60}, Classification.FAIL),
        ({"marginal": 50.01}, Classification.FAIL),
    ],
)
def test_thresholds_classify_the_score(
    thresholds: dict[str, float], expected: Classification
) -> None:
    result = run(*weighted_request(), groupWeights={"errors": 60}, thresholds=thresholds)
    assert result.score == 50.0
    assert result.classification == expected


def test_without_weights_groups_count_equally() -> None:
    result = run(*weighted_request())
    assert [g.weight for g in result.groups] == pytest.approx([100 / 3] * 3)
    assert result.score == pytest.approx(50.0)  # (50 + 100 + 0) / 3


def test_nodata_is_left_out_of_its_group() -> None:
    result = run(
        metric(name="a", group="g1"),
        metric(name="b", group="g1", control=[]),
        metric(name="c", group="g2", **HIGH),
    )
    assert {g.name: g.score for g in result.groups} == {"g1": 100.0, "g2": 0.0}
    assert result.score == 50.0


def test_group_with_only_nodata_counts_as_full_score() -> None:
    result = run(
        metric(name="a", group="g1"),
        metric(name="b", group="g2", control=[]),
        metric(name="c", group="g3", **HIGH),
    )
    assert {g.name: g.score for g in result.groups} == {"g1": 100.0, "g2": None, "g3": 0.0}
    assert result.score == 66.67  # Kayenta rounds half-up to two decimals
    assert result.classification == Classification.MARGINAL


def test_nodata_fail_metric_counts_against_its_group() -> None:
    result = run(
        metric(name="a", group="g", control=[], mustHaveData=True), metric(name="b", group="g")
    )
    assert result.groups[0].score == 50.0
    assert result.score == 50.0


def test_half_the_metrics_without_data_fails_the_analysis() -> None:
    result = run(metric(name="a"), metric(name="b", control=[]))
    assert result.score == 0.0
    assert result.classification == Classification.FAIL
    assert "no data" in (result.message or "")


# --------------------------------------------------------------------------- models


def test_defaults_match_kayenta() -> None:
    spec = MetricInput.model_validate({"name": "m", "control": [], "experiment": []})
    assert spec.direction is Direction.EITHER
    assert spec.nan_strategy is NanStrategy.REMOVE
    assert spec.outliers.strategy == "keep" and spec.outliers.outlier_factor == 3.0
    effect = spec.effect_size
    assert (effect.allowed_increase, effect.allowed_decrease) == (1.0, 1.0)
    assert (effect.critical_increase, effect.critical_decrease) == (1.0, 1.0)
    assert (spec.critical, spec.must_have_data, spec.group_name) == (False, False, "m")
    request = JudgeRequest.model_validate({"metrics": [metric()]})
    assert (request.thresholds.pass_, request.thresholds.marginal) == (75.0, 50.0)
    assert request.group_weights == {}


def test_models_accept_field_names_too() -> None:
    spec = MetricInput(
        name="m", must_have_data=True, nan_strategy=NanStrategy.REPLACE, control=[], experiment=[]
    )
    assert spec.must_have_data and spec.nan_strategy is NanStrategy.REPLACE


def test_result_serialises_by_alias_without_nan() -> None:
    result = run(metric(control=[0.0, 1.0, 0.0, 1.0] * 5, experiment=[5.0, 6.0] * 10))
    data = json.loads(result.model_dump_json(by_alias=True))
    entry = data["metrics"][0]
    assert set(entry) == {
        "name",
        "classification",
        "critical",
        "ratio",
        "estimate",
        "lowerCI",
        "upperCI",
        "group",
        "message",
    }
    assert entry["ratio"] == pytest.approx(5.5 / 0.5)
    assert set(data) == {"score", "classification", "message", "metrics", "groups"}


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"metrics": [metric(direction="sideways")]}, "direction"),
        ({"metrics": [metric(control=[1, "abc"])]}, '"NaN"'),
        ({"metrics": [metric(control=[True])]}, '"NaN"'),
        ({"metrics": [metric(nanStrategie="remove")]}, "nanStrategie"),
        ({"metrics": [{"name": "m", "control": []}]}, "experiment"),
        ({"metrics": []}, "metrics"),
        ({"metrics": [metric(), metric()]}, "duplicate"),
        ({"metrics": [metric()], "groupWeights": {"nope": 10}}, "groupWeights.nope"),
        (
            {
                "metrics": [metric(group="a"), metric(name="n", group="b")],
                "groupWeights": {"a": 70, "b": 40},
            },
            "more than 100",
        ),
        ({"metrics": [metric(group="a")], "groupWeights": {"a": 90}}, "total 100"),
        ({"metrics": [metric()], "thresholds": {"pass": 40, "marginal": 60}}, "marginal"),
        ({"metrics": [metric(outliers={"outlierFactor": 0})]}, "outlierFactor"),
    ],
)
def test_invalid_requests_are_refused(payload: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        JudgeRequest.model_validate(payload)


# --------------------------------------------------------------------------- CLI


def test_cli_judges_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert judge_cli.run(str(DATA / "kayenta_request.json"), out) == 0
    data = json.loads(out.getvalue())
    by_name = {m["name"]: m for m in data["metrics"]}
    assert by_name["http-5xx"]["classification"] == "Pass"
    # NaN/null became 0 (nanStrategy replace); the samples differ, so the test ran.
    five_xx = json.loads((DATA / "kayenta_request.json").read_text())["metrics"][0]
    control = [0.0 if v is None else float(v) for v in five_xx["control"]]
    experiment = [0.0 if v == "NaN" else float(v) for v in five_xx["experiment"]]
    assert by_name["http-5xx"]["estimate"] == float(np.median(pairwise(experiment, control)))
    assert p_at(experiment, control, 0) > ALPHA
    assert by_name["latency-p99"]["classification"] == "High"
    assert by_name["latency-p99"]["lowerCI"] == pytest.approx(
        ci_by_brentq([float(v) for v in range(140, 160)], [float(v) for v in range(100, 120)])[0]
    )
    assert data["score"] == 60.0  # errors (60) pass, latency (40) fails
    assert data["classification"] == "Marginal"
    assert capsys.readouterr().err == ""


def test_cli_reads_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    # A bare NaN token is not strict JSON, but exporters emit it; it means "missing".
    text = '{"metrics": [{"name": "m", "control": [1, 2, NaN], "experiment": [1, 2]}]}'
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    out = io.StringIO()
    assert judge_cli.run("-", out) == 0
    data = json.loads(out.getvalue())
    assert data["metrics"][0]["classification"] == "Pass"
    assert data["score"] == 100.0 and data["classification"] == "Pass"


def test_cli_invalid_input_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"metrics": [metric(direction="up")]}))
    out = io.StringIO()
    assert judge_cli.run(str(path), out) == 2
    assert out.getvalue() == ""
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "metrics[0].direction" in err


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "invalid JSON"),
        (
            json.dumps({"metrics": [metric(control=[])], "groupWeights": {"x": 5}}),
            "groupWeights.x",
        ),
        ("[]", "valid dictionary"),
    ],
)
def test_cli_rejects_bad_documents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, fragment: str
) -> None:
    path = tmp_path / "req.json"
    path.write_text(content)
    assert judge_cli.run(str(path), io.StringIO()) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_cli_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert judge_cli.run(str(tmp_path / "absent.json"), io.StringIO()) == 2
    assert "cannot read" in capsys.readouterr().err
