"""``/ioc/v1``: the IOC's read-only HTTP API over InfluxQL (docs/ioc-api.md).

Every endpoint asks the caller's principal which gateways (areas) it may read for ``ioc:read``
and filters every statement to those; naming a gateway outside them is a 403 that names it.

(No ``from __future__ import annotations`` here: FastAPI must see the real ``Depends`` object of
the principal dependency handed to :func:`make_router`, which lives in a closure.)
"""

import csv
import io
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry

from scheduler.ioc import influxql as q
from scheduler.ioc.client import InfluxError
from scheduler.ioc.influxql import Filter, QueryParamError
from scheduler.ioc.metrics import IocMetrics
from scheduler.ioc.service import (
    MAX_LATEST_MEASUREMENTS,
    RESERVED,
    IocService,
    KnownGateways,
    Point,
    ReadingsRequest,
    decode_cursor,
    encode_cursor,
    fingerprint,
    iso_ms,
)
from scheduler.ioc.settings import IocSettings
from scheduler.ioc.units import unit_of

PERMISSION = "ioc:read"
PREFIX = "/ioc/v1"
#: Latest time accepted (InfluxDB stores int64 nanoseconds: up to the year 2262).
MAX_TIME_MS = 9_000_000_000_000
#: Most values in one list parameter (gateway, device, field, commune).
MAX_LIST = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: A "+hh:mm" offset whose "+" arrived as a space (an unencoded "+" in a query string).
_SPACE_OFFSET_RE = re.compile(r"^(.*T[0-9:.]+) ([0-9]{2}(?::?[0-9]{2})?)$")


class AreaPrincipal(Protocol):
    """What the IOC routes need from the caller: the gateways it may read (None: all)."""

    def gateways(self, perm: str) -> frozenset[str] | None: ...


Format = Literal["json", "csv"]


def _query_names(d: Dependant) -> set[str]:
    names = {p.alias for p in d.query_params}
    for sub in d.dependencies:
        names |= _query_names(sub)
    return names


def refuse_unknown_params(request: Request) -> None:
    """A misspelt parameter (``gatway=``) must not silently widen the answer: refuse it (422)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = _query_names(route.dependant)
    for name in request.query_params:
        if name not in known:
            msg = f"unknown parameter; this endpoint takes {', '.join(sorted(known)) or 'none'}"
            raise HTTPException(422, [{"loc": ["query", name[:64]], "msg": msg, "type": "value_error"}])


def _param_error(exc: QueryParamError) -> HTTPException:
    return HTTPException(422, [{"loc": ["query", exc.param], "msg": exc.message, "type": "value_error"}])


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_time(value: str | None, param: str, default_ms: int) -> int:
    """ISO 8601 with an offset (``2026-12-02T10:00:00+07:00``, ``…Z``) → epoch ms."""
    if value is None or value == "":
        return default_ms
    text = value.strip()
    m = _SPACE_OFFSET_RE.match(text)
    if m:
        text = f"{m.group(1)}+{m.group(2)}"
    if len(text) > 40:
        raise QueryParamError(param, "not an ISO 8601 time")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise QueryParamError(param, f"{value[:40]!r} is not an ISO 8601 time like 2026-12-02T10:00:00+07:00") from None
    if dt.tzinfo is None:
        raise QueryParamError(param, "give the time with its offset (+07:00 or Z), e.g. 2026-12-02T10:00:00+07:00")
    epoch_ms = (dt - _EPOCH) // timedelta(milliseconds=1)
    if not 0 <= epoch_ms <= MAX_TIME_MS:
        raise QueryParamError(param, "out of range (1970 to 2255)")
    return epoch_ms


def _split(
    values: Sequence[str], param: str, check: Callable[[str, str], str], *, commas: bool = True
) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        parts = v.split(",") if commas else [v]
        for part in parts:
            part = part.strip() if commas else part
            if part:
                out.append(check(part, param))
    if len(out) > MAX_LIST:
        raise QueryParamError(param, f"at most {MAX_LIST} values")
    return tuple(dict.fromkeys(out))


def _num(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([_num(x) if not isinstance(x, str) else x for x in r])
    return buf.getvalue()


def _point_json(p: Point, fields: Sequence[str], *, measurement: bool = False) -> dict[str, Any]:
    d: dict[str, Any] = {"time": iso_ms(p.time_ns // 1_000_000)}
    if measurement:
        d["measurement"] = p.measurement
    d.update(gateway=p.gateway, device=p.device, commune=p.commune)
    for f in fields:
        if f in p.values:
            d[f] = p.values[f]
    return d


#: ``await alarms(gateways or None for all, status)`` → alarm dicts (scheduler/fleet/store.py alarm_dict).
AlarmSource = Callable[[frozenset[str] | None, str | None], Awaitable[list[dict[str, Any]]]]


class IocApi:
    """The router and the service behind it (``aclose`` releases InfluxDB connections)."""

    def __init__(
        self,
        settings: IocSettings,
        principal_dep: Callable[..., Any],
        *,
        known_gateways: KnownGateways | None = None,
        registry: CollectorRegistry | None = None,
        alarms: AlarmSource | None = None,
    ):
        self.settings = settings
        self.alarms = alarms
        self.service = IocService(settings, known_gateways)
        self.metrics = IocMetrics(registry, self.service.influx) if registry is not None else None
        self.router = self._build(principal_dep)

    async def aclose(self) -> None:
        await self.service.aclose()

    # ------------------------------------------------------------------ shared parsing

    def _filter(
        self,
        principal: AreaPrincipal,
        gateway: Sequence[str],
        device: Sequence[str] = (),
        commune: Sequence[str] = (),
    ) -> Filter:
        allowed = principal.gateways(PERMISSION)
        requested = _split(gateway, "gateway", q.check_id)
        if allowed is not None:
            outside = [g for g in requested if g not in allowed]
            if outside:
                raise HTTPException(403, f"gateway {outside[0]} is outside the areas of this token (ioc:read)")
        gws = frozenset(requested) if requested else allowed
        return Filter(
            gateways=gws,
            devices=_split(device, "device", q.check_id),
            communes=_split(commune, "commune", q.check_commune, commas=False),
        )

    def _range(self, from_: str | None, to: str | None, default_span_ms: int) -> tuple[int, int]:
        now = _now_ms()
        end = parse_time(to, "to", now)
        start = parse_time(from_, "from", end - default_span_ms)
        if end <= start:
            raise QueryParamError("to", "must be later than from")
        if end - start > self.settings.max_range_ms:
            days = self.settings.max_range_ms / 86_400_000
            raise QueryParamError("from", f"from..to spans more than the limit of {days:g} days; ask in parts")
        return start, end

    async def _fields(self, measurement: str, field: Sequence[str]) -> tuple[str, ...]:
        fields = await self.service.check_fields(measurement, _split(field, "field", q.check_name))
        if not fields:
            raise QueryParamError("measurement", f"{measurement} has no numeric fields")
        return fields

    # ------------------------------------------------------------------ routes

    def _build(self, principal_dep: Callable[..., Any]) -> APIRouter:
        route_class = self.metrics.route_class() if self.metrics is not None else APIRoute
        router = APIRouter(
            prefix=PREFIX, tags=["ioc"], route_class=route_class, dependencies=[Depends(refuse_unknown_params)]
        )
        Principal = Annotated[AreaPrincipal, Depends(principal_dep)]
        GatewayQ = Annotated[list[str], Query(description="gateway id(s), repeated or comma-separated")]
        DeviceQ = Annotated[list[str], Query(description="device id(s), repeated or comma-separated")]
        CommuneQ = Annotated[list[str], Query(description="commune name(s) as tagged, repeated")]
        FieldQ = Annotated[list[str], Query(description="field name(s); default: every numeric field")]
        FromQ = Annotated[str | None, Query(alias="from", description="ISO 8601 with offset")]
        ToQ = Annotated[str | None, Query(description="ISO 8601 with offset; default now")]
        FormatQ = Annotated[Format, Query(description="json (default) or csv")]
        service = self.service
        settings = self.settings

        async def guard(coro: Any) -> Any:
            try:
                return await coro
            except QueryParamError as exc:
                raise _param_error(exc) from None
            except LookupError as exc:
                raise HTTPException(404, str(exc).strip("'\"")) from None
            except InfluxError as exc:
                raise HTTPException(502, str(exc)) from None

        @router.get("/communes", summary="Communes (gateways) and their devices")
        async def communes(
            principal: Principal,
            gateway: GatewayQ = [],  # noqa: B006 - FastAPI copies defaults
            commune: CommuneQ = [],  # noqa: B006
            device: DeviceQ = [],  # noqa: B006
        ) -> JSONResponse:
            async def run() -> Any:
                flt = self._filter(principal, gateway, device, commune)
                items = await service.communes(flt)
                for e in items:
                    e["last_seen"] = iso_ms(e["last_seen"])
                return {"count": len(items), "communes": items}

            return JSONResponse(await guard(run()))

        @router.get("/measurements", summary="Measurements and their fields, with units")
        async def measurements(principal: Principal, gateway: GatewayQ = []) -> JSONResponse:  # noqa: B006
            async def run() -> Any:
                flt = self._filter(principal, gateway)
                items = await service.measurements(flt)
                for m in items:
                    m["fields"] = [f for f in m["fields"] if f["field"] not in RESERVED]
                return {"measurements": items}

            return JSONResponse(await guard(run()))

        @router.get("/readings", summary="Readings of one measurement, raw or aggregated, paginated")
        async def readings(
            request: Request,
            principal: Principal,
            measurement: Annotated[str, Query(description="e.g. water_level")],
            gateway: GatewayQ = [],  # noqa: B006
            device: DeviceQ = [],  # noqa: B006
            commune: CommuneQ = [],  # noqa: B006
            field: FieldQ = [],  # noqa: B006
            from_: FromQ = None,
            to: ToQ = None,
            every: Annotated[str | None, Query(description="bucket: 30s, 5m, 1h, 1d (needs fn)")] = None,
            fn: Annotated[Literal["mean", "min", "max", "last", "count"] | None, Query()] = None,
            limit: Annotated[int | None, Query(ge=1, description="points per page")] = None,
            cursor: Annotated[str | None, Query(max_length=512, description="next_cursor of the last page")] = None,
            format: FormatQ = "json",
        ) -> Response:
            async def run() -> Any:
                m = q.check_name(measurement, "measurement")
                flt = self._filter(principal, gateway, device, commune)
                n = settings.default_limit if limit is None else limit
                if n > settings.max_points:
                    raise QueryParamError("limit", f"at most {settings.max_points} points per page")
                every_ms = q.parse_every(every) if every is not None else None
                if (every_ms is None) != (fn is None):
                    raise QueryParamError("every" if every_ms is None else "fn", "every and fn go together")
                fp = fingerprint(
                    [m, _split(field, "field", q.check_name), sorted(_split(gateway, "gateway", q.check_id)),
                     flt.devices, flt.communes, from_, to, every_ms, fn]
                )
                after: int | None = None
                if cursor:
                    after, start, end = decode_cursor(cursor, fp)
                    if end - start > settings.max_range_ms:  # a cursor made by hand
                        raise QueryParamError("cursor", "not a cursor from this API (range too long)")
                else:
                    start, end = self._range(from_, to, 3_600_000)
                if every_ms is not None and (end - start) // every_ms > settings.max_buckets:
                    raise QueryParamError(
                        "every", f"from..to holds more than {settings.max_buckets} buckets of {every}; use a longer one"
                    )
                fields = await self._fields(m, field)
                page = await service.readings(
                    ReadingsRequest(m, fields, flt, start, end, every_ms, fn, n, after_ns=after)
                )
                nxt = encode_cursor(page.next_start_ns, start, end, fp) if page.next_start_ns is not None else None
                return page, nxt

            page, nxt = await guard(run())
            headers = {"X-Next-Cursor": nxt} if nxt else {}
            if format == "csv":
                header = ["time", "gateway", "device", "commune", *page.fields]
                rows = [
                    [iso_ms(p.time_ns // 1_000_000), p.gateway or "", p.device or "", p.commune or "",
                     *(p.values.get(f) for f in page.fields)]
                    for p in page.points
                ]
                return Response(_csv(header, rows), media_type="text/csv; charset=utf-8", headers=headers)
            body = {
                "measurement": page.measurement,
                "fields": [{"field": f, "unit": unit_of(f)} for f in page.fields],
                "from": iso_ms(page.start_ms),
                "to": iso_ms(page.end_ms),
                "every": every,
                "fn": fn,
                "count": len(page.points),
                "next_cursor": nxt,
                "next": str(request.url.include_query_params(cursor=nxt)) if nxt else None,
                "points": [_point_json(p, page.fields) for p in page.points],
            }
            return JSONResponse(body, headers=headers)

        @router.get("/latest", summary="The newest reading of each device (per measurement)")
        async def latest(
            principal: Principal,
            measurement: Annotated[list[str], Query(description="default: every measurement")] = [],  # noqa: B006
            gateway: GatewayQ = [],  # noqa: B006
            device: DeviceQ = [],  # noqa: B006
            commune: CommuneQ = [],  # noqa: B006
            field: FieldQ = [],  # noqa: B006
            from_: FromQ = None,
            to: ToQ = None,
            format: FormatQ = "json",
        ) -> Response:
            async def run() -> Any:
                flt = self._filter(principal, gateway, device, commune)
                start, end = self._range(from_, to, 86_400_000)
                ms = list(_split(measurement, "measurement", q.check_name))
                if not ms:
                    ms = await service.visible_measurements(flt)
                if len(ms) > MAX_LATEST_MEASUREMENTS:
                    raise QueryParamError("measurement", f"at most {MAX_LATEST_MEASUREMENTS} measurements at once")
                names = _split(field, "field", q.check_name)
                points, all_fields = await service.latest(ms, names, flt, start, end)
                all_fields = [f for f in all_fields if f not in RESERVED]
                return start, end, points, all_fields

            start, end, points, fields = await guard(run())
            if format == "csv":
                header = ["time", "measurement", "gateway", "device", "commune", *fields]
                rows = [
                    [iso_ms(p.time_ns // 1_000_000), p.measurement, p.gateway or "", p.device or "", p.commune or "",
                     *(p.values.get(f) for f in fields)]
                    for p in points
                ]
                return Response(_csv(header, rows), media_type="text/csv; charset=utf-8")
            return JSONResponse(
                {
                    "from": iso_ms(start),
                    "to": iso_ms(end),
                    "count": len(points),
                    "units": {f: unit_of(f) for f in fields},
                    "points": [_point_json(p, fields, measurement=True) for p in points],
                }
            )

        @router.get("/health", summary="Gateway and device health (newest report of each)")
        async def health(
            principal: Principal,
            gateway: GatewayQ = [],  # noqa: B006
            device: DeviceQ = [],  # noqa: B006
            from_: FromQ = None,
            to: ToQ = None,
        ) -> JSONResponse:
            async def run() -> Any:
                flt = self._filter(principal, gateway, device)
                start, end = self._range(from_, to, 86_400_000)
                known = await service.field_keys(refresh=True)
                gws: dict[str, dict[str, Any]] = {}
                for g in await service.registry(flt.gateways):
                    gws[g["id"]] = {
                        "gateway": g["id"],
                        "commune": g.get("commune"),
                        "status": g.get("status"),
                        "last_seen": iso_ms(g.get("last_seen")),
                        "health": None,
                    }
                if "gateway_health" in known:
                    gflt = Filter(flt.gateways, (), flt.communes)  # gateway_health has no device tag
                    pts, fs = await service.latest(["gateway_health"], (), gflt, start, end)
                    for p in pts:
                        if p.gateway is None:
                            continue
                        e = gws.setdefault(
                            p.gateway,
                            {"gateway": p.gateway, "commune": p.commune, "status": None, "last_seen": None},
                        )
                        e["health"] = {"time": iso_ms(p.time_ns // 1_000_000), **p.values}
                devices: list[dict[str, Any]] = []
                if "device_health" in known:
                    pts, fs = await service.latest(["device_health"], (), flt, start, end)
                    devices = [_point_json(p, fs) for p in pts]
                return {
                    "from": iso_ms(start),
                    "to": iso_ms(end),
                    "gateways": [gws[k] for k in sorted(gws)],
                    "devices": devices,
                }

            return JSONResponse(await guard(run()))

        @router.get("/alarms", summary="Alarms of your areas (active by default), newest first")
        async def alarms(
            principal: Principal,
            gateway: GatewayQ = [],  # noqa: B006
            status: Annotated[Literal["active", "cleared", "all"], Query()] = "active",
        ) -> JSONResponse:
            flt = self._filter(principal, gateway)
            if self.alarms is None:
                return JSONResponse({"detail": "this scheduler runs without its fleet (no alarms)"}, status_code=501)
            wanted = frozenset(flt.gateways) if flt.gateways else principal.gateways(PERMISSION)
            rows = await self.alarms(wanted, None if status == "all" else status)
            keys = ("id", "type", "severity", "state", "status", "gateway", "device", "message", "count",
                    "acknowledged")
            return JSONResponse({"alarms": [
                {**{k: a[k] for k in keys}, "first_seen": iso_ms(a["first_seen"]), "last_seen": iso_ms(a["last_seen"]),
                 "cleared_at": iso_ms(a["cleared_at"])} for a in rows]})

        return router


def make_router(
    settings: IocSettings, principal_dep: Callable[..., Any], *, known_gateways: KnownGateways | None = None
) -> APIRouter:
    """The ``/ioc/v1`` router; ``principal_dep`` is a FastAPI dependency returning an :class:`AreaPrincipal`."""
    return IocApi(settings, principal_dep, known_gateways=known_gateways).router
