"""Quarantine of readings InfluxDB refuses (4xx); the v2 write API against VictoriaMetrics;
``loaxa gateway export`` of retained readings."""

from __future__ import annotations

import asyncio
import csv
import io
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

from gateway.telemetry.service import SPOOL_FILE, TelemetryService
from tests.conftest import run_loaxa

from .helpers import (
    GW,
    Publisher,
    config_dict,
    eventually,
    influx_values,
    load,
    running,
    topic,
    v1,
    write_config,
)


async def test_refused_readings_are_quarantined_and_do_not_block(
    tmp_path: Path, mosquitto: Any, influxdb1: Any
) -> None:
    now = int(time.time() * 1000)
    # someone already wrote temp_c as a string into this measurement: float temp_c is a type conflict (400)
    req = urllib.request.Request(
        f"{influxdb1.url}/write?db={influxdb1.database}&precision=ms",
        method="POST",
        data=f'environment,device=other,gateway={GW} temp_c="hot" {now - 5000}'.encode(),
    )
    await asyncio.to_thread(lambda: urllib.request.urlopen(req, timeout=5).close())
    cfg = load(tmp_path, config_dict(tmp_path, mosquitto, influx=v1(influxdb1)))
    readings = [
        {"ts": now - 4000 + i, "fields": {"temp_c": 30.0 + i} if i % 10 == 3 else {"hum_pct": 50.0 + i}}
        for i in range(200)
    ]
    svc = TelemetryService(cfg)
    async with running(svc):
        pub = Publisher(mosquitto)
        await asyncio.to_thread(
            pub.publish_all,
            [(topic("s1"), {"readings": readings[:100]}), (topic("s1"), {"readings": readings[100:]})],
        )
        pub.close()
        await eventually(lambda: svc.written + svc.spool.quarantined == 200, what="spool drained")
        health = svc.health()
    good = {("s1", r["ts"]): r["fields"]["hum_pct"] for r in readings if "hum_pct" in r["fields"]}
    assert influx_values(influxdb1, "environment", "hum_pct") == good
    assert health["spool_quarantined"] == 20
    conn = sqlite3.connect(tmp_path / "gwdata" / SPOOL_FILE)
    rows = conn.execute("SELECT ts, fields, error FROM quarantine ORDER BY ts").fetchall()
    assert [r[0] for r in rows] == [r["ts"] for r in readings if "temp_c" in r["fields"]]
    assert all("field type conflict" in r[2] and r[2].startswith("HTTP 400") for r in rows)


async def test_v2_write_api_to_victoriametrics(tmp_path: Path, mosquitto: Any, victoria: Any) -> None:
    influx = {
        "api": "v2",
        "url": victoria.url,
        "bucket": "loaxa",
        "org": "loaxa",
        "token": {"value": "t0ken"},
        "flush_interval_s": 0.2,
    }
    cfg = load(
        tmp_path,
        config_dict(tmp_path, mosquitto, influx=influx, devices=("river-1",), measurement="water_level"),
    )
    t0 = int(time.time() * 1000) - 600_000
    sent = {t0 + i * 1000: round(120 + i * 0.25, 2) for i in range(400)}
    svc = TelemetryService(cfg)
    async with running(svc):
        pub = Publisher(mosquitto)
        msgs: list[tuple[str, Any]] = [
            (topic("river-1"), {"ts": ts, "fields": {"level_cm": v}}) for ts, v in list(sent.items())[:100]
        ]
        msgs.append(
            (
                topic("river-1"),
                {"readings": [{"ts": ts, "fields": {"level_cm": v}} for ts, v in list(sent.items())[100:]]},
            )
        )
        await asyncio.to_thread(pub.publish_all, msgs)
        pub.close()
        await eventually(lambda: svc.spool.pending == 0 and svc.written == 400, what="all written")

    def series() -> list[dict[str, Any]]:
        return [s for s in victoria.export('{__name__="water_level_level_cm"}') if len(s["values"]) >= 400]

    found = await eventually(lambda: series(), within=20, what="series in VictoriaMetrics")
    assert len(found) == 1
    s = found[0]
    assert s["metric"]["gateway"] == GW and s["metric"]["device"] == "river-1"
    assert dict(zip(s["timestamps"], s["values"], strict=True)) == sent


async def test_export_retained_readings_as_csv(tmp_path: Path, mosquitto: Any, influxdb1: Any) -> None:
    data = config_dict(tmp_path, mosquitto, influx=v1(influxdb1), devices=("s1", "s2"), retain_days=60)
    cfg = load(tmp_path, data)
    path = write_config(tmp_path, data)
    base = int(time.time() * 1000) // 86_400_000 * 86_400_000 - 86_400_000  # yesterday 00:00 UTC
    svc = TelemetryService(cfg)
    async with running(svc):
        pub = Publisher(mosquitto)
        msgs = [
            (topic("s1" if i % 2 else "s2"), {"ts": base + i * 3_600_000, "fields": {"a": i * 1.5, "b": -i}})
            for i in range(24)
        ]
        await asyncio.to_thread(pub.publish_all, msgs)
        pub.close()
        await eventually(lambda: svc.written == 24, what="readings delivered")
    assert svc.spool.bytes > 0  # delivered but retained
    day = time.strftime("%Y-%m-%d", time.gmtime(base / 1000))
    out = await asyncio.to_thread(
        run_loaxa,
        *[
            "gateway",
            "export",
            "--config",
            str(path),
            "--from",
            f"{day}T06:00:00Z",
            "--to",
            f"{day}T12:00:00Z",
        ],
    )
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [(int(r["ts_ms"]), r["field"]) for r in rows] == [
        (base + h * 3_600_000, f) for h in range(6, 12) for f in ("a", "b")
    ]
    first = rows[0]
    assert first["time_utc"] == f"{day}T06:00:00.000Z" and first["gateway"] == GW and first["device"] == "s2"
    assert float(first["value"]) == 9.0 and first["measurement"] == "environment" and first["delivered"] == "yes"
    bad = await asyncio.to_thread(
        run_loaxa,
        *[
            "gateway",
            "export",
            "--config",
            str(path),
            "--from",
            "yesterday",
            "--to",
            day,
        ],
    )
    assert bad.returncode == 2 and "'yesterday' is not an ISO date" in bad.stderr
