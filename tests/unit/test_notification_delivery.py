"""Notification delivery isolated per endpoint (notifications/endpoints.py): an endpoint
that hangs or answers 500 delays only its own messages; what one endpoint may hold
(requests in flight, messages) is bounded, and past the bound its oldest message not
in flight is dropped, counted, said in an Event and marked `failed` in the ledger.
The marks of one transition share one ledger write; a burst of deliveries shares one
read of the configuration.

Against a local server with three kinds of path: /ok/<service> answers 200 and
records the message, /fail/<service> answers 500, /hang/<service> accepts the request
and never answers (until the server closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Self

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from canary_operator.api.models import Phase
from canary_operator.kube.api import JsonObj
from canary_operator.metrics import Metrics
from canary_operator.notifications import config
from canary_operator.notifications.endpoints import Endpoints, Limits, Message
from canary_operator.notifications.ledger import LEDGER_ANNOTATION as LEDGER
from canary_operator.notifications.ledger import Delivery, ledger
from canary_operator.notifications.notifier import Notifier
from canary_operator.notifications.sender import Backoff
from canary_operator.notifications.triggers import Fired
from tests.unit.test_metrics import sample
from tests.unit.test_notifications import Events, FakeKube, st

NS = "team"
HANG_TIMEOUT = 120  # seconds: longer than any test here may run
# Retries of the 500 endpoint come fast and never give up within a test.
RETRY_FAST = Backoff(initial=0.02, factor=2, cap=0.1, give_up_after=3600)
GUARD = 20.0  # seconds: a wait that fails the test; never how the test synchronises


class Routes:
    """The local endpoints, and what each saw."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []  # (service, JSON body) answered 200
        self.hanging: dict[str, int] = {}  # service -> requests open now
        self.failed: dict[str, int] = {}  # service -> 500s answered
        self._release = asyncio.Event()
        self._changed = asyncio.Event()
        self._server: TestServer | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind, service = request.match_info["kind"], request.match_info["service"]
        body = await request.json()
        try:
            if kind == "hang":
                self.hanging[service] = self.hanging.get(service, 0) + 1
                self._changed.set()
                await self._release.wait()
                return web.Response(status=599)
            if kind == "fail":
                self.failed[service] = self.failed.get(service, 0) + 1
                return web.Response(status=500, text="internal error")
            self.received.append((service, body))
            return web.Response(text="ok")
        finally:
            if kind == "hang":
                self.hanging[service] -= 1
            self._changed.set()

    async def until(self, what: Callable[[], bool]) -> None:
        """Wake on every request until `what` holds (GUARD: the test fails)."""
        async with asyncio.timeout(GUARD):
            while not what():
                self._changed.clear()
                await self._changed.wait()

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/{kind}/{service}", self._handle)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        self.url = str(self._server.make_url("")).rstrip("/")
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._release.set()
        assert self._server is not None
        await self._server.close()


@contextlib.asynccontextmanager
async def running(notifier: Notifier) -> AsyncIterator[None]:
    """Started, and stopped whatever happens (its hanging requests cancelled)."""
    notifier.start()
    try:
        yield
    finally:
        await notifier.stop()


def services(url: str, hanging: int, failing: int) -> dict[str, str]:
    data = {"service.webhook.rec": f"url: {url}/ok/rec\n"}
    for i in range(hanging):
        data[f"service.webhook.hang{i}"] = (
            f"url: {url}/hang/hang{i}\ntimeoutSeconds: {HANG_TIMEOUT}\n"
        )
    for i in range(failing):
        data[f"service.webhook.fail{i}"] = f"url: {url}/fail/fail{i}\n"
    return data


def rollout(name: str, subscribed: list[str]) -> JsonObj:
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-{name}",
            "resourceVersion": "1",
            "annotations": {f"{config.SUBSCRIBE_PREFIX}on-failed.{s}": "" for s in subscribed},
        },
        "spec": {"target": {"deployment": name}},
        "status": {"phase": "Failed", "run": 1},
    }


class WatchedKube(FakeKube):
    """Records every read and every ledger write (by path), and wakes `until` on each."""

    def __init__(self, objects: dict[str, JsonObj]) -> None:
        super().__init__(objects)
        self.reads: list[str] = []
        self.writes: list[tuple[str, dict[str, str]]] = []  # (rollout path, ledger written)
        self._changed = asyncio.Event()

    async def get(self, resource_path: str) -> JsonObj | None:
        self.reads.append(resource_path)
        await asyncio.sleep(0)  # an answer comes later than the question
        return await super().get(resource_path)

    async def merge_patch(self, resource_path: str, patch: JsonObj) -> JsonObj:
        body = await super().merge_patch(resource_path, patch)
        self.writes.append((resource_path, json.loads(patch["metadata"]["annotations"][LEDGER])))
        self._changed.set()
        return body

    def ledger_of(self, name: str) -> dict[str, str]:
        return ledger(self.objects[f"{ROLLOUTS}/{name}"])

    async def until(self, what: Callable[[], bool]) -> None:
        async with asyncio.timeout(GUARD):
            while not what():
                self._changed.clear()
                await self._changed.wait()


ROLLOUTS = f"/apis/canary-operator.dev/v1alpha1/namespaces/{NS}/canaryrollouts"


def cluster(data: dict[str, str], rollouts: list[JsonObj]) -> WatchedKube:
    return WatchedKube(
        {
            f"/api/v1/namespaces/{NS}/configmaps/{config.CONFIGMAP}": {"data": data},
            f"/api/v1/namespaces/{NS}/secrets/{config.SECRET}": {"data": {}},
            **{f"{ROLLOUTS}/{r['metadata']['name']}": r for r in rollouts},
        }
    )


def fail(notifier: Notifier, body: JsonObj) -> None:
    """The reconciler wrote the run's end: on-failed fires."""
    notifier.transition(body, st(Phase.CLEANING_UP), st(Phase.FAILED))


# ------------------------------------------------------------------ isolation


@pytest.mark.parametrize("hanging", [1, 5])
async def test_hanging_and_failing_endpoints_delay_only_their_own_messages(hanging: int) -> None:
    """10 rollouts end at once, each subscribed to `hanging` endpoints that never answer,
    one that answers 500, and the recorder. Each hanging endpoint is saturated (it holds
    as many open requests as its bound lets it) and more of its messages wait; yet the
    recorder has all ten messages while every hanging request is still open, i.e.
    without waiting for any of their timeouts. (With one limit shared by all endpoints,
    the 50 hanging requests of the 5-endpoint case take every slot for 120 s.)"""
    limits = Limits(in_flight=4, held=100)
    async with Routes() as routes:
        names = [f"web{i}" for i in range(10)]
        subscribed = ["rec", "fail0", *(f"hang{i}" for i in range(hanging))]
        bodies = [rollout(n, subscribed) for n in names]
        kube = cluster(services(routes.url, hanging, failing=1), bodies)
        notifier = Notifier(kube, Events(), Metrics(), RETRY_FAST, limits)  # type: ignore[arg-type]
        async with running(notifier):
            for body in bodies:
                fail(notifier, body)
            saturated = {f"hang{i}": limits.in_flight for i in range(hanging)}
            # The recorder has all ten while every hanging endpoint holds its bound of
            # open requests (none can end before its 120 s timeout; GUARD is 20 s) and
            # the rest of its messages wait: the recorder waited for none of it.
            await routes.until(lambda: len(routes.received) == 10 and routes.hanging == saturated)
            for i in range(hanging):
                endpoint = notifier.courier.endpoints.of(NS, f"hang{i}")
                assert (endpoint.held, endpoint.in_flight) == (10, limits.in_flight)
            # The 500 endpoint was tried and is retrying, also without holding anyone up.
            await routes.until(lambda: routes.failed.get("fail0", 0) >= 10)
            await kube.until(
                lambda: all(kube.ledger_of(n).get("1/on-failed/rec") == "sent" for n in names)
            )
    assert sorted(body["rollout"]["name"] for _, body in routes.received) == names
    for name in names:
        states = kube.ledger_of(name)
        assert {s: states[f"1/on-failed/{s}"] for s in subscribed} == {
            "rec": "sent",
            "fail0": "pending",
            **{f"hang{i}": "pending" for i in range(hanging)},
        }


async def test_past_its_bound_an_endpoint_drops_its_oldest_message_not_in_flight() -> None:
    """in_flight 2, held 3: two requests hang; of the messages that follow, the oldest
    not in flight makes room for each newer one: counted, said, marked `failed`."""
    limits = Limits(in_flight=2, held=3)
    async with Routes() as routes:
        bodies = [rollout(f"web{i}", ["hang0"]) for i in range(5)]
        kube = cluster(services(routes.url, hanging=1, failing=0), bodies)
        events, metrics = Events(), Metrics()
        notifier = Notifier(kube, events, metrics, RETRY_FAST, limits)  # type: ignore[arg-type]
        async with running(notifier):
            fail(notifier, bodies[0])
            fail(notifier, bodies[1])
            await routes.until(lambda: routes.hanging.get("hang0") == 2)
            for body in bodies[2:]:  # web2 waits for a slot; web3 drops it, web4 drops web3
                fail(notifier, body)
            await kube.until(
                lambda: (
                    [kube.ledger_of(f"web{i}").get("1/on-failed/hang0") for i in (2, 3)]
                    == ["failed", "failed"]
                )
            )
            endpoint = notifier.courier.endpoints.of(NS, "hang0")
            assert (endpoint.held, endpoint.in_flight) == (3, 2)
            assert routes.hanging == {"hang0": 2}
    text = metrics.render()
    labels = {"service": "hang0", "trigger": "on-failed"}
    assert sample(text, "canary_operator_notifications_total", **labels, result="dropped") == 2
    dropped = [m for e, m in events.emitted if e == "NotificationDropped"]
    assert all("3 messages to this service were waiting" in m for m in dropped)
    states = {f"web{i}": kube.ledger_of(f"web{i}").get("1/on-failed/hang0") for i in range(5)}
    assert states == {
        "web0": "pending",  # in flight: never dropped
        "web1": "pending",
        "web2": "failed",  # the oldest waiting
        "web3": "failed",
        "web4": "pending",
    }


# ------------------------------------------------------------------ the bookkeeping


def test_an_endpoint_drops_its_oldest_waiting_message_and_is_forgotten_when_empty() -> None:
    endpoints = Endpoints(Limits(in_flight=1, held=2))
    endpoint = endpoints.of(NS, "chat")
    messages = [
        Message(
            Delivery(
                NS,
                f"web{i}",
                f"u{i}",
                Fired("on-failed", 1),
                config.Subscription("on-failed", "chat"),
            ),
            None,
        )
        for i in range(4)
    ]
    assert endpoint.admit(messages[0]) is None
    messages[0].in_flight = True
    assert endpoint.admit(messages[1]) is None
    assert endpoint.admit(messages[2]) is messages[1]  # messages[0] is in flight
    assert endpoint.admit(messages[3]) is messages[2]
    assert endpoint.held == 2
    for m in messages:
        endpoints.release(endpoint, m)
    assert len(endpoints) == 0
    assert endpoints.of(NS, "chat") is not endpoint


def test_limits_leave_room_to_drop() -> None:
    with pytest.raises(ValueError):
        Limits(in_flight=4, held=4)
    with pytest.raises(ValueError):
        Limits(in_flight=0, held=4)


async def test_one_transition_is_one_pending_write_and_one_configuration_read() -> None:
    """Five services of one rollout: their `pending` marks go out in one write (not one
    after the other, the recorder's behind the hanging ones'), and the deliveries of
    five rollouts share one read of the configuration."""
    async with Routes() as routes:
        subscribed = ["rec", *(f"hang{i}" for i in range(4))]
        bodies = [rollout(f"web{i}", subscribed) for i in range(5)]
        kube = cluster(services(routes.url, hanging=4, failing=0), bodies)
        notifier = Notifier(kube, Events(), None, RETRY_FAST)  # type: ignore[arg-type]
        async with running(notifier):
            for body in bodies:
                fail(notifier, body)
            await routes.until(lambda: routes.hanging == {f"hang{i}": 4 for i in range(4)})
            await kube.until(
                lambda: all(
                    kube.ledger_of(f"web{i}").get("1/on-failed/rec") == "sent" for i in range(5)
                )
            )
    configmaps = [p for p in kube.reads if p.endswith(f"/configmaps/{config.CONFIGMAP}")]
    assert len(configmaps) == 1
    for i in range(5):
        first = next(written for path, written in kube.writes if path.endswith(f"/web{i}"))
        assert first == {f"1/on-failed/{s}": "pending" for s in subscribed}


class StalledKube(WatchedKube):
    """An API server that answers no read of a rollout until `answer` is set."""

    def __init__(self, objects: dict[str, JsonObj]) -> None:
        super().__init__(objects)
        self.answer = asyncio.Event()

    async def get(self, resource_path: str) -> JsonObj | None:
        if resource_path.startswith(ROLLOUTS):
            await self.answer.wait()
        return await super().get(resource_path)


async def test_the_first_attempt_does_not_wait_for_the_pending_mark() -> None:
    """The `pending` write and the first attempt go out together; the `sent` mark,
    asked for after the delivery, is written after the `pending` one."""
    async with Routes() as routes:
        body = rollout("web0", ["rec"])
        kube = StalledKube(cluster(services(routes.url, hanging=0, failing=0), [body]).objects)
        notifier = Notifier(kube, Events(), None, RETRY_FAST)  # type: ignore[arg-type]
        async with running(notifier):
            fail(notifier, body)
            await routes.until(lambda: len(routes.received) == 1)
            assert kube.writes == []  # delivered while the ledger's read has no answer
            kube.answer.set()
            await kube.until(lambda: kube.ledger_of("web0").get("1/on-failed/rec") == "sent")
    assert [written for _, written in kube.writes] == [
        {"1/on-failed/rec": "pending"},
        {"1/on-failed/rec": "sent"},
    ]
