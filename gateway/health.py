"""The gateway's retained ``health`` message, assembled from providers every ``health.interval_s``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from protocol.models import Health
from protocol.signing import now_ms

log = logging.getLogger(__name__)

HealthProvider = Callable[[], Mapping[str, Any]]


class HealthReporter:
    def __init__(self, interval_s: float, publish: Callable[[Health], Awaitable[None]],
                 version: str) -> None:
        self.interval_s = interval_s
        self._publish = publish
        # the Pi's own metrics (load, memory, disk, temperature, clock) come from devices.sensors.service
        self._providers: list[HealthProvider] = []
        self._version = version
        self._started = time.monotonic()
        self.last: Health | None = None

    def add_provider(self, provider: HealthProvider) -> None:
        """Add metrics (a mapping of field → value) to every health report."""
        self._providers.append(provider)

    def collect(self) -> Health:
        fields: dict[str, Any] = {"gateway_uptime_s": round(time.monotonic() - self._started, 1)}
        for provider in self._providers:
            try:
                fields.update(provider())
            except Exception:
                log.exception("health provider %r failed", provider)
        fields["ts"] = now_ms()
        fields["version"] = self._version
        return Health.model_validate(fields)

    async def report_once(self) -> Health:
        health = await asyncio.to_thread(self.collect)
        self.last = health
        await self._publish(health)
        return health

    async def run(self) -> None:
        while True:
            await self.report_once()
            await asyncio.sleep(self.interval_s)
