"""Pydantic models for every payload of contract v1.

Times are UTC epoch milliseconds (``int``). Models that the gateway or devices may extend later
accept unknown keys (``extra="allow"``) so that old readers keep working; command bodies are strict.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, Strict, field_validator, model_validator

from protocol.ids import DeviceId, GatewayId, MessageId

EpochMs = Annotated[int, Field(ge=0, le=2**53)]
#: A reading's value: a JSON number, never a string or a boolean.
FieldValue = Annotated[float, Strict()]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

#: Line-protocol safe field and tag names: a letter or underscore, then letters, digits, underscores.
FIELD_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
_FIELD_NAME_RE = re.compile(FIELD_NAME_PATTERN)

#: Priorities of Thông tư 39/2020/TT-BTTTT mapped onto the 0–9 scale of the wire.
PRIORITY_NORMAL = 3
PRIORITY_HIGH = 6
PRIORITY_EMERGENCY = 9
PRIORITY_NAMES: dict[str, int] = {
    "normal": PRIORITY_NORMAL,
    "priority": PRIORITY_HIGH,
    "emergency": PRIORITY_EMERGENCY,
}


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ---------------------------------------------------------------- gateway → central


class Status(_Open):
    """``loaxa/v1/{gw}/status`` (retained). ``offline`` is also the MQTT will."""

    state: Literal["online", "offline"]
    ts: EpochMs
    version: str | None = None
    commune: str | None = Field(default=None, max_length=200, description="commune name, when configured")


#: At most this many devices are listed in one health report.
MAX_LISTED_DEVICES = 2000
DeviceKind = Literal["speaker", "sensor", "other"]
#: A speaker's audio source: names chosen by the device (``stream``, ``line``, ``fm``, ``local`` …).
SOURCE_PATTERN = r"^[a-z0-9_-]{1,32}$"


class DeviceListing(_Open):
    """One configured device of a gateway, as listed in its health report."""

    id: DeviceId
    kind: DeviceKind = "other"
    type: str | None = Field(default=None, max_length=64, description="the device's type in the gateway config")
    name: str | None = Field(default=None, max_length=200)


class Health(_Open):
    """``loaxa/v1/{gw}/health`` (retained): gateway metrics. Extra metrics may be added."""

    ts: EpochMs
    uptime_s: float | None = None
    cpu_temp_c: float | None = None
    load1: float | None = None
    mem_used_pct: float | None = None
    disk_used_pct: float | None = None
    spool_depth: int | None = None
    clock_offset_ms: float | None = None
    clock_synced: bool | None = None
    devices_online: int | None = None
    devices_total: int | None = None
    version: str | None = None
    #: every device in the gateway's configuration: the centre lists these (before their first
    #: message) and forgets devices no longer listed. None: an older gateway that does not say.
    devices: list[DeviceListing] | None = Field(default=None, max_length=MAX_LISTED_DEVICES)


class Ack(_Open):
    """``loaxa/v1/{gw}/ack``: the gateway's answer to every command it receives."""

    id: str = Field(max_length=128)
    ok: bool
    error: str | None = None
    reason: str | None = None
    ts: EpochMs


PlaybackState = Literal["started", "finished", "failed", "preempted", "skipped"]


#: Failure reasons a gateway infers when a speaker said nothing in time. A later ``failed`` report of
#: the speaker itself with another reason is more specific: it refines the outcome (the reason becomes
#: ``"{speaker's reason}; {inferred}"``, see :func:`refined_reason`) instead of being dropped.
INFERRED_FAILURE_REASONS = frozenset({"no_start_report", "no_finish_report"})


def refined_reason(current: str | None, reported: str | None) -> str | None:
    """The reason a ``failed`` outcome should get when a new ``failed`` report arrives, or None when
    the report adds nothing (the outcome keeps its reason)."""
    if current not in INFERRED_FAILURE_REASONS or not reported or reported in INFERRED_FAILURE_REASONS:
        return None
    if reported.endswith(f"; {current}"):  # already combined (by the gateway, for the centre)
        return reported[:500]
    suffix = f"; {current}"
    return reported[: 500 - len(suffix)] + suffix


class PlaybackEvent(_Open):
    """``loaxa/v1/{gw}/event`` with ``kind = "playback"``: what really played, per device."""

    kind: Literal["playback"] = "playback"
    broadcast_id: MessageId
    device: DeviceId
    state: PlaybackState
    at: EpochMs
    reason: str | None = None
    #: when the gateway asked the device to start (wall clock); ``at - scheduled_at`` is the lateness
    scheduled_at: EpochMs | None = None


class DeviceReport(_Open):
    """``loaxa/v1/{gw}/event`` with ``kind = "device_report"``: what one device answered to a command
    from the centre (``ping`` with targets, ``device.set``), so the centre shows the device's own answer."""

    kind: Literal["device_report"] = "device_report"
    command_id: MessageId
    device: DeviceId
    ok: bool
    reason: str | None = Field(default=None, max_length=200)
    rtt_ms: int | None = Field(default=None, ge=0, le=3_600_000)
    at: EpochMs
    state: DeviceState | None = None


class AlarmEvent(_Open):
    """``loaxa/v1/{gw}/event`` with ``kind = "alarm"``: something a technician should know."""

    kind: Literal["alarm"] = "alarm"
    code: str = Field(max_length=64)
    severity: Literal["info", "warning", "critical"] = "warning"
    message: str = Field(max_length=2000)
    at: EpochMs
    device: DeviceId | None = None
    details: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------- devices


class DeviceState(_Open):
    """``loaxa/v1/{gw}/dev/{dev}/state`` (retained)."""

    online: bool
    ts: EpochMs | None = None
    volume: int | None = Field(default=None, ge=0, le=100)
    playing: str | None = None
    power: bool | None = None
    rssi: int | None = None
    firmware: str | None = None
    #: the selected audio input (``SOURCE_PATTERN``), for speakers that have several
    source: str | None = Field(default=None, max_length=32)


class DeviceCommand(_Open):
    """``loaxa/v1/{gw}/dev/{dev}/cmd`` on the commune LAN: play, stop, volume, power."""

    id: MessageId
    op: Literal["play", "stop", "volume", "power", "ping", "source"]
    ts: EpochMs
    broadcast_id: MessageId | None = None
    url: str | None = Field(default=None, max_length=2048)
    sha256: Sha256Hex | None = None
    start_at: EpochMs | None = None
    volume: int | None = Field(default=None, ge=0, le=100)
    priority: int | None = Field(default=None, ge=0, le=9)
    power: bool | None = None
    #: source: which input the speaker plays (``SOURCE_PATTERN``)
    source: str | None = Field(default=None, pattern=SOURCE_PATTERN)
    #: play: length of one pass and how many passes (PlanItem.repeat)
    duration_ms: int | None = Field(default=None, ge=0, le=24 * 3600 * 1000)
    repeat: int | None = Field(default=None, ge=1, le=100)
    #: stop: why (``preempted``, ``cancelled``)
    reason: str | None = Field(default=None, max_length=64)


def _check_fields(fields: dict[str, float]) -> dict[str, float]:
    if not fields:
        raise ValueError("a reading needs at least one field")
    for name, value in fields.items():
        if not _FIELD_NAME_RE.fullmatch(name):
            raise ValueError(f"field name {name!r} must match {FIELD_NAME_PATTERN}")
        if isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"field {name!r} must be a finite number")
    return fields


class Reading(_Strict):
    """One timestamped set of numeric fields."""

    ts: EpochMs
    fields: dict[str, FieldValue] = Field(max_length=256)

    _fields_ok = field_validator("fields")(_check_fields)


class Telemetry(_Strict):
    """``loaxa/v1/{gw}/dev/{dev}/telemetry``: a single reading (``ts``+``fields``) or a batch (``readings``)."""

    ts: EpochMs | None = None
    fields: dict[str, FieldValue] | None = Field(default=None, max_length=256)
    readings: list[Reading] | None = Field(default=None, max_length=10_000)

    @model_validator(mode="after")
    def _one_form(self) -> Telemetry:
        single = self.ts is not None or self.fields is not None
        if single and self.readings is not None:
            raise ValueError("use either ts+fields or readings, not both")
        if self.readings is None:
            if self.ts is None or self.fields is None:
                raise ValueError("a single reading needs both ts and fields")
            _check_fields(self.fields)
        return self

    def as_readings(self) -> list[Reading]:
        if self.readings is not None:
            return list(self.readings)
        assert self.ts is not None and self.fields is not None
        return [Reading(ts=self.ts, fields=self.fields)]


#: most timestamps one receipt names (a gateway splits longer lists over several receipts)
MAX_RECEIPT_TS = 5_000


class TelemetryReceipt(_Strict):
    """``loaxa/v1/{gw}/dev/{dev}/receipt`` (gateway → device, QoS 1): the readings of this device the
    gateway has committed to its disk (``stored``) or refused for good (``refused``: they will never be
    stored, sending them again is pointless), by timestamp. A device that keeps a buffer forgets a
    reading only when a receipt names it; see docs/protocol.md, "Telemetry receipts"."""

    stored: list[EpochMs] = Field(default_factory=list, max_length=MAX_RECEIPT_TS)
    refused: list[EpochMs] = Field(default_factory=list, max_length=MAX_RECEIPT_TS)
    at: EpochMs


# ---------------------------------------------------------------- commands (central → gateway)


class MediaRef(_Strict):
    """Content-addressed media: the gateway fetches ``url`` and checks the bytes against ``sha256``."""

    sha256: Sha256Hex
    url: str = Field(min_length=1, max_length=2048)
    bytes: int = Field(ge=1, le=2**31)
    duration_ms: int = Field(ge=0, le=24 * 3600 * 1000)
    content_type: str | None = Field(default=None, max_length=64)


Targets = Literal["*"] | list[DeviceId | Literal["*"]]


class PlanItem(_Strict):
    broadcast_id: MessageId
    media: MediaRef
    start_at: EpochMs | None = None
    targets: Targets = "*"
    volume: int = Field(default=70, ge=0, le=100)
    priority: int = Field(default=PRIORITY_NORMAL, ge=0, le=9)
    repeat: int = Field(default=1, ge=1, le=100)
    title: str | None = Field(default=None, max_length=200)

    def targets_all(self) -> bool:
        return self.targets == "*" or (isinstance(self.targets, list) and "*" in self.targets)


class BroadcastPlanBody(_Strict):
    """``kind = "broadcast.plan"``."""

    items: list[PlanItem] = Field(min_length=1, max_length=500)


class BroadcastCancelBody(_Strict):
    """``kind = "broadcast.cancel"``."""

    broadcast_ids: list[MessageId] = Field(min_length=1, max_length=500)


class DeviceSetBody(_Strict):
    """``kind = "device.set"``."""

    targets: Targets = "*"
    volume: int | None = Field(default=None, ge=0, le=100)
    power: bool | None = None
    #: the audio input to select (``SOURCE_PATTERN``); gateways before fleet control refuse it as malformed
    source: str | None = Field(default=None, pattern=SOURCE_PATTERN)


class PingBody(_Strict):
    """``kind = "ping"``: the ack answers for the gateway; with ``targets`` the gateway also asks each
    of those devices and sends one ``device_report`` event per device."""

    targets: Targets | None = None


class GatewayRestartBody(_Strict):
    """``kind = "gateway.restart"``: the gateway acks, stops cleanly and starts its service again."""

    reason: str | None = Field(default=None, max_length=200)


class HealthReportBody(_Strict):
    """``kind = "health.report"``: the gateway publishes a fresh retained health report now."""


#: Quiet hours are minutes of the local day; Việt Nam is UTC+7 all year.
MINUTES_PER_DAY = 24 * 60


class QuietHours(_Strict):
    """No non-emergency warning starts between ``from_min`` and ``to_min`` (minutes of the local day,
    ``utc_offset_min`` from UTC; the window may wrap past midnight). Emergency warnings ignore it."""

    from_min: int = Field(ge=0, lt=MINUTES_PER_DAY)
    to_min: int = Field(ge=0, lt=MINUTES_PER_DAY)
    utc_offset_min: int = Field(default=420, ge=-14 * 60, le=14 * 60)

    def contains(self, at_ms: int) -> bool:
        minute = ((at_ms // 60_000) + self.utc_offset_min) % MINUTES_PER_DAY
        if self.from_min <= self.to_min:
            return self.from_min <= minute < self.to_min
        return minute >= self.from_min or minute < self.to_min


class WarningRule(_Strict):
    """One local warning rule, evaluated by the gateway on its own readings (works with the WAN cut).

    Signed envelopes carry integers only, so thresholds travel in thousandths of the field's unit
    (``threshold_milli = 180000`` is 180 cm for ``water_level_cm``).
    """

    id: MessageId
    device: DeviceId
    field: str = Field(pattern=FIELD_NAME_PATTERN)
    #: active once the value is >= threshold for ``for_s`` seconds (by the readings' timestamps)
    threshold_milli: int | None = Field(default=None, ge=-(2**53), le=2**53)
    for_s: int = Field(default=0, ge=0, le=24 * 3600)
    #: or once the value rose by at least this much within the last 10 minutes
    rise_per_10min_milli: int | None = Field(default=None, ge=1, le=2**53)
    #: cleared when the value falls below threshold - hysteresis (and the rise below rise - hysteresis)
    hysteresis_milli: int = Field(default=0, ge=0, le=2**53)
    media: MediaRef
    targets: Targets = "*"
    priority: int = Field(default=PRIORITY_EMERGENCY, ge=0, le=9)
    volume: int = Field(default=100, ge=0, le=100)
    #: while active, play again every ``repeat_every_s`` seconds (0: once), at most ``max_plays`` in all
    repeat_every_s: int = Field(default=0, ge=0, le=24 * 3600)
    max_plays: int = Field(default=1, ge=1, le=100)
    quiet_hours: QuietHours | None = None
    title: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _has_condition(self) -> WarningRule:
        if self.threshold_milli is None and self.rise_per_10min_milli is None:
            raise ValueError(f"rule {self.id}: give threshold_milli, rise_per_10min_milli or both")
        if self.repeat_every_s and 0 < self.repeat_every_s < 60:
            raise ValueError(f"rule {self.id}: repeat_every_s must be 0 or at least 60")
        return self


class WarningRulesBody(_Strict):
    """``kind = "warning.rules"``: the gateway's whole rule set (replaces the previous one; ``[]`` clears)."""

    rules: list[WarningRule] = Field(max_length=100)

    @model_validator(mode="after")
    def _unique(self) -> WarningRulesBody:
        ids = [r.id for r in self.rules]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"rule ids must be unique: {', '.join(dup)}")
        return self


WarningState = Literal["started", "repeated", "cleared", "suppressed"]


class WarningEvent(_Open):
    """``loaxa/v1/{gw}/event`` with ``kind = "warning"``: a local warning rule changed state or played."""

    kind: Literal["warning"] = "warning"
    rule_id: MessageId
    state: WarningState
    at: EpochMs
    device: DeviceId
    field: str = Field(max_length=64)
    value: float | None = None
    broadcast_id: MessageId | None = None
    plays: int = 0
    reason: str | None = Field(default=None, max_length=200)


COMMAND_BODIES: dict[str, type[BaseModel]] = {
    "warning.rules": WarningRulesBody,
    "broadcast.plan": BroadcastPlanBody,
    "broadcast.cancel": BroadcastCancelBody,
    "device.set": DeviceSetBody,
    "ping": PingBody,
    "gateway.restart": GatewayRestartBody,
    "health.report": HealthReportBody,
}


class Envelope(_Strict):
    """A signed command on ``loaxa/v1/{gw}/cmd``. ``sig`` covers the canonical JSON of all other keys.

    Strict: no value is converted (``"5"`` is not 5, ``true`` is not 1). The envelope the verifier
    checks is the object as received (see :meth:`signed_part`), never a re-serialised model.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    v: Literal[1] = 1
    id: MessageId
    #: the gateway the command is for; a gateway refuses a command naming another one, or none
    gw: GatewayId | None = None
    kind: str = Field(min_length=1, max_length=64)
    issued_at: EpochMs
    expires_at: EpochMs
    key: str = Field(min_length=1, max_length=128)
    body: dict[str, Any]
    sig: str = Field(default="", max_length=200)

    _received: dict[str, Any] | None = PrivateAttr(default=None)

    @field_validator("v", mode="before")
    @classmethod
    def _no_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):  # Literal[1] would take True, since True == 1 in Python
            raise ValueError("v must be the integer 1")
        return v

    @classmethod
    def from_received(cls, data: Any) -> Envelope:
        """Validate a parsed payload and keep it as received, for :meth:`signed_part`."""
        env = cls.model_validate(data)
        env._received = dict(data)
        return env

    def signed_part(self) -> dict[str, Any]:
        """What the signature covers: the envelope without ``sig``; exactly as received when it
        came off the wire, so that nothing a model might convert can slip past the signature."""
        if self._received is not None:
            return {k: v for k, v in self._received.items() if k != "sig"}
        return self.model_dump(exclude={"sig"})
