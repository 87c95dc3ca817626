"""Polled drivers hand their readings to the spool (the ReadingSink); a crashing driver is restarted
and its crashes and counters appear in health."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devices.base import ReadingSink, SensorDriver
from gateway.telemetry.service import TelemetryService
from protocol.models import Reading

from .helpers import config_dict, eventually, influx_values, load, running, v1


class Counting(SensorDriver):
    """Produces ``n`` water-level readings, one every 10 ms; crashes once after ``crash_after``."""

    def __init__(self, device_id: str, n: int, t0: int, crash_after: int | None = None) -> None:
        self.device_id = device_id
        self.n, self.t0, self.crash_after = n, t0, crash_after
        self.sent = 0
        self.errors = 0

    async def run(self, sink: ReadingSink) -> None:
        while self.sent < self.n:
            if self.crash_after is not None and self.sent == self.crash_after:
                self.crash_after = None
                self.errors += 1
                raise OSError("serial line gone")
            await sink(
                self.device_id,
                "water_level",
                [Reading(ts=self.t0 + self.sent * 1000, fields={"level_cm": 100 + self.sent / 8})],
            )
            self.sent += 1  # counted only once the sink returned: the reading is on disk
            await asyncio.sleep(0.01)
        await asyncio.Event().wait()

    def stats(self) -> Mapping[str, int | float | str | None]:
        return {"errors": self.errors, "sent": self.sent}


async def test_driver_readings_reach_influx_and_crashes_are_counted(
    tmp_path: Path, mosquitto: Any, influxdb1: Any
) -> None:
    cfg = load(tmp_path, config_dict(tmp_path, mosquitto.url, influx=v1(influxdb1), devices=()))
    t0 = int(time.time() * 1000) - 600_000
    steady, flaky = Counting("song-1", 40, t0), Counting("mua-1", 30, t0, crash_after=10)
    svc = TelemetryService(cfg, drivers=[steady, flaky])
    async with running(svc):
        got = await eventually(
            lambda: len(v := influx_values(influxdb1, "water_level", "level_cm")) >= 70 and v,
            within=30,
            what="driver readings in InfluxDB",
        )
        health = svc.health()
    assert got == {(d, t0 + i * 1000): 100 + i / 8 for d, n in (("song-1", 40), ("mua-1", 30)) for i in range(n)}
    assert health["driver_errors"]["mua-1"] == {"errors": 1, "sent": 30, "crashes": 1}
    assert health["driver_errors"]["song-1"] == {"errors": 0, "sent": 40}
    assert health["telemetry_accepted"] == 70
