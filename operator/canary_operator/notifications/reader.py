"""Reading a namespace's notification configuration (its ConfigMap and Secret)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Callable

from canary_operator.kube.api import Kube, path
from canary_operator.notifications import config
from canary_operator.notifications.config import ConfigError, NotificationConfig

Read = NotificationConfig | ConfigError


class ConfigReader:
    """A namespace's configuration, read at most once per `ttl` seconds, and once at a
    time: the deliveries of a burst of transitions share one read."""

    def __init__(
        self, kube: Kube, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.kube = kube
        self.ttl = ttl
        self.clock = clock
        self._read: dict[str, tuple[float, Read]] = {}
        self._reading: dict[str, asyncio.Task[Read]] = {}

    async def get(self, namespace: str) -> Read:
        cached = self._read.get(namespace)
        if cached is not None and self.clock() - cached[0] < self.ttl:
            return cached[1]
        reading = self._reading.get(namespace)
        if reading is None:
            reading = asyncio.get_running_loop().create_task(self._fetch(namespace))
            self._reading[namespace] = reading
            reading.add_done_callback(lambda _t: self._reading.pop(namespace, None))
        # One reader cancelled (its delivery dropped, the notifier stopping) does not
        # cancel the read the others wait for.
        return await asyncio.shield(reading)

    async def stop(self) -> None:
        reads = list(self._reading.values())
        for task in reads:
            task.cancel()
        for task in reads:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _fetch(self, namespace: str) -> Read:
        result: Read
        try:
            cm = await self.kube.get(path("", "v1", "configmaps", namespace, config.CONFIGMAP))
            secret = await self.kube.get(path("", "v1", "secrets", namespace, config.SECRET))
        except Exception as exc:  # permissions, API down: a config problem, said once
            result = ConfigError(f"cannot read the notification configuration: {exc}")
        else:
            if cm is None:
                result = ConfigError(f"no ConfigMap {config.CONFIGMAP} in namespace {namespace}")
            else:
                decoded = {
                    k: base64.b64decode(v).decode(errors="replace")
                    for k, v in ((secret or {}).get("data") or {}).items()
                }
                try:
                    result = config.parse(cm.get("data") or {}, decoded)
                except ConfigError as exc:
                    result = exc
        self._read[namespace] = (self.clock(), result)
        return result
