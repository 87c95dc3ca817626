"""A commune's sensor readings for its page: the newest value of each field and the last 24 h as
half-hour means, read through the IOC's service (scheduler/ioc/service.py), which already quotes
every name, bounds every answer and knows the units. Nothing here builds InfluxQL.

InfluxDB unreachable or not configured is a state of the page ("readings unavailable"), never an
error page: the technician still sees the speakers and alarms.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from scheduler.ioc.client import InfluxError
from scheduler.ioc.influxql import Filter, QueryParamError
from scheduler.ioc.service import ReadingsRequest
from scheduler.ioc.units import unit_of

log = logging.getLogger(__name__)

WINDOW_MS = 24 * 3600 * 1000
BUCKET_MS = 30 * 60 * 1000
#: Charts on one page at most (each is one small SVG; the page stays light on 4G).
MAX_CHARTS = 12
#: Measurements read for one commune at most.
MAX_MEASUREMENTS = 16
#: Points one aggregated answer may hold (48 buckets × this many series).
MAX_POINTS = 4800


@dataclass
class Latest:
    device: str
    measurement: str
    field: str
    value: float | int | None
    unit: str | None
    at_ms: int


@dataclass
class Chart:
    device: str
    measurement: str
    field: str
    unit: str | None
    points: list[tuple[int, float]]

    @property
    def label(self) -> str:
        return f"{self.device} · {self.field}"


@dataclass
class CommuneReadings:
    start_ms: int
    end_ms: int
    configured: bool = True
    error: str | None = None
    latest: list[Latest] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)


async def commune_readings(service: Any, gateway: str, devices: list[str], now: int) -> CommuneReadings:
    """Readings of ``gateway``'s devices (``devices`` first; other series of the gateway after them)."""
    out = CommuneReadings(start_ms=now - WINDOW_MS, end_ms=now)
    if service is None:
        out.configured = False
        return out
    flt = Filter(gateways=frozenset([gateway]))
    try:
        measurements = (await service.visible_measurements(flt))[:MAX_MEASUREMENTS]
        if not measurements:
            return out
        points, _ = await service.latest(measurements, [], flt, out.start_ms, out.end_ms + 1)
        for p in points:
            for name, value in p.values.items():
                if value is not None and p.device:
                    out.latest.append(Latest(p.device, p.measurement, name, value, unit_of(name), p.time_ns // 10**6))
        order = {d: i for i, d in enumerate(devices)}
        out.latest.sort(key=lambda r: (order.get(r.device, len(order)), r.device, r.measurement, r.field))
        for m in measurements:
            if len(out.charts) >= MAX_CHARTS:
                break
            fields = await service.check_fields(m, [])
            if not fields:
                continue
            page = await service.readings(ReadingsRequest(m, fields, flt, out.start_ms, out.end_ms, BUCKET_MS,
                                                          "mean", MAX_POINTS))
            series: dict[tuple[str, str], list[tuple[int, float]]] = {}
            for p in page.points:
                for name, value in p.values.items():
                    if p.device and isinstance(value, int | float) and not isinstance(value, bool):
                        series.setdefault((p.device, name), []).append((p.time_ns // 10**6, float(value)))
            for (dev, name), pts in sorted(series.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0])):
                if len(out.charts) < MAX_CHARTS:
                    out.charts.append(Chart(dev, m, name, unit_of(name), sorted(pts)))
    except (InfluxError, QueryParamError, LookupError) as exc:
        log.warning("commune page of %s: readings unavailable: %s", gateway, exc)
        out.error = str(exc)[:300]
    return out
