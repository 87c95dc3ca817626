"""InfluxQL built so that no request parameter can change the statement's shape.

Every piece of a statement that comes from a request goes through one of three doors:

* **identifiers** (measurement, field names) must match :data:`NAME_PATTERN` and are then written
  double-quoted with ``\\`` and ``"`` escaped (:func:`ident`) — the pattern alone already leaves
  nothing to escape, the quoting is a second wall;
* **tag values** (gateway, device, commune) are written single-quoted with ``\\``, ``'`` and
  newlines escaped (:func:`string`); gateway and device ids must also match ``[a-z0-9-]{1,64}``,
  communes are free text without control characters;
* **times, durations and limits** are Python ``int`` values formatted with ``%d``.

Aggregate functions come from a fixed table. Nothing else from a request reaches a statement, so a
``;``, a quote, a backslash or a ``/regex/`` in a parameter is either refused (422, by the checks
here) or becomes a literal that matches nothing. InfluxQL's string scanner (influxql/scanner.go,
``ScanString``) knows exactly four escapes (``\\n``, ``\\\\``, ``\\'``, ``\\"``) and refuses a raw
newline, which is why those are the characters handled.

Only ``SELECT`` and ``SHOW`` are ever built; the statements are the subset of InfluxQL that
InfluxDB 1.x, 2.x (v1 compatibility API) and 3.x all answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: Measurement and field names (what the gateway writes: ``water_level``, ``water_level_cm``).
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)
#: Gateway and device ids (protocol/ids.py).
ID_PATTERN = r"^[a-z0-9-]{1,64}$"
_ID_RE = re.compile(ID_PATTERN)
#: Communes are names ("Xã An Bình"): any printable text up to 200 characters.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
COMMUNE_MAX = 200

#: ``fn=`` → InfluxQL function. Only these; the name is never taken from the request.
FUNCTIONS: dict[str, str] = {"mean": "MEAN", "min": "MIN", "max": "MAX", "last": "LAST", "count": "COUNT"}

#: Tags the gateway writes on every reading.
TAGS: tuple[str, ...] = ("gateway", "device", "commune")

_EVERY_RE = re.compile(r"^([1-9][0-9]{0,6})(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}

NS_PER_MS = 1_000_000
#: Longest bucket (InfluxQL durations are int64 nanoseconds; this stays far below).
MAX_EVERY_MS = 366 * 86_400_000


class QueryParamError(ValueError):
    """A request parameter was refused; ``param`` names it (it becomes a 422 naming the parameter)."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


def check_name(value: str, param: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise QueryParamError(
            param, f"{value[:80]!r} is not a measurement/field name (letters, digits, _; max 64; see {NAME_PATTERN})"
        )
    return value


def check_id(value: str, param: str) -> str:
    if not _ID_RE.fullmatch(value):
        raise QueryParamError(param, f"{value[:80]!r} is not a gateway/device id (lowercase a-z, 0-9, -; max 64)")
    return value


def check_commune(value: str, param: str = "commune") -> str:
    if not value or len(value) > COMMUNE_MAX or _CONTROL_RE.search(value):
        raise QueryParamError(param, f"a commune name is 1-{COMMUNE_MAX} printable characters")
    return value


def parse_every(value: str, param: str = "every") -> int:
    """``5m`` → 300000 (milliseconds). Units ms, s, m, h, d."""
    m = _EVERY_RE.fullmatch(value)
    if m is None:
        raise QueryParamError(param, f"{value[:40]!r} is not a duration like 30s, 5m, 1h, 1d")
    ms = int(m.group(1)) * _UNIT_MS[m.group(2)]
    if ms < 1000:
        raise QueryParamError(param, "the shortest bucket is 1s")
    if ms > MAX_EVERY_MS:
        raise QueryParamError(param, "the longest bucket is 366d")
    return ms


def ident(name: str) -> str:
    """A double-quoted identifier. Callers validate first; escaping is the second wall."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def string(value: str) -> str:
    """A single-quoted string literal (tag value).

    Two characters cannot be written at all: NUL (InfluxQL's scanner reads it as the end of input)
    and CR (its reader turns it into a newline, which ends a string). Callers refuse control
    characters before this; this refuses those two whatever the caller.
    """
    if "\x00" in value or "\r" in value:
        raise ValueError("NUL and CR cannot be written in an InfluxQL string")
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _int(value: int) -> str:
    if not isinstance(value, int) or isinstance(value, bool):  # pragma: no cover - programming error
        raise TypeError(f"expected an int, got {value!r}")
    return str(value)


@dataclass(frozen=True)
class Filter:
    """Which series: gateways (None: any), devices, communes; all lists already validated."""

    gateways: frozenset[str] | None = None
    devices: tuple[str, ...] = ()
    communes: tuple[str, ...] = ()

    def clauses(self) -> list[str]:
        out: list[str] = []
        if self.gateways is not None:
            out.append(_any_of("gateway", sorted(self.gateways)))
        if self.devices:
            out.append(_any_of("device", self.devices))
        if self.communes:
            out.append(_any_of("commune", self.communes))
        return out


def _any_of(tag: str, values: Sequence[str]) -> str:
    if not values:
        # An empty allowed set: a condition no series meets (no tag value is the empty string here,
        # since the gateway leaves empty tags out).
        return f"{ident(tag)} = ''"
    return "(" + " OR ".join(f"{ident(tag)} = {string(v)}" for v in values) + ")"


def where(flt: Filter, start_ns: int | None = None, end_ns: int | None = None, *, extra: Iterable[str] = ()) -> str:
    parts = flt.clauses()
    if start_ns is not None:
        parts.append(f"time >= {_int(start_ns)}")
    if end_ns is not None:
        parts.append(f"time < {_int(end_ns)}")
    parts.extend(extra)
    return (" WHERE " + " AND ".join(parts)) if parts else ""


@dataclass(frozen=True)
class Select:
    """One readings query (raw or aggregated) for one measurement."""

    measurement: str
    fields: tuple[str, ...]
    flt: Filter = field(default_factory=Filter)
    fn: str | None = None
    every_ms: int | None = None

    def raw(self, start_ns: int, end_ns: int, limit: int | None) -> str:
        """Points in time order across all series (tags as columns, one LIMIT for the whole answer)."""
        cols = ", ".join(ident(c) for c in (*self.fields, *TAGS))
        q = f"SELECT {cols} FROM {ident(self.measurement)}{where(self.flt, start_ns, end_ns)} ORDER BY time ASC"
        if limit is not None:
            q += f" LIMIT {_int(limit)}"
        return q

    def aggregated(self, start_ns: int, end_ns: int, limit_per_series: int, origin_ms: int) -> str:
        """``fn`` per bucket of ``every`` per (gateway, device, commune); buckets start at ``origin_ms``."""
        assert self.fn is not None and self.every_ms is not None
        fn = FUNCTIONS[self.fn]
        cols = ", ".join(f"{fn}({ident(f)}) AS {ident(f)}" for f in self.fields)
        offset = origin_ms % self.every_ms
        group = f"time({_int(self.every_ms)}ms, {_int(offset)}ms), " + ", ".join(ident(t) for t in TAGS)
        return (
            f"SELECT {cols} FROM {ident(self.measurement)}{where(self.flt, start_ns, end_ns)}"
            f" GROUP BY {group} fill(none) ORDER BY time ASC LIMIT {_int(limit_per_series)}"
        )


def latest(measurement: str, fields: Sequence[str] | None, flt: Filter, start_ns: int, end_ns: int) -> str:
    """The newest point of each (gateway, device, commune) series of one measurement."""
    cols = ", ".join(ident(f) for f in fields) if fields else "*"
    return (
        f"SELECT {cols} FROM {ident(measurement)}{where(flt, start_ns, end_ns)}"
        f" GROUP BY {', '.join(ident(t) for t in TAGS)} ORDER BY time DESC LIMIT 1"
    )


def show_measurements(flt: Filter) -> str:
    return "SHOW MEASUREMENTS" + where(flt)


def show_field_keys(measurement: str | None = None) -> str:
    return "SHOW FIELD KEYS" + (f" FROM {ident(measurement)}" if measurement else "")


def show_tag_values(keys: Sequence[str], flt: Filter, measurement: str | None = None) -> str:
    """``SHOW TAG VALUES [FROM m] WITH KEY IN (...)`` limited to the filter's series."""
    inner = ", ".join(ident(k) for k in keys)
    src = f" FROM {ident(measurement)}" if measurement else ""
    return f"SHOW TAG VALUES{src} WITH KEY IN ({inner})" + where(flt)
