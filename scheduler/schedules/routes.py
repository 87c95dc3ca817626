"""HTTP API of programmes, schedules, approval and the as-run reports (mounted by scheduler.service).

Every route declares its permission with ``require(...)`` and checks the areas (gateways) of what it
touches: an operator of one commune can neither see nor change another commune's schedules. Every
change is written to the audit log. Only approved schedules are sent (by the planner); editing an
approved one makes it a draft again and withdraws the plans already sent for it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from protocol.ids import ID_PATTERN
from protocol.signing import now_ms
from scheduler.access import permissions as perms
from scheduler.access.deps import Principal, client_address, forbid, get_access, require
from scheduler.db import BadRequest, NotFound, Target
from scheduler.schedules.actions import ScheduleActions
from scheduler.schedules.asrun import AsRunFilter, as_run, monthly_summary, to_csv
from scheduler.schedules.conflicts import Overlap
from scheduler.schedules.levels import EMERGENCY
from scheduler.schedules.models import STATUS_APPROVED, STATUS_REJECTED
from scheduler.schedules.planner import Planner
from scheduler.schedules.recurrence import MAX_WINDOW
from scheduler.schedules.schemas import ProgrammeIn, ScheduleIn
from scheduler.schedules.store import ConflictError

SID = r"^[A-Za-z0-9_-]{1,64}$"
MAX_ICS_BYTES = 1_000_000


class ScheduleCreate(ScheduleIn):
    approve_now: bool = Field(
        default=False,
        description="emergency schedules only: approve at once (needs schedule:emergency; audited as a bypass)",
    )


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=500)
    version: int | None = Field(default=None, ge=1, description="the version you reviewed (refused if it changed)")


def overlap_dict(o: Overlap) -> dict[str, Any]:
    return {"first": {"schedule": o.first.schedule, "start": o.first.start.isoformat()},
            "second": {"schedule": o.second.schedule, "start": o.second.start.isoformat()},
            "speakers": sorted(o.speakers)[:50], "from": o.start.isoformat(), "to": o.end.isoformat(),
            "winner": o.winner.schedule if o.winner else None, "text": o.describe()}


def conflict_response(exc: ConflictError) -> HTTPException:
    return HTTPException(409, {"message": str(exc), "conflicts": [overlap_dict(o) for o in exc.overlaps[:100]]})


def _gateways(targets: list[str]) -> set[str]:
    return {Target.parse(t).gateway for t in targets}


def schedules_router(planner: Planner, *, timezone: str = "Asia/Ho_Chi_Minh") -> APIRouter:
    router = APIRouter(prefix="/api", tags=["schedules"])
    sch = planner.schedules
    astore = planner.dispatcher.store
    actions = ScheduleActions(planner)

    async def audit(p: Principal, request: Request, action: str, target: str | None, **detail: Any) -> None:
        await get_access(request).audit(p, action, address=client_address(request), target=target, detail=detail)

    def auditor(p: Principal, request: Request) -> Any:
        async def write(action: str, target: str | None, detail: dict[str, Any]) -> None:
            await audit(p, request, action, target, **detail)

        return write

    async def need(request: Request, p: Principal, perm: str, gateways: set[str]) -> None:
        for gw in sorted(gateways):
            if not p.can(perm, gw):
                await audit(p, request, "access.denied", f"{request.method} {request.url.path}", needs=perm, gateway=gw)
                raise forbid(p, perm, gw)

    def known(gateways: set[str]) -> None:
        unknown = sorted(gateways - planner.dispatcher.known_gateways)
        if unknown:
            raise BadRequest(f"targets: unknown gateway(s) {', '.join(unknown)}; a target must be one of the "
                             "scheduler's gateways")

    async def visible(p: Principal, sid: str, perm: str = perms.SCHEDULE_READ) -> set[str]:
        gws = await astore.call(sch.gateways_of, sid)
        allowed = p.gateways(perm)
        if allowed is not None and not (gws & allowed):
            raise NotFound(f"no schedule {sid}")  # other communes' schedules stay private
        return gws

    # ------------------------------------------------------------ programmes

    @router.post("/programmes", status_code=201, summary="Create a programme (ordered media / text items)")
    async def create_programme(request: Request, body: ProgrammeIn,
                               p: Annotated[Principal, Depends(require(perms.SCHEDULE_WRITE))]) -> dict[str, Any]:
        pid = await actions.create_programme(body, p.name, auditor(p, request))
        return await astore.call(sch.programme, pid)

    @router.get("/programmes", dependencies=[Depends(require(perms.SCHEDULE_READ))], summary="Programmes")
    async def list_programmes(limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, Any]]:
        return await astore.call(sch.list_programmes, limit)

    @router.get("/programmes/{pid}", dependencies=[Depends(require(perms.SCHEDULE_READ))], summary="A programme")
    async def get_programme(pid: Annotated[str, PathParam(pattern=SID)]) -> dict[str, Any]:
        return await astore.call(sch.programme, pid)

    @router.put("/programmes/{pid}", summary="Replace a programme's items (approved schedules playing it go back "
                                            "to draft)")
    async def update_programme(request: Request, pid: Annotated[str, PathParam(pattern=SID)], body: ProgrammeIn,
                               p: Annotated[Principal, Depends(require(perms.SCHEDULE_WRITE))]) -> dict[str, Any]:
        back = await actions.update_programme(pid, body, p.name, auditor(p, request))
        return {**await astore.call(sch.programme, pid), "schedules_back_to_draft": back}

    @router.delete("/programmes/{pid}", status_code=204, summary="Remove a programme no schedule plays")
    async def remove_programme(request: Request, pid: Annotated[str, PathParam(pattern=SID)],
                               p: Annotated[Principal, Depends(require(perms.SCHEDULE_WRITE))]) -> Response:
        await astore.call(sch.remove_programme, pid)
        await audit(p, request, "programme.remove", pid)
        return Response(status_code=204)

    # ------------------------------------------------------------ schedules

    @router.post("/schedules", status_code=201, summary="Save a schedule as a draft (409 on a conflict)")
    async def create_schedule(request: Request, body: ScheduleCreate,
                              p: Annotated[Principal, Depends(require(perms.SCHEDULE_WRITE))]) -> dict[str, Any]:
        gws = _gateways(body.targets)
        await need(request, p, perms.SCHEDULE_WRITE, gws)
        known(gws)
        if body.approve_now:
            if int(body.priority) < EMERGENCY.lowest:
                raise BadRequest("approve_now: only an emergency (khẩn cấp) schedule may skip approval")
            await need(request, p, perms.SCHEDULE_EMERGENCY, gws)
        spec = ScheduleIn.model_validate(body.model_dump(exclude={"approve_now"}))
        try:
            sid = await actions.create_schedule(spec, p.name, auditor(p, request))
        except ConflictError as exc:
            raise conflict_response(exc) from exc
        if body.approve_now:
            out = await astore.call(sch.set_status, sid, STATUS_APPROVED, p.name, now_ms(),
                                    "emergency: approval bypassed")
            await audit(p, request, "schedule.emergency_bypass", sid, title=spec.title, targets=spec.targets)
            planner.wake()
            return out
        return await astore.call(sch.schedule, sid)

    @router.post("/schedules/conflicts", summary="Preview: the conflicts a schedule would have (nothing saved)")
    async def preview_conflicts(request: Request, body: ScheduleIn,
                                p: Annotated[Principal, Depends(require(perms.SCHEDULE_WRITE))],
                                schedule_id: Annotated[str | None, Query(pattern=SID)] = None
                                ) -> list[dict[str, Any]]:
        await need(request, p, perms.SCHEDULE_WRITE, _gateways(body.targets))
        found = await astore.call(sch.preview_conflicts, body, now_ms(), schedule_id)
        return [overlap_dict(o) for o in found]

    @router.get("/schedules", summary="Schedules reaching the caller's communes")
    async def list_schedules(p: Annotated[Principal, Depends(require(perms.SCHEDULE_READ))],
                             status: Literal["draft", "approved", "rejected"] | None = None,
                             limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, Any]]:
        rows = await astore.call(sch.list_schedules, status, 1000)
        allowed = p.gateways(perms.SCHEDULE_READ)
        return [r for r in rows if allowed is None or _gateways(r["targets"]) & allowed][:limit]

    @router.get("/schedules/{sid}", summary="A schedule")
    async def get_schedule(sid: Annotated[str, PathParam(pattern=SID)],
                           p: Annotated[Principal, Depends(require(perms.SCHEDULE_READ))]) -> dict[str, Any]:
        await visible(p, sid)
        return await astore.call(sch.schedule, sid)

    @router.put("/schedules/{sid}", summary="Replace a schedule (an approved one becomes a draft again)")
    async def update_schedule(request: Request, sid: Annotated[str, PathParam(pattern=SID)], body: ScheduleIn,
                              p: Annotated[Principal, Depends(require(perms.SCHEDULE_WRITE))]) -> dict[str, Any]:
        old = await visible(p, sid, perms.SCHEDULE_WRITE)
        gws = _gateways(body.targets)
        await need(request, p, perms.SCHEDULE_WRITE, old | gws)
        known(gws)
        try:
            return await actions.update_schedule(sid, body, p.name, auditor(p, request))
        except ConflictError as exc:
            raise conflict_response(exc) from exc

    async def decide(request: Request, sid: str, p: Principal, status: str, body: Decision) -> dict[str, Any]:
        gws = await visible(p, sid, perms.SCHEDULE_APPROVE)
        await need(request, p, perms.SCHEDULE_APPROVE, gws)
        try:
            return await actions.decide(sid, status, p.name, auditor(p, request), reason=body.reason,
                                        version=body.version)
        except ConflictError as exc:
            raise conflict_response(exc) from exc

    @router.post("/schedules/{sid}/approve", summary="Approve (only approved schedules are sent)")
    async def approve(request: Request, sid: Annotated[str, PathParam(pattern=SID)],
                      p: Annotated[Principal, Depends(require(perms.SCHEDULE_APPROVE))],
                      body: Decision | None = None) -> dict[str, Any]:
        return await decide(request, sid, p, STATUS_APPROVED, body or Decision())

    @router.post("/schedules/{sid}/reject", summary="Reject with a reason")
    async def reject(request: Request, sid: Annotated[str, PathParam(pattern=SID)], body: Decision,
                     p: Annotated[Principal, Depends(require(perms.SCHEDULE_APPROVE))]) -> dict[str, Any]:
        return await decide(request, sid, p, STATUS_REJECTED, body)

    @router.delete("/schedules/{sid}", status_code=204, summary="Remove a schedule (its plans still to come are "
                                                                "cancelled; its as-run log stays)")
    async def remove_schedule(request: Request, sid: Annotated[str, PathParam(pattern=SID)],
                              p: Annotated[Principal, Depends(require(perms.SCHEDULE_WRITE))]) -> Response:
        gws = await visible(p, sid, perms.SCHEDULE_WRITE)
        await need(request, p, perms.SCHEDULE_WRITE, gws)
        await astore.call(sch.remove_schedule, sid)
        withdrawn = await planner.withdraw(sid)
        await audit(p, request, "schedule.remove", sid, withdrawn=len(withdrawn))
        return Response(status_code=204)

    @router.get("/schedules/{sid}/occurrences", summary="Start instants of a schedule in a range")
    async def occurrences(sid: Annotated[str, PathParam(pattern=SID)],
                          p: Annotated[Principal, Depends(require(perms.SCHEDULE_READ))],
                          start: Annotated[AwareDatetime, Query(alias="from")],
                          end: Annotated[AwareDatetime, Query(alias="to")]) -> list[str]:
        await visible(p, sid)
        if end - start > MAX_WINDOW:
            raise BadRequest(f"the range is longer than {MAX_WINDOW.days} days")
        tz = ZoneInfo((await astore.call(sch.schedule, sid))["tz"])
        return [t.astimezone(tz).isoformat() for t in await astore.call(sch.occurrences, sid, start, end)]

    @router.get("/schedules/{sid}/conflicts", summary="Equal-priority conflicts of a stored schedule")
    async def conflicts(sid: Annotated[str, PathParam(pattern=SID)],
                        p: Annotated[Principal, Depends(require(perms.SCHEDULE_READ))]) -> list[dict[str, Any]]:
        await visible(p, sid)
        return [overlap_dict(o) for o in await astore.call(sch.conflicts, sid, now_ms())]

    # ------------------------------------------------------------ iCalendar

    @router.get("/communes/{gw}/schedules.ics", summary="Read-only iCalendar feed of a commune's approved "
                                                        "schedules (a viewer token of that commune)")
    async def ics_feed(request: Request, gw: Annotated[str, PathParam(pattern=ID_PATTERN)],
                       p: Annotated[Principal, Depends(require(perms.SCHEDULE_READ))]) -> Response:
        await need(request, p, perms.SCHEDULE_READ, {gw})
        data = await astore.call(sch.export_ics, gw)
        return Response(data, media_type="text/calendar; charset=utf-8",
                        headers={"Content-Disposition": f'inline; filename="{gw}.ics"'})

    @router.post("/schedules/import", status_code=201, summary="Drafts from an .ics file (raw body), all playing "
                                                               "one programme on the targets")
    async def import_ics(request: Request, p: Annotated[Principal, Depends(require(perms.SCHEDULE_WRITE))],
                         programme_id: Annotated[str, Query(pattern=SID)],
                         targets: Annotated[list[str], Query(min_length=1, max_length=500)],
                         volume: Annotated[int, Query(ge=0, le=100)] = 70) -> dict[str, Any]:
        gws = _gateways(targets)
        await need(request, p, perms.SCHEDULE_WRITE, gws)
        known(gws)
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_ICS_BYTES:
                raise HTTPException(413, f"the .ics file is larger than {MAX_ICS_BYTES} bytes")
        try:
            ids = await astore.call(sch.import_ics, bytes(data), programme_id=programme_id, targets=targets,
                                    created_by=p.name, now=now_ms(), volume=volume)
        except ConflictError as exc:
            raise conflict_response(exc) from exc
        await audit(p, request, "schedule.import", programme_id, schedules=ids, targets=targets)
        return {"schedules": ids}

    # ------------------------------------------------------------ as-run and reports

    def report_filter(p: Principal, start: datetime, end: datetime, gateway: list[str] | None,
                      state: list[str] | None, schedule_id: str | None) -> AsRunFilter:
        allowed = p.gateways(perms.REPORT_READ)
        gws: frozenset[str] | None = frozenset(gateway) if gateway else None
        if allowed is not None:
            gws = allowed if gws is None else gws & allowed
        return AsRunFilter(int(start.timestamp() * 1000), int(end.timestamp() * 1000), gws,
                           frozenset(state) if state else None, schedule_id)

    @router.get("/reports/as-run", summary="What played, per broadcast and speaker (JSON, or CSV with format=csv)")
    async def report_as_run(p: Annotated[Principal, Depends(require(perms.REPORT_READ))],
                            start: Annotated[AwareDatetime, Query(alias="from")],
                            end: Annotated[AwareDatetime, Query(alias="to")],
                            gateway: Annotated[list[str] | None, Query(max_length=500)] = None,
                            state: Annotated[list[str] | None, Query(max_length=10)] = None,
                            schedule_id: Annotated[str | None, Query(pattern=SID)] = None,
                            format: Literal["json", "csv"] = "json") -> Any:
        f = report_filter(p, start, end, gateway, state, schedule_id)
        rows = await astore.call(as_run, astore.store, f, timezone)
        if format == "csv":
            return StreamingResponse(to_csv(rows), media_type="text/csv; charset=utf-8",
                                     headers={"Content-Disposition": 'attachment; filename="as-run.csv"'})
        return rows

    @router.get("/reports/monthly", summary="Per commune: hours broadcast and share of speakers that played each "
                                            "item, for one month")
    async def report_monthly(p: Annotated[Principal, Depends(require(perms.REPORT_READ))],
                             month: Annotated[str, Query(pattern=r"^\d{4}-\d{2}$")],
                             gateway: Annotated[list[str] | None, Query(max_length=500)] = None
                             ) -> list[dict[str, Any]]:
        allowed = p.gateways(perms.REPORT_READ)
        gws: frozenset[str] | None = frozenset(gateway) if gateway else None
        if allowed is not None:
            gws = allowed if gws is None else gws & allowed
        return await astore.call(monthly_summary, astore.store, month, gws, timezone)

    return router
