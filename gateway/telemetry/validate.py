"""What a telemetry reading must look like before it may enter the spool.

A message is checked as a whole first (size, UTF-8, JSON, shape); then each reading on its own, so
one bad reading in a batch of 100 costs one reading, not 100. Every refusal has a ``reason`` from
:data:`REASONS`, counted by the service and reported in ``health`` and as a rate-limited alarm.

This is hand-written rather than ``protocol.models.Telemetry`` for two reasons: each problem must get
its own reason code (a pydantic error is just "invalid"), and it runs for every reading at tens of
thousands of readings per second.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol.errors import PayloadError
from protocol.limits import MAX_PAYLOAD_BYTES, parse_json
from protocol.models import FIELD_NAME_PATTERN, Reading

DAY_MS = 86_400_000
MAX_FIELDS = 256
MAX_READINGS = 10_000

#: Every reason a message or a reading can be refused for.
REASONS: tuple[str, ...] = (
    "too_large",  # payload over the size limit
    "not_utf8",
    "bad_json",  # malformed JSON (also a number with more digits than Python will convert)
    "too_deep",  # JSON nested deeper than the parser goes (e.g. 100,000 "[" in 100 KiB)
    "not_finite",  # NaN / Infinity (as JSON constants or overflowing numbers)
    "inexact_integer",  # an integer beyond ±2^53, which a float field would store rounded
    "bad_shape",  # not {"ts","fields"} nor {"readings":[...]}, or empty fields
    "bad_field_name",  # a field name line protocol cannot carry safely
    "reserved_field_name",  # time, a tag key (gateway, device, commune) or an InfluxDB 2.x column (_field, ...)
    "non_numeric",  # a field value that is not a number (strings, booleans, null, objects)
    "bad_timestamp",  # ts missing, not an integer, negative
    "future_timestamp",  # more than 1 day ahead of the gateway's clock
    "too_old",  # older than the retention window
    "unknown_device",  # a device id not in the gateway's configuration
    "bad_topic",  # a topic that is not loaxa/v1/{gw}/dev/{dev}/telemetry
    "internal",  # checking the message failed in a way nobody foresaw: refused, logged, never retried
    "quarantined",  # accepted here but refused by InfluxDB: kept in the spool's quarantine, alarmed
)

#: Tag keys every point carries (gateway/telemetry/service.py), InfluxQL's ``time`` and the columns
#: InfluxDB 2.x/3.x add: a field of one of these names breaks ``WHERE device = …`` for the whole
#: measurement, or cannot be written at all.
TAG_KEYS = frozenset({"gateway", "device", "commune"})
RESERVED_FIELD_NAMES = TAG_KEYS | {"time", "_measurement", "_field", "_value", "_time", "_start", "_stop"}
#: Integers a float64 field holds exactly; beyond them a reading would be stored rounded.
MAX_EXACT_INT = 2**53

_NAME_RE = re.compile(FIELD_NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    message: str
    count: int = 1  # readings (or messages, for message-level problems) refused for this reason


@dataclass(slots=True)
class Checked:
    """The readings that passed, as ``(ts_ms, fields_line_protocol)``, and what was refused."""

    accepted: list[tuple[int, str]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Limits:
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    max_future_ms: int = DAY_MS
    max_age_ms: int = 60 * DAY_MS


_GOOD_NAMES: set[str] = set()  # field names already checked (a gateway sees few distinct names)


def _bad_name(name: str) -> Rejection | None:
    if name in _GOOD_NAMES:
        return None
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        return Rejection("bad_field_name", f"field name {str(name)[:80]!r} must match {FIELD_NAME_PATTERN}")
    if name in RESERVED_FIELD_NAMES:
        return Rejection("reserved_field_name", f"field name {name!r} is reserved (time, tag keys "
                         f"{', '.join(sorted(TAG_KEYS))}, InfluxDB columns _field, _time, ...)")
    if len(_GOOD_NAMES) < 10_000:
        _GOOD_NAMES.add(name)
    return None


def _check_reading(item: Any, now_ms: int, limits: Limits) -> tuple[int, str] | Rejection:
    """One reading → ``(ts, "name=1.5,other=2.0")`` or a :class:`Rejection`. Written for speed: it
    runs for every reading."""
    if type(item) is not dict:
        return Rejection("bad_shape", "a reading must be an object with ts and fields")
    if len(item) != 2 or "ts" not in item or "fields" not in item:
        extra = set(item) - {"ts", "fields"}
        if extra:
            return Rejection("bad_shape", f"unknown keys in a reading: {sorted(extra)}")
    ts = item.get("ts")
    if type(ts) is not int or ts < 0:
        return Rejection("bad_timestamp", f"ts must be a non-negative integer of epoch milliseconds, got {ts!r}")
    if ts > now_ms + limits.max_future_ms:
        return Rejection("future_timestamp", f"ts {ts} is more than {limits.max_future_ms} ms in the future")
    if ts < now_ms - limits.max_age_ms:
        return Rejection("too_old", f"ts {ts} is older than the {limits.max_age_ms // DAY_MS}-day window")
    fields = item.get("fields")
    if type(fields) is not dict or not fields:
        return Rejection("bad_shape", "fields must be a non-empty object of name: number")
    if len(fields) > MAX_FIELDS:
        return Rejection("bad_shape", f"{len(fields)} fields, at most {MAX_FIELDS}")
    parts = []
    for name, value in fields.items():
        bad = _bad_name(name)
        if bad is not None:
            return bad
        t = type(value)
        if t is float:
            if value - value != 0.0:  # NaN or ±Infinity (e.g. 1e999 in the JSON)
                return Rejection("not_finite", f"field {name!r} is not a finite number")
            parts.append(f"{name}={value!r}")
        elif t is int:
            if not -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
                return Rejection("inexact_integer", f"field {name!r} = {str(value)[:40]}... is beyond ±2^53: "
                                 "it would be stored rounded; send it as a float or scale it")
            parts.append(f"{name}={float(value)!r}")
        else:  # str, bool, None, list, object
            return Rejection("non_numeric", f"field {name!r} is {type(value).__name__}, not a number")
    return ts, ",".join(parts)


def check_readings(items: Sequence[Any], now_ms: int, limits: Limits = Limits()) -> Checked:
    """Check already-decoded readings (dicts with ``ts`` and ``fields``) one by one."""
    out = Checked()
    counts: dict[str, list[Any]] = {}
    for item in items:
        res = _check_reading(item, now_ms, limits)
        if isinstance(res, Rejection):
            slot = counts.setdefault(res.reason, [res.message, 0])
            slot[1] += 1
        else:
            out.accepted.append(res)
    out.rejected = [Rejection(reason, msg, n) for reason, (msg, n) in counts.items()]
    return out


def check_payload(raw: bytes, now_ms: int, limits: Limits = Limits()) -> Checked:
    """Check one ``dev/{dev}/telemetry`` payload (single reading or ``readings`` batch)."""
    try:
        data = parse_json(raw, limit=limits.max_payload_bytes)
    except PayloadError as exc:
        return Checked(rejected=[Rejection(exc.reason, str(exc))])
    except RecursionError:
        return Checked(rejected=[Rejection("too_deep", "JSON nested too deeply to parse")])
    except ValueError as exc:  # e.g. an integer of more than 4300 digits (int_max_str_digits)
        return Checked(rejected=[Rejection("bad_json", f"JSON could not be read: {str(exc)[:200]}")])
    if not isinstance(data, dict):
        return Checked(rejected=[Rejection("bad_shape", "payload must be a JSON object")])
    if "readings" in data:
        items = data["readings"]
        if set(data) != {"readings"}:
            return Checked(rejected=[Rejection("bad_shape", "use either ts+fields or readings, not both")])
        if not isinstance(items, list) or not items:
            return Checked(rejected=[Rejection("bad_shape", "readings must be a non-empty list")])
        if len(items) > MAX_READINGS:
            return Checked(rejected=[Rejection("too_large", f"{len(items)} readings, at most {MAX_READINGS}")])
        return check_readings(items, now_ms, limits)
    return check_readings([data], now_ms, limits)


def check_polled(readings: Sequence[Reading | Mapping[str, Any]], now_ms: int, limits: Limits = Limits()) -> Checked:
    """Check readings handed over by an in-process driver (same rules as the wire)."""
    items = [r.model_dump() if isinstance(r, Reading) else dict(r) for r in readings]
    return check_readings(items, now_ms, limits)
