"""The gateway's retained ``health`` message, assembled from providers every ``health.interval_s``."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from protocol.models import Health
from protocol.signing import now_ms

log = logging.getLogger(__name__)

HealthProvider = Callable[[], Mapping[str, Any]]


def process_metrics(data_dir: Path) -> dict[str, Any]:
    """Cheap metrics every machine has: load, disk of the data folder, uptime, memory."""
    out: dict[str, Any] = {}
    try:
        out["load1"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    try:
        du = shutil.disk_usage(data_dir)
        out["disk_used_pct"] = round(100 * du.used / du.total, 1)
    except OSError:
        pass
    try:
        out["uptime_s"] = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total = int(info["MemTotal"].split()[0])
        avail = int(info["MemAvailable"].split()[0])
        out["mem_used_pct"] = round(100 * (total - avail) / total, 1)
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        pass
    return out


class HealthReporter:
    def __init__(self, data_dir: Path, interval_s: float, publish: Callable[[Health], Awaitable[None]],
                 version: str) -> None:
        self.interval_s = interval_s
        self._publish = publish
        self._providers: list[HealthProvider] = [lambda: process_metrics(data_dir)]
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
