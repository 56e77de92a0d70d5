"""A scripted HTTP server for unit tests of HTTP clients (webhooks, metric providers).

``async with FakeServer(Reply(503), Reply(200, {"ok": True})) as server:`` serves on
127.0.0.1 at a random port (``server.url``); the n-th request gets the n-th reply (the
last one repeats) and is recorded in ``server.requests``. ``HANG`` never answers, to
provoke client timeouts; hanging handlers are released when the server closes.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = ""
    """A str is sent as-is (text/plain); anything else as JSON."""
    headers: dict[str, str] = field(default_factory=dict)


class _Hang:
    def __repr__(self) -> str:
        return "HANG"


HANG: Final = _Hang()


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class FakeServer:
    def __init__(self, *replies: Reply | _Hang) -> None:
        self.replies = list(replies) or [Reply()]
        self.requests: list[Recorded] = []
        self._release = asyncio.Event()
        self._server: TestServer | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:41234`` (still
        readable after the server closed, for assertions on messages)."""
        if self._url is None:
            raise RuntimeError("the server was never started")
        return self._url

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            Recorded(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=dict(request.headers),
                body=await request.read(),
            )
        )
        reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
        if isinstance(reply, _Hang):
            await self._release.wait()
            return web.Response(status=599, text="released")
        if isinstance(reply.body, str):
            return web.Response(status=reply.status, text=reply.body, headers=reply.headers)
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        self._url = str(self._server.make_url("")).rstrip("/")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release.set()
        if self._server is not None:
            await self._server.close()
            self._server = None
