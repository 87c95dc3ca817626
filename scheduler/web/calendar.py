"""*Lịch phát* (the schedule calendar, the schedule form with its recurrence picker, the programme
editor) and *Chờ duyệt* (pending schedules and CAP alerts for approvers).

Occurrences come from the schedules package's expansion (``ScheduleStore.occurrences``), conflicts
from its check (``preview_conflicts``), and every change goes through
:class:`scheduler.schedules.actions.ScheduleActions` (store, horizon, audit) or the CAP intake's
``approve``, exactly as the JSON API does. Each page declares its permission with
:func:`scheduler.web.session.page`, then checks the area of each commune it lists or touches: a
schedule that reaches none of the caller's communes answers 404, as in the API.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from starlette.datastructures import FormData

from protocol.models import PRIORITY_HIGH
from protocol.signing import now_ms
from scheduler.access.deps import client_address, get_access
from scheduler.db import BadRequest, NotFound, Target
from scheduler.media import MediaError
from scheduler.schedules.actions import ScheduleActions
from scheduler.schedules.conflicts import Overlap
from scheduler.schedules.models import STATUS_APPROVED, STATUS_DRAFT, STATUS_REJECTED
from scheduler.schedules.planner import Planner
from scheduler.schedules.schemas import ProgrammeIn, ProgrammeItemIn, ScheduleIn
from scheduler.schedules.store import ConflictError
from scheduler.web import queries
from scheduler.web.labels import PRIORITIES, priority_key
from scheduler.web.nav import N_
from scheduler.web.picker import ENDS, KINDS, WEEKDAYS, Picker, PickerError, build, decode, format_times, parse_times
from scheduler.web.session import PageForbidden, Principal, page
from scheduler.web.staff import allowed, render, tr, web

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

SID = r"^[A-Za-z0-9_-]{1,64}$"
CanReadSchedules = Annotated[Principal, Depends(page("schedule:read"))]
CanWriteSchedules = Annotated[Principal, Depends(page("schedule:write"))]
CanApproveSchedules = Annotated[Principal, Depends(page("schedule:approve"))]
CanApprove = Annotated[Principal, Depends(page("broadcast:approve"))]
ScheduleId = Annotated[str, PathParam(pattern=SID)]

#: Day names (Monday first, as in Vietnam) and the picker's words, as msgids.
DAY_NAMES = (N_("Monday"), N_("Tuesday"), N_("Wednesday"), N_("Thursday"), N_("Friday"), N_("Saturday"),
             N_("Sunday"))
DAY_SHORT = (N_("Mon"), N_("Tue"), N_("Wed"), N_("Thu"), N_("Fri"), N_("Sat"), N_("Sun"))
KIND_LABELS = {
    "once": N_("Once"),
    "daily": N_("Every day"),
    "except_sunday": N_("Every day except Sunday"),
    "weekdays": N_("On chosen days of the week"),
    "custom": N_("Another rule (RRULE, for technicians)"),
}
END_LABELS = {"never": N_("No end"), "until": N_("Until a day"), "count": N_("A number of times")}
STATUS_LABELS = {STATUS_DRAFT: N_("awaiting approval"), STATUS_APPROVED: N_("approved"),
                 STATUS_REJECTED: N_("rejected")}
#: A calendar shows at most this many schedules of a commune (the biggest communes have a handful).
MAX_SCHEDULES = 500
MAX_ITEMS = 100
MAX_TEXT = 5000
#: The form's "check" shows this many of the next occurrences.
PREVIEW_OCCURRENCES = 10


def _planner(request: Request) -> Planner:
    planner: Planner = request.app.state.planner
    return planner


def _zone(request: Request) -> ZoneInfo:
    return ZoneInfo(web(request).renderer.timezone)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _gateways_of(targets: list[str]) -> set[str]:
    return {Target.parse(t).gateway for t in targets}


def _auditor(request: Request, principal: Principal) -> Any:
    access = get_access(request)

    async def write(action: str, target: str | None, detail: dict[str, Any]) -> None:
        await access.audit(principal, action, address=client_address(request), target=target,
                           detail={**detail, "via": "web"})

    return write


async def _communes(request: Request, principal: Principal, perm: str) -> list[dict[str, Any]]:
    """The configured gateways (communes) on which ``principal`` holds ``perm``."""
    ctx = web(request)
    rows = await ctx.dispatcher.store.call(ctx.dispatcher.db.gateways)
    known = ctx.dispatcher.known_gateways
    ok = set(allowed(principal, perm, [g["id"] for g in rows if g["id"] in known]))
    return [{"id": g["id"], "commune": g["commune"]} for g in rows if g["id"] in ok]


async def _visible_schedules(request: Request, principal: Principal, perm: str) -> list[dict[str, Any]]:
    planner = _planner(request)
    rows = await planner.dispatcher.store.call(planner.schedules.list_schedules, None, MAX_SCHEDULES)
    areas = principal.gateways(perm)
    out = []
    for r in rows:
        gws = _gateways_of(r["targets"])
        if areas is None or gws & areas:
            out.append({**r, "gateway_ids": sorted(gws), "level_key": priority_key(r["priority"])})
    return out


def _parse_day(text: str | None, tz: ZoneInfo) -> date:
    if text and re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    return datetime.now(tz).date()


# ------------------------------------------------------------------ the calendar


@router.get("/schedule", response_class=HTMLResponse)
async def calendar(request: Request, principal: CanReadSchedules, gateway: str | None = None,
                   view: str = "week", day: str | None = None, saved: str | None = None) -> HTMLResponse:
    tz = _zone(request)
    communes = await _communes(request, principal, "schedule:read")
    ids = [c["id"] for c in communes]
    gw = gateway if gateway in ids else (ids[0] if ids else None)
    view = "month" if view == "month" else "week"
    anchor = _parse_day(day, tz)
    if view == "week":
        first = anchor - timedelta(days=anchor.weekday())
        days = [first + timedelta(days=n) for n in range(7)]
        prev_day, next_day = first - timedelta(days=7), first + timedelta(days=7)
    else:
        month_start = anchor.replace(day=1)
        next_month = (month_start + timedelta(days=32)).replace(day=1)
        first = month_start - timedelta(days=month_start.weekday())
        last = next_month + timedelta(days=(7 - next_month.weekday()) % 7)
        days = [first + timedelta(days=n) for n in range((last - first).days)]
        prev_day, next_day = (month_start - timedelta(days=1)).replace(day=1), next_month
    start = datetime.combine(days[0], time(0), tzinfo=tz)
    end = datetime.combine(days[-1] + timedelta(days=1), time(0), tzinfo=tz)
    by_day: dict[date, list[dict[str, Any]]] = {d: [] for d in days}
    schedules: list[dict[str, Any]] = []
    if gw is not None:
        planner = _planner(request)
        for s in await _visible_schedules(request, principal, "schedule:read"):
            if gw not in s["gateway_ids"] or s["status"] == STATUS_REJECTED:
                continue
            schedules.append(s)
            try:
                times = await planner.dispatcher.store.call(planner.schedules.occurrences, s["id"], start, end)
            except ValueError as exc:  # a rule too dense for the window: listed below, not drawn
                log.warning("schedule %s not drawn on the calendar: %s", s["id"], exc)
                continue
            for t in times:
                local = t.astimezone(tz)
                by_day[local.date()].append({"start_ms": _ms(t), "iso": local.isoformat(), "clock":
                                             local.strftime("%H:%M"), "schedule": s})
    for entries in by_day.values():
        entries.sort(key=lambda e: e["start_ms"])
    today = datetime.now(tz).date()
    notice = tr(request, "The schedule was saved. It plays once an approver approves it.") if saved else None
    return render(request, principal, "schedule.html", {
        "communes": communes, "gateway": gw, "view": view, "days": days, "by_day": by_day, "today": today,
        "anchor": anchor, "prev_day": prev_day, "next_day": next_day, "schedules": schedules,
        "day_names": DAY_NAMES, "day_short": DAY_SHORT, "statuses": STATUS_LABELS, "priorities": PRIORITIES,
        "can_write": principal.can("schedule:write"), "notice": notice,
        "window": (_ms(start), _ms(end - timedelta(minutes=1))),
    })


# ------------------------------------------------------------------ the schedule form


def _form_defaults(tz: ZoneInfo) -> dict[str, Any]:
    tomorrow = datetime.now(tz).date() + timedelta(days=1)
    return {"sid": "", "version": "", "title": "", "programme_id": "", "kind": "except_sunday", "days": [],
            "times": "06:00, 17:00", "start": _day_text(tomorrow), "end": "never", "until": "", "count": "",
            "custom_rrule": "", "skip": "", "valid_from": "", "valid_until": "", "priority": "normal",
            "volume": 70, "targets": [], "conflict_order": ""}


def _values_of(row: dict[str, Any], tz: ZoneInfo) -> dict[str, Any]:
    """The form's fields for a stored schedule."""
    dtstart = datetime.fromisoformat(row["dtstart"]).astimezone(tz)
    rdates = [datetime.fromisoformat(r).astimezone(tz) for r in row["rdates"]]
    p = decode(row["rrule"], dtstart, rdates)
    skip = [x for x in row["exdates"] if re.fullmatch(r"\d{4}-\d{2}-\d{2}", x)]

    def day_of(iso: str | None, minus: bool = False) -> str:
        if not iso:
            return ""
        d = datetime.fromisoformat(iso).astimezone(tz).date()
        return _day_text(d - timedelta(days=1) if minus else d)

    return {"sid": row["id"], "version": row["version"], "title": row["title"], "programme_id": row["programme_id"],
            "kind": p.kind, "days": p.days, "times": format_times(p.times), "start": _day_text(p.start),
            "end": p.end, "until": _day_text(p.until), "count": p.count or "",
            "custom_rrule": p.custom_rrule, "skip": ", ".join(date.fromisoformat(x).strftime("%d/%m/%Y")
                                                              for x in skip),
            "valid_from": day_of(row["valid_from"]), "valid_until": day_of(row["valid_until"], minus=True),
            "priority": priority_key(row["priority"]), "volume": row["volume"], "targets": row["targets"],
            "conflict_order": "" if row["conflict_order"] is None else row["conflict_order"]}


def _read_form(form: FormData) -> dict[str, Any]:
    def one(name: str, limit: int = 200) -> str:
        value = form.get(name)
        return value.strip()[:limit] if isinstance(value, str) else ""

    volume = one("volume", 4)
    return {
        "sid": one("sid", 64), "version": one("version", 8), "title": one("title"),
        "programme_id": one("programme_id", 64), "kind": one("kind", 16), "days": [
            d for d in form.getlist("days") if isinstance(d, str) and d in WEEKDAYS],
        "times": one("times", 300), "start": one("start", 12), "end": one("end", 8) or "never",
        "until": one("until", 12), "count": one("count", 6), "custom_rrule": one("custom_rrule", 500),
        "skip": one("skip", 2000), "valid_from": one("valid_from", 12), "valid_until": one("valid_until", 12),
        "priority": one("priority", 16), "volume": int(volume) if volume.isdigit() else volume,
        "targets": [t for t in form.getlist("targets") if isinstance(t, str)][:500],
        "conflict_order": one("conflict_order", 5), "action": one("action", 16),
    }


def _day_text(d: date | None) -> str:
    """A day as the form shows it: dd/mm/yyyy, whatever the browser's own date format."""
    return d.strftime("%d/%m/%Y") if d else ""


def _date_field(text: str, name: str) -> date:
    """``dd/mm/yyyy`` (also ``d/m/yyyy`` and ``yyyy-mm-dd``)."""
    m = re.fullmatch(r"(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})", text.strip())
    try:
        if m is not None:
            return date(int(m.group(3)), int(m.group(2)), int(m.group(1)))
        return date.fromisoformat(text.strip())
    except ValueError:
        raise PickerError(name, N_("Write the day as dd/mm/yyyy.")) from None


def _skip_days(text: str) -> list[str]:
    out: list[str] = []
    for part in re.split(r"[,;\s]+", text.strip()):
        if not part:
            continue
        m = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4})", part)
        try:
            if m is None:
                raise ValueError(part)
            out.append(date(int(m.group(3)), int(m.group(2)), int(m.group(1))).isoformat())
        except ValueError:
            raise PickerError("skip", N_("Write the days to skip as dd/mm/yyyy, separated by commas.")) from None
    return out[:1000]


def _spec(v: dict[str, Any], tz: ZoneInfo, writable: set[str]) -> ScheduleIn:
    """The schedule the form describes (raises PickerError with an English msgid, or ValidationError)."""
    if not v["title"]:
        raise PickerError("title", N_("Give the schedule a title."))
    if not v["programme_id"]:
        raise PickerError("programme_id", N_("Choose a programme (make one first if the list is empty)."))
    if v["kind"] not in KINDS:
        raise PickerError("kind", N_("Choose how often it plays."))
    if v["end"] not in ENDS:
        raise PickerError("end", N_("Choose when it stops."))
    count = int(v["count"]) if str(v["count"]).isdigit() else None
    picker = Picker(kind=v["kind"], days=v["days"], times=parse_times(v["times"]),
                    start=_date_field(v["start"], "start"), end=v["end"],
                    until=_date_field(v["until"], "until") if v["end"] == "until" else None,
                    count=count, custom_rrule=v["custom_rrule"])
    if v["end"] == "count" and count is None:
        raise PickerError("count", N_("The number of times is from 1 to 10000."))
    rrule, dtstart, rdates = build(picker, tz)
    if v["priority"] not in PRIORITIES:
        raise PickerError("priority", N_("Choose a priority level."))
    if not isinstance(v["volume"], int) or not 0 <= v["volume"] <= 100:
        raise PickerError("volume", N_("The volume is a number from 0 to 100."))
    targets = [t for t in v["targets"] if t.split("/", 1)[0] in writable]
    if not targets:
        raise PickerError("targets", N_("Choose at least one commune."))
    valid_from = (datetime.combine(_date_field(v["valid_from"], "valid_from"), time(0), tzinfo=tz)
                  if v["valid_from"] else None)
    valid_until = (datetime.combine(_date_field(v["valid_until"], "valid_until") + timedelta(days=1), time(0),
                                    tzinfo=tz) if v["valid_until"] else None)
    if valid_from and valid_until and valid_until <= valid_from:
        raise PickerError("valid_until", N_("The validity ends before it starts."))
    order = v["conflict_order"]
    if order and not (order.isdigit() and int(order) <= 1000):
        raise PickerError("conflict_order", N_("The order is a number from 0 to 1000."))
    return ScheduleIn(title=v["title"], programme_id=v["programme_id"], rrule=rrule, tz=str(tz), dtstart=dtstart,
                      rdates=rdates, exdates=_skip_days(v["skip"]), valid_from=valid_from, valid_until=valid_until,
                      priority=v["priority"], volume=v["volume"], targets=targets,
                      conflict_order=int(order) if order else None)


def _conflict_rows(request: Request, overlaps: list[Overlap], titles: dict[str, str], tz: ZoneInfo
                   ) -> list[dict[str, Any]]:
    other = tr(request, "another schedule")
    this = tr(request, "this schedule")

    def name(sid: str) -> str:
        return this if sid in ("(new)", "") else titles.get(sid, other)

    return [{"first": name(o.first.schedule), "first_ms": _ms(o.first.start), "second": name(o.second.schedule),
             "second_ms": _ms(o.second.start), "speakers": sorted(o.speakers)[:10]} for o in overlaps[:20]]


async def _schedule_form(request: Request, principal: Principal, v: dict[str, Any], *, error: str | None = None,
                         conflicts: list[dict[str, Any]] | None = None, checked: bool = False,
                         upcoming: list[int] | None = None, status_code: int = 200) -> HTMLResponse:
    planner = _planner(request)
    programmes = await planner.dispatcher.store.call(planner.schedules.list_programmes, 200)
    communes = await _communes(request, principal, "schedule:write")
    return render(request, principal, "schedule_form.html", {
        "v": v, "error": error, "conflicts": conflicts or [], "checked": checked, "upcoming": upcoming or [],
        "programmes": programmes, "communes": communes, "kinds": KIND_LABELS, "ends": END_LABELS,
        "weekdays": list(zip(WEEKDAYS, DAY_NAMES, strict=True)), "priorities": PRIORITIES,
    }, status_code=status_code)


async def _own_schedule(request: Request, principal: Principal, sid: str, perm: str) -> dict[str, Any] | None:
    """The schedule if it reaches one of the caller's communes for ``perm``, else None (shown as 404)."""
    planner = _planner(request)
    try:
        row: dict[str, Any] = await planner.dispatcher.store.call(planner.schedules.schedule, sid)
    except NotFound:
        return None
    areas = principal.gateways(perm)
    if areas is not None and not (_gateways_of(row["targets"]) & areas):
        return None
    return row


def _schedule_not_found(request: Request, principal: Principal) -> HTMLResponse:
    return render(request, principal, "message.html", {
        "heading": tr(request, "Not found"),
        "message": tr(request, "There is no such schedule, or it is not in your communes."),
    }, status_code=404)


@router.get("/schedule/new", response_class=HTMLResponse)
async def new_schedule(request: Request, principal: CanWriteSchedules, programme: str | None = None) -> HTMLResponse:
    v = _form_defaults(_zone(request))
    communes = await _communes(request, principal, "schedule:write")
    if len(communes) == 1:
        v["targets"] = [communes[0]["id"]]
    if programme and re.fullmatch(SID, programme):
        v["programme_id"] = programme
    return await _schedule_form(request, principal, v)


@router.get("/schedule/{sid}/edit", response_class=HTMLResponse)
async def edit_schedule(request: Request, sid: ScheduleId, principal: CanWriteSchedules) -> HTMLResponse:
    row = await _own_schedule(request, principal, sid, "schedule:write")
    if row is None:
        return _schedule_not_found(request, principal)
    return await _schedule_form(request, principal, _values_of(row, _zone(request)))


@router.post("/schedule", response_class=HTMLResponse)
async def save_schedule(request: Request, principal: CanWriteSchedules) -> Response:
    """``action=check``: show the next times and the conflicts, save nothing; ``action=save``: save a draft
    (refused, with the conflicts listed, while an equal-priority conflict remains)."""
    tz = _zone(request)
    planner = _planner(request)
    form = await request.form(max_files=0, max_fields=1200)
    v = _read_form(form)
    sid = v["sid"] if v["sid"] and re.fullmatch(SID, v["sid"]) else None
    writable = {c["id"] for c in await _communes(request, principal, "schedule:write")}
    old: dict[str, Any] | None = None
    if sid is not None:
        old = await _own_schedule(request, principal, sid, "schedule:write")
        if old is None:
            return _schedule_not_found(request, principal)
        # an edit may not drop or keep a commune the caller cannot write (the API refuses the same)
        if not _gateways_of(old["targets"]) <= writable:
            raise PageForbidden("schedule:write")
    try:
        spec = _spec(v, tz, writable)
    except PickerError as exc:
        return await _schedule_form(request, principal, v, error=tr(request, exc.message), status_code=400)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        return await _schedule_form(request, principal, v, status_code=400, error=tr(
            request, "The schedule is not valid: %(detail)s") % {"detail": f"{where}: {first['msg']}"[:300]})
    titles = {s["id"]: s["title"] for s in await _visible_schedules(request, principal, "schedule:read")}
    store = planner.dispatcher.store
    try:
        if v["action"] != "save":
            found = await store.call(planner.schedules.preview_conflicts, spec, now_ms(), sid)
            now = datetime.now(UTC)
            since = max(now, spec.dtstart)
            upcoming = [_ms(t) for t in spec.recurrence().occurrences(since, since + timedelta(days=62))]
            upcoming = upcoming[:PREVIEW_OCCURRENCES]
            return await _schedule_form(request, principal, v, conflicts=_conflict_rows(request, found, titles, tz),
                                        checked=True, upcoming=upcoming)
        actions = ScheduleActions(planner)
        if sid is None:
            await actions.create_schedule(spec, principal.name, _auditor(request, principal))
        else:
            await actions.update_schedule(sid, spec, principal.name, _auditor(request, principal))
    except ConflictError as exc:
        return await _schedule_form(request, principal, v, checked=True, status_code=409,
                                    conflicts=_conflict_rows(request, exc.overlaps, titles, tz))
    except (BadRequest, NotFound) as exc:
        log.info("schedule form refused: %s", exc)
        return await _schedule_form(request, principal, v, status_code=400, error=tr(
            request, "The scheduler refused this schedule: %(detail)s") % {"detail": str(exc)[:300]})
    gw = spec.targets[0].split("/", 1)[0]
    return RedirectResponse(f"/schedule?gateway={gw}&day={spec.dtstart.astimezone(tz).date()}&saved=1",
                            status_code=303)


# ------------------------------------------------------------------ the programme editor


def _read_items(form: FormData) -> list[dict[str, str]]:
    """The editor's rows, in order: ``kind-N`` is media or text, ``media-N`` a SHA-256, ``text-N`` words."""
    items = []
    for n in range(MAX_ITEMS):
        kind = form.get(f"kind-{n}")
        if not isinstance(kind, str):
            break
        media, text = form.get(f"media-{n}"), form.get(f"text-{n}")
        items.append({"kind": "text" if kind == "text" else "media",
                      "media": media.strip()[:64] if isinstance(media, str) else "",
                      "text": text.strip()[:MAX_TEXT + 1] if isinstance(text, str) else ""})
    return items


def _apply(op: str, items: list[dict[str, str]]) -> list[dict[str, str]]:
    """An editor button: ``add-media``, ``add-text``, ``up-N``, ``down-N``, ``remove-N``."""
    items = list(items)
    if op == "add-media" and len(items) < MAX_ITEMS:
        items.append({"kind": "media", "media": "", "text": ""})
    elif op == "add-text" and len(items) < MAX_ITEMS:
        items.append({"kind": "text", "media": "", "text": ""})
    else:
        m = re.fullmatch(r"(up|down|remove)-(\d{1,3})", op)
        if m:
            n = int(m.group(2))
            if m.group(1) == "remove" and n < len(items):
                items.pop(n)
            elif m.group(1) == "up" and 0 < n < len(items):
                items[n - 1], items[n] = items[n], items[n - 1]
            elif m.group(1) == "down" and n + 1 < len(items):
                items[n], items[n + 1] = items[n + 1], items[n]
    return items


async def _programme_form(request: Request, principal: Principal, *, pid: str, title: str,
                          items: list[dict[str, str]], error: str | None = None, notice: str | None = None,
                          status_code: int = 200) -> HTMLResponse:
    ctx = web(request)
    media = await ctx.dispatcher.store.call(queries.list_media, ctx.dispatcher.db)
    planner = _planner(request)
    programmes = await planner.dispatcher.store.call(planner.schedules.list_programmes, 200)
    return render(request, principal, "programme.html", {
        "pid": pid, "title": title, "items": items, "media": media, "error": error, "notice": notice,
        "programmes": programmes, "max_text": MAX_TEXT,
    }, status_code=status_code)


@router.get("/schedule/programmes", response_class=HTMLResponse)
async def programmes_page(request: Request, principal: CanWriteSchedules, pid: str | None = None,
                          saved: str | None = None) -> HTMLResponse:
    title, items = "", [{"kind": "media", "media": "", "text": ""}]
    if pid and re.fullmatch(SID, pid):
        planner = _planner(request)
        try:
            p = await planner.dispatcher.store.call(planner.schedules.programme, pid)
        except NotFound:
            pid = None
        else:
            title = p["title"]
            items = [{"kind": "media" if i["media_sha256"] else "text", "media": i["media_sha256"] or "",
                      "text": i["text"] or ""} for i in p["items"]]
    else:
        pid = None
    notice = tr(request, "The programme was saved.") if saved else None
    return await _programme_form(request, principal, pid=pid or "", title=title, items=items, notice=notice)


@router.post("/schedule/programmes", response_class=HTMLResponse)
async def programme_save(request: Request, principal: CanWriteSchedules) -> Response:
    """The editor's buttons re-render the form (no JavaScript needed); ``op=save`` stores it. A text item is
    read aloud now and kept as audio (gateways only play audio), as ``loaxa programme add`` does."""
    ctx = web(request)
    form = await request.form(max_files=0, max_fields=4 * MAX_ITEMS + 10)
    pid_raw, title_raw, op_raw = form.get("pid"), form.get("title"), form.get("op")
    pid = pid_raw.strip() if isinstance(pid_raw, str) and re.fullmatch(SID, pid_raw.strip()) else ""
    title = title_raw.strip()[:200] if isinstance(title_raw, str) else ""
    op = op_raw if isinstance(op_raw, str) else ""
    items = _read_items(form)
    if op != "save":
        return await _programme_form(request, principal, pid=pid, title=title, items=_apply(op, items))

    def refuse(message: str) -> Awaitable[HTMLResponse]:
        return _programme_form(request, principal, pid=pid, title=title, items=items, error=message,
                               status_code=400)

    if not title:
        return await refuse(tr(request, "Give the programme a title."))
    if not items:
        return await refuse(tr(request, "Add at least one item."))
    out: list[ProgrammeItemIn] = []
    for n, item in enumerate(items, 1):
        if item["kind"] == "text":
            if not item["text"] or len(item["text"]) > MAX_TEXT:
                return await refuse(tr(request, "Item %(n)s: type the text to read aloud (at most 5000 characters).")
                                    % {"n": n})
            try:
                media = await asyncio.to_thread(ctx.library.tts, item["text"])
            except MediaError as exc:
                log.warning("text-to-speech failed: %s", exc)
                return await refuse(tr(request, "The text could not be read aloud; try again or use an audio file."))
            stored = await ctx.dispatcher.store.call(ctx.dispatcher.db.add_media, media)
            item.update(kind="media", media=stored.sha256)
        if not re.fullmatch(r"[0-9a-f]{64}", item["media"]):
            return await refuse(tr(request, "Item %(n)s: choose an audio file from the library.") % {"n": n})
        out.append(ProgrammeItemIn(media_sha256=item["media"]))
    try:
        spec = ProgrammeIn(title=title, items=out)
        actions = ScheduleActions(_planner(request))
        if pid:
            await actions.update_programme(pid, spec, principal.name, _auditor(request, principal))
        else:
            pid = await actions.create_programme(spec, principal.name, _auditor(request, principal))
    except (ValidationError, BadRequest, NotFound) as exc:
        log.info("programme refused: %s", exc)
        return await refuse(tr(request, "The scheduler refused this programme: %(detail)s")
                            % {"detail": str(exc)[:300]})
    return RedirectResponse(f"/schedule/programmes?pid={pid}&saved=1", status_code=303)


# ------------------------------------------------------------------ Chờ duyệt


async def _pending_cap(request: Request, principal: Principal) -> list[dict[str, Any]]:
    intake = getattr(request.app.state, "cap_intake", None)
    if intake is None:
        return []
    rows = await intake.recent(200)
    areas = principal.gateways("broadcast:approve")
    return [r for r in rows if r["state"] == "pending" and r["gateways"]
            and (areas is None or set(r["gateways"]) <= areas)]


async def _approvals_page(request: Request, principal: Principal, *, notice: str | None = None,
                          error: str | None = None, status_code: int = 200) -> HTMLResponse:
    tz = _zone(request)
    planner = _planner(request)
    pending = []
    if principal.can("schedule:approve"):
        areas = principal.gateways("schedule:approve")
        programmes = {p["id"]: p for p in await planner.dispatcher.store.call(planner.schedules.list_programmes,
                                                                              1000)}
        now = datetime.now(UTC)
        for s in await _visible_schedules(request, principal, "schedule:approve"):
            if s["status"] != STATUS_DRAFT or (areas is not None and not set(s["gateway_ids"]) <= areas):
                continue
            try:
                nxt = await planner.dispatcher.store.call(planner.schedules.occurrences, s["id"], now,
                                                          now + timedelta(days=62))
            except ValueError:
                nxt = []
            s["next_ms"] = [_ms(t) for t in nxt[:5]]
            s["programme"] = programmes.get(s["programme_id"])
            s["picker"] = _values_of(s, tz)
            pending.append(s)
    communes = {c["id"]: c["commune"] for c in await _communes(request, principal, "broadcast:read")}
    return render(request, principal, "approvals.html", {
        "pending": pending, "alerts": await _pending_cap(request, principal), "communes": communes,
        "kinds": KIND_LABELS, "priorities": PRIORITIES, "notice": notice, "error": error,
        "high": PRIORITY_HIGH, "can_emergency": principal.can("broadcast:emergency"),
    }, status_code=status_code)


@router.get("/approvals", response_class=HTMLResponse)
async def approvals(request: Request, principal: CanApprove, done: str | None = None) -> HTMLResponse:
    notices = {"approved": tr(request, "Approved: the schedule is being sent to the gateways."),
               "rejected": tr(request, "Rejected: the person who wrote it sees your reason."),
               "alert": tr(request, "The warning was approved and is being broadcast."),
               "alert-rejected": tr(request, "The warning was rejected: it is not broadcast.")}
    return await _approvals_page(request, principal, notice=notices.get(done or ""))


@router.post("/approvals/schedules/{sid}", response_class=HTMLResponse)
async def decide_schedule(request: Request, sid: ScheduleId, principal: CanApproveSchedules) -> Response:
    row = await _own_schedule(request, principal, sid, "schedule:approve")
    if row is None:
        return _schedule_not_found(request, principal)
    if not all(principal.can("schedule:approve", g) for g in _gateways_of(row["targets"])):
        raise PageForbidden("schedule:approve")
    form = await request.form(max_files=0, max_fields=10)
    action, reason, version = (form.get("action"), form.get("reason"), form.get("version"))
    reason_text = reason.strip()[:500] if isinstance(reason, str) else ""
    seen = int(version) if isinstance(version, str) and version.isdigit() else None
    if action == "reject" and not reason_text:
        return await _approvals_page(request, principal, status_code=400,
                                     error=tr(request, "Write the reason for rejecting: the author needs it."))
    status = STATUS_APPROVED if action == "approve" else STATUS_REJECTED
    try:
        await ScheduleActions(_planner(request)).decide(sid, status, principal.name, _auditor(request, principal),
                                                        reason=reason_text or None, version=seen)
    except ConflictError:
        return await _approvals_page(request, principal, status_code=409, error=tr(
            request, "It now collides with another schedule of the same level; ask the author to change it."))
    except (BadRequest, NotFound) as exc:
        log.info("decision on %s refused: %s", sid, exc)
        return await _approvals_page(request, principal, status_code=400, error=tr(
            request, "The scheduler refused: %(detail)s") % {"detail": str(exc)[:300]})
    return RedirectResponse("/approvals?done=" + ("approved" if status == STATUS_APPROVED else "rejected"),
                            status_code=303)


@router.post("/approvals/alerts/{alert_id}", response_class=HTMLResponse)
async def decide_alert(request: Request, alert_id: int, principal: CanApprove) -> Response:
    """Send the broadcast of a CAP alert that waits for approval, or refuse it with a reason (the intake's
    ``approve``/``reject``, audited as the API does)."""
    from scheduler.warnings.intake import CapRefused

    intake = getattr(request.app.state, "cap_intake", None)
    row = await intake.get(alert_id) if intake is not None else None
    gws = set(row.gateways or []) if row is not None else set()
    if intake is None or row is None or not gws or not all(principal.can("broadcast:approve", g) for g in gws):
        return render(request, principal, "message.html", {
            "heading": tr(request, "Not found"), "message": tr(request, "There is no such warning waiting.")},
            status_code=404)
    form = await request.form(max_files=0, max_fields=10)
    action, reason = form.get("action"), form.get("reason")
    reason_text = reason.strip()[:500] if isinstance(reason, str) else ""
    rejecting = action == "reject"
    if not rejecting and (row.priority or 0) > PRIORITY_HIGH and not all(
            principal.can("broadcast:emergency", g) for g in gws):
        raise PageForbidden("broadcast:emergency")
    if rejecting and not reason_text:
        return await _approvals_page(request, principal, status_code=400,
                                     error=tr(request, "Write the reason for rejecting the warning."))
    try:
        done = await (intake.reject(alert_id) if rejecting else intake.approve(alert_id, principal.name))
    except CapRefused as exc:
        log.info("CAP alert %s not decided: %s", alert_id, exc.message)
        return await _approvals_page(request, principal, status_code=409, error=tr(
            request, "The warning can no longer be approved (expired or replaced)."))
    detail: dict[str, Any] = {"gateways": done.gateways, "via": "web"}
    detail.update({"reason": reason_text} if rejecting else {"broadcast_id": done.broadcast_id})
    await get_access(request).audit(principal, "cap.reject" if rejecting else "cap.approve",
                                    address=client_address(request), target=str(alert_id), detail=detail)
    return RedirectResponse("/approvals?done=" + ("alert-rejected" if rejecting else "alert"), status_code=303)
