"""The fleet's HTTP API: ``/api/fleet/…`` (state and remote actions), ``/api/alarms``, ``/api/silences``.

Every route declares its permission through ``require`` (``fleet:read`` to look, ``device:control``
to act, acknowledge, clear or silence) and checks the gateway it touches against the caller's areas;
lists show only the caller's areas. Every action is audited (who, what, on which device, and the
outcome). ``require`` and ``audit`` come from the access package (scheduler/access/deps.py) and are
passed in, so this module does not depend on how callers authenticate.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route annotations at definition
# time, and the permission dependencies are built inside make_router.
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.ids import ID_PATTERN
from protocol.models import SOURCE_PATTERN
from protocol.signing import now_ms
from scheduler.fleet.actions import ActionError
from scheduler.fleet.alarms.lifecycle import LifecycleError
from scheduler.fleet.service import Fleet
from scheduler.fleet.store import alarm_dict

FLEET_READ = "fleet:read"
DEVICE_CONTROL = "device:control"
#: The longest maintenance silence one request may set.
MAX_SILENCE_S = 30 * 24 * 3600


class Caller(Protocol):
    """What the routes need of the caller (scheduler.access.principal.Principal has it)."""

    @property
    def name(self) -> str: ...

    def can(self, perm: str, gateway: str | None = None) -> bool: ...

    def gateways(self, perm: str) -> frozenset[str] | None: ...


Require = Callable[[str], Callable[..., Awaitable[Any]]]
Audit = Callable[[Any, Request, str, str | None, dict[str, Any]], Awaitable[None]]

GwPath = Annotated[str, PathParam(pattern=ID_PATTERN, description="gateway id")]
DevPath = Annotated[str, PathParam(pattern=ID_PATTERN, description="device id")]


class SetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    volume: int | None = Field(default=None, ge=0, le=100)
    power: bool | None = None
    source: str | None = Field(default=None, pattern=SOURCE_PATTERN, description="e.g. stream, line, fm")
    devices: list[Annotated[str, Field(pattern=ID_PATTERN)]] | None = Field(
        default=None, max_length=500, description="gateway-wide set only: these devices (default: all speakers)")

    @model_validator(mode="after")
    def _something(self) -> "SetIn":
        if self.volume is None and self.power is None and self.source is None:
            raise ValueError("give at least one of volume, power, source")
        return self


class RestartIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=200)


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str | None = Field(default=None, max_length=2000)


class SilenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gateway: str = Field(pattern=ID_PATTERN)
    device: str | None = Field(default=None, pattern=ID_PATTERN, description="default: the gateway and all its devices")
    types: list[Annotated[str, Field(pattern=r"^[a-z0-9_]{1,64}$")]] | None = Field(default=None, max_length=50)
    duration_s: int | None = Field(default=None, ge=60, le=MAX_SILENCE_S, description="from now")
    ends_at: int | None = Field(default=None, ge=0, description="epoch ms (instead of duration_s)")
    reason: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _end(self) -> "SilenceIn":
        if (self.duration_s is None) == (self.ends_at is None):
            raise ValueError("give exactly one of duration_s and ends_at")
        return self


def make_router(fleet: Fleet, require: Require, audit: Audit) -> APIRouter:
    router = APIRouter(tags=["fleet"])
    state, actions, engine, store = fleet.state, fleet.actions, fleet.engine, fleet.store
    astore = fleet.astore
    Reader = Annotated[Any, Depends(require(FLEET_READ))]
    Controller = Annotated[Any, Depends(require(DEVICE_CONTROL))]

    def area(p: Caller, perm: str, gw: str) -> None:
        if not p.can(perm, gw):
            raise HTTPException(403, f"{p.name} may not do this: permission {perm} on {gw} is missing")

    def view_of(gw: str) -> Any:
        view = state.gateways.get(gw)
        if view is None:
            raise HTTPException(404, f"no gateway {gw} at this scheduler")
        return view

    async def act(p: Caller, request: Request, action: str, target: str, detail: dict[str, Any],
                  call: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        try:
            result = await call()
        except ActionError as exc:
            await audit(p, request, action, target, {**detail, "refused": str(exc)})
            raise HTTPException(exc.status, str(exc)) from None
        await audit(p, request, action, target, {**detail, "command_id": result["command_id"], "ok": result["ok"],
                                                 "error": result["error"]})
        return result

    # ------------------------------------------------------------ state

    @router.get("/api/fleet", summary="Every gateway of the caller's areas with its devices and health")
    async def fleet_all(p: Reader) -> dict[str, Any]:
        return {"connected": state.connected, "at": now_ms(), "gateways": state.snapshot(p.gateways(FLEET_READ))}

    @router.get("/api/fleet/devices", summary="Devices as one list (filter by gateway, kind, status)")
    async def devices(
        p: Reader,
        gateway: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
        kind: Literal["speaker", "sensor", "other"] | None = None,
        status: Literal["online", "offline", "unknown"] | None = None,
    ) -> list[dict[str, Any]]:
        allowed = p.gateways(FLEET_READ)
        out = []
        for gid, view in sorted(state.gateways.items()):
            if (allowed is not None and gid not in allowed) or (gateway and gid != gateway):
                continue
            for dev in sorted(view.devices.values(), key=lambda d: d.device):
                d = state.device_dict(view, dev)
                if (kind is None or d["kind"] == kind) and (status is None or d["status"] == status):
                    out.append(d)
        return out

    @router.get("/api/fleet/gateways/{gw}", summary="One gateway: status, health, devices")
    async def gateway(gw: GwPath, p: Reader) -> dict[str, Any]:
        area(p, FLEET_READ, gw)
        return state.gateway_dict(view_of(gw))

    @router.get("/api/fleet/devices/{gw}/{dev}", summary="One device: state, last seen, its alarms")
    async def device(gw: GwPath, dev: DevPath, p: Reader) -> dict[str, Any]:
        area(p, FLEET_READ, gw)
        view = view_of(gw)
        d = view.devices.get(dev)
        if d is None:
            raise HTTPException(404, f"no device {dev} on gateway {gw}")
        out = state.device_dict(view, d)
        alarms = await astore.call(store.list_alarms, gateway=gw, device=dev, limit=20)
        out["alarms"] = [alarm_dict(a) for a in alarms]
        return out

    # ------------------------------------------------------------ actions

    @router.post("/api/fleet/devices/{gw}/{dev}/set", summary="Set a speaker's volume, power or source")
    async def set_device(gw: GwPath, dev: DevPath, body: SetIn, request: Request, p: Controller) -> dict[str, Any]:
        area(p, DEVICE_CONTROL, gw)
        if body.devices is not None:
            raise HTTPException(422, "devices: only for the gateway-wide set")
        detail = body.model_dump(exclude_none=True)
        return await act(p, request, "fleet.device_set", f"{gw}/{dev}", detail,
                         lambda: actions.set(gw, [dev], volume=body.volume, power=body.power, source=body.source))

    @router.post("/api/fleet/gateways/{gw}/set", summary="Set every speaker (or the listed ones) of a gateway")
    async def set_gateway(gw: GwPath, body: SetIn, request: Request, p: Controller) -> dict[str, Any]:
        area(p, DEVICE_CONTROL, gw)
        detail = body.model_dump(exclude_none=True)
        return await act(p, request, "fleet.device_set", gw, detail,
                         lambda: actions.set(gw, body.devices, volume=body.volume, power=body.power,
                                             source=body.source))

    @router.post("/api/fleet/devices/{gw}/{dev}/ping", summary="Ask a device to answer (through its gateway)")
    async def ping_device(gw: GwPath, dev: DevPath, request: Request, p: Controller) -> dict[str, Any]:
        area(p, DEVICE_CONTROL, gw)
        return await act(p, request, "fleet.ping", f"{gw}/{dev}", {}, lambda: actions.ping(gw, [dev]))

    @router.post("/api/fleet/gateways/{gw}/ping", summary="Ping a gateway (the signed command's ack)")
    async def ping_gateway(gw: GwPath, request: Request, p: Controller) -> dict[str, Any]:
        area(p, DEVICE_CONTROL, gw)
        return await act(p, request, "fleet.ping", gw, {}, lambda: actions.ping(gw, None))

    @router.post("/api/fleet/gateways/{gw}/health-report", summary="Ask a gateway for a fresh health report")
    async def health_report(gw: GwPath, request: Request, p: Controller) -> dict[str, Any]:
        area(p, DEVICE_CONTROL, gw)
        return await act(p, request, "fleet.health_report", gw, {}, lambda: actions.health_report(gw))

    @router.post("/api/fleet/gateways/{gw}/restart", summary="Restart a gateway's service (waits for it to return)")
    async def restart(gw: GwPath, body: RestartIn, request: Request, p: Controller) -> dict[str, Any]:
        area(p, DEVICE_CONTROL, gw)
        return await act(p, request, "fleet.restart", gw, body.model_dump(exclude_none=True),
                         lambda: actions.restart(gw, body.reason))

    # ------------------------------------------------------------ alarms

    @router.get("/api/alarms", summary="Alarms of the caller's areas, newest first")
    async def list_alarms(
        p: Reader,
        status: Literal["active", "cleared"] | None = "active",
        gateway: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
        device: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[dict[str, Any]]:
        if gateway is not None:
            area(p, FLEET_READ, gateway)
        rows = await astore.call(store.list_alarms, status=status, gateways=p.gateways(FLEET_READ), gateway=gateway,
                                 device=device, limit=limit)
        return [alarm_dict(a) for a in rows]

    async def one_alarm(alarm_id: int, p: Caller, perm: str) -> Any:
        rec = await astore.call(store.get_alarm, alarm_id)
        if rec is None or not p.can(perm, rec.gateway):
            raise HTTPException(404, f"no alarm {alarm_id}")  # another area's alarm is not shown to exist
        return rec

    @router.get("/api/alarms/{alarm_id}", summary="One alarm with its history")
    async def get_alarm(alarm_id: int, p: Reader) -> dict[str, Any]:
        rec = await one_alarm(alarm_id, p, FLEET_READ)
        return {**alarm_dict(rec), "log": await astore.call(store.alarm_log, alarm_id)}

    @router.post("/api/alarms/{alarm_id}/ack", summary="Acknowledge an alarm, with a note")
    async def ack_alarm(alarm_id: int, body: NoteIn, request: Request, p: Controller) -> dict[str, Any]:
        rec = await one_alarm(alarm_id, p, DEVICE_CONTROL)
        try:
            saved = await engine.acknowledge(alarm_id, p.name, body.note)
        except LifecycleError as exc:
            raise HTTPException(409, str(exc)) from None
        await audit(p, request, "alarm.ack", f"alarm {alarm_id} {rec.source} {rec.type}", {"note": body.note})
        return alarm_dict(saved)

    @router.post("/api/alarms/{alarm_id}/clear", summary="Clear an alarm by hand (it returns if its condition holds)")
    async def clear_alarm(alarm_id: int, body: NoteIn, request: Request, p: Controller) -> dict[str, Any]:
        rec = await one_alarm(alarm_id, p, DEVICE_CONTROL)
        try:
            saved = await engine.clear_by_hand(alarm_id, p.name, body.note)
        except LifecycleError as exc:
            raise HTTPException(409, str(exc)) from None
        await audit(p, request, "alarm.clear", f"alarm {alarm_id} {rec.source} {rec.type}", {"note": body.note})
        return alarm_dict(saved)

    # ------------------------------------------------------------ silences

    @router.get("/api/silences", summary="Maintenance silences in force (or all with past=true)")
    async def silences(p: Reader, past: bool = False) -> list[dict[str, Any]]:
        allowed = p.gateways(FLEET_READ)
        rows = await astore.call(store.silences, now_ms(), include_past=past)
        return [s.as_dict() for s in rows if allowed is None or s.gateway in allowed]

    @router.post("/api/silences", status_code=201, summary="Silence a gateway or device for maintenance")
    async def add_silence(body: SilenceIn, request: Request, p: Controller) -> dict[str, Any]:
        area(p, DEVICE_CONTROL, body.gateway)
        now = now_ms()
        ends = now + body.duration_s * 1000 if body.duration_s is not None else int(body.ends_at or 0)
        if ends <= now:
            raise HTTPException(422, "ends_at: the silence would end in the past")
        if ends - now > MAX_SILENCE_S * 1000:
            raise HTTPException(422, f"ends_at: a silence lasts at most {MAX_SILENCE_S // 86400} days")
        s = await astore.call(store.add_silence, gateway=body.gateway, device=body.device, types=body.types,
                              starts_at=now, ends_at=ends, reason=body.reason, created_by=p.name, now=now)
        await engine.refresh_silences(force=True)
        await audit(p, request, "silence.create", body.gateway + (f"/{body.device}" if body.device else ""),
                    {"silence": s.id, "ends_at": ends, "types": body.types, "reason": body.reason})
        created: dict[str, Any] = s.as_dict()
        return created

    @router.delete("/api/silences/{silence_id}", summary="End a silence now")
    async def end_silence(silence_id: int, request: Request, p: Controller) -> dict[str, Any]:
        rows = await astore.call(store.silences, now_ms(), include_past=True)
        s = next((r for r in rows if r.id == silence_id), None)
        if s is None or not p.can(DEVICE_CONTROL, s.gateway):
            raise HTTPException(404, f"no silence {silence_id}")
        ended = await astore.call(store.end_silence, silence_id, now_ms())
        await engine.refresh_silences(force=True)
        engine.wake.set()  # alarms it held back are notified now
        await audit(p, request, "silence.end", s.gateway + (f"/{s.device}" if s.device else ""), {"silence": s.id})
        out: dict[str, Any] = (ended or s).as_dict()
        return out

    @router.get("/api/notifications", summary="Recent notifications (e-mail, webhook) and their delivery")
    async def notifications(p: Reader, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        if p.gateways(FLEET_READ) is not None:
            raise HTTPException(403, f"{p.name} may not do this: the notification log needs fleet:read on every area")
        rows: list[dict[str, Any]] = await astore.call(store.notifications, limit)
        return rows

    return router
