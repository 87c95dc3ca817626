"""Times typed by people, read exactly or refused with an example; never guessed.

Accepted (``tz`` is the scheduler's zone, Asia/Ho_Chi_Minh unless configured otherwise):

* ISO 8601 with an offset: ``2026-12-01T06:00+07:00``, ``2026-12-01 06:00:00Z``;
* a full local date and time (CLI only): ``2026-12-01 06:00`` or ``2026-12-01T06:00``, in ``tz``;
* ``today 17:00``, ``tomorrow 06:00``, ``hôm nay 17:00``, ``ngày mai 06:00`` (also without
  diacritics, and ``17h00``/``17h`` for the clock time).

Everything else is refused: a bare ``18:30`` (today or tomorrow?), ``01/12/2026`` (which is the
month?), weekday names and ranges such as ``Mon-Sat 06:00`` (a recurring schedule, not a time: the
old parser turned that into one broadcast on Saturday), words like ``sáng mai``. A local time that
does not exist or exists twice on that day (a daylight-saving change) is refused too.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from scheduler.schedules.recurrence import DEFAULT_TZ, zone

EXAMPLES = '"2026-12-01T06:00+07:00", "today 17:00", "tomorrow 06:00", "hôm nay 17:00" or "ngày mai 06:00"'
MAX_CHARS = 64

_ISO_OFFSET = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})$")
_ISO_LOCAL = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2})?$")
_CLOCK = r"(\d{1,2})(?::(\d{2})|h(\d{2})?)"
_RELATIVE = re.compile(rf"^(today|tomorrow|hom nay|ngay mai) {_CLOCK}$")
_DAY_OFFSET = {"today": 0, "hom nay": 0, "tomorrow": 1, "ngay mai": 1}


class TimeInputError(ValueError):
    """The text is not one of the accepted forms; the message shows examples."""


def _plain(text: str) -> str:
    """Lower case, no diacritics, single spaces ("Ngày  mai" -> "ngay mai")."""
    s = unicodedata.normalize("NFD", text.strip().lower().replace("đ", "d"))
    return " ".join("".join(c for c in s if not unicodedata.combining(c)).split())


def exact_local(wall: datetime, tz: ZoneInfo, text: str) -> datetime:
    """``wall`` (naive) in ``tz``, refusing a wall time skipped or repeated by a DST change."""
    first = wall.replace(tzinfo=tz, fold=0)
    if first.astimezone(ZoneInfo("UTC")).astimezone(tz).replace(tzinfo=None) != wall:
        raise TimeInputError(f"{text!r}: {wall:%Y-%m-%d %H:%M} does not exist in {tz.key} (the clocks "
                             "jump over it); write another time or give its offset")
    if first.utcoffset() != wall.replace(tzinfo=tz, fold=1).utcoffset():
        raise TimeInputError(f"{text!r}: {wall:%Y-%m-%d %H:%M} happens twice in {tz.key} (the clocks go "
                             "back); write it with its offset, e.g. 2026-10-25T02:30+02:00")
    return first


def parse_time(text: str, tz_name: str = DEFAULT_TZ, now: datetime | None = None, *,
               allow_local: bool = True) -> datetime:
    """The instant ``text`` names, as an aware datetime in ``tz_name``.

    ``allow_local=False`` (the HTTP API) accepts only ISO 8601 with an offset.
    """
    tz = zone(tz_name)
    raw = text.strip()
    if not raw or len(raw) > MAX_CHARS:
        raise TimeInputError(f"cannot read the time {text[:MAX_CHARS]!r}; write e.g. {EXAMPLES}")
    if _ISO_OFFSET.match(raw):
        try:
            return datetime.fromisoformat(raw.replace("Z", "+00:00")).astimezone(tz)
        except ValueError as exc:
            raise TimeInputError(f"{text!r}: {exc}; write e.g. {EXAMPLES}") from exc
    if not allow_local:
        raise TimeInputError(f"{text!r}: write ISO 8601 with its UTC offset, e.g. 2026-12-01T06:00+07:00")
    if _ISO_LOCAL.match(raw):
        try:
            wall = datetime.fromisoformat(raw)
        except ValueError as exc:
            raise TimeInputError(f"{text!r}: {exc}; write e.g. {EXAMPLES}") from exc
        return exact_local(wall, tz, text)
    m = _RELATIVE.match(_plain(raw))
    if m is None:
        raise TimeInputError(f"cannot read the time {text!r} exactly; write e.g. {EXAMPLES} "
                             "(for a repeating time, make a schedule: loaxa schedule occurrences --help)")
    hour, minute = int(m.group(2)), int(m.group(3) or m.group(4) or 0)
    if hour > 23 or minute > 59:
        raise TimeInputError(f"{text!r}: {hour}:{minute:02d} is not a time of day (00:00 to 23:59)")
    now_local = (now or datetime.now(tz)).astimezone(tz)
    day = now_local.date() + timedelta(days=_DAY_OFFSET[m.group(1)])
    return exact_local(datetime.combine(day, time(hour, minute)), tz, text)
