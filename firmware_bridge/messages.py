"""Message types and their payloads (all little-endian). A payload that does not parse raises
:class:`MessageError`; nothing here trusts a length it has not checked.

Strings are ``u8 length ‖ UTF-8 bytes``. Sensor values are ``i32 mantissa ‖ i8 exponent`` (value =
mantissa × 10^exponent) so decimal readings such as 23.7 °C arrive exactly.
"""

from __future__ import annotations

import enum
import math
import re
import struct
from dataclasses import dataclass, field
from decimal import Decimal

from firmware_bridge.errors import MessageError


class MsgType(enum.IntEnum):
    HELLO = 0x01
    STATUS = 0x02
    SET = 0x03
    READ_SENSORS = 0x04
    EVENT_POLL = 0x05
    NAK = 0x15
    FW_BEGIN = 0x20
    FW_CHUNK = 0x21
    FW_END = 0x22
    FW_COMMIT = 0x23
    FW_CONFIRM = 0x24
    FW_ROLLBACK = 0x25


class NakCode(enum.IntEnum):
    UNKNOWN_TYPE = 1
    BAD_PAYLOAD = 2
    BUSY = 3
    NOT_SUPPORTED = 4
    OUT_OF_ORDER = 5  # detail = the offset the node expects
    TOO_LARGE = 6  # detail = the largest size the node accepts
    BAD_DIGEST = 7
    NO_SESSION = 8
    NOT_VERIFIED = 9
    NOT_IN_TRIAL = 10
    BAD_VALUE = 11


class Source(enum.IntEnum):
    OFF = 0
    IP = 1
    FM = 2
    LINE = 3


class Cap(enum.IntFlag):
    AMPLIFIER = 0x0001
    VOLUME = 0x0002
    SOURCE_IP = 0x0004
    SOURCE_FM = 0x0008
    SOURCE_LINE = 0x0010
    SENSORS = 0x0020
    EVENTS = 0x0040
    FW_UPDATE = 0x0080


class BootState(enum.IntEnum):
    NORMAL = 0
    TRIAL = 1  # running a new image that the gateway has not confirmed yet
    ROLLED_BACK = 2  # the last new image failed; running the previous one


class Fault(enum.IntFlag):
    OVERTEMP = 0x0001
    UNDERVOLTAGE = 0x0002
    OVERVOLTAGE = 0x0004
    AMP_SHORT = 0x0008
    SPEAKER_OPEN = 0x0010
    SENSOR_FAIL = 0x0020
    FLASH_ERROR = 0x0040
    WATCHDOG_RESET = 0x0080


class EventKind(enum.IntEnum):
    FAULT = 1
    BUTTON = 2
    TAMPER = 3
    BOOT = 4
    POWER = 5


def _need(data: bytes, n: int, what: str) -> None:
    if len(data) < n:
        raise MessageError(f"{what}: payload of {len(data)} bytes, need at least {n}")


def _pack_str(value: str, what: str, limit: int = 64) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > limit:
        raise ValueError(f"{what} is {len(raw)} bytes, at most {limit}")
    return bytes([len(raw)]) + raw


def _unpack_str(data: bytes, pos: int, what: str) -> tuple[str, int]:
    if pos >= len(data):
        raise MessageError(f"{what}: missing string length at byte {pos}")
    n = data[pos]
    end = pos + 1 + n
    if end > len(data):
        raise MessageError(f"{what}: string of {n} bytes at byte {pos} runs past the payload")
    try:
        return data[pos + 1 : end].decode("utf-8"), end
    except UnicodeDecodeError:
        raise MessageError(f"{what}: string at byte {pos} is not UTF-8") from None


def _no_trailing(data: bytes, pos: int, what: str) -> None:
    if pos != len(data):
        raise MessageError(f"{what}: {len(data) - pos} unexpected bytes after byte {pos}")


# ---------------------------------------------------------------- HELLO


@dataclass(frozen=True)
class Hello:
    """Answer to HELLO: who the node is and what it can do."""

    device_id: str
    fw_version: str
    hw_revision: str
    capabilities: int
    boot_state: int = BootState.NORMAL
    max_chunk: int = 512
    active_slot: int = 0

    _S = struct.Struct("<HBBH")

    def pack(self) -> bytes:
        return (self._S.pack(self.capabilities, self.boot_state, self.active_slot, self.max_chunk)
                + _pack_str(self.device_id, "device_id") + _pack_str(self.fw_version, "fw_version")
                + _pack_str(self.hw_revision, "hw_revision"))

    @classmethod
    def unpack(cls, data: bytes) -> Hello:
        _need(data, cls._S.size, "HELLO")
        caps, boot, slot, max_chunk = cls._S.unpack_from(data)
        pos = cls._S.size
        device_id, pos = _unpack_str(data, pos, "HELLO device_id")
        fw, pos = _unpack_str(data, pos, "HELLO fw_version")
        hw, pos = _unpack_str(data, pos, "HELLO hw_revision")
        _no_trailing(data, pos, "HELLO")
        return cls(device_id, fw, hw, caps, boot, max_chunk, slot)


# ---------------------------------------------------------------- STATUS / SET


@dataclass(frozen=True)
class Status:
    power: bool
    volume: int
    source: int
    temperature_c: float  # carried in tenths of a degree
    supply_v: float  # carried in millivolts
    faults: int
    uptime_s: int

    _S = struct.Struct("<BBBhHHI")

    def pack(self) -> bytes:
        return self._S.pack(int(self.power), self.volume, self.source, round(self.temperature_c * 10),
                            round(self.supply_v * 1000), self.faults, self.uptime_s)

    @classmethod
    def unpack(cls, data: bytes) -> Status:
        if len(data) != cls._S.size:
            raise MessageError(f"STATUS: payload of {len(data)} bytes, expected {cls._S.size}")
        power, volume, source, temp, mv, faults, uptime = cls._S.unpack(data)
        if power > 1 or volume > 100 or source > max(Source):
            raise MessageError(f"STATUS: out-of-range power={power} volume={volume} source={source}")
        return cls(bool(power), volume, source, temp / 10, mv / 1000, faults, uptime)


SET_VOLUME = 0x01
SET_POWER = 0x02
SET_SOURCE = 0x04


@dataclass(frozen=True)
class SetRequest:
    volume: int | None = None
    power: bool | None = None
    source: int | None = None

    _S = struct.Struct("<BBBB")

    def pack(self) -> bytes:
        mask = ((SET_VOLUME if self.volume is not None else 0) | (SET_POWER if self.power is not None else 0)
                | (SET_SOURCE if self.source is not None else 0))
        return self._S.pack(mask, self.volume or 0, int(bool(self.power)), self.source or 0)

    @classmethod
    def unpack(cls, data: bytes) -> SetRequest:
        if len(data) != cls._S.size:
            raise MessageError(f"SET: payload of {len(data)} bytes, expected {cls._S.size}")
        mask, volume, power, source = cls._S.unpack(data)
        if mask & ~(SET_VOLUME | SET_POWER | SET_SOURCE):
            raise MessageError(f"SET: unknown mask bits 0x{mask:02x}")
        if mask & SET_VOLUME and volume > 100:
            raise MessageError(f"SET: volume {volume} out of 0..100")
        if mask & SET_POWER and power > 1:
            raise MessageError(f"SET: power {power} is not 0 or 1")
        if mask & SET_SOURCE and source > max(Source):
            raise MessageError(f"SET: unknown source {source}")
        return cls(volume if mask & SET_VOLUME else None, bool(power) if mask & SET_POWER else None,
                   source if mask & SET_SOURCE else None)


# ---------------------------------------------------------------- READ_SENSORS

_FIELD_RE = re.compile(r"^[a-z_][a-z0-9_]{0,31}$")


def to_decimal(value: float) -> tuple[int, int]:
    """(mantissa, exponent) with mantissa in i32 range, shortest exact decimal where possible."""
    if not math.isfinite(value):
        raise ValueError(f"sensor value {value} is not finite")
    d = Decimal(repr(float(value))).normalize()
    sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    mant = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    while abs(mant) > 2**31 - 1 or exp < -127:
        mant = round(mant / 10)
        exp += 1
    while exp > 127:
        mant *= 10
        exp -= 1
        if abs(mant) > 2**31 - 1:
            raise ValueError(f"sensor value {value} is too large")
    return mant, exp


def from_decimal(mant: int, exp: int) -> float:
    return float(Decimal(mant).scaleb(exp))


@dataclass(frozen=True)
class Sensors:
    fields: dict[str, float] = field(default_factory=dict)

    def pack(self) -> bytes:
        if len(self.fields) > 32:
            raise ValueError("at most 32 sensor fields per frame")
        out = bytearray([len(self.fields)])
        for name, value in self.fields.items():
            if not _FIELD_RE.fullmatch(name):
                raise ValueError(f"sensor field name {name!r} must match {_FIELD_RE.pattern}")
            mant, exp = to_decimal(value)
            out += _pack_str(name, "field name", 32) + struct.pack("<ib", mant, exp)
        return bytes(out)

    @classmethod
    def unpack(cls, data: bytes) -> Sensors:
        _need(data, 1, "READ_SENSORS")
        count, pos = data[0], 1
        fields: dict[str, float] = {}
        for i in range(count):
            name, pos = _unpack_str(data, pos, f"READ_SENSORS field {i} name")
            if not _FIELD_RE.fullmatch(name):
                raise MessageError(f"READ_SENSORS field {i}: bad name {name!r}")
            if name in fields:
                raise MessageError(f"READ_SENSORS field {name!r} appears twice")
            if pos + 5 > len(data):
                raise MessageError(f"READ_SENSORS field {name!r}: value runs past the payload")
            mant, exp = struct.unpack_from("<ib", data, pos)
            pos += 5
            fields[name] = from_decimal(mant, exp)
        _no_trailing(data, pos, "READ_SENSORS")
        return cls(fields)


# ---------------------------------------------------------------- EVENT_POLL


@dataclass(frozen=True)
class EventPoll:
    """Request: ``ack_id`` confirms every event up to and including that id (when ``has_ack``)."""

    ack_id: int = 0
    has_ack: bool = False

    _S = struct.Struct("<BH")

    def pack(self) -> bytes:
        return self._S.pack(int(self.has_ack), self.ack_id)

    @classmethod
    def unpack(cls, data: bytes) -> EventPoll:
        if len(data) != cls._S.size:
            raise MessageError(f"EVENT_POLL: payload of {len(data)} bytes, expected {cls._S.size}")
        has, ack = cls._S.unpack(data)
        if has > 1:
            raise MessageError("EVENT_POLL: has_ack must be 0 or 1")
        return cls(ack, bool(has))


@dataclass(frozen=True)
class Event:
    id: int
    kind: int
    code: int
    value: int = 0
    age_ms: int = 0

    _S = struct.Struct("<HBHiI")

    def pack(self) -> bytes:
        return self._S.pack(self.id, self.kind, self.code, self.value, self.age_ms)


@dataclass(frozen=True)
class Events:
    events: tuple[Event, ...] = ()

    def pack(self) -> bytes:
        return bytes([len(self.events)]) + b"".join(e.pack() for e in self.events)

    @classmethod
    def unpack(cls, data: bytes) -> Events:
        _need(data, 1, "EVENTS")
        n = data[0]
        if len(data) != 1 + n * Event._S.size:
            raise MessageError(f"EVENTS: {n} events need {1 + n * Event._S.size} bytes, got {len(data)}")
        return cls(tuple(Event(*Event._S.unpack_from(data, 1 + i * Event._S.size)) for i in range(n)))


# ---------------------------------------------------------------- firmware update


@dataclass(frozen=True)
class FwBegin:
    size: int
    sha256: bytes
    version: str

    _S = struct.Struct("<I32s")

    def pack(self) -> bytes:
        return self._S.pack(self.size, self.sha256) + _pack_str(self.version, "version", 32)

    @classmethod
    def unpack(cls, data: bytes) -> FwBegin:
        _need(data, cls._S.size + 1, "FW_BEGIN")
        size, digest = cls._S.unpack_from(data)
        version, pos = _unpack_str(data, cls._S.size, "FW_BEGIN version")
        _no_trailing(data, pos, "FW_BEGIN")
        return cls(size, digest, version)


@dataclass(frozen=True)
class FwBeginReply:
    offset: int  # resume here (0 for a new session)
    max_chunk: int

    _S = struct.Struct("<IH")

    def pack(self) -> bytes:
        return self._S.pack(self.offset, self.max_chunk)

    @classmethod
    def unpack(cls, data: bytes) -> FwBeginReply:
        if len(data) != cls._S.size:
            raise MessageError(f"FW_BEGIN reply: payload of {len(data)} bytes, expected {cls._S.size}")
        return cls(*cls._S.unpack(data))


CHUNK_HEADER = struct.Struct("<I")


@dataclass(frozen=True)
class FwChunk:
    offset: int
    data: bytes

    def pack(self) -> bytes:
        return CHUNK_HEADER.pack(self.offset) + self.data

    @classmethod
    def unpack(cls, data: bytes) -> FwChunk:
        _need(data, CHUNK_HEADER.size + 1, "FW_CHUNK")
        (offset,) = CHUNK_HEADER.unpack_from(data)
        return cls(offset, bytes(data[CHUNK_HEADER.size :]))


@dataclass(frozen=True)
class Offset:
    """Reply to FW_CHUNK: the next offset the node expects (everything before it is written)."""

    offset: int

    def pack(self) -> bytes:
        return CHUNK_HEADER.pack(self.offset)

    @classmethod
    def unpack(cls, data: bytes) -> Offset:
        if len(data) != CHUNK_HEADER.size:
            raise MessageError(f"FW_CHUNK reply: payload of {len(data)} bytes, expected 4")
        return cls(CHUNK_HEADER.unpack(data)[0])


@dataclass(frozen=True)
class Nak:
    code: int
    detail: int = 0

    _S = struct.Struct("<BI")

    def pack(self) -> bytes:
        return self._S.pack(self.code, self.detail)

    @classmethod
    def unpack(cls, data: bytes) -> Nak:
        if len(data) != cls._S.size:
            raise MessageError(f"NAK: payload of {len(data)} bytes, expected {cls._S.size}")
        return cls(*cls._S.unpack(data))

    def describe(self) -> str:
        try:
            name = NakCode(self.code).name
        except ValueError:
            name = f"code {self.code}"
        return f"{name} (detail {self.detail})"
