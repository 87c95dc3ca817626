"""Sensor rules evaluated from InfluxDB: thresholds (with duration and hysteresis) and silent sensors.

The scheduler does not receive telemetry over MQTT (the gateways write it to InfluxDB through their
spools), so it asks InfluxDB, every ``fleet.readings_interval_s``, with InfluxQL that 1.x, 2.x (v1
compatibility) and 3.x all answer. docs/alarms.md says why this and not a gateway-side summary.

Every name in a query comes from the config, where it is checked against the field/id patterns,
and is quoted besides (identifiers in double quotes, values in single quotes, backslash-escaped).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from protocol.signing import now_ms
from scheduler.fleet.alarms.engine import AlarmEngine
from scheduler.fleet.alarms.rules import dev_source, threshold_condition, threshold_state
from scheduler.fleet.config import Rules, ThresholdRule, Timing
from scheduler.fleet.state import FleetState

log = logging.getLogger(__name__)

#: Sensor types whose readings are not device telemetry (the Pi's own health).
NOT_SILENT_TYPES = frozenset({"pi_health"})


def ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _any_of(tag: str, values: Iterable[str] | None) -> str:
    vals = list(values or [])
    if not vals:
        return ""
    return " AND (" + " OR ".join(f"{ident(tag)} = {literal(v)}" for v in vals) + ")"


def threshold_query(rule: ThresholdRule, lookback_s: int) -> str:
    return (f"SELECT {ident(rule.field)} FROM {ident(rule.measurement)} WHERE time > now() - {lookback_s}s"
            f"{_any_of('gateway', rule.gateways)}{_any_of('device', rule.devices)} GROUP BY \"gateway\", \"device\"")


def last_point_query(measurement: str, lookback_s: int) -> str:
    return (f"SELECT * FROM {ident(measurement)} WHERE time > now() - {lookback_s}s "
            f"GROUP BY \"gateway\", \"device\" ORDER BY time DESC LIMIT 1")


class InfluxError(Exception):
    pass


class InfluxQL:
    """A minimal InfluxQL reader: ``GET /query?db=…&q=…&epoch=ms``."""

    def __init__(self, url: str, database: str, username: str | None, password: Callable[[], str | None]):
        self.url = url.rstrip("/")
        self.database = database
        self.username = username
        self.password = password
        self._client = httpx.AsyncClient(timeout=30)

    async def query(self, q: str) -> list[dict[str, Any]]:
        """The series of the first statement's result."""
        params = {"db": self.database, "q": q, "epoch": "ms"}
        if self.username:
            params["u"] = self.username
            params["p"] = self.password() or ""
        try:
            resp = await self._client.get(f"{self.url}/query", params=params)
        except httpx.HTTPError as exc:
            raise InfluxError(f"InfluxDB {self.url}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code != 200:
            raise InfluxError(f"InfluxDB {self.url}: HTTP {resp.status_code}: {resp.text[:200]}")
        data = resp.json()
        results = data.get("results") or [{}]
        if "error" in results[0]:
            raise InfluxError(f"InfluxDB {self.url}: {results[0]['error']}")
        series: list[dict[str, Any]] = results[0].get("series") or []
        return series

    async def aclose(self) -> None:
        await self._client.aclose()


class ReadingRules:
    def __init__(self, influx: InfluxQL, state: FleetState, engine: AlarmEngine, rules: Rules, *,
                 interval_s: float):
        self.influx = influx
        self.state = state
        self.engine = engine
        self.rules = rules
        self.interval_s = interval_s
        self.errors = 0
        self.last_error: str | None = None

    async def evaluate(self, now: int | None = None) -> None:
        now = now_ms() if now is None else now
        for rule in self.rules.thresholds:
            try:
                await self._threshold(rule, now)
            except InfluxError as exc:
                self._failed(exc)
        if self.rules.sensor_silent.enabled:
            try:
                await self._silent(now)
            except InfluxError as exc:
                self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        if str(exc) != self.last_error:
            log.warning("fleet: sensor rules could not read InfluxDB: %s", exc)
        self.last_error = str(exc)

    async def _threshold(self, rule: ThresholdRule, now: int) -> None:
        lookback = int(rule.for_s + max(60.0, 3 * self.interval_s)) + 1
        for series in await self.influx.query(threshold_query(rule, lookback)):
            tags = series.get("tags") or {}
            gw, dev = tags.get("gateway"), tags.get("device")
            if not gw or not dev:
                continue
            known = self.state.known_gateways()
            if known is not None and gw not in known:
                continue
            points = [(int(v[0]), float(v[1])) for v in series.get("values") or []
                      if len(v) > 1 and isinstance(v[1], int | float) and not isinstance(v[1], bool)]
            if not points:
                continue  # no data is not "back to normal": the silent-sensor rule speaks for it
            points.sort()
            c = threshold_condition(rule, gw, dev, threshold_state(rule, points), now)
            self.engine.observe(dev_source(gw, dev), c.type, gateway=gw, device=dev, timing=c.timing,
                                holds=c.holds, severity=c.severity, message=c.message, details=c.details, at=now)

    async def _silent(self, now: int) -> None:
        rule = self.rules.sensor_silent
        lookback = int(max(3 * rule.after_s, 3600))
        last: dict[tuple[str, str], int] = {}
        for m in rule.measurements:
            for series in await self.influx.query(last_point_query(m, lookback)):
                tags = series.get("tags") or {}
                values = series.get("values") or []
                if tags.get("gateway") and tags.get("device") and values:
                    key = (str(tags["gateway"]), str(tags["device"]))
                    last[key] = max(last.get(key, 0), int(values[0][0]))
        timing = Timing(after_s=0, clear_after_s=0, severity=rule.severity)
        for gw, view in self.state.gateways.items():
            if self.state.gateway_status(view) != "online" or not view.listed:
                continue  # readings of an offline gateway wait in its spool; its own alarm says so
            for dev in view.devices.values():
                if dev.kind != "sensor" or dev.type in NOT_SILENT_TYPES:
                    continue
                seen = last.get((gw, dev.device))
                silent = seen is None or now - seen > rule.after_s * 1000
                ago = f"none in the last {lookback / 3600:.0f} h" if seen is None else \
                    f"the last {(now - seen) / 1000:.0f} s ago"
                self.engine.observe(dev_source(gw, dev.device), "sensor_silent", gateway=gw, device=dev.device,
                                    timing=timing, holds=silent, severity=rule.severity,
                                    message=f"sensor {dev.device} of {view.commune or gw} sends no readings "
                                            f"({ago})", details={"last_reading": seen}, at=now)

    async def run(self) -> None:
        import asyncio

        while True:
            try:
                await self.evaluate()
            except Exception:
                log.exception("fleet: sensor rules failed; trying again")
            await asyncio.sleep(self.interval_s)
