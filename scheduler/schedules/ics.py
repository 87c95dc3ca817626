"""iCalendar (RFC 5545) import and export of schedules, so a schedule can be checked in any
calendar program and one made in a calendar program can be brought in.

Each schedule is one VEVENT: DTSTART with its TZID (and a VTIMEZONE), DURATION, RRULE, EXDATE,
RDATE, SUMMARY, and the level both as iCalendar's PRIORITY (1 = highest) and exactly as
``X-LOAXA-PRIORITY`` (0–9). Import refuses, naming the event, what Loa Xã would have to guess:
floating or all-day start times, several RRULEs, RDATE periods, a rule it does not support.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from icalendar import Calendar, Event, vRecur

from scheduler.schedules.levels import level_of
from scheduler.schedules.recurrence import Recurrence, RecurrenceError

PRODID = "-//Loa Xa//scheduler//VI"
MAX_ICS_BYTES = 1 << 20
MAX_EVENTS = 500
#: Loa Xã level -> iCalendar PRIORITY (1 highest … 9 lowest; 0 is "undefined").
ICAL_PRIORITY = {"emergency": 1, "priority": 5, "normal": 9}


class IcsError(ValueError):
    """An .ics file that cannot be imported (the message names the event and the property)."""


@dataclass(frozen=True)
class IcsSchedule:
    uid: str
    summary: str
    recurrence: Recurrence
    duration: timedelta | None = None
    priority: int | None = None  # 0–9
    description: str | None = None


def export_ics(schedules: Iterable[IcsSchedule], *, name: str | None = None) -> bytes:
    """A VCALENDAR with one VEVENT per schedule (and the VTIMEZONEs they use)."""
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    if name:
        cal.add("x-wr-calname", name)
    stamp = datetime.now(UTC).replace(microsecond=0)
    for sch in schedules:
        rec = sch.recurrence
        tz = rec.zoneinfo
        ev = Event()
        ev.add("uid", sch.uid)
        ev.add("dtstamp", stamp)
        ev.add("summary", sch.summary)
        if sch.description:
            ev.add("description", sch.description)
        ev.add("dtstart", rec.dtstart.astimezone(tz))
        if sch.duration is not None:
            ev.add("duration", sch.duration)
        if rec.rule is not None:
            ev.add("rrule", vRecur.from_ical(rec.rule.text))
        exdates = [x.astimezone(tz) if isinstance(x, datetime) else x for x in rec.exdates]
        exdays = [x for x in exdates if not isinstance(x, datetime)]
        exinstants = [x for x in exdates if isinstance(x, datetime)]
        if exinstants:
            ev.add("exdate", exinstants)
        if exdays:
            ev.add("exdate", exdays)
        if rec.rdates:
            ev.add("rdate", [r.astimezone(tz) for r in rec.rdates])
        if sch.priority is not None:
            ev.add("priority", ICAL_PRIORITY[level_of(sch.priority).name])
            ev.add("x-loaxa-priority", str(sch.priority))
        if rec.valid_from is not None:
            ev.add("x-loaxa-valid-from", rec.valid_from.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ"))
        if rec.valid_until is not None:
            ev.add("x-loaxa-valid-until", rec.valid_until.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ"))
        cal.add_component(ev)
    if hasattr(cal, "add_missing_timezones"):
        cal.add_missing_timezones()
    data: bytes = cal.to_ical()
    return data


def _zone_name(dt: datetime, where: str) -> str:
    tzinfo = dt.tzinfo
    if tzinfo is None:
        raise IcsError(f"{where}: DTSTART is a floating time; give it a TZID (e.g. TZID=Asia/Ho_Chi_Minh) or UTC")
    if isinstance(tzinfo, ZoneInfo):
        return tzinfo.key
    if dt.utcoffset() == timedelta(0):
        return "UTC"
    raise IcsError(f"{where}: DTSTART's time zone {tzinfo!s} is not an IANA zone (e.g. Asia/Ho_Chi_Minh)")


def _dates(prop: Any, where: str, what: str, allow_dates: bool) -> list[datetime | date]:
    props = prop if isinstance(prop, list) else [prop]
    out: list[datetime | date] = []
    for p in props:
        for v in getattr(p, "dts", []):
            dt = v.dt
            if isinstance(dt, datetime):
                if dt.tzinfo is None:
                    raise IcsError(f"{where}: {what} {dt.isoformat()} is a floating time; give it a TZID")
                out.append(dt)
            elif isinstance(dt, date) and allow_dates:
                out.append(dt)
            else:
                raise IcsError(f"{where}: {what} value {dt!r} is not supported (use date-times)")
    return out


def _utc(text: Any, where: str, what: str) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.strptime(str(text), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise IcsError(f"{where}: {what} {text!r}: write a UTC time like 20261231T170000Z") from exc


def import_ics(data: bytes) -> list[IcsSchedule]:
    """The VEVENTs of an .ics file as schedules (all or nothing: the first bad event stops it)."""
    if len(data) > MAX_ICS_BYTES:
        raise IcsError(f"the file is larger than {MAX_ICS_BYTES // 1024} KiB")
    try:
        cal = Calendar.from_ical(data)
    except ValueError as exc:
        raise IcsError(f"not an iCalendar file: {exc}") from exc
    events = list(cal.walk("VEVENT"))
    if len(events) > MAX_EVENTS:
        raise IcsError(f"{len(events)} events: import at most {MAX_EVENTS} at once")
    out: list[IcsSchedule] = []
    for n, ev in enumerate(events, 1):
        uid = str(ev.get("uid") or f"event-{n}")
        where = f"event {n} (UID {uid})"
        start = ev.get("dtstart")
        if start is None:
            raise IcsError(f"{where}: no DTSTART")
        dtstart = start.dt
        if not isinstance(dtstart, datetime):
            raise IcsError(f"{where}: DTSTART is a whole day; broadcasts need a time of day")
        tz = _zone_name(dtstart, where)
        rrule = ev.get("rrule")
        if isinstance(rrule, list):
            raise IcsError(f"{where}: several RRULEs; split it into one event per rule")
        duration: timedelta | None = None
        if ev.get("duration") is not None:
            duration = ev.get("duration").dt
        elif ev.get("dtend") is not None:
            end = ev.get("dtend").dt
            if isinstance(end, datetime):
                duration = end - dtstart
        if duration is not None and duration <= timedelta(0):
            raise IcsError(f"{where}: the event ends before it starts")
        priority: int | None = None
        raw_priority = ev.get("x-loaxa-priority")
        if raw_priority is not None:
            try:
                priority = int(str(raw_priority))
                level_of(priority)
            except ValueError as exc:
                raise IcsError(f"{where}: X-LOAXA-PRIORITY {raw_priority!r} must be 0-9") from exc
        elif ev.get("priority") is not None:
            p = int(ev.get("priority"))
            priority = 9 if 1 <= p <= 4 else 6 if p == 5 else 3
        rdates = _dates(ev.get("rdate"), where, "RDATE", False) if ev.get("rdate") is not None else []
        exdates = _dates(ev.get("exdate"), where, "EXDATE", True) if ev.get("exdate") is not None else []
        try:
            rec = Recurrence(
                dtstart=dtstart,
                tz=tz,
                rrule=rrule.to_ical().decode() if rrule is not None else None,
                exdates=tuple(exdates),
                rdates=tuple(d for d in rdates if isinstance(d, datetime)),
                valid_from=_utc(ev.get("x-loaxa-valid-from"), where, "X-LOAXA-VALID-FROM"),
                valid_until=_utc(ev.get("x-loaxa-valid-until"), where, "X-LOAXA-VALID-UNTIL"),
            )
        except RecurrenceError as exc:
            raise IcsError(f"{where}: {exc}") from exc
        summary = str(ev.get("summary") or "")[:200]
        description = str(ev.get("description"))[:2000] if ev.get("description") is not None else None
        out.append(IcsSchedule(uid[:200], summary, rec, duration, priority, description))
    return out
