"""How one message goes out: its configuration and payload, its endpoint's bounds
(endpoints.py), its attempts with backoff, and its states in the ledger (ledger.py).

`pending` is marked as the first attempt goes out, `sent` after success, `failed` when
given up or dropped. A message's attempts hold a slot of its endpoint only while a request
is open; the ledger, the Events and the backoff pauses hold nothing of any endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import aiohttp

from canary_operator.kube.api import JsonObj, Kube
from canary_operator.notifications import config, payloads, sender
from canary_operator.notifications.config import ConfigError
from canary_operator.notifications.endpoints import Endpoint, Endpoints, Limits, Message
from canary_operator.notifications.ledger import FAILED, PENDING, SENT, Delivery, Ledger
from canary_operator.notifications.reader import ConfigReader
from canary_operator.notifications.sender import Backoff
from canary_operator.notifications.templating import TemplateError

log = logging.getLogger(__name__)


class EventSink(Protocol):
    async def emit(
        self, namespace: str, name: str, uid: str, reason: str, message: str, warning: bool
    ) -> None: ...


class NotificationMetrics(Protocol):
    def notification(self, service: str, trigger: str, result: str) -> None: ...

    def notifications_in_flight(self, n: int) -> None: ...


class Courier:
    def __init__(
        self,
        kube: Kube,
        events: EventSink,
        metrics: NotificationMetrics | None,
        backoff: Backoff,
        limits: Limits,
        configs: ConfigReader,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        tell_once: Callable[[JsonObj, str, str], None],
    ) -> None:
        self.events = events
        self.metrics = metrics
        self.backoff = backoff
        self.clock = configs.clock
        self.configs = configs
        self.spawn = spawn  # a background task the notifier tracks
        self.tell_once = tell_once  # a configuration problem, said once per run
        # Each endpoint's own bounds are the only limits on requests (endpoints.py).
        self.endpoints = Endpoints(limits)
        self.ledger = Ledger(kube)
        self._session: aiohttp.ClientSession | None = None

    async def stop(self) -> None:
        """After the delivery tasks are cancelled."""
        await self.configs.stop()
        await self.ledger.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver(self, body: JsonObj, delivery: Delivery) -> None:
        prepared = await self._prepare(body, delivery)
        if prepared is None:
            return
        service, data, content_type = prepared
        endpoint = self.endpoints.of(delivery.namespace, service.name)
        message = Message(delivery, asyncio.current_task())
        dropped = endpoint.admit(message)
        if dropped is not None:
            self._drop(endpoint, dropped)
        try:
            await self._attempts(endpoint, message, service, data, content_type)
        finally:
            self.endpoints.release(endpoint, message)

    async def _prepare(
        self, body: JsonObj, delivery: Delivery
    ) -> tuple[config.Service, bytes, str] | None:
        """The service and what to send it; None when the configuration is unusable (said)."""
        trigger, sub = delivery.fired.trigger, delivery.subscription
        cfg = await self.configs.get(delivery.namespace)
        try:
            if isinstance(cfg, ConfigError):
                raise cfg
            service = cfg.services.get(sub.service)
            if service is None:
                raise ConfigError(
                    f"no service {sub.service!r} in ConfigMap {config.CONFIGMAP} "
                    f"(known: {', '.join(sorted(cfg.services)) or 'none'})"
                )
            template = cfg.templates[cfg.triggers[trigger].template]
            ctx = payloads.context(body, trigger, delivery.extra)
            data, content_type = payloads.payload(service, template, ctx, sub)
        except (ConfigError, TemplateError, ValueError) as exc:
            self._count(sub.service, trigger, "invalid")
            self.tell_once(body, f"{delivery.key}/invalid", f"notification {delivery.key}: {exc}")
            return None
        return service, data, content_type

    async def _attempts(
        self,
        endpoint: Endpoint,
        message: Message,
        service: config.Service,
        data: bytes,
        content_type: str,
    ) -> None:
        delivery = message.delivery
        trigger, what = delivery.fired.trigger, f"{service.type}/{service.name}"
        # Not awaited: the first attempt does not wait for the API server (ledger.py).
        self.ledger.want(delivery, PENDING)
        started = self.clock()
        attempt = 0
        while True:
            async with endpoint.slot(message):
                ok, retry, detail = await sender.post(self._http(), service, data, content_type)
            given_up = not ok and (
                not retry or self.clock() - started >= self.backoff.give_up_after
            )
            if ok or given_up:
                # Done with the endpoint: no longer one of the messages it holds.
                self.endpoints.release(endpoint, message)
            if ok:
                self._count(service.name, trigger, "sent")
                await self.ledger.mark(delivery, SENT)
                return
            self._count(service.name, trigger, "failed")
            if given_up:
                self._count(service.name, trigger, "abandoned")
                await self._event(
                    delivery,
                    "NotificationAbandoned",
                    f"{trigger} to {what} not delivered after {attempt + 1} attempt(s): {detail}",
                )
                await self.ledger.mark(delivery, FAILED)
                return
            if attempt == 0:
                await self._event(
                    delivery,
                    "NotificationFailed",
                    f"{trigger} to {what}: {detail}; retrying with backoff",
                )
            await asyncio.sleep(self.backoff.delay(attempt))
            attempt += 1

    def _drop(self, endpoint: Endpoint, message: Message) -> None:
        """`message` made room for a newer one (endpoints.py): not delivered, and said."""
        if message.task is not None:
            message.task.cancel()
        delivery = message.delivery
        trigger = delivery.fired.trigger
        self._count(endpoint.service, trigger, "dropped")
        log.warning(
            "%s/%s: notification %s dropped: service %s holds %d messages (the bound); "
            "the oldest makes room",
            delivery.namespace,
            delivery.name,
            delivery.key,
            endpoint.service,
            endpoint.limits.held,
        )

        async def account() -> None:
            await self._event(
                delivery,
                "NotificationDropped",
                f"{trigger} to {endpoint.service} dropped, not delivered: {endpoint.limits.held} "
                "messages to this service were waiting (the oldest makes room)",
            )
            await self.ledger.mark(delivery, FAILED)

        self.spawn(account())

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No overall connection limit: each endpoint's own bound is the limit.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def _event(self, delivery: Delivery, reason: str, message: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self.events.emit(
                    delivery.namespace, delivery.name, delivery.uid, reason, message, True
                ),
                10,
            )

    def _count(self, service: str, trigger: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.notification(service, trigger, result)
