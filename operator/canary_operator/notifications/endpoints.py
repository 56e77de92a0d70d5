"""Delivery isolated per endpoint: what one endpoint may hold, and what happens past it.

An endpoint is one service of one namespace's ConfigMap (`service.<type>.<name>`). Each
has its own bounds, and nothing else is shared between endpoints (the HTTP client has
no overall connection limit; the per-endpoint ones are the limits):

- **in flight**: at most `Limits.in_flight` requests open at once (so at most that many
  connections). A request holds its slot only while it is open, timeout included;
  never during the backoff between attempts.
- **held**: at most `Limits.held` messages, counting those waiting for a slot, those
  waiting out a backoff and those in flight. Past it, the oldest message not in flight
  is dropped: the notifier counts it (`result="dropped"`), logs it, posts a Warning
  Event `NotificationDropped` and marks its key `failed` in the ledger.

So an endpoint that hangs (accepts, never answers) holds at most `in_flight` requests
until its own timeout, and at most `held` messages; the messages of every other
endpoint wait for nothing of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from canary_operator.notifications.ledger import Delivery


@dataclass(frozen=True)
class Limits:
    in_flight: int = 4
    held: int = 100

    def __post_init__(self) -> None:
        # Room to drop: some held message is never in flight.
        if not 0 < self.in_flight < self.held:
            raise ValueError("0 < in_flight < held is required")


DEFAULT_LIMITS = Limits()


class Message:
    """One message an endpoint holds, from its admission until it is done (sent, given
    up or dropped). `task` is the task that delivers it (cancelled if it is dropped)."""

    def __init__(self, delivery: Delivery, task: asyncio.Task[None] | None) -> None:
        self.delivery = delivery
        self.task = task
        self.in_flight = False


class Endpoint:
    def __init__(self, namespace: str, service: str, limits: Limits) -> None:
        self.namespace = namespace
        self.service = service
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.in_flight)
        self._held: OrderedDict[Message, None] = OrderedDict()  # oldest first

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def in_flight(self) -> int:
        return sum(1 for m in self._held if m.in_flight)

    def admit(self, message: Message) -> Message | None:
        """Hold `message`. Past the bound, the oldest message not in flight makes room:
        it is returned (no longer held), for the caller to cancel and account for."""
        dropped = None
        if len(self._held) >= self.limits.held:
            dropped = next(m for m in self._held if not m.in_flight)
            del self._held[dropped]
        self._held[message] = None
        return dropped

    def release(self, message: Message) -> None:
        self._held.pop(message, None)

    @contextlib.asynccontextmanager
    async def slot(self, message: Message) -> AsyncIterator[None]:
        """One request of `message` is open (first come, first served)."""
        async with self._slots:
            message.in_flight = True
            try:
                yield
            finally:
                message.in_flight = False


class Endpoints:
    """The endpoints that hold something; one forgotten when it holds nothing."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._by_key: dict[tuple[str, str], Endpoint] = {}

    def of(self, namespace: str, service: str) -> Endpoint:
        key = (namespace, service)
        endpoint = self._by_key.get(key)
        if endpoint is None:
            endpoint = self._by_key[key] = Endpoint(namespace, service, self.limits)
        return endpoint

    def release(self, endpoint: Endpoint, message: Message) -> None:
        endpoint.release(message)
        key = (endpoint.namespace, endpoint.service)
        if not endpoint.held and self._by_key.get(key) is endpoint:
            del self._by_key[key]

    def __len__(self) -> int:
        return len(self._by_key)
