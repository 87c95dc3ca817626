"""The technician's pages: the fleet (live), a commune's page (speakers, sensors, readings of the last
24 h), device actions with a confirmation, alarms and maintenance silences.

Everything here is a view of what :mod:`scheduler.fleet` already keeps: the live state
(``FleetState``), the signed actions (``FleetActions``, which wait for the speaker's own report),
the alarm engine and store. Readings come from InfluxDB through the IOC's service
(:mod:`scheduler.ioc.service`), the scheduler's one reader of readings for people.

Every page declares its permission (``fleet:read`` to look, ``device:control`` to act) and then
checks the gateway it shows or touches against the person's areas: a gateway outside them answers
404, as if it did not exist. Every action is audited like the JSON API's (``via: web``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from protocol.ids import ID_PATTERN
from protocol.signing import now_ms
from scheduler.access.deps import client_address, get_access
from scheduler.fleet.actions import ActionError
from scheduler.fleet.alarms.lifecycle import LifecycleError
from scheduler.fleet.routes import MAX_SILENCE_S
from scheduler.fleet.store import alarm_dict
from scheduler.web.chart import Series, line_chart
from scheduler.web.filters import format_number
from scheduler.web.nav import N_
from scheduler.web.readings import commune_readings
from scheduler.web.session import Principal, page
from scheduler.web.staff import render, tr

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

FLEET_READ = "fleet:read"
DEVICE_CONTROL = "device:control"
CanReadFleet = Annotated[Principal, Depends(page(FLEET_READ))]
CanControl = Annotated[Principal, Depends(page(DEVICE_CONTROL))]
GwPath = Annotated[str, PathParam(pattern=ID_PATTERN)]
DevPath = Annotated[str, PathParam(pattern=ID_PATTERN)]

#: The live fleet page: a keep-alive this often, and at most this long per stream (then it reconnects).
SSE_HEARTBEAT_S = 15.0
SSE_MAX_S = 30 * 60
SSE_MAX_STREAMS = 200
#: Silences offered on the alarms page (seconds → label msgid).
SILENCE_CHOICES: dict[int, str] = {3600: N_("1 hour"), 4 * 3600: N_("4 hours"), 24 * 3600: N_("1 day"),
                                   7 * 24 * 3600: N_("7 days")}
MAX_NOTE = 2000
MAX_ALARMS = 300
ALARM_VIEWS = ("active", "acknowledged", "cleared")


#: Alarm types (docs/alarms.md) in words; ``threshold_<name>`` and gateway event codes stay as sent.
ALARM_TYPES: dict[str, str] = {
    "gateway_offline": N_("gateway off line"),
    "speaker_offline": N_("speaker off line"),
    "broadcast_failed": N_("broadcast failed on this speaker"),
    "spool_dropping": N_("the gateway's spool is full and drops readings"),
    "telemetry_quarantine": N_("readings refused by InfluxDB were set aside"),
    "disk_full": N_("the gateway's disk is nearly full"),
    "cpu_temp_high": N_("the gateway is too hot"),
    "clock_unsynced": N_("the gateway's clock is not synchronised"),
    "sensor_silent": N_("the sensor sends no readings"),
    "flapping": N_("going on and off repeatedly"),
}
SEVERITIES: dict[str, str] = {
    "critical": N_("critical"), "major": N_("major"), "minor": N_("minor"), "warning": N_("warning"),
}


def fleet_of(request: Request) -> Any:
    """The scheduler's :class:`scheduler.fleet.service.Fleet` (None in an app built without it)."""
    return getattr(request.app.state, "fleet", None)


def _not_found(request: Request, principal: Principal) -> HTMLResponse:
    return render(request, principal, "message.html", {
        "heading": tr(request, "Not found"),
        "message": tr(request, "There is no such gateway or device, or it is not in your communes."),
    }, status_code=404)


def _areas(principal: Principal, perm: str = FLEET_READ) -> frozenset[str] | None:
    return principal.gateways(perm)


def _gateway_view(request: Request, principal: Principal, gw: str, perm: str = FLEET_READ) -> Any:
    """The live view of ``gw`` if it exists and is in the person's areas for ``perm``, else None."""
    fleet = fleet_of(request)
    if fleet is None or not principal.can(perm, gw):
        return None
    return fleet.state.gateways.get(gw)


def _split_devices(g: dict[str, Any]) -> dict[str, Any]:
    g["speakers"] = [d for d in g.get("devices", []) if d["kind"] == "speaker"]
    g["sensors"] = [d for d in g.get("devices", []) if d["kind"] != "speaker"]
    return g


def _fleet_context(request: Request, principal: Principal) -> dict[str, Any]:
    fleet = fleet_of(request)
    if fleet is None:
        return {"gateways": [], "connected": False, "live": False}
    gateways = [_split_devices(g) for g in fleet.state.snapshot(_areas(principal))]
    return {"gateways": gateways, "connected": fleet.state.connected, "live": True}


# ------------------------------------------------------------------ the fleet, live


@router.get("/fleet", response_class=HTMLResponse)
async def fleet_page(request: Request, principal: CanReadFleet) -> HTMLResponse:
    return render(request, principal, "fleet.html", _fleet_context(request, principal))


def _render_fragment(request: Request, template: str, context: dict[str, Any]) -> str:
    """A part of a page in the reader's language (the live fleet sends it whole; the script swaps it in)."""
    renderer = request.app.state.web.renderer
    env = renderer.envs[renderer.locale_of(request)]
    return str(env.get_template(template).render(context))


def _stamps(state: Any, areas: frozenset[str] | None) -> dict[str, tuple[Any, ...]]:
    """Per gateway, what changes whenever its card may have changed (the views count their updates)."""
    return {gid: (v.version, tuple((d.device, d.version) for d in v.devices.values()))
            for gid, v in state.gateways.items() if areas is None or gid in areas}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


@router.get("/fleet/events")
async def fleet_events(request: Request, principal: CanReadFleet) -> Response:
    """Server-Sent Events: a gateway's card, rendered, each time the gateway or one of its devices
    reports (only the cards that changed), and the scheduler's own link going down or up."""
    fleet = fleet_of(request)
    if fleet is None:
        return Response(status_code=404)
    if getattr(request.app.state, "web_streams", 0) >= SSE_MAX_STREAMS:
        return Response(status_code=503, headers={"Retry-After": "10"})
    state = fleet.state
    areas = _areas(principal)

    async def events() -> AsyncIterator[bytes]:
        request.app.state.web_streams = getattr(request.app.state, "web_streams", 0) + 1
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            sent: dict[str, tuple[Any, ...]] = {}
            connected: bool | None = None
            while loop.time() - started < SSE_MAX_S:
                now_connected = state.connected
                if now_connected != connected:  # every status may read "unknown" now, or again not
                    yield _event("connected", {"connected": now_connected})
                    connected, sent = now_connected, {}
                current = _stamps(state, areas)
                for gid in sorted(g for g, st in current.items() if sent.get(g) != st):
                    view = state.gateways.get(gid)
                    if view is None:
                        continue
                    html = _render_fragment(request, "partials/fleet_gateway.html",
                                            {"g": _split_devices(state.gateway_dict(view))})
                    yield _event("gateway", {"id": gid, "html": html, "at": now_ms()})
                sent = current

                def moved(seen: dict[str, tuple[Any, ...]] = current, was: bool = now_connected) -> bool:
                    return state.connected != was or _stamps(state, areas) != seen

                changed = await state.wait_for(moved, SSE_HEARTBEAT_S)
                if await request.is_disconnected():
                    return
                if changed is None:
                    yield b": keep-alive\n\n"
        finally:
            request.app.state.web_streams -= 1

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# ------------------------------------------------------------------ a commune's page


@router.get("/fleet/{gw}", response_class=HTMLResponse)
async def commune_page(request: Request, gw: GwPath, principal: CanReadFleet) -> HTMLResponse:
    view = _gateway_view(request, principal, gw)
    if view is None:
        return _not_found(request, principal)
    fleet = fleet_of(request)
    g = _split_devices(fleet.state.gateway_dict(view))
    alarms = await fleet.astore.call(fleet.store.list_alarms, status="active", gateway=gw, limit=50)
    ioc = getattr(request.app.state, "ioc", None)
    sensor_ids = [d["device"] for d in g["sensors"]]
    readings = await commune_readings(ioc.service if ioc is not None else None, gw, sensor_ids, now_ms())
    locale = request.app.state.web.renderer.locale_of(request)

    def number(v: float) -> str:
        return format_number(v, locale, decimals=0 if abs(v) >= 100 or v == int(v) else 1)

    charts = []
    for chart in readings.charts:
        svg = line_chart([Series(chart.label, chart.points)], title=chart.label, unit=chart.unit,
                         start_ms=readings.start_ms, end_ms=readings.end_ms, number=number)
        charts.append({"chart": chart, "svg": svg})
    return render(request, principal, "commune.html", {
        "g": g, "alarms": [alarm_dict(a) for a in alarms], "readings": readings, "charts": charts,
        "can_control": principal.can(DEVICE_CONTROL, gw), "alarm_types": ALARM_TYPES, "severities": SEVERITIES,
    })


# ------------------------------------------------------------------ device actions


def _form_text(form: Any, name: str, limit: int) -> str:
    value = form.get(name)
    return value.strip()[:limit] if isinstance(value, str) else ""


ACTIONS = ("volume", "power_on", "power_off", "ping")


@router.post("/fleet/{gw}/{dev}/action", response_class=HTMLResponse)
async def device_action(request: Request, gw: GwPath, dev: DevPath, principal: CanControl) -> Response:
    """First the confirmation (what will be sent to which speaker), then the signed command and the
    speaker's own report. Works without JavaScript: the confirmation is a page of its own."""
    view = _gateway_view(request, principal, gw, DEVICE_CONTROL)
    if view is None or dev not in view.devices:
        return _not_found(request, principal)
    fleet = fleet_of(request)
    device = fleet.state.device_dict(view, view.devices[dev])
    form = await request.form(max_files=0, max_fields=10)
    action = _form_text(form, "action", 16)
    volume_text = _form_text(form, "volume", 4)
    volume = int(volume_text) if volume_text.isdigit() else None
    back = f"/fleet/{gw}"
    ctx: dict[str, Any] = {"g": fleet.state.gateway_dict(view, devices=False), "d": device, "action": action,
                           "volume": volume, "back": back}
    if action not in ACTIONS or (action == "volume" and (volume is None or not 0 <= volume <= 100)):
        ctx["error"] = tr(request, "The volume is a number from 0 to 100.") if action == "volume" else \
            tr(request, "Choose an action.")
        return render(request, principal, "action_confirm.html", ctx, status_code=400)
    if _form_text(form, "confirm", 8) != "yes":
        return render(request, principal, "action_confirm.html", ctx)
    audit_action = "fleet.ping" if action == "ping" else "fleet.device_set"
    detail: dict[str, Any] = {"via": "web"}
    try:
        if action == "ping":
            result = await fleet.actions.ping(gw, [dev])
        else:
            kwargs: dict[str, Any] = ({"volume": volume} if action == "volume"
                                      else {"power": action == "power_on"})
            detail.update(kwargs)
            result = await fleet.actions.set(gw, [dev], **kwargs)
    except ActionError as exc:
        await get_access(request).audit(principal, audit_action, address=client_address(request),
                                        target=f"{gw}/{dev}", detail={**detail, "refused": str(exc)})
        ctx["refused"] = _action_refusal(request, exc)
        return render(request, principal, "action_result.html", ctx, status_code=exc.status)
    await get_access(request).audit(principal, audit_action, address=client_address(request), target=f"{gw}/{dev}",
                                    detail={**detail, "command_id": result["command_id"], "ok": result["ok"],
                                            "error": result["error"]})
    per = (result.get("devices") or {}).get(dev) or {}
    ctx.update({"result": result, "report": per, "state": per.get("state") or {},
                "d": fleet.state.device_dict(view, view.devices[dev]) if dev in view.devices else device})
    return render(request, principal, "action_result.html", ctx)


GATEWAY_ACTIONS = ("ping", "health")


@router.post("/fleet/{gw}/action", response_class=HTMLResponse)
async def gateway_action(request: Request, gw: GwPath, principal: CanControl) -> Response:
    """Ping the gateway or ask it for a fresh health report: signed commands that change nothing, so
    they are sent without a confirmation; the page shows the answer (and the new health)."""
    view = _gateway_view(request, principal, gw, DEVICE_CONTROL)
    if view is None:
        return _not_found(request, principal)
    fleet = fleet_of(request)
    form = await request.form(max_files=0, max_fields=5)
    action = _form_text(form, "action", 16)
    ctx: dict[str, Any] = {"action": action, "back": f"/fleet/{gw}"}
    if action not in GATEWAY_ACTIONS:
        return render(request, principal, "message.html", {
            "heading": tr(request, "Not allowed"), "message": tr(request, "Choose an action."),
        }, status_code=400)
    audit_action = "fleet.ping" if action == "ping" else "fleet.health_report"
    try:
        result = await (fleet.actions.ping(gw, None) if action == "ping" else fleet.actions.health_report(gw))
    except ActionError as exc:
        await get_access(request).audit(principal, audit_action, address=client_address(request), target=gw,
                                        detail={"via": "web", "refused": str(exc)})
        ctx.update(g=fleet.state.gateway_dict(view, devices=False), refused=_action_refusal(request, exc))
        return render(request, principal, "gateway_action.html", ctx, status_code=exc.status)
    await get_access(request).audit(principal, audit_action, address=client_address(request), target=gw,
                                    detail={"via": "web", "command_id": result["command_id"], "ok": result["ok"],
                                            "error": result["error"]})
    ctx.update(g=fleet.state.gateway_dict(view, devices=False), result=result)
    return render(request, principal, "gateway_action.html", ctx)


def _action_refusal(request: Request, exc: ActionError) -> str:
    if exc.status == 503:
        return tr(request, "The scheduler is not connected to the broker; nothing was sent. Try again shortly.")
    if exc.status == 409:
        return tr(request, "The commune's gateway is not on line; nothing was sent.")
    return tr(request, "This device is not known to its gateway any more; nothing was sent.")


# ------------------------------------------------------------------ alarms and silences


async def _alarm_rows(request: Request, principal: Principal, view: str) -> list[dict[str, Any]]:
    fleet = fleet_of(request)
    status = "cleared" if view == "cleared" else "active"
    rows = await fleet.astore.call(fleet.store.list_alarms, status=status, gateways=_areas(principal),
                                   limit=MAX_ALARMS)
    out = [alarm_dict(a) for a in rows]
    if view == "active":
        out = [a for a in out if not a["acknowledged"]]
    elif view == "acknowledged":
        out = [a for a in out if a["acknowledged"]]
    for a in out:
        a["can_act"] = principal.can(DEVICE_CONTROL, a["gateway"])
    return out


def _commune_names(request: Request) -> dict[str, str]:
    fleet = fleet_of(request)
    return {gid: (v.commune or gid) for gid, v in fleet.state.gateways.items()}


async def _alarms_page(request: Request, principal: Principal, view: str, *, error: str | None = None,
                       notice: str | None = None, status_code: int = 200) -> HTMLResponse:
    fleet = fleet_of(request)
    if fleet is None:
        return render(request, principal, "message.html", {
            "heading": tr(request, "Alarms"), "message": tr(request, "This scheduler keeps no fleet."),
        }, status_code=404)
    areas = _areas(principal)
    silences = [s.as_dict() for s in await fleet.astore.call(fleet.store.silences, now_ms())
                if areas is None or s.gateway in areas]
    for s in silences:
        s["can_end"] = principal.can(DEVICE_CONTROL, s["gateway"])
    control_areas = _areas(principal, DEVICE_CONTROL)
    silence_gateways = sorted(g for g in fleet.state.gateways
                              if principal.can(DEVICE_CONTROL) and (control_areas is None or g in control_areas))
    return render(request, principal, "alarms.html", {
        "view": view, "views": ALARM_VIEWS, "alarms": await _alarm_rows(request, principal, view),
        "communes": _commune_names(request), "alarm_types": ALARM_TYPES, "severities": SEVERITIES,
        "silences": silences, "silence_gateways": silence_gateways, "silence_choices": SILENCE_CHOICES,
        "error": error, "notice": notice,
    }, status_code=status_code)


@router.get("/alarms", response_class=HTMLResponse)
async def alarms_page(request: Request, principal: CanReadFleet, view: str = "active",
                      done: str | None = None) -> HTMLResponse:
    notice = {"ack": tr(request, "The alarm was acknowledged."), "clear": tr(request, "The alarm was cleared."),
              "silence": tr(request, "The silence is in force."), "end": tr(request, "The silence was ended.")
              }.get(done or "")
    return await _alarms_page(request, principal, view if view in ALARM_VIEWS else "active", notice=notice)


@router.post("/alarms/{alarm_id}/{verb}", response_class=HTMLResponse)
async def alarm_action(request: Request, alarm_id: Annotated[int, PathParam(ge=1, le=2**62)],
                       verb: Annotated[str, PathParam(pattern="^(ack|clear)$")], principal: CanControl) -> Response:
    """Acknowledge (with a note) or clear by hand, through the alarm engine's lifecycle."""
    fleet = fleet_of(request)
    if fleet is None:
        return _not_found(request, principal)
    form = await request.form(max_files=0, max_fields=5)
    note = _form_text(form, "note", MAX_NOTE) or None
    view = _form_text(form, "view", 16)
    rec = await fleet.astore.call(fleet.store.get_alarm, alarm_id)
    if rec is None or not principal.can(DEVICE_CONTROL, rec.gateway):
        return _not_found(request, principal)  # another area's alarm is not shown to exist
    try:
        if verb == "ack":
            await fleet.engine.acknowledge(alarm_id, principal.name, note)
        else:
            await fleet.engine.clear_by_hand(alarm_id, principal.name, note)
    except LifecycleError as exc:
        log.info("alarm %s %s refused: %s", alarm_id, verb, exc)
        return await _alarms_page(request, principal, view if view in ALARM_VIEWS else "active", status_code=409,
                                  error=tr(request, "This alarm was already acknowledged or cleared."))
    await get_access(request).audit(principal, f"alarm.{verb}", address=client_address(request),
                                    target=f"alarm {alarm_id} {rec.source} {rec.type}",
                                    detail={"note": note, "via": "web"})
    return RedirectResponse(f"/alarms?view={view if view in ALARM_VIEWS else 'active'}&done={verb}",
                            status_code=303)


@router.post("/silences", response_class=HTMLResponse)
async def add_silence(request: Request, principal: CanControl) -> Response:
    fleet = fleet_of(request)
    if fleet is None:
        return _not_found(request, principal)
    form = await request.form(max_files=0, max_fields=10)
    gw = _form_text(form, "gateway", 64)
    device = _form_text(form, "device", 64) or None
    reason = _form_text(form, "reason", 500) or None
    duration_text = _form_text(form, "duration_s", 8)
    duration = int(duration_text) if duration_text.isdigit() else 0
    if gw not in fleet.state.gateways or not principal.can(DEVICE_CONTROL, gw):
        return await _alarms_page(request, principal, "active", status_code=400,
                                  error=tr(request, "Choose a commune of yours."))
    if device is not None and device not in fleet.state.gateways[gw].devices:
        return await _alarms_page(request, principal, "active", status_code=400,
                                  error=tr(request, "That device is not on this commune's gateway."))
    if duration not in SILENCE_CHOICES or duration > MAX_SILENCE_S:
        return await _alarms_page(request, principal, "active", status_code=400,
                                  error=tr(request, "Choose how long the silence lasts."))
    now = now_ms()
    s = await fleet.astore.call(fleet.store.add_silence, gateway=gw, device=device, types=None, starts_at=now,
                                ends_at=now + duration * 1000, reason=reason, created_by=principal.name, now=now)
    await fleet.engine.refresh_silences(force=True)
    await get_access(request).audit(principal, "silence.create", address=client_address(request),
                                    target=gw + (f"/{device}" if device else ""),
                                    detail={"silence": s.id, "ends_at": s.ends_at, "reason": reason, "via": "web"})
    return RedirectResponse("/alarms?done=silence", status_code=303)


@router.post("/silences/{silence_id}/end", response_class=HTMLResponse)
async def end_silence(request: Request, silence_id: Annotated[int, PathParam(ge=1, le=2**62)],
                      principal: CanControl) -> Response:
    fleet = fleet_of(request)
    if fleet is None:
        return _not_found(request, principal)
    rows = await fleet.astore.call(fleet.store.silences, now_ms(), include_past=True)
    s = next((r for r in rows if r.id == silence_id), None)
    if s is None or not principal.can(DEVICE_CONTROL, s.gateway):
        return _not_found(request, principal)
    await fleet.astore.call(fleet.store.end_silence, silence_id, now_ms())
    await fleet.engine.refresh_silences(force=True)
    fleet.engine.wake.set()  # alarms it held back are notified now
    await get_access(request).audit(principal, "silence.end", address=client_address(request),
                                    target=s.gateway + (f"/{s.device}" if s.device else ""),
                                    detail={"silence": s.id, "via": "web"})
    return RedirectResponse("/alarms?done=end", status_code=303)
