"""Metric providers: where an analysis step's numbers come from.

Every provider answers one query with one number, or ``None`` when there is no data,
and raises :class:`ProviderError` (with a message fit for a status condition) when it
cannot answer. NaN and infinities are values (Prometheus answers ``"NaN"`` for 0/0).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp

from canary_operator.checks.webhook import describe_error, display_url, post_json, snippet
from canary_operator.redact import scrub

__all__ = [
    "MetricProvider",
    "PrometheusProvider",
    "ProviderError",
    "WebhookMetricProvider",
]


class ProviderError(Exception):
    """The provider could not answer: unreachable, timed out, or an invalid answer."""


class MetricProvider(Protocol):
    async def query(self, query: str, context: Mapping[str, Any]) -> float | None:
        """One number for ``query``; ``None`` when there is no data."""
        ...


class PrometheusProvider:
    """An instant query against the Prometheus HTTP API (``GET /api/v1/query``).

    A vector with exactly one sample, or a scalar, gives its value; an empty vector gives
    ``None``; several samples are an error (aggregate them in the query). Without a
    ``session`` each query opens and closes its own connection pool.
    """

    def __init__(
        self, address: str, timeout: float, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.address = address.rstrip("/")
        self.timeout = timeout
        self.session = session

    async def query(self, query: str, context: Mapping[str, Any] | None = None) -> float | None:
        url = f"{self.address}/api/v1/query"
        where = f"Prometheus at {display_url(self.address)}"
        try:
            if self.session is not None:
                status, body = await self._get(self.session, url, query)
            else:
                async with aiohttp.ClientSession() as session:
                    status, body = await self._get(session, url, query)
        except TimeoutError:
            raise ProviderError(f"{where}: no answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            unreachable = scrub(describe_error(exc), [self.address, url])
            raise ProviderError(f"{where} is unreachable: {unreachable}") from None
        return _prometheus_value(where, status, body)

    async def _get(self, session: aiohttp.ClientSession, url: str, query: str) -> tuple[int, str]:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with session.get(url, params={"query": query}, timeout=timeout) as response:
            return response.status, await response.text()


def _prometheus_value(where: str, status: int, body: str) -> float | None:
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ProviderError(f"{where} answered HTTP {status} without a JSON body: {snippet(body)}")
    if answer.get("status") != "success":
        kind = answer.get("errorType") or "error"
        raise ProviderError(
            f"{where} refused the query (HTTP {status}, {kind}): {answer.get('error')}"
        )
    data = answer.get("data")
    kind = data.get("resultType") if isinstance(data, dict) else None
    result = data.get("result") if isinstance(data, dict) else None
    if kind == "scalar":
        return _sample(where, result)
    if kind == "vector" and isinstance(result, list):
        if not result:
            return None
        if len(result) > 1:
            labels = ", ".join(_labels(s) for s in result[:3]) + (
                ", ..." if len(result) > 3 else ""
            )
            raise ProviderError(
                f"{where}: the query returned {len(result)} series, expected one "
                f"(aggregate it, e.g. with sum(...)): {labels}"
            )
        sample = result[0]
        return _sample(where, sample.get("value") if isinstance(sample, dict) else None)
    if kind == "matrix":
        raise ProviderError(
            f"{where}: the query returned a range vector; use an instant expression "
            "(e.g. wrap the range in rate(...))"
        )
    raise ProviderError(f"{where}: unexpected result type {kind!r}: {snippet(body)}")


def _sample(where: str, pair: object) -> float:
    """A Prometheus ``[timestamp, "value"]`` pair's value ("NaN", "+Inf" included)."""
    if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], str):
        try:
            return float(pair[1])
        except ValueError:
            pass
    raise ProviderError(f"{where}: malformed sample {pair!r}")


def _labels(sample: object) -> str:
    metric = sample.get("metric") if isinstance(sample, dict) else None
    if not isinstance(metric, dict):
        return "{}"
    name = metric.get("__name__", "")
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
    return f"{name}{{{inner}}}"


class WebhookMetricProvider:
    """POSTs ``{"query": ..., "context": ...}`` as JSON to ``url``; the answer must be
    ``{"value": number or null}`` (null = no data; "NaN"/"+Inf"/"-Inf" strings accepted)."""

    def __init__(self, url: str, timeout: float, headers: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.headers = dict(headers or {})

    async def query(self, query: str, context: Mapping[str, Any]) -> float | None:
        where = f"metric webhook {display_url(self.url)}"
        payload = {"query": query, "context": dict(context)}
        try:
            status, body = await post_json(self.url, payload, self.headers, self.timeout)
        except TimeoutError:
            raise ProviderError(f"{where}: no answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            unreachable = scrub(describe_error(exc), [self.url])
            raise ProviderError(f"{where} is unreachable: {unreachable}") from None
        except ValueError as exc:  # e.g. an invalid header value
            raise ProviderError(f"{where}: invalid request: {exc}") from None
        if not 200 <= status < 300:
            raise ProviderError(f"{where} answered HTTP {status}: {snippet(body)}")
        try:
            answer = json.loads(body)
        except ValueError:
            raise ProviderError(f"{where} answered non-JSON: {snippet(body)}") from None
        if not isinstance(answer, dict) or "value" not in answer:
            raise ProviderError(
                f'{where}: expected {{"value": number or null}}, got {snippet(body)}'
            )
        return _webhook_value(where, answer["value"])


def _webhook_value(where: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ProviderError(f'{where}: "value" must be a number or null, got {value!r}')
