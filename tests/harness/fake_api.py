"""An in-memory stand-in for the few API calls the lock and leader election make:
get/create/replace with resourceVersion preconditions, the only API behaviour those
protocols rely on (the real API server is exercised by the e2e suite)."""

from __future__ import annotations

import copy
import json
from types import TracebackType
from typing import Any

from canary_operator.kube.api import Conflict


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.version = 0

    def _stamp(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(self.version)
        return body

    async def get(self, path: str) -> dict[str, Any] | None:
        found = self.objects.get(path)
        return copy.deepcopy(found) if found else None

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        full = f"{path}/{body['metadata']['name']}"
        if full in self.objects:
            raise Conflict("exists")
        self.objects[full] = self._stamp(body)
        return copy.deepcopy(self.objects[full])

    async def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        current = self.objects.get(path)
        if current is None or current["metadata"]["resourceVersion"] != body["metadata"].get(
            "resourceVersion"
        ):
            raise Conflict("changed")
        self.objects[path] = self._stamp(body)
        return copy.deepcopy(self.objects[path])

    async def delete(
        self, path: str, propagation: str = "Background", resource_version: str | None = None
    ) -> bool:
        current = self.objects.get(path)
        if current is None:
            return False
        if resource_version is not None and current["metadata"]["resourceVersion"] != (
            resource_version
        ):
            raise Conflict("changed")
        del self.objects[path]
        return True


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class RawResponse:
    """What kubernetes_asyncio's ApiClient.call_api returns to Kube.request: a status
    and a JSON body (for tests of the client layer without a server)."""

    def __init__(self, status: int = 200, body: Any = None) -> None:
        self.status = status
        self.reason = "OK" if status < 400 else "Error"
        self._body = json.dumps({} if body is None else body).encode()

    async def read(self) -> bytes:
        return self._body

    async def __aenter__(self) -> RawResponse:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None
