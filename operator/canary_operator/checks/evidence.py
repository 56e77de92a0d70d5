"""The evidence of a failed test: the tail of its Job's pod logs, read before cleanup
deletes the Job, so `kubectl canary logs` can still say why the canary failed.

Bounded in size (TAIL_BYTES per container, MAX_PODS most recent pods) and in time
(READ_TIMEOUT per read): a log that cannot be read is recorded as such, it never
holds a rollout up.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.api.models import ContainerLogTail
from canary_operator.kube.api import Kube, path

TAIL_BYTES = 4096
TAIL_LINES = 200  # asked of the kubelet; the byte bound is applied here
LIMIT_BYTES = 64 * 1024  # what the kubelet may send at most for those lines
MAX_PODS = 2  # a Job retried (backoffLimit) has several pods: the latest ones tell
READ_TIMEOUT = 5.0
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def tail_of(raw: bytes, limit: int = TAIL_BYTES) -> tuple[str, bool]:
    """The last `limit` bytes of a log as text (a character cut in two at the start is
    dropped), and whether anything was cut."""
    if len(raw) <= limit:
        return raw.decode("utf-8", errors="replace"), False
    return raw[-limit:].decode("utf-8", errors="ignore"), True


def _containers(pod: dict[str, Any]) -> list[str]:
    spec = pod.get("spec") or {}
    return [
        c["name"]
        for kind in ("initContainers", "containers")
        for c in spec.get(kind) or []
        if c.get("name")
    ]


async def _read_log(kube: Kube, namespace: str, pod: str, container: str) -> bytes:
    raw = await kube.api_client.call_api(
        path("", "v1", "pods", namespace, pod) + "/log",
        "GET",
        query_params=[
            ("container", container),
            ("tailLines", str(TAIL_LINES)),
            ("limitBytes", str(LIMIT_BYTES)),
        ],
        header_params={"Accept": "*/*"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=READ_TIMEOUT,
    )
    response = raw[0] if isinstance(raw, tuple) else raw
    async with response:
        data: bytes = await response.read()
        if response.status >= 400:
            exc = ApiException(status=response.status, reason=_message(data, response.reason))
            raise exc
    return data


def _message(data: bytes, default: str | None) -> str:
    import json

    try:
        return str(json.loads(data).get("message") or default)
    except (ValueError, AttributeError):
        return default or ""


async def container_tail(
    kube: Kube, namespace: str, pod: str, container: str, limit: int = TAIL_BYTES
) -> ContainerLogTail:
    try:
        raw = await asyncio.wait_for(_read_log(kube, namespace, pod, container), READ_TIMEOUT)
    except ApiException as exc:
        return ContainerLogTail(pod=pod, container=container, error=str(exc.reason)[:300])
    except (TimeoutError, OSError) as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else str(exc)
        return ContainerLogTail(pod=pod, container=container, error=why[:300])
    tail, truncated = tail_of(raw, limit)
    return ContainerLogTail(pod=pod, container=container, tail=tail, truncated=truncated)


async def job_log_tails(
    kube: Kube, namespace: str, job: str, limit: int = TAIL_BYTES
) -> tuple[ContainerLogTail, ...]:
    """Log tails of every container of the Job's latest pods."""
    pods = await kube.list(path("", "v1", "pods", namespace), f"{JOB_NAME_LABEL}={job}")
    pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True)
    reads = [
        container_tail(kube, namespace, pod["metadata"]["name"], container, limit)
        for pod in pods[:MAX_PODS]
        for container in _containers(pod)
    ]
    return tuple(await asyncio.gather(*reads))
