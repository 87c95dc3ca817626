"""Jinja filters, registered in one place: times in the scheduler's zone, numbers in the reader's style.

Times are stored as UTC epoch milliseconds everywhere in Loa Xã; pages show them as ``dd/mm/yyyy HH:mm``
in the scheduler's time zone (Asia/Ho_Chi_Minh unless configured otherwise), which is how a Vietnamese
office writes a date whatever the page's language. Numbers follow the page's locale: ``1.250.000`` and
``132,5`` in Vietnamese, ``1,250,000`` and ``132.5`` in English.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from babel.numbers import format_decimal
from jinja2 import Environment

DEFAULT_TZ = "Asia/Ho_Chi_Minh"


def format_datetime_ms(ms: int | None, tz: str | ZoneInfo = DEFAULT_TZ, *, seconds: bool = False) -> str:
    """``dd/mm/yyyy HH:mm`` (or ``HH:mm:ss``) of an epoch-ms instant; ``—`` for None."""
    if ms is None:
        return "—"
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    dt = datetime.fromtimestamp(ms / 1000, UTC).astimezone(zone)
    return dt.strftime("%d/%m/%Y %H:%M:%S" if seconds else "%d/%m/%Y %H:%M")


def format_number(value: float | int | None, locale: str = "vi", *, decimals: int | None = None) -> str:
    """A number with the locale's group and decimal separators; ``decimals`` fixes the fraction digits."""
    if value is None:
        return "—"
    if decimals is None:
        return format_decimal(value, locale=locale)
    pattern = "#,##0" + ("." + "0" * decimals if decimals > 0 else "")
    return format_decimal(value, format=pattern, locale=locale, decimal_quantization=True)


def format_duration_ms(ms: int | None) -> str:
    """``m:ss`` (or ``h:mm:ss``) of a duration in milliseconds."""
    if ms is None:
        return "—"
    total = max(0, round(ms / 1000))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_bytes(n: int | None, locale: str = "vi") -> str:
    """``850 KB``, ``1,2 MB`` (decimal units, as file managers show them)."""
    if n is None:
        return "—"
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= size:
            return f"{format_number(n / size, locale, decimals=1)} {unit}"
    return f"{format_number(n, locale)} B"


def register(env: Environment, locale: str, tz: str) -> None:
    """Install the filters on one locale's environment."""
    zone = ZoneInfo(tz)
    env.filters["datetime"] = lambda ms, seconds=False: format_datetime_ms(ms, zone, seconds=seconds)
    env.filters["number"] = lambda v, decimals=None: format_number(v, locale, decimals=decimals)
    env.filters["duration"] = format_duration_ms
    env.filters["filesize"] = lambda n: format_bytes(n, locale)
    from scheduler.web.i18n import translations
    from scheduler.web.labels import reason_words

    gettext = translations(locale).gettext
    env.filters["reason"] = lambda r: reason_words(r, gettext)
