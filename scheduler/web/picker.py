"""The recurrence picker of *Lịch phát*: the choices of a commune office turned into an RFC 5545 rule.

Staff choose "once", "every day", "every day except Sunday" or some weekdays, one or several times of
day, a first day, and an end (never, a last day, or a number of times). :func:`build` writes the
RRULE, DTSTART (the first time the rule gives on or after the first day: RFC 5545 wants DTSTART to
be an occurrence) and RDATEs (the other times of a one-off); :func:`decode` reads back a rule the
picker wrote, so that editing shows the same choices. Any other rule (an imported .ics) is kept as
text under "custom".

Several times a day with different minutes (06:00 and 17:30) cannot be said with BYHOUR and
BYMINUTE alone (they combine into 06:00, 06:30, 17:00, 17:30): the picker then writes a DAILY rule
with BYSETPOS picking the wanted ones out of that set, which every calendar program understands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from itertools import product
from zoneinfo import ZoneInfo

from scheduler.web.nav import N_

WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
KINDS = ("once", "daily", "except_sunday", "weekdays", "custom")
ENDS = ("never", "until", "count")
MAX_TIMES = 24
MAX_COUNT = 10_000
_TIME = re.compile(r"^(\d{1,2})\s*(?:[:hH.g]\s*(\d{2})?)?$")


class PickerError(ValueError):
    """A choice that makes no rule; ``field`` names the form field, the message is an English msgid."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass
class Picker:
    kind: str = "except_sunday"
    days: list[str] = field(default_factory=list)  # for "weekdays": MO … SU
    times: list[time] = field(default_factory=lambda: [time(6, 0)])
    start: date = field(default_factory=date.today)
    end: str = "never"
    until: date | None = None
    count: int | None = None
    custom_rrule: str = ""

    def weekdays(self) -> list[str]:
        if self.kind == "daily":
            return list(WEEKDAYS)
        if self.kind == "except_sunday":
            return list(WEEKDAYS[:6])
        return [d for d in WEEKDAYS if d in self.days]


def parse_times(text: str) -> list[time]:
    """``06:00, 17:00`` (also ``6h``, ``17h30``, ``17.30``; commas, semicolons or spaces between)."""
    out: set[time] = set()
    for part in re.split(r"[,;\s]+(?=\d)", text.strip()):
        part = part.strip().rstrip(",;")
        if not part:
            continue
        m = _TIME.match(part)
        if m is None:
            raise PickerError("times", N_("Write each time of day as HH:MM, for example 06:00, 17:00."))
        hour, minute = int(m.group(1)), int(m.group(2) or 0)
        if hour > 23 or minute > 59:
            raise PickerError("times", N_("Write each time of day as HH:MM, for example 06:00, 17:00."))
        out.add(time(hour, minute))
    if not out:
        raise PickerError("times", N_("Give at least one time of day."))
    if len(out) > MAX_TIMES:
        raise PickerError("times", N_("At most 24 times a day."))
    return sorted(out)


def format_times(times: list[time]) -> str:
    return ", ".join(t.strftime("%H:%M") for t in times)


def _at(day: date, t: time, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, t, tzinfo=tz)


def build(p: Picker, tz: ZoneInfo) -> tuple[str | None, datetime, list[datetime]]:
    """(RRULE or None, DTSTART, RDATEs) of the choices; raises :class:`PickerError`."""
    times = sorted(set(p.times))
    if not times:
        raise PickerError("times", N_("Give at least one time of day."))
    if p.kind == "once":
        return None, _at(p.start, times[0], tz), [_at(p.start, t, tz) for t in times[1:]]
    if p.kind == "custom":
        rule = p.custom_rrule.strip().removeprefix("RRULE:")
        if not rule:
            raise PickerError("custom_rrule", N_("Write the rule (RRULE) or choose another repetition."))
        return rule, _at(p.start, times[0], tz), []
    if p.kind not in KINDS:
        raise PickerError("kind", N_("Choose how often it plays."))
    days = p.weekdays()
    if not days:
        raise PickerError("days", N_("Tick at least one day of the week."))
    hours = sorted({t.hour for t in times})
    minutes = sorted({t.minute for t in times})
    every_day = len(days) == 7
    parts: list[str]
    if len(minutes) == 1 or len(times) == len(hours) * len(minutes):
        parts = ["FREQ=DAILY"] if every_day else ["FREQ=WEEKLY", "BYDAY=" + ",".join(days)]
        parts += ["BYHOUR=" + ",".join(map(str, hours)), "BYMINUTE=" + ",".join(map(str, minutes))]
    else:
        grid = [time(h, m) for h, m in product(hours, minutes)]
        positions = [str(grid.index(t) + 1) for t in times]
        parts = ["FREQ=DAILY"] + ([] if every_day else ["BYDAY=" + ",".join(days)])
        parts += ["BYHOUR=" + ",".join(map(str, hours)), "BYMINUTE=" + ",".join(map(str, minutes)),
                  "BYSETPOS=" + ",".join(positions)]
    first = p.start
    while WEEKDAYS[first.weekday()] not in days:
        first += timedelta(days=1)
    if p.end == "until":
        if p.until is None:
            raise PickerError("until", N_("Give the last day."))
        if p.until < first:
            raise PickerError("until", N_("The last day is before the first time it plays."))
        parts.append("UNTIL=" + p.until.strftime("%Y%m%d"))
    elif p.end == "count":
        if p.count is None or not 1 <= p.count <= MAX_COUNT:
            raise PickerError("count", N_("The number of times is from 1 to 10000."))
        parts.append(f"COUNT={p.count}")
    return ";".join(parts), _at(first, times[0], tz), []


def decode(rrule: str | None, dtstart: datetime, rdates: list[datetime]) -> Picker:
    """The picker's choices for a stored rule (``dtstart``/``rdates`` in the schedule's zone)."""
    start = dtstart.date()
    if rrule is None:
        extra = [r.timetz().replace(tzinfo=None) for r in rdates if r.date() == start]
        if len(extra) == len(rdates):
            return Picker(kind="once", times=sorted({dtstart.time().replace(tzinfo=None), *extra}), start=start)
        return Picker(kind="custom", times=[dtstart.time()], start=start, custom_rrule="")
    parts = dict(p.split("=", 1) for p in rrule.split(";") if "=" in p)
    custom = Picker(kind="custom", times=[dtstart.time().replace(tzinfo=None)], start=start, custom_rrule=rrule)
    allowed = {"FREQ", "BYDAY", "BYHOUR", "BYMINUTE", "BYSETPOS", "UNTIL", "COUNT"}
    if rdates or not set(parts) <= allowed or parts.get("FREQ") not in ("DAILY", "WEEKLY") \
            or "BYHOUR" not in parts or "BYMINUTE" not in parts:
        return custom
    try:
        hours = [int(x) for x in parts["BYHOUR"].split(",")]
        minutes = [int(x) for x in parts["BYMINUTE"].split(",")]
        grid = [time(h, m) for h, m in product(sorted(hours), sorted(minutes))]
        times = [grid[int(x) - 1] for x in parts["BYSETPOS"].split(",")] if "BYSETPOS" in parts else grid
        days = parts.get("BYDAY", ",".join(WEEKDAYS)).split(",")
        if not set(days) <= set(WEEKDAYS) or (parts["FREQ"] == "WEEKLY" and "BYDAY" not in parts):
            return custom
        picker = Picker(times=sorted(set(times)), start=start)
        if "UNTIL" in parts:
            if not re.fullmatch(r"\d{8}", parts["UNTIL"]):
                return custom
            picker.end, picker.until = "until", datetime.strptime(parts["UNTIL"], "%Y%m%d").date()
        elif "COUNT" in parts:
            picker.end, picker.count = "count", int(parts["COUNT"])
    except (ValueError, IndexError):
        return custom
    ordered = [d for d in WEEKDAYS if d in days]
    if ordered == list(WEEKDAYS):
        picker.kind = "daily"
    elif ordered == list(WEEKDAYS[:6]):
        picker.kind = "except_sunday"
    else:
        picker.kind, picker.days = "weekdays", ordered
    return picker
