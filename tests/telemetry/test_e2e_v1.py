"""MQTT telemetry → spool → InfluxDB 1.6.7 (v1 /write), real Mosquitto and InfluxDB."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

from gateway.telemetry.service import TelemetryService
from protocol.models import Reading

from .helpers import GW, Publisher, config_dict, eventually, influx_values, load, running, topic, v1


async def test_every_reading_arrives_exactly(tmp_path: Path, mosquitto: Any, influxdb1: Any) -> None:
    cfg = load(tmp_path, config_dict(tmp_path, mosquitto, influx=v1(influxdb1), devices=("s1", "s2")))
    rng = random.Random(7)
    t0 = int(time.time() * 1000) - 3_600_000
    sent: dict[tuple[str, int], float] = {}
    msgs: list[tuple[str, Any]] = []
    for i in range(300):  # single-reading form
        ts, v = t0 + i * 10, rng.uniform(-50, 500)
        sent[("s1", ts)] = v
        msgs.append((topic("s1"), {"ts": ts, "fields": {"temp_c": v}}))
    for b in range(20):  # batch form, 50 readings each
        readings = []
        for j in range(50):
            ts, v = (
                t0 + 1 + (b * 50 + j) * 10,
                rng.choice([0.1, 1e-300, 123456789.123456789, -0.0, 42, rng.random()]),
            )
            sent[("s2", ts)] = float(v)
            readings.append({"ts": ts, "fields": {"temp_c": v}})
        msgs.append((topic("s2"), {"readings": readings}))
    svc = TelemetryService(cfg)
    async with running(svc):
        pub = Publisher(mosquitto)
        await asyncio.to_thread(pub.publish_all, msgs)
        pub.close()
        got = await eventually(
            lambda: (v := influx_values(influxdb1, "environment", "temp_c")) and len(v) >= len(sent) and v,
            what="all readings in InfluxDB",
        )
        # polled sink: a driver's readings go through the same spool
        await svc.accept_polled("pi", "gateway_probe", [Reading(ts=t0, fields={"cpu_temp_c": 51.25})])
        probe = await eventually(lambda: influxdb1.points("gateway_probe"), what="polled reading")
        assert svc.spool.pending == 0 or await eventually(lambda: svc.spool.pending == 0)
    assert got == sent  # exact values, exact timestamps, same count
    assert len(got) == 1300
    assert probe[0]["cpu_temp_c"] == 51.25 and probe[0]["device"] == "pi" and probe[0]["time"] == t0
    tagged = influxdb1.points("environment", where="LIMIT 1")[0]
    assert tagged["gateway"] == GW and tagged["commune"] == "Xã Thử Nghiệm"
    assert svc.accepted == 1301 and sum(svc.rejected.values()) == 0
    assert svc.ingest.acked == len(msgs)
