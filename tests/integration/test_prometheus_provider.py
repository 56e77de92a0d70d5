"""PrometheusProvider against a real Prometheus server (the Debian package) scraping an
exporter the test controls (tests/harness/prometheus.py). No Kubernetes needed.

Each test uses its own ``case`` label, so they share the session's exporter safely.
"""

from __future__ import annotations

import math

import pytest

from canary_operator.analysis.providers import PrometheusProvider, ProviderError
from canary_operator.analysis.queries import render_query
from tests.harness.cluster import wait_for_async
from tests.harness.prometheus import PrometheusServer, free_port

METRIC = "app_request_error_ratio"
SCRAPE_WAIT = 20.0  # scrapes happen every second; allow for a slow machine


def provider(prometheus: PrometheusServer) -> PrometheusProvider:
    return PrometheusProvider(prometheus.address, timeout=5)


async def eventually(
    prometheus: PrometheusServer, query: str, expected: float | None
) -> float | None:
    """Poll the provider until it answers ``expected`` (NaN matches NaN)."""
    p = provider(prometheus)

    async def matches() -> bool:
        value = await p.query(query, {})
        if expected is None or value is None:
            return value is expected
        return value == expected or (math.isnan(value) and math.isnan(expected))

    # (ignore: mypy cannot infer T through wait_for_async's union of callables)
    await wait_for_async(matches, SCRAPE_WAIT, message=f"{query} == {expected}")  # type: ignore[arg-type]
    return await p.query(query, {})


async def test_reads_the_exporters_value(prometheus: PrometheusServer) -> None:
    prometheus.exporter.set(METRIC, {"role": "canary", "case": "reads"}, 0.01)
    prometheus.exporter.set(METRIC, {"role": "stable", "case": "reads"}, 0.002)
    query = render_query(f'{METRIC}{{role="{{{{ role }}}}",case="reads"}}', {"role": "canary"})
    assert await eventually(prometheus, query, 0.01) == 0.01
    total = await provider(prometheus).query(f'sum({METRIC}{{case="reads"}})', {})
    assert total == pytest.approx(0.012)


async def test_follows_changes_of_the_exporter(prometheus: PrometheusServer) -> None:
    labels = {"role": "canary", "case": "changes"}
    query = f'{METRIC}{{case="changes"}}'
    for value in (0.01, 0.25, 0.0):
        prometheus.exporter.set(METRIC, labels, value)
        assert await eventually(prometheus, query, value) == value


async def test_nan_and_scalar_answers(prometheus: PrometheusServer) -> None:
    prometheus.exporter.set(METRIC, {"role": "canary", "case": "nan"}, math.nan)
    value = await eventually(prometheus, f'{METRIC}{{case="nan"}}', math.nan)
    assert value is not None and math.isnan(value)
    assert await provider(prometheus).query("scalar(vector(3))", {}) == 3.0


async def test_empty_result_is_no_data(prometheus: PrometheusServer) -> None:
    assert await provider(prometheus).query(f'{METRIC}{{case="never-exposed"}}', {}) is None
    labels = {"role": "canary", "case": "removed"}
    prometheus.exporter.set(METRIC, labels, 0.5)
    await eventually(prometheus, f'{METRIC}{{case="removed"}}', 0.5)
    prometheus.exporter.remove(METRIC, labels)
    # Prometheus marks the series stale at the next scrape: the instant query is empty.
    assert await eventually(prometheus, f'{METRIC}{{case="removed"}}', None) is None


async def test_several_series_is_an_error(prometheus: PrometheusServer) -> None:
    for role in ("canary", "stable"):
        prometheus.exporter.set(METRIC, {"role": role, "case": "several"}, 0.1)
    await eventually(prometheus, f'count({METRIC}{{case="several"}})', 2.0)
    with pytest.raises(ProviderError, match="returned 2 series, expected one"):
        await provider(prometheus).query(f'{METRIC}{{case="several"}}', {})


async def test_invalid_promql_is_reported(prometheus: PrometheusServer) -> None:
    with pytest.raises(ProviderError) as info:
        await provider(prometheus).query("sum(", {})
    assert f"Prometheus at {prometheus.address} refused the query (HTTP 400, bad_data)" in str(
        info.value
    )


async def test_unreachable_prometheus() -> None:
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ProviderError) as info:
        await PrometheusProvider(address, timeout=5).query("up", {})
    assert str(info.value).startswith(f"Prometheus at {address} is unreachable")


def test_harness_waits_for_values(prometheus: PrometheusServer) -> None:
    prometheus.exporter.set("app_latency_seconds", {"role": "canary", "case": "harness"}, 0.2)
    value = prometheus.wait_for_value(
        'app_latency_seconds{case="harness"}', lambda v: v == 0.2, timeout=SCRAPE_WAIT
    )
    assert value == 0.2
    assert prometheus.value('up{job="exporter"}') == 1.0
