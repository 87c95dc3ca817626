"""The known readings the IOC tests write, and what the API must give back for them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from gateway.telemetry.lineproto import format_fields, line, tag_set

G1, G2, G3 = "xa-an-binh", "xa-phu-my", "xa-la"
COMMUNES = {G1: "Xã An Bình", G2: "Xã Phú Mỹ", G3: "Xã O'Neil\\ /x/; DROP"}
WATER_DEVICES = ("muc-nuoc-1", "muc-nuoc-2")
STEP_MS = 10_000
N_WATER = 60  # ten minutes at one reading per 10 s
N_G3 = 5


def iso(ms: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).isoformat()


@dataclass
class Dataset:
    t0: int
    lines: list[str] = field(default_factory=list)
    #: (gateway, device) → [(ts, water_level_cm)]
    water: dict[tuple[str, str], list[tuple[int, float]]] = field(default_factory=dict)

    def water_value(self, gi: int, di: int, i: int) -> float:
        return round(100 + 10 * gi + di + 0.25 * i + (0.1 if i % 3 == 0 else 0.0), 2)


def build(now_ms: int | None = None) -> Dataset:
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    t0 = (now - 40 * 60_000) // 60_000 * 60_000
    ds = Dataset(t0)

    def add(measurement: str, tags: dict[str, str | None], fields: dict[str, float], ts: int) -> None:
        ds.lines.append(line(measurement, tag_set(tags), format_fields(fields), ts))

    for gi, gw in enumerate((G1, G2)):
        for di, dev in enumerate(WATER_DEVICES):
            series = []
            for i in range(N_WATER):
                ts = t0 + i * STEP_MS
                v = ds.water_value(gi, di, i)
                series.append((ts, v))
                add("water_level", {"gateway": gw, "device": dev, "commune": COMMUNES[gw]}, {"water_level_cm": v}, ts)
            ds.water[(gw, dev)] = series
    g3 = []
    for i in range(N_G3):
        ts = t0 + i * STEP_MS + 5
        g3.append((ts, 7.0 + i))
        tags: dict[str, str | None] = {"gateway": G3, "device": "muc-nuoc-9", "commune": COMMUNES[G3]}
        add("water_level", tags, {"water_level_cm": 7.0 + i}, ts)
    ds.water[(G3, "muc-nuoc-9")] = g3
    for i in range(10):
        add("environment", {"gateway": G1, "device": "tram-1", "commune": COMMUNES[G1]},
            {"temperature_c": 25 + i / 10, "humidity_pct": 80.0}, t0 + i * 60_000)
    for gi, gw in enumerate((G1, G2)):
        for k in range(3):
            add("gateway_health", {"gateway": gw, "commune": COMMUNES[gw]},
                {"cpu_temp_c": 50.0 + gi + k, "disk_used_pct": 40.0}, t0 + k * 60_000)
    add("device_health", {"gateway": G1, "device": "loa-1", "commune": COMMUNES[G1]}, {"battery_v": 12.5}, t0 + 1000)
    add("device_health", {"gateway": G2, "device": "loa-7", "commune": COMMUNES[G2]}, {"battery_v": 11.0}, t0 + 1000)
    # A measurement with text only (not something the gateway writes, but InfluxDB may hold it).
    ds.lines.append(f'notes,gateway={G1},device=tram-1 note="cleaned the sensor" {t0}')
    return ds
