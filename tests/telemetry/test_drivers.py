"""Polled drivers hand their readings to the spool (the ReadingSink); a crashing driver is restarted
and its crashes and counters appear in health."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devices.base import ReadingSink, SensorDriver
from gateway.telemetry.service import TelemetryService
from protocol.models import Reading
from tests.conftest import spawn_loaxa, wait_until

from .helpers import GW, HealthWatcher, config_dict, eventually, influx_values, load, running, v1, write_config


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
    cfg = load(tmp_path, config_dict(tmp_path, mosquitto, influx=v1(influxdb1), devices=()))
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


def test_gateway_runs_sim_sensors_into_influx(tmp_path: Path, mosquitto: Any, influxdb1: Any) -> None:
    """``loaxa gateway run`` with simulated sensors (as in the demo): their readings reach InfluxDB
    through the spool, and the sensors' summary is in the retained health."""
    data = config_dict(tmp_path, mosquitto, influx=v1(influxdb1), devices=())
    data["devices"] = [
        {"id": "song-1", "type": "sim_sensor", "kind": "water_level", "interval_s": 0.2, "seed": 1},
        {"id": "mua-1", "type": "sim_sensor", "kind": "rain", "interval_s": 0.2, "seed": 2},
    ]
    data["health"] = {"interval_s": 1}
    watcher = HealthWatcher(mosquitto)
    proc = spawn_loaxa("gateway", "run", "--config", str(write_config(tmp_path, data)), log=tmp_path / "gw.log")
    try:
        level = wait_until(lambda: len(p := influxdb1.points("water_level")) >= 5 and p, 30, what="water levels")
        rain = wait_until(lambda: influxdb1.points("rain"), 30, what="rain readings")
        health = wait_until(
            lambda: (h := watcher.latest).get("sensors_total") == 2 and h.get("influx_written") and h,
            20,
            what="health with the sensors",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        watcher.close()
    assert {p["device"] for p in level} == {"song-1"} and all(p["gateway"] == GW for p in level)
    assert {p["device"] for p in rain} == {"mua-1"}
    assert health["driver_errors"]["song-1"] is not None and health["telemetry_rejected"] == {}
