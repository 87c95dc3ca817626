"""InfluxDB down for a while, then back: everything spooled arrives, in order. Broker restarted:
the ingest reconnects by itself and the stream goes on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.telemetry.service import TelemetryService
from gateway.telemetry.writer import Writer

from .helpers import Publisher, config_dict, eventually, influx_values, load, running, topic, v1


class Recording:
    """Wraps the real writer; remembers the timestamps of every batch InfluxDB accepted, in order."""

    def __init__(self, inner: Writer) -> None:
        self.inner = inner
        self.accepted: list[int] = []
        self.failures = 0

    async def write(self, lines: Sequence[str]) -> None:
        try:
            await self.inner.write(lines)
        except Exception:
            self.failures += 1
            raise
        self.accepted.extend(int(line.rsplit(" ", 1)[1]) for line in lines)

    async def close(self) -> None:
        await self.inner.close()


async def test_influx_outage_then_broker_restart(tmp_path: Path, mosquitto: Any, influxdb1: Any) -> None:
    cfg = load(tmp_path, config_dict(tmp_path, mosquitto, influx=v1(influxdb1, batch_size=500)))
    svc = TelemetryService(cfg)
    assert svc.writer is not None
    rec = Recording(svc.writer)
    svc.writer = rec
    t0 = int(time.time() * 1000) - 7_200_000
    async with running(svc):
        # --- InfluxDB outage
        await asyncio.to_thread(influxdb1.stop)
        pub = Publisher(mosquitto)
        first = [
            (
                topic("s1"),
                {"readings": [{"ts": t0 + (b * 20 + j) * 1000, "fields": {"rain_mm": b + j / 100}} for j in range(20)]},
            )
            for b in range(150)
        ]
        await asyncio.to_thread(pub.publish_all, first)
        await eventually(
            lambda: svc.spool.pending == 3000 and rec.failures >= 2, what="readings spooled, writes failing"
        )
        assert svc.health()["influx_last_error"]
        assert rec.accepted == []
        await asyncio.to_thread(influxdb1.start)
        got = await eventually(
            lambda: len(v := influx_values(influxdb1, "environment", "rain_mm")) >= 3000 and v,
            within=30,
            what="spooled readings after InfluxDB came back",
        )
        assert len(got) == 3000
        # InfluxDB shows the points a moment before its 204 reaches the gateway
        await eventually(lambda: svc.spool.pending == 0 and len(rec.accepted) >= 3000, what="spool drained")
        assert rec.accepted == sorted(rec.accepted) and len(rec.accepted) == 3000  # in order, once each

        # --- broker restart
        connects = svc.ingest.connects
        pub.close()
        await asyncio.to_thread(mosquitto.stop)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(mosquitto.start)
        await eventually(lambda: svc.ingest.connects > connects, within=20, what="ingest reconnected")
        pub = Publisher(mosquitto)
        second = [(topic("s1"), {"ts": t0 + 10_000_000 + i, "fields": {"rain_mm": i * 0.5}}) for i in range(500)]
        await asyncio.to_thread(pub.publish_all, second)
        pub.close()
        got = await eventually(
            lambda: len(v := influx_values(influxdb1, "environment", "rain_mm")) >= 3500 and v,
            within=30,
            what="readings after broker restart",
        )
    expected = {("s1", t0 + (b * 20 + j) * 1000): b + j / 100 for b in range(150) for j in range(20)}
    expected.update({("s1", t0 + 10_000_000 + i): i * 0.5 for i in range(500)})
    assert got == expected
