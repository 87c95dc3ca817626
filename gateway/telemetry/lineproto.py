"""InfluxDB line protocol: escaping, field rendering and parsing back (for CSV export).

Fields are always written as floats (``132.0``, never ``132i``) so a field never changes type
between writes; ``repr(float)`` is the shortest text that reads back as exactly the same double,
so a value reaches InfluxDB exactly as measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\\": "\\\\"})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\\": "\\\\"})


def escape_tag(value: str) -> str:
    """Escape a tag key or value (commas, equals signs, spaces, backslashes); newlines become spaces."""
    return value.replace("\n", " ").replace("\r", " ").translate(_TAG_ESCAPES)


def escape_measurement(value: str) -> str:
    return value.replace("\n", " ").replace("\r", " ").translate(_MEASUREMENT_ESCAPES)


def tag_set(tags: Mapping[str, str | None]) -> str:
    """``,key=value,...`` sorted by key (what InfluxDB prefers); empty/None values are left out."""
    return "".join(f",{escape_tag(k)}={escape_tag(v)}" for k, v in sorted(tags.items()) if v)


def format_value(value: float) -> str:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{value!r} is not a finite number")
    return repr(v)


def format_fields(fields: Mapping[str, float]) -> str:
    """``name=1.5,other=2.0``; names must already be line-protocol safe (see ``validate``)."""
    return ",".join(f"{name}={format_value(value)}" for name, value in fields.items())


def parse_fields(text: str) -> dict[str, float]:
    """Inverse of :func:`format_fields` for the safe names the spool stores."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        out[name] = float(value)
    return out


def line(measurement: str, tags: str, fields: str, ts_ms: int) -> str:
    """One line: ``measurement,tags fields timestamp`` (``tags`` from :func:`tag_set`)."""
    return f"{escape_measurement(measurement)}{tags} {fields} {ts_ms}"
