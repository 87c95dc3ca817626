"""A full spool drops the oldest undelivered readings, counts them, and the count shows in health
and survives a restart; the newest readings are the ones that reach InfluxDB afterwards."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from gateway.telemetry.service import TelemetryService

from .helpers import Publisher, config_dict, eventually, influx_values, load, running, topic, v1


async def test_full_spool_drops_oldest_and_counts(tmp_path: Path, mosquitto: Any, influxdb1: Any) -> None:
    await asyncio.to_thread(influxdb1.stop)  # InfluxDB unreachable: the spool can only fill
    cfg = load(tmp_path, config_dict(tmp_path, mosquitto, influx=v1(influxdb1), max_bytes=1024 * 1024))
    t0 = int(time.time() * 1000) - 3_600_000
    n_msgs, per_msg = 80, 500
    sent = n_msgs * per_msg  # ~2.5 MB of readings into a 1 MiB spool
    svc = TelemetryService(cfg)
    async with running(svc):
        pub = Publisher(mosquitto)
        msgs = [
            (
                topic("s1"),
                {
                    "readings": [
                        {"ts": t0 + (m * per_msg + j) * 10, "fields": {"level_cm": 1000.0 + j}} for j in range(per_msg)
                    ]
                },
            )
            for m in range(n_msgs)
        ]
        await asyncio.to_thread(pub.publish_all, msgs)
        pub.close()
        await eventually(lambda: svc.accepted == sent, what="all readings accepted")
        await eventually(lambda: svc.spool.pending + svc.spool.dropped == sent, what="spool settled")
        health = svc.health()
    dropped, pending = health["spool_dropped"], health["spool_depth"]
    assert dropped > 0 and pending > 0 and dropped + pending == sent
    assert health["spool_bytes"] <= 1024 * 1024

    # restart: counters come back from disk; then InfluxDB returns and gets exactly the newest `pending`
    await asyncio.to_thread(influxdb1.start)
    svc2 = TelemetryService(cfg)
    async with running(svc2):
        assert svc2.health()["spool_dropped"] == dropped
        got = await eventually(
            lambda: len(v := influx_values(influxdb1, "environment", "level_cm")) >= pending and v,
            within=30,
            what="surviving readings written",
        )
        await asyncio.sleep(0.5)
        got = influx_values(influxdb1, "environment", "level_cm")
    oldest_kept = t0 + dropped * 10
    assert sorted(ts for _, ts in got) == [t0 + i * 10 for i in range(dropped, sent)]
    assert min(ts for _, ts in got) == oldest_kept
