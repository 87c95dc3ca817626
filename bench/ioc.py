"""Benchmark: the IOC's 5-minute pull of one district through /ioc/v1, against a real InfluxDB 1.6.7.

One district: 20 communes (gateways), 1,000 sensors across five measurements (water level, rain,
environment, air quality, power), each sensor reporting every 10-60 s (fixed per sensor, seeded).
``--hours`` of history are written first (v1 line protocol, ms precision), so the 5-minute window
is read out of a database that holds more than just it.

Measured, through the real FastAPI router over HTTP (uvicorn, httpx), in the same run:
  * the pull: one ``GET /ioc/v1/readings`` per measurement for the last 5 minutes of the whole
    district (following ``next_cursor`` if a page fills), one after the other — the figure the
    target (< 1 s) is about; also the same five requests in parallel;
  * the same pull as 5-minute means (``every=5m&fn=mean``: one value per sensor);
  * ``GET /ioc/v1/latest`` for the whole district;
  * the naive baseline: one request per sensor (1,000 requests, one after the other), as an
    integrator who loops over the device list would write it.
Every pull is checked: the points returned are exactly the points written in the window.

Usage:  python bench/ioc.py [--sensors 1000] [--gateways 20] [--hours 6] [--runs 5]
Prints figures and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from gateway.telemetry.lineproto import format_fields, line, tag_set  # noqa: E402
from loaxa.servers import InfluxDB1, free_port  # noqa: E402
from scheduler.ioc import IocApi, IocSettings  # noqa: E402

KINDS: dict[str, tuple[str, ...]] = {
    "water_level": ("water_level_cm",),
    "rain": ("rain_mm", "rain_rate_mm_h"),
    "environment": ("temperature_c", "humidity_pct", "pressure_hpa"),
    "air_quality": ("pm2_5_ugm3", "pm10_ugm3"),
    "power": ("mains_v", "battery_v"),
}
WINDOW_MS = 5 * 60_000


@dataclass
class Sensor:
    gateway: str
    device: str
    commune: str
    measurement: str
    interval_ms: int
    phase_ms: int


class AllAreas:
    def gateways(self, perm: str) -> frozenset[str] | None:
        return None


def all_areas() -> AllAreas:
    return AllAreas()


def district(sensors: int, gateways: int, seed: int = 7) -> list[Sensor]:
    rng = random.Random(seed)
    kinds = list(KINDS)
    out = []
    for i in range(sensors):
        g = i % gateways
        m = kinds[i % len(kinds)]
        out.append(
            Sensor(
                gateway=f"xa-{g:02d}",
                device=f"{m.replace('_', '-')}-{i:04d}",
                commune=f"Xã Số {g}",
                measurement=m,
                interval_ms=rng.choice((10, 15, 20, 30, 45, 60)) * 1000,
                phase_ms=rng.randrange(0, 60_000),
            )
        )
    return out


def readings(sensors: list[Sensor], start_ms: int, end_ms: int) -> Iterator[tuple[Sensor, int]]:
    for s in sensors:
        t = start_ms + s.phase_ms % s.interval_ms
        while t < end_ms:
            yield s, t
            t += s.interval_ms


def write_history(influx: InfluxDB1, sensors: list[Sensor], start_ms: int, end_ms: int) -> int:
    url = f"{influx.url}/write?" + urllib.parse.urlencode({"db": influx.database, "precision": "ms"})
    rng = random.Random(1)
    batch: list[str] = []
    n = 0

    def flush() -> None:
        req = urllib.request.Request(url, data="\n".join(batch).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=120) as resp:
            assert resp.status == 204
        batch.clear()

    for s, t in readings(sensors, start_ms, end_ms):
        fields = {f: round(rng.uniform(0, 200), 2) for f in KINDS[s.measurement]}
        tags = tag_set({"gateway": s.gateway, "device": s.device, "commune": s.commune})
        batch.append(line(s.measurement, tags, format_fields(fields), t))
        n += 1
        if len(batch) >= 20_000:
            flush()
    if batch:
        flush()
    return n


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


async def pull_measurement(http: httpx.AsyncClient, m: str, frm: str, to: str, **extra: str) -> tuple[int, int]:
    """(points, requests) for one measurement of the whole district, following cursors."""
    params: dict[str, Any] = {"measurement": m, "from": frm, "to": to, "limit": 50_000, **extra}
    points = requests = 0
    while True:
        r = await http.get("/ioc/v1/readings", params=params)
        requests += 1
        r.raise_for_status()
        body = r.json()
        points += body["count"]
        if not body["next_cursor"]:
            return points, requests
        params["cursor"] = body["next_cursor"]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    import uvicorn

    sensors = district(args.sensors, args.gateways)
    with tempfile.TemporaryDirectory(prefix="loaxa-bench-ioc-") as tmp:
        influx = InfluxDB1(Path(tmp) / "influxdb").start()
        try:
            end_ms = time.time_ns() // 1_000_000 // 1000 * 1000
            start_ms = end_ms - int(args.hours * 3_600_000)
            t = time.perf_counter()
            written = await asyncio.to_thread(write_history, influx, sensors, start_ms, end_ms)
            write_s = time.perf_counter() - t
            expected = sum(1 for _ in readings(sensors, start_ms, end_ms) if _[1] >= end_ms - WINDOW_MS)
            print(f"district: {args.gateways} gateways, {len(sensors)} sensors, {len(KINDS)} measurements; "
                  f"{written:,} points of {args.hours:g} h history written in {write_s:.1f} s")
            print(f"the last 5 minutes hold {expected:,} points")

            api = IocApi(IocSettings(url=influx.url, database=influx.database), all_areas)
            app = FastAPI()
            app.include_router(api.router)
            port = free_port()
            server = uvicorn.Server(
                uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", access_log=False)
            )
            serve = asyncio.create_task(server.serve())
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
                await asyncio.sleep(0.05)
            frm, to = iso(end_ms - WINDOW_MS), iso(end_ms)
            try:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
                    seq: list[float] = []
                    par: list[float] = []
                    requests = 0
                    for _ in range(args.runs):
                        t = time.perf_counter()
                        got = [await pull_measurement(http, m, frm, to) for m in KINDS]
                        seq.append(time.perf_counter() - t)
                        total = sum(p for p, _ in got)
                        requests = sum(r for _, r in got)
                        assert total == expected, f"pull returned {total} points, {expected} were written"
                        t = time.perf_counter()
                        got = await asyncio.gather(*(pull_measurement(http, m, frm, to) for m in KINDS))
                        par.append(time.perf_counter() - t)
                        assert sum(p for p, _ in got) == expected
                    agg: list[float] = []
                    for _ in range(args.runs):
                        t = time.perf_counter()
                        got = [await pull_measurement(http, m, frm, to, every="5m", fn="mean") for m in KINDS]
                        agg.append(time.perf_counter() - t)
                        assert sum(p for p, _ in got) == len(sensors)  # one 5-minute mean per sensor
                    t = time.perf_counter()
                    r = await http.get("/ioc/v1/latest", params={"from": iso(end_ms - 3_600_000), "to": to})
                    latest_s = time.perf_counter() - t
                    assert r.status_code == 200 and r.json()["count"] == len(sensors), r.text[:300]

                    t = time.perf_counter()
                    naive_points = 0
                    for s in sensors:
                        r = await http.get("/ioc/v1/readings", params={
                            "measurement": s.measurement, "gateway": s.gateway, "device": s.device,
                            "from": frm, "to": to,
                        })
                        r.raise_for_status()
                        naive_points += r.json()["count"]
                    naive_s = time.perf_counter() - t
                    assert naive_points == expected
            finally:
                await api.aclose()
                server.should_exit = True
                with contextlib.suppress(Exception):
                    await serve
        finally:
            influx.stop()

    pull = statistics.median(seq)
    res = {
        "bench": "ioc",
        "gateways": args.gateways,
        "sensors": len(sensors),
        "history_points": written,
        "window_points": expected,
        "pull_requests": requests,
        "pull_s_median": round(pull, 3),
        "pull_s_first": round(seq[0], 3),
        "pull_s_best": round(min(seq), 3),
        "pull_parallel_s_median": round(statistics.median(par), 3),
        "pull_mean_5m_s_median": round(statistics.median(agg), 3),
        "latest_s": round(latest_s, 3),
        "naive_s": round(naive_s, 3),
        "naive_over_pull": round(naive_s / pull, 1),
        "target_s": 1.0,
        "target_met": pull < 1.0,
    }
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sensors", type=int, default=1000)
    p.add_argument("--gateways", type=int, default=20)
    p.add_argument("--hours", type=float, default=6.0, help="history written before the pull")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    r = asyncio.run(main_async(args))
    print(f"5-minute district pull ({r['window_points']:,} points, {r['pull_requests']} requests, one after "
          f"the other): median {r['pull_s_median']} s, first {r['pull_s_first']} s, best {r['pull_s_best']} s "
          f"(target < 1 s)")
    print(f"same five requests in parallel:        median {r['pull_parallel_s_median']} s")
    print(f"5-minute means instead (every=5m&fn=mean): median {r['pull_mean_5m_s_median']} s")
    print(f"latest reading of all {r['sensors']} sensors: {r['latest_s']} s")
    print(f"naive baseline, one request per sensor: {r['naive_s']} s ({r['naive_over_pull']}x the pull)")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
