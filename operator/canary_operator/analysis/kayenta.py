"""Statistical canary judge following Kayenta's NetflixACAJudge method; pure, no I/O.

Per metric (baseline = "control", canary = "experiment"):

1. NaN handling: ``remove`` drops NaNs, ``replace`` turns them into 0.
2. Optional outlier removal with Kayenta's IQR detector (fences at
   ``Q1 - k*IQR`` / ``Q3 + k*IQR``, widened to the 1st/99th percentile, R-7 quantiles).
3. Empty side -> ``Nodata`` (``NodataFailMetric`` with ``mustHaveData``); identical
   samples, or a single distinct value overall -> ``Pass`` without a test.
4. Two-sided Mann-Whitney U test, normal approximation with continuity and tie
   correction, 98 % confidence interval on the experiment-minus-control shift and the
   Hodges-Lehmann estimate of that shift.
5. ``High`` when the CI's lower end exceeds 25 % of |estimate| and the mean ratio
   (experiment/control) reaches ``allowedIncrease``; ``Low`` symmetrically with
   ``allowedDecrease``; each only if ``direction`` allows it. If the ratio is undefined
   (either mean is 0) the effect-size check is skipped, as Kayenta does.

Scoring: a group's score is the percentage of its Pass metrics among Pass, High, Low,
NodataFailMetric and Error (Nodata is left out); groups without an explicit weight
share the remaining weight equally; a group with no scored metric counts as 100. A
critical failure, or Nodata for 50 % or more of the metrics, makes the score 0.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from statistics import NormalDist
from typing import Annotated, Any, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

# One Direction for the API and the judge: a metric's direction passes straight through.
from canary_operator.api.models import Direction

__all__ = [
    "CONFIDENCE_LEVEL",
    "NODATA_FAIL_PERCENT",
    "TOLERANCE",
    "Classification",
    "Direction",
    "EffectSize",
    "GroupResult",
    "JudgeRequest",
    "JudgeResult",
    "MannWhitneyResult",
    "MetricClassification",
    "MetricInput",
    "MetricResult",
    "NanStrategy",
    "OutlierStrategy",
    "Outliers",
    "Thresholds",
    "classify_metric",
    "judge",
    "mann_whitney",
    "remove_outliers",
]

# Fixed by NetflixACAJudge (not configurable there either).
CONFIDENCE_LEVEL = 0.98
TOLERANCE = 0.25
NODATA_FAIL_PERCENT = 50.0

# Below this many candidate differences a plain sort is cheaper than more selection rounds.
_SORT_CUTOFF = 4096


# --------------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class NanStrategy(StrEnum):
    REMOVE = "remove"
    REPLACE = "replace"


class OutlierStrategy(StrEnum):
    KEEP = "keep"
    REMOVE = "remove"


class MetricClassification(StrEnum):
    PASS = "Pass"
    HIGH = "High"
    LOW = "Low"
    NODATA = "Nodata"
    NODATA_FAIL_METRIC = "NodataFailMetric"
    ERROR = "Error"


class Classification(StrEnum):
    PASS = "Pass"
    MARGINAL = "Marginal"
    FAIL = "Fail"


def _sample(value: Any) -> Any:
    """Accept a number, null or the string "NaN"; null and "NaN" mean a missing value."""
    if value is None:
        return math.nan
    if isinstance(value, bool):  # pydantic would otherwise read true as 1.0
        raise ValueError('expected a number, null or "NaN"')
    if isinstance(value, str):
        if value.strip().lower() == "nan":
            return math.nan
        raise ValueError('expected a number, null or "NaN"')
    return value


Sample = Annotated[float, BeforeValidator(_sample)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Weight = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]


class Thresholds(_Model):
    """Score thresholds; Kayenta takes them from the pipeline stage; the defaults are 75/50."""

    pass_: Finite = Field(default=75.0, alias="pass", ge=0, le=100)
    marginal: Finite = Field(default=50.0, ge=0, le=100)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.marginal > self.pass_:
            raise ValueError("thresholds.marginal must not exceed thresholds.pass")
        return self


class EffectSize(_Model):
    """Mean-ratio (experiment/control) limits; 1.0 means any significant change counts."""

    allowed_increase: Finite = Field(default=1.0, ge=0)
    allowed_decrease: Finite = Field(default=1.0, ge=0)
    critical_increase: Finite = Field(default=1.0, ge=0)
    critical_decrease: Finite = Field(default=1.0, ge=0)


class Outliers(_Model):
    strategy: OutlierStrategy = OutlierStrategy.KEEP
    outlier_factor: Finite = Field(default=3.0, gt=0)


class MetricInput(_Model):
    """One metric: its analysis settings and the control/experiment samples."""

    name: str = Field(min_length=1)
    group: str | None = Field(default=None, min_length=1)
    direction: Direction = Direction.EITHER
    critical: bool = False
    must_have_data: bool = False
    nan_strategy: NanStrategy = NanStrategy.REMOVE
    effect_size: EffectSize = Field(default_factory=EffectSize)
    outliers: Outliers = Field(default_factory=Outliers)
    control: list[Sample]
    experiment: list[Sample]

    @property
    def group_name(self) -> str:
        """The metric's group; an ungrouped metric forms a group of its own name."""
        return self.group if self.group is not None else self.name


class JudgeRequest(_Model):
    thresholds: Thresholds = Field(default_factory=Thresholds)
    group_weights: dict[str, Weight] = Field(default_factory=dict)
    metrics: list[MetricInput] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [m.name for m in self.metrics]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"metrics: duplicate metric name(s) {', '.join(duplicates)}")
        groups = {m.group_name for m in self.metrics}
        for group in self.group_weights:
            # A weight for a group with no metric silently caps the reachable score.
            if group not in groups:
                raise ValueError(f"groupWeights.{group}: no metric belongs to group {group!r}")
        total = math.fsum(self.group_weights.values())
        if total > 100 + 1e-9:
            raise ValueError(f"groupWeights: weights sum to {total:g}, more than 100")
        if groups <= self.group_weights.keys() and abs(total - 100) > 1e-9:
            raise ValueError(
                f"groupWeights: every group is weighted, so weights must total 100, not {total:g}"
            )
        return self


class MetricResult(_Model):
    """Per-metric verdict. ``critical`` is true iff this result fails the whole analysis."""

    name: str
    classification: MetricClassification
    critical: bool
    ratio: float | None
    estimate: float | None
    lower_ci: float | None = Field(alias="lowerCI")
    upper_ci: float | None = Field(alias="upperCI")
    group: str
    message: str | None


class GroupResult(_Model):
    """``score`` is None when the group has no scored metric (it then counts as 100)."""

    name: str
    score: float | None
    weight: float


class JudgeResult(_Model):
    score: float
    classification: Classification
    message: str | None
    metrics: list[MetricResult]
    groups: list[GroupResult]


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class MannWhitneyResult:
    """Two-sided Mann-Whitney U test of experiment against control.

    ``u`` is the experiment sample's U statistic; ``estimate``, ``lower`` and ``upper``
    describe the location shift experiment - control.
    """

    u: float
    p_value: float
    estimate: float
    lower: float
    upper: float


class _PairwiseDifferences:
    """Order statistics of all x - y without materialising the n*m differences.

    Row i, position j holds x[i] - y[m-1-j]: rows and columns are both ascending, so
    counting the differences below a pivot is one linear two-pointer pass.
    """

    def __init__(self, xs: Iterable[float], ys: Iterable[float]) -> None:
        self._x = sorted(xs)
        self._y = sorted(ys)
        self.size = len(self._x) * len(self._y)

    def _counts(self, pivot: float) -> tuple[list[int], list[int]]:
        """Per row: how many differences are < pivot and <= pivot."""
        y, m = self._y, len(self._y)
        below: list[int] = []
        upto: list[int] = []
        s_lt = s_le = 0
        for xi in self._x:
            # Rounding is monotone, so x - y stays monotone in both x and y as computed.
            while s_lt < m and xi - y[s_lt] >= pivot:
                s_lt += 1
            while s_le < m and xi - y[s_le] > pivot:
                s_le += 1
            below.append(m - s_lt)
            upto.append(m - s_le)
        return below, upto

    def kth(self, k: int) -> float:
        """The k-th smallest difference, 1-based (randomised selection, exact result)."""
        x, y = self._x, self._y
        n, m = len(x), len(y)
        if not 1 <= k <= self.size:
            raise ValueError(f"k={k} outside 1..{self.size}")
        lo = [0] * n  # positions < lo[i] hold values below the answer
        hi = [m] * n  # positions >= hi[i] hold values above it
        # A fixed seed only affects speed, never the result; keeps runs reproducible.
        rng = random.Random(0x4B41)
        while True:
            total = sum(h - low for low, h in zip(lo, hi, strict=True))
            if total <= _SORT_CUTOFF:
                rest = sorted(x[i] - y[m - 1 - j] for i in range(n) for j in range(lo[i], hi[i]))
                return rest[k - 1 - sum(lo)]
            pick = rng.randrange(total)
            pivot = math.nan
            for i in range(n):
                width = hi[i] - lo[i]
                if pick < width:
                    pivot = x[i] - y[m - 1 - (lo[i] + pick)]
                    break
                pick -= width
            below, upto = self._counts(pivot)
            if k <= sum(below):
                hi = [min(h, b) for h, b in zip(hi, below, strict=True)]
            elif k <= sum(upto):
                return pivot
            else:
                lo = [max(low, u) for low, u in zip(lo, upto, strict=True)]

    def median(self) -> float:
        half = self.size // 2
        if self.size % 2:
            return self.kth(half + 1)
        return (self.kth(half) + self.kth(half + 1)) / 2


def _tie_term(counts: Iterable[int]) -> int:
    return sum(t * t * t - t for t in counts)


def mann_whitney(
    experiment: Sequence[float],
    control: Sequence[float],
    confidence: float = CONFIDENCE_LEVEL,
) -> MannWhitneyResult:
    """Two-sided Mann-Whitney U test with a confidence interval on the location shift.

    Normal approximation with continuity and tie correction, like R's
    ``wilcox.test(experiment, control, conf.int=TRUE, exact=FALSE)`` and Kayenta's port
    of it. The CI bounds are the exact points where the standardised statistic crosses
    the critical value (R and Kayenta approximate them by root finding), clamped to the
    smallest/largest pairwise difference. The estimate is the Hodges-Lehmann estimator,
    the median of all pairwise differences experiment - control.
    """
    n, m = len(experiment), len(control)
    if n == 0 or m == 0:
        raise ValueError("both samples must be non-empty")
    if not 0 < confidence < 1:
        raise ValueError("confidence must lie strictly between 0 and 1")
    if not all(math.isfinite(v) for v in (*experiment, *control)):
        raise ValueError("samples must be finite")
    nm, big_n = n * m, n + m

    # U of the experiment sample: pairs where it is larger, ties counting one half.
    sorted_control = sorted(control)
    u = 0.0
    for value in experiment:
        less = _bisect_left(sorted_control, value)
        equal = _bisect_right(sorted_control, value) - less
        u += less + 0.5 * equal

    ties_all = _tie_term(Counter([*experiment, *control]).values())
    variance = nm / 12 * ((big_n + 1) - ties_all / (big_n * (big_n - 1)))
    if variance <= 0:
        raise ValueError("cannot test when all observations are tied")
    z = (abs(u - nm / 2) - 0.5) / math.sqrt(variance)
    p_value = min(1.0, math.erfc(z / math.sqrt(2)))

    # For a shift d strictly between pairwise differences only ties within each sample
    # remain, so sigma is the same for every such d and the standardised statistic is a
    # non-increasing step function of d. Solving |U(d) - nm/2| - 0.5 <= z*sigma for the
    # count of differences below d gives the bounds as order statistics.
    ties_within = _tie_term(Counter(experiment).values()) + _tie_term(Counter(control).values())
    sigma = math.sqrt(nm / 12 * ((big_n + 1) - ties_within / (big_n * (big_n - 1))))
    z_crit = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    bound = math.floor(nm / 2 + 0.5 + z_crit * sigma)
    diffs = _PairwiseDifferences(experiment, control)
    lower = diffs.kth(max(1, nm - bound))
    upper = diffs.kth(min(nm, bound + 1))
    return MannWhitneyResult(
        u=u, p_value=p_value, estimate=diffs.median(), lower=lower, upper=upper
    )


def _bisect_left(values: Sequence[float], x: float) -> int:
    lo, hi = 0, len(values)
    while lo < hi:
        mid = (lo + hi) // 2
        if values[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _bisect_right(values: Sequence[float], x: float) -> int:
    lo, hi = 0, len(values)
    while lo < hi:
        mid = (lo + hi) // 2
        if values[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _percentile(sorted_values: Sequence[float], p: float) -> float:
    """Linear-interpolation percentile (R-7, numpy's default), as Kayenta uses."""
    pos = (len(sorted_values) - 1) * p / 100
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (pos - low) * (sorted_values[high] - sorted_values[low])


def remove_outliers(values: Sequence[float], factor: float = 3.0) -> list[float]:
    """Drop values outside Kayenta's reduced-sensitivity IQR fences, keeping order.

    Fences: min(P1, Q1 - factor*IQR) and max(P99, Q3 + factor*IQR).
    """
    if not values:
        return []
    ordered = sorted(values)
    q1, q3 = _percentile(ordered, 25), _percentile(ordered, 75)
    iqr = q3 - q1
    low = min(_percentile(ordered, 1), q1 - factor * iqr)
    high = max(_percentile(ordered, 99), q3 + factor * iqr)
    return [v for v in values if low <= v <= high]


def _mean_ratio(control: Sequence[float], experiment: Sequence[float]) -> float | None:
    """experiment mean / control mean; undefined (None) if either mean is 0, as in Kayenta."""
    control_mean = math.fsum(control) / len(control)
    experiment_mean = math.fsum(experiment) / len(experiment)
    if control_mean == 0 or experiment_mean == 0:
        return None
    return experiment_mean / control_mean


# --------------------------------------------------------------------------- classification


def _clean(values: Sequence[float], metric: MetricInput) -> list[float]:
    if metric.nan_strategy is NanStrategy.REPLACE:
        return [0.0 if math.isnan(v) else v for v in values]
    return [v for v in values if not math.isnan(v)]


def _result(
    metric: MetricInput,
    classification: MetricClassification,
    message: str,
    *,
    critical: bool = False,
    ratio: float | None = None,
    test: MannWhitneyResult | None = None,
) -> MetricResult:
    return MetricResult(
        name=metric.name,
        classification=classification,
        critical=critical,
        ratio=ratio,
        estimate=test.estimate if test is not None else None,
        lower_ci=test.lower if test is not None else None,
        upper_ci=test.upper if test is not None else None,
        group=metric.group_name,
        message=message,
    )


def classify_metric(metric: MetricInput) -> MetricResult:
    """Classify one metric: Pass, High, Low, Nodata, NodataFailMetric or Error."""
    control = _clean(metric.control, metric)
    experiment = _clean(metric.experiment, metric)
    if not all(math.isfinite(v) for v in (*control, *experiment)):
        # Kayenta ends up with Error here too (its root finder fails on infinities).
        return _result(
            metric,
            MetricClassification.ERROR,
            f"{metric.name}: infinite values cannot be compared",
            critical=metric.critical,
        )
    if metric.outliers.strategy is OutlierStrategy.REMOVE:
        control = remove_outliers(control, metric.outliers.outlier_factor)
        experiment = remove_outliers(experiment, metric.outliers.outlier_factor)

    if not control or not experiment:
        side = "control" if not control else "experiment"
        message = f"{metric.name}: no {side} data"
        if metric.must_have_data and not metric.critical:
            return _result(metric, MetricClassification.NODATA_FAIL_METRIC, message)
        # Kayenta marks missing data on a critical metric as a critical failure.
        return _result(metric, MetricClassification.NODATA, message, critical=metric.critical)

    ratio = _mean_ratio(control, experiment)
    if sorted(control) == sorted(experiment):
        return _result(
            metric,
            MetricClassification.PASS,
            f"{metric.name}: experiment and control data are identical",
            ratio=ratio,
        )
    if len({*control, *experiment}) == 1:
        # Same single value on both sides, only the counts differ: nothing to test.
        return _result(
            metric,
            MetricClassification.PASS,
            f"{metric.name}: every value is the same",
            ratio=ratio,
        )

    test = mann_whitney(experiment, control, CONFIDENCE_LEVEL)
    margin = TOLERANCE * abs(test.estimate)
    effect = metric.effect_size
    high = (
        metric.direction in (Direction.INCREASE, Direction.EITHER)
        and test.lower > margin
        and (ratio is None or ratio >= effect.allowed_increase)
    )
    low = (
        metric.direction in (Direction.DECREASE, Direction.EITHER)
        and test.upper < -margin
        and (ratio is None or ratio <= effect.allowed_decrease)
    )
    if high:
        critical = metric.critical and (ratio is None or ratio >= effect.critical_increase)
        label = MetricClassification.HIGH
    elif low:
        critical = metric.critical and (ratio is None or ratio <= effect.critical_decrease)
        label = MetricClassification.LOW
    else:
        return _result(
            metric,
            MetricClassification.PASS,
            f"{metric.name}: no significant change",
            ratio=ratio,
            test=test,
        )
    suffix = " (critical)" if critical else ""
    return _result(
        metric,
        label,
        f"{metric.name} was classified as {label.value}{suffix}",
        critical=critical,
        ratio=ratio,
        test=test,
    )


# --------------------------------------------------------------------------- scoring

_SCORED = {
    MetricClassification.PASS,
    MetricClassification.HIGH,
    MetricClassification.LOW,
    MetricClassification.NODATA_FAIL_METRIC,
    MetricClassification.ERROR,
}


def _round2(value: float) -> float:
    """Round half-up to 2 decimals, like Kayenta's Precision.round(score, 2)."""
    return float(Decimal(repr(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _classify_score(score: float, thresholds: Thresholds) -> Classification:
    if score >= thresholds.pass_:
        return Classification.PASS
    if score >= thresholds.marginal:
        return Classification.MARGINAL
    return Classification.FAIL


def judge(request: JudgeRequest) -> JudgeResult:
    """Classify every metric, score the groups and classify the weighted summary score."""
    results = [classify_metric(metric) for metric in request.metrics]

    members: dict[str, list[MetricClassification]] = {}
    for result in results:
        members.setdefault(result.group, []).append(result.classification)
    unweighted = [g for g in members if g not in request.group_weights]
    remaining = 100 - math.fsum(request.group_weights.values())
    shared = remaining / len(unweighted) if unweighted else 0.0

    groups: list[GroupResult] = []
    summary = 0.0
    for name, labels in members.items():
        scored = [label for label in labels if label in _SCORED]
        score = 100 * scored.count(MetricClassification.PASS) / len(scored) if scored else None
        weight = request.group_weights.get(name, shared)
        groups.append(GroupResult(name=name, score=score, weight=weight))
        # Kayenta: a group whose metrics all lacked data does not drag the score down.
        summary += (100.0 if score is None else score) * weight / 100

    failures = [r for r in results if r.critical]
    nodata = sum(r.classification is MetricClassification.NODATA for r in results)
    message: str | None = None
    if failures:
        message = f"critical failure: {failures[0].message}"
    elif 100 * nodata / len(results) >= NODATA_FAIL_PERCENT:
        message = f"{nodata} of {len(results)} metrics had no data (limit {NODATA_FAIL_PERCENT:g}%)"
    if message is not None:
        return JudgeResult(
            score=0.0,
            classification=Classification.FAIL,
            message=message,
            metrics=results,
            groups=groups,
        )
    score = _round2(summary)
    return JudgeResult(
        score=score,
        classification=_classify_score(score, request.thresholds),
        message=None,
        metrics=results,
        groups=groups,
    )
