"""Recurrence of a schedule: RFC 5545 RRULE, EXDATE and RDATE in a named time zone.

Rules are expanded in **local wall time** of the schedule's zone, then converted to UTC: "06:00
every day" in Europe/Berlin stays 06:00 local across daylight-saving changes (05:00 UTC in winter,
04:00 UTC in summer). Asia/Ho_Chi_Minh (the default) has no DST, but a commune's schedule must
behave the same if a zone ever changes its rules, and an .ics file may come from anywhere.

RFC 5545 choices, made explicit:

* DTSTART must itself be an occurrence of the rule (the RFC leaves other cases undefined); it then
  counts as the first of COUNT.
* A local time that does not exist (the hour skipped in spring) is taken with the offset before the
  gap, i.e. moved forward by the gap (02:30 becomes 03:30); a local time that exists twice (autumn)
  is the first of the two. Both are what RFC 5545 section 3.3.5 prescribes.
* UNTIL is a UTC time (``…Z``) or a date (the whole local day counts); a floating local time is
  refused rather than guessed. COUNT and UNTIL together are refused (RFC 5545 forbids it).
* EXDATE entries are instants (or local wall times) that remove exactly that occurrence, or dates
  that remove every occurrence on that local day. RDATE adds instants; EXDATE removes them too.
* FREQ=SECONDLY/MINUTELY are refused; every expansion has a window and a hard cap on occurrences.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil import rrule as du

DEFAULT_TZ = "Asia/Ho_Chi_Minh"
#: At most this many occurrences per expansion (a year of a rule playing every hour fits).
MAX_OCCURRENCES = 10_000
#: At most this many instances of a rule are walked through to reach a window (from DTSTART).
MAX_SCAN = 200_000
#: The longest window one expansion may cover.
MAX_WINDOW = timedelta(days=3 * 366)
MAX_RULE_CHARS = 500
MAX_DATES = 1000  # EXDATE / RDATE entries per schedule

#: dateutil frequency constants
Freq = Literal[0, 1, 2, 3, 4, 5, 6]
_FREQS: dict[str, Freq] = {
    "YEARLY": du.YEARLY, "MONTHLY": du.MONTHLY, "WEEKLY": du.WEEKLY, "DAILY": du.DAILY, "HOURLY": du.HOURLY,
}
_DAYS = {"MO": du.MO, "TU": du.TU, "WE": du.WE, "TH": du.TH, "FR": du.FR, "SA": du.SA, "SU": du.SU}
_BYDAY = re.compile(r"^([+-]?\d{1,2})?(MO|TU|WE|TH|FR|SA|SU)$")
_UNTIL_UTC = re.compile(r"^(\d{8})T(\d{6})Z$")
_UNTIL_DATE = re.compile(r"^\d{8}$")
#: Integer list parts and their allowed ranges (0 is excluded where the RFC excludes it).
_INT_PARTS: dict[str, tuple[str, int, int, bool]] = {
    "BYHOUR": ("byhour", 0, 23, True),
    "BYMINUTE": ("byminute", 0, 59, True),
    "BYMONTH": ("bymonth", 1, 12, True),
    "BYMONTHDAY": ("bymonthday", -31, 31, False),
    "BYYEARDAY": ("byyearday", -366, 366, False),
    "BYWEEKNO": ("byweekno", -53, 53, False),
    "BYSETPOS": ("bysetpos", -366, 366, False),
}
EXAMPLE_RULE = "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA;BYHOUR=6,17;BYMINUTE=0"


class RecurrenceError(ValueError):
    """A rule, date or zone that cannot be used; the message names the part at fault and shows an example."""


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``, or :class:`RecurrenceError`."""
    if not name or len(name) > 64:
        raise RecurrenceError(f"time zone {name!r}: write an IANA name such as {DEFAULT_TZ}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise RecurrenceError(f"time zone {name!r} is unknown: write an IANA name such as {DEFAULT_TZ}") from exc


def to_utc(local: datetime, tz: ZoneInfo) -> datetime:
    """A local wall time (naive) in ``tz`` as a UTC instant, with the RFC 5545 rules for gaps and folds."""
    # fold=0 means "the first" for a repeated time and "the offset before the change" for a skipped
    # one: zoneinfo then yields exactly the RFC 5545 instant.
    return local.replace(tzinfo=tz, fold=0).astimezone(UTC)


def to_local(instant: datetime, tz: ZoneInfo) -> datetime:
    """An aware instant as naive local wall time in ``tz``."""
    if instant.tzinfo is None:
        raise RecurrenceError(f"{instant.isoformat()} has no UTC offset")
    return instant.astimezone(tz).replace(tzinfo=None, fold=0)


@dataclass(frozen=True)
class Rule:
    """A parsed, checked RRULE value (without DTSTART)."""

    text: str
    freq: Freq
    params: dict[str, Any]
    count: int | None
    until_utc: datetime | None  # inclusive
    until_date: date | None  # inclusive, local


def parse_rule(text: str) -> Rule:
    """Parse an RRULE value (``FREQ=…;…``, an ``RRULE:`` prefix is allowed); refuse what is not supported."""
    raw = text.strip()
    if raw.upper().startswith("RRULE:"):
        raw = raw[6:]
    if not raw or len(raw) > MAX_RULE_CHARS:
        raise RecurrenceError(f"rule {text[:60]!r}: write RFC 5545 RRULE parts, e.g. {EXAMPLE_RULE}")
    parts: dict[str, str] = {}
    for chunk in raw.split(";"):
        key, sep, value = chunk.partition("=")
        key = key.strip().upper()
        if not sep or not key or not value.strip():
            raise RecurrenceError(f"rule part {chunk!r}: write NAME=VALUE, e.g. {EXAMPLE_RULE}")
        if key in parts:
            raise RecurrenceError(f"rule part {key} is given twice")
        parts[key] = value.strip().upper()
    if "FREQ" not in parts:
        raise RecurrenceError(f"rule {raw!r} has no FREQ, e.g. {EXAMPLE_RULE}")
    freq_name = parts.pop("FREQ")
    if freq_name not in _FREQS:
        raise RecurrenceError(f"FREQ={freq_name}: use one of {', '.join(_FREQS)} (SECONDLY/MINUTELY are refused)")
    params: dict[str, Any] = {}
    count: int | None = None
    until_utc: datetime | None = None
    until_date: date | None = None
    for key, value in parts.items():
        if key == "INTERVAL":
            params["interval"] = _int(key, value, 1, 1000)
        elif key == "COUNT":
            count = _int(key, value, 1, MAX_OCCURRENCES)
        elif key == "UNTIL":
            if m := _UNTIL_UTC.match(value):
                until_utc = datetime.strptime(m.group(1) + m.group(2), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
            elif _UNTIL_DATE.match(value):
                until_date = datetime.strptime(value, "%Y%m%d").date()
            else:
                raise RecurrenceError(f"UNTIL={value}: write a UTC time like 20261231T165959Z or a date like 20261231")
        elif key == "WKST":
            if value not in _DAYS:
                raise RecurrenceError(f"WKST={value}: use one of {', '.join(_DAYS)}")
            params["wkst"] = _DAYS[value]
        elif key == "BYDAY":
            days = []
            for item in value.split(","):
                m = _BYDAY.match(item.strip())
                if m is None:
                    raise RecurrenceError(f"BYDAY={value}: {item!r} is not a day; write e.g. MO,TU or 1MO or -1FR")
                n = int(m.group(1)) if m.group(1) else None
                if n is not None and not (1 <= abs(n) <= 53):
                    raise RecurrenceError(f"BYDAY={value}: {item!r}: the number must be 1-53 or -53 to -1")
                days.append(_DAYS[m.group(2)](n) if n is not None else _DAYS[m.group(2)])
            params["byweekday"] = days
        elif key == "BYSECOND":
            if value != "0":
                raise RecurrenceError("BYSECOND: only 0 is supported (broadcasts start on the minute)")
            params["bysecond"] = [0]
        elif key in _INT_PARTS:
            name, lo, hi, zero_ok = _INT_PARTS[key]
            values = [_int(key, v, lo, hi) for v in value.split(",")]
            if not zero_ok and 0 in values:
                raise RecurrenceError(f"{key}={value}: 0 is not allowed")
            params[name] = values
        else:
            raise RecurrenceError(f"rule part {key} is not supported")
    if count is not None and (until_utc or until_date):
        raise RecurrenceError("COUNT and UNTIL cannot both be given (RFC 5545): keep one")
    return Rule(f"FREQ={freq_name}" + "".join(f";{k}={v}" for k, v in parts.items()), _FREQS[freq_name],
                params, count, until_utc, until_date)


def _int(key: str, value: str, lo: int, hi: int) -> int:
    v = value.strip()
    if not re.fullmatch(r"[+-]?\d{1,6}", v):
        raise RecurrenceError(f"{key}={value}: {v!r} is not a whole number")
    n = int(v)
    if not lo <= n <= hi:
        raise RecurrenceError(f"{key}={value}: {n} is outside {lo}..{hi}")
    return n


@dataclass(frozen=True)
class Recurrence:
    """When a schedule plays. ``dtstart`` and the validity window are instants (aware); EXDATE/RDATE
    entries may be instants, naive local wall times in ``tz``, or (EXDATE only) whole local dates."""

    dtstart: datetime
    tz: str = DEFAULT_TZ
    rrule: str | None = None  # None: once, at dtstart (plus any RDATE)
    exdates: tuple[datetime | date, ...] = ()
    rdates: tuple[datetime, ...] = ()
    valid_from: datetime | None = None
    valid_until: datetime | None = None  # exclusive
    _rule: Rule | None = field(default=None, init=False, repr=False, compare=False)
    _zone: ZoneInfo | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.dtstart.tzinfo is None:
            raise RecurrenceError(f"dtstart {self.dtstart.isoformat()} has no UTC offset: write e.g. "
                                  "2026-12-01T06:00:00+07:00")
        for name in ("valid_from", "valid_until"):
            v = getattr(self, name)
            if v is not None and v.tzinfo is None:
                raise RecurrenceError(f"{name} {v.isoformat()} has no UTC offset")
        if self.valid_from and self.valid_until and self.valid_until <= self.valid_from:
            raise RecurrenceError("valid_until must be after valid_from")
        if len(self.exdates) > MAX_DATES or len(self.rdates) > MAX_DATES:
            raise RecurrenceError(f"at most {MAX_DATES} EXDATE and {MAX_DATES} RDATE entries")
        object.__setattr__(self, "_zone", zone(self.tz))
        if self.rrule is not None:
            rule = parse_rule(self.rrule)
            object.__setattr__(self, "_rule", rule)
            if (rule.until_utc and rule.until_utc < self.dtstart) or (
                rule.until_date and rule.until_date < self.local_start.date()
            ):
                raise RecurrenceError(f"UNTIL is before dtstart in {rule.text}")
            first = next(iter(self._dateutil_rule(rule, None)), None)
            if first != self.local_start:
                day = self.local_start.strftime("%a %Y-%m-%d %H:%M")
                raise RecurrenceError(f"dtstart ({day} {self.tz}) is not an occurrence of {rule.text}: "
                                      "start on the first time the rule plays")

    @property
    def zoneinfo(self) -> ZoneInfo:
        assert self._zone is not None
        return self._zone

    @property
    def rule(self) -> Rule | None:
        return self._rule

    @property
    def local_start(self) -> datetime:
        return to_local(self.dtstart, self.zoneinfo)

    def _dateutil_rule(self, rule: Rule, until_local: datetime | None) -> du.rrule:
        return du.rrule(rule.freq, dtstart=self.local_start, count=rule.count, until=until_local, cache=False,
                        **rule.params)

    def _instant(self, value: datetime) -> datetime:
        return value.astimezone(UTC) if value.tzinfo is not None else to_utc(value, self.zoneinfo)

    def occurrences(self, start: datetime, end: datetime, *, limit: int = MAX_OCCURRENCES) -> list[datetime]:
        """Start instants (UTC, aware) in ``[start, end)`` and the validity window, in order.

        Raises :class:`RecurrenceError` when the window is too long or holds more than ``limit``.
        """
        if start.tzinfo is None or end.tzinfo is None:
            raise RecurrenceError("the window needs UTC offsets, e.g. 2026-12-01T00:00:00+07:00")
        if end <= start:
            raise RecurrenceError("the window ends before it starts")
        if end - start > MAX_WINDOW:
            raise RecurrenceError(f"the window is longer than {MAX_WINDOW.days} days: ask for less at a time")
        lo = max(start, self.valid_from) if self.valid_from else start
        hi = min(end, self.valid_until) if self.valid_until else end
        if hi <= lo:
            return []
        tz = self.zoneinfo
        ex_instants = {self._instant(x) for x in self.exdates if isinstance(x, datetime)}
        ex_days = {x for x in self.exdates if not isinstance(x, datetime)}
        found: set[datetime] = set()

        def consider(instant: datetime) -> None:
            if not (lo <= instant < hi) or instant in ex_instants:
                return
            if ex_days and instant.astimezone(tz).date() in ex_days:
                return
            found.add(instant)
            if len(found) > limit:
                raise RecurrenceError(f"more than {limit} occurrences between {lo.isoformat()} and "
                                      f"{hi.isoformat()}: ask for a shorter window")

        for instant in self._rule_instants(hi):
            consider(instant)
        for r in self.rdates:
            consider(self._instant(r))
        return sorted(found)

    def _rule_instants(self, hi: datetime) -> Iterator[datetime]:
        """Instants of the RRULE (or DTSTART alone) up to ``hi``, in order, from DTSTART."""
        rule = self._rule
        if rule is None:
            yield self.dtstart.astimezone(UTC)
            return
        tz = self.zoneinfo
        # Walk in local wall time, a day past the end (offsets are under a day), then cut exactly in UTC.
        bound = to_local(hi, tz) + timedelta(days=1)
        if rule.until_date is not None:
            bound = min(bound, datetime.combine(rule.until_date, datetime.max.time()).replace(microsecond=0))
        if rule.until_utc is not None:
            bound = min(bound, to_local(rule.until_utc, tz) + timedelta(days=1))
        # COUNT rules end by themselves (counted from DTSTART); dateutil must not get COUNT and UNTIL both
        for n, local in enumerate(self._dateutil_rule(rule, None if rule.count else bound)):
            if n >= MAX_SCAN:
                raise RecurrenceError(f"the rule has more than {MAX_SCAN} occurrences between dtstart and the "
                                      "window: move dtstart closer")
            instant = to_utc(local, tz)
            if rule.until_utc is not None and instant > rule.until_utc:
                return
            if instant >= hi:
                return
            yield instant
