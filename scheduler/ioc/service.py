"""What the IOC endpoints ask InfluxDB, and how answers become pages of points.

Paging is by time (keyset), never by offset, so readings that arrive late from a gateway's spool
cannot shift a page boundary and make a client skip or repeat points:

* raw readings come back in time order across every series (one InfluxQL ``LIMIT`` for the whole
  answer); a page ends on a whole instant, so points sharing the last timestamp are never split
  between two pages;
* aggregated readings (``every`` + ``fn``) are buckets aligned on ``from``; a page is a window of
  whole buckets, as many as ``limit`` points hold for the number of series selected (read from the
  tag index), so InfluxDB's answer is bounded whatever the range.

The cursor names the next start time and the request it belongs to (a hash of the parameters).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from scheduler.ioc import influxql as q
from scheduler.ioc.client import InfluxQLClient, Result
from scheduler.ioc.influxql import NS_PER_MS, Filter, QueryParamError
from scheduler.ioc.settings import IocSettings
from scheduler.ioc.units import unit_of

#: Most measurements one ``latest`` request reads (one statement each).
MAX_LATEST_MEASUREMENTS = 64
#: SHOW TAG VALUES statements sent in one request when listing communes.
TAG_BATCH = 200
#: Empty aggregation windows skipped in one request before an empty page is answered.
MAX_EMPTY_WINDOWS = 32
#: One instant (or bucket) holding more points than this is refused rather than read whole.
MAX_INSTANT_POINTS = 1_000_000

#: Column / key names the API itself uses; fields with these names are not served.
RESERVED = frozenset({"time", "gateway", "device", "commune", "measurement"})

KnownGateways = Callable[[], Awaitable[list[dict[str, Any]]]]


@dataclass
class Point:
    time_ns: int
    gateway: str | None
    device: str | None
    commune: str | None
    values: dict[str, Any]
    measurement: str = ""

    def sort_key(self) -> tuple[int, str, str, str]:
        return (self.time_ns, self.gateway or "", self.device or "", self.commune or "")


@dataclass
class Page:
    measurement: str
    fields: list[str]
    points: list[Point]
    next_start_ns: int | None
    start_ms: int
    end_ms: int


@dataclass
class ReadingsRequest:
    measurement: str
    fields: tuple[str, ...]
    flt: Filter
    start_ms: int
    end_ms: int
    every_ms: int | None
    fn: str | None
    limit: int
    #: From a cursor: where this page starts (ns).
    after_ns: int | None = None


def fingerprint(parts: Sequence[Any]) -> str:
    raw = json.dumps(list(parts), separators=(",", ":"), sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def encode_cursor(start_ns: int, start_ms: int, end_ms: int, fp: str) -> str:
    raw = json.dumps({"a": start_ns, "f": start_ms, "t": end_ms, "h": fp}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, fp: str) -> tuple[int, int, int]:
    """(start_ns, from_ms, to_ms) of the next page; refuses a cursor of another request."""
    if len(cursor) > 512:
        raise QueryParamError("cursor", "not a cursor from this API (too long)")
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        a, f, t, h = data["a"], data["f"], data["t"], data["h"]
    except (ValueError, KeyError, TypeError) as exc:
        raise QueryParamError("cursor", "not a cursor from this API") from exc
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (a, f, t)) or not isinstance(h, str):
        raise QueryParamError("cursor", "not a cursor from this API")
    if h != fp:
        raise QueryParamError("cursor", "this cursor belongs to a request with other parameters; repeat them as given")
    if not f * NS_PER_MS <= a <= t * NS_PER_MS:
        raise QueryParamError("cursor", "not a cursor from this API (out of range)")
    return a, f, t


class IocService:
    """The IOC's questions to InfluxDB (and to the scheduler's own registry of gateways)."""

    def __init__(self, settings: IocSettings, known_gateways: KnownGateways | None = None):
        self.settings = settings
        self.influx = InfluxQLClient(settings)
        self.known_gateways = known_gateways
        self._fields: dict[str, dict[str, str]] = {}
        self._fields_at = 0.0
        self._series: dict[tuple[str, Filter], tuple[int, float]] = {}

    async def aclose(self) -> None:
        await self.influx.aclose()

    # ------------------------------------------------------------------ schema

    async def field_keys(self, *, refresh: bool = False) -> dict[str, dict[str, str]]:
        """measurement → {field: type}, cached for ``schema_ttl_s``."""
        now = time.monotonic()
        if refresh or not self._fields or now - self._fields_at > self.settings.schema_ttl_s:
            (res,) = await self.influx.query([q.show_field_keys()])
            out: dict[str, dict[str, str]] = {}
            for s in res.series:
                out[s.name] = {str(row[0]): str(row[1]) for row in s.values}
            self._fields, self._fields_at = out, now
        return self._fields

    async def fields_of(self, measurement: str) -> dict[str, str]:
        keys = await self.field_keys()
        if measurement not in keys and time.monotonic() - self._fields_at > 2.0:
            keys = await self.field_keys(refresh=True)  # a measurement that appeared since
        if measurement not in keys:
            raise LookupError(f"measurement {measurement!r} has no data in InfluxDB")
        return keys[measurement]

    async def measurements(self, flt: Filter) -> list[dict[str, Any]]:
        (res,) = await self.influx.query([q.show_measurements(flt)])
        names = sorted({str(row[0]) for s in res.series for row in s.values})
        keys = await self.field_keys()
        if any(n not in keys for n in names):
            keys = await self.field_keys(refresh=True)
        return [
            {
                "measurement": n,
                "fields": [
                    {"field": f, "type": t, "unit": unit_of(f)} for f, t in sorted(keys.get(n, {}).items())
                ],
            }
            for n in names
        ]

    async def check_fields(self, measurement: str, fields: Sequence[str]) -> tuple[str, ...]:
        """The requested fields (all numeric ones when none is named); unknown names are refused."""
        known = await self.fields_of(measurement)
        if not fields:
            return tuple(sorted(f for f, t in known.items() if t in ("float", "integer") and f not in RESERVED))
        for f in fields:
            if f in RESERVED:
                raise QueryParamError("field", f"{f!r} is a reserved name in this API")
            if f not in known:
                raise QueryParamError(
                    "field", f"{f!r} is not a field of {measurement} (known: {', '.join(sorted(known)) or 'none'})"
                )
            if known[f] not in ("float", "integer"):
                raise QueryParamError("field", f"{f!r} holds {known[f]} values, not numbers")
        return tuple(fields)

    # ------------------------------------------------------------------ readings

    async def readings(self, req: ReadingsRequest) -> Page:
        start_ns = req.after_ns if req.after_ns is not None else req.start_ms * NS_PER_MS
        end_ns = req.end_ms * NS_PER_MS
        if start_ns >= end_ns:
            return Page(req.measurement, list(req.fields), [], None, req.start_ms, req.end_ms)
        sel = q.Select(req.measurement, req.fields, req.flt, req.fn, req.every_ms)
        if req.every_ms is None:
            points, nxt = await self._raw_page(sel, start_ns, end_ns, req.limit)
        else:
            points, nxt = await self._aggregated_page(sel, start_ns, end_ns, req.limit, req.start_ms, req.every_ms)
        if nxt is not None and nxt >= end_ns:
            nxt = None
        return Page(req.measurement, list(req.fields), points, nxt, req.start_ms, req.end_ms)

    def _points(self, res: Result, fields: Sequence[str], measurement: str, fn: str | None = None) -> list[Point]:
        # InfluxDB's JSON writes the float 80.0 as 80; give float fields back as floats (counts as ints).
        types = self._fields.get(measurement, {})
        floats = frozenset() if fn == "count" else frozenset(f for f in fields if types.get(f) == "float")
        out: list[Point] = []
        append = out.append
        for s in res.series:
            col = {c: i for i, c in enumerate(s.columns)}
            ti = col["time"]
            fidx = [(f, col.get(f), f in floats) for f in fields]
            # A tag is a column (raw query) or a series tag (GROUP BY); missing means not written.
            tag_cols = [col.get(t) for t in q.TAGS]
            fixed = [s.tags.get(t) or None for t in q.TAGS]
            for row in s.values:
                gw, dev, com = (row[i] or None if i is not None else fixed[k] for k, i in enumerate(tag_cols))
                values: dict[str, Any] = {}
                for f, i, is_float in fidx:
                    v = row[i] if i is not None else None
                    values[f] = float(v) if is_float and type(v) is int else v
                append(Point(row[ti], gw, dev, com, values, measurement))
        out.sort(key=Point.sort_key)
        return out

    async def _raw_page(self, sel: q.Select, start_ns: int, end_ns: int, limit: int) -> tuple[list[Point], int | None]:
        (res,) = await self.influx.query([sel.raw(start_ns, end_ns, limit + 1)])
        pts = self._points(res, sel.fields, sel.measurement)
        if len(pts) <= limit:
            return pts, None
        last = pts[limit - 1].time_ns
        if pts[limit].time_ns != last:
            return pts[:limit], last + 1
        kept = [p for p in pts[:limit] if p.time_ns < last]
        if kept:
            return kept, last  # the instant `last` may be incomplete here: it starts the next page
        # More than `limit` points share one instant: read that instant whole.
        (res,) = await self.influx.query([sel.raw(last, last + 1, MAX_INSTANT_POINTS + 1)])
        pts = self._points(res, sel.fields, sel.measurement)
        if len(pts) > MAX_INSTANT_POINTS:
            raise QueryParamError("limit", f"more than {MAX_INSTANT_POINTS} points share one timestamp")
        return pts, last + 1

    async def series_count(self, measurement: str, flt: Filter) -> int:
        """How many (gateway, device) series of ``measurement`` the filter selects (from the tag index).

        Asked of the index (SHOW TAG VALUES), not of the data, so it is cheap; cached for the schema TTL.
        """
        key = (measurement, flt)
        hit = self._series.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[1] <= self.settings.schema_ttl_s:
            return hit[0]
        (res,) = await self.influx.query([q.show_tag_values(["gateway"], flt, measurement)])
        gateways = sorted({str(row[1]) for s in res.series for row in s.values})
        total = 0
        for i in range(0, len(gateways), TAG_BATCH):
            chunk = gateways[i : i + TAG_BATCH]
            stmts = [
                q.show_tag_values(["device"], Filter(frozenset([gw]), flt.devices, flt.communes), measurement)
                for gw in chunk
            ]
            for r in await self.influx.query(stmts):
                total += max(1, sum(len(s.values) for s in r.series))  # no device tag: one series per gateway
        if len(self._series) > 1000:
            self._series.clear()
        self._series[key] = (total, now)
        return total

    async def _aggregated_page(
        self, sel: q.Select, start_ns: int, end_ns: int, limit: int, origin_ms: int, every_ms: int
    ) -> tuple[list[Point], int | None]:
        """Whole buckets, as many as ``limit`` points can hold for the number of series selected.

        Each query covers a window of W buckets with W × series ≤ limit, so what InfluxDB sends back
        is bounded whatever the range (at least one bucket: with more series than ``limit``, a page
        is one bucket of every series). Empty windows are skipped.
        """
        step = every_ms * NS_PER_MS
        series = await self.series_count(sel.measurement, sel.flt)
        if series == 0:
            return [], None
        per_window = max(1, limit // series)
        lo = start_ns
        for _ in range(MAX_EMPTY_WINDOWS):
            hi = min(end_ns, lo + per_window * step)
            (res,) = await self.influx.query([sel.aggregated(lo, hi, per_window, origin_ms)])
            pts = self._points(res, sel.fields, sel.measurement, sel.fn)
            if pts or hi >= end_ns:
                return pts, (hi if hi < end_ns else None)
            lo = hi
        return [], lo  # a long stretch without data: an empty page, and the cursor goes on

    # ------------------------------------------------------------------ latest and health

    async def latest(
        self, measurements: Sequence[str], fields: Sequence[str], flt: Filter, start_ms: int, end_ms: int
    ) -> tuple[list[Point], list[str]]:
        """The newest point per series of each measurement, and the union of the field names.

        With ``fields`` given, each measurement is asked for those of them it has (and left out if
        it has none); without, for all its numeric fields.
        """
        keys = await self.field_keys()
        if any(m not in keys for m in measurements):
            keys = await self.field_keys(refresh=True)
        stmts: list[str] = []
        per: list[tuple[str, tuple[str, ...]]] = []
        for m in measurements:
            if m not in keys:
                raise QueryParamError("measurement", f"{m!r} has no data in InfluxDB")
            numeric = sorted(f for f, t in keys[m].items() if t in ("float", "integer") and f not in RESERVED)
            fs = tuple(f for f in fields if f in numeric) if fields else tuple(numeric)
            if fs:
                per.append((m, fs))
                stmts.append(q.latest(m, fs, flt, start_ms * NS_PER_MS, end_ms * NS_PER_MS))
        results = await self.influx.query(stmts)
        points: list[Point] = []
        union: set[str] = set()
        for (m, fs), res in zip(per, results, strict=True):
            union.update(fs)
            points.extend(self._points(res, fs, m))
        points.sort(key=lambda p: (p.measurement, p.gateway or "", p.device or "", p.time_ns))
        return points, sorted(union)

    async def visible_measurements(self, flt: Filter) -> list[str]:
        (res,) = await self.influx.query([q.show_measurements(flt)])
        return sorted({str(row[0]) for s in res.series for row in s.values})

    # ------------------------------------------------------------------ communes and devices

    async def registry(self, allowed: frozenset[str] | None) -> list[dict[str, Any]]:
        if self.known_gateways is None:
            return []
        rows = await self.known_gateways()
        return [g for g in rows if allowed is None or g["id"] in allowed]

    async def communes(self, flt: Filter) -> list[dict[str, Any]]:
        """Gateways (communes) and their devices: the scheduler's registry plus InfluxDB's tags."""
        out: dict[str, dict[str, Any]] = {}

        def entry(gw: str) -> dict[str, Any]:
            if gw not in out:
                out[gw] = {
                    "gateway": gw,
                    "commune": None,
                    "status": None,
                    "last_seen": None,
                    "location": None,
                    "devices": {},
                }
            return out[gw]

        def device(e: dict[str, Any], dev: str) -> dict[str, Any]:
            devs: dict[str, dict[str, Any]] = e["devices"]
            if dev not in devs:
                devs[dev] = {"device": dev, "name": None, "speaker": False, "online": None, "measurements": []}
            return devs[dev]

        for g in await self.registry(flt.gateways):
            if flt.communes and g.get("commune") not in flt.communes:
                continue
            e = entry(g["id"])
            e.update(commune=g.get("commune"), status=g.get("status"), last_seen=g.get("last_seen"))
            for sp in g.get("speakers", []):
                if flt.devices and sp["device"] not in flt.devices:
                    continue
                d = device(e, sp["device"])
                d.update(name=sp.get("name"), speaker=True, online=sp.get("online"))

        (res,) = await self.influx.query([q.show_tag_values(["gateway"], flt)])
        gateways = sorted({str(row[1]) for s in res.series for row in s.values if str(row[0]) == "gateway"})
        for i in range(0, len(gateways), TAG_BATCH):
            chunk = gateways[i : i + TAG_BATCH]
            stmts = [
                q.show_tag_values(["commune", "device"], Filter(frozenset([gw]), flt.devices, flt.communes))
                for gw in chunk
            ]
            for gw, r in zip(chunk, await self.influx.query(stmts), strict=True):
                e = entry(gw)
                for s in r.series:
                    for key, value in s.values:
                        if key == "commune" and e["commune"] is None:
                            e["commune"] = value
                        elif key == "device":
                            d = device(e, str(value))
                            if s.name not in d["measurements"]:
                                d["measurements"].append(s.name)
        result = []
        for gw in sorted(out):
            e = out[gw]
            e["devices"] = [e["devices"][d] for d in sorted(e["devices"])]
            for d in e["devices"]:
                d["measurements"].sort()
            result.append(e)
        return result


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@lru_cache(maxsize=4096)
def _iso_second(s: int) -> str:
    return (_EPOCH + timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%S.")


def iso_ms(ms: int | None) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC with milliseconds (``2026-12-02T03:00:00.000Z``)."""
    if ms is None:
        return None
    s, rest = divmod(ms, 1000)
    return f"{_iso_second(s)}{rest:03d}Z"
