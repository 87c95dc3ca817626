"""Local warning rules as a technician writes them (YAML/JSON) → the ``warning.rules`` wire body.

The wire carries integers only (signed envelopes), so thresholds become thousandths of the field's
unit, and the media becomes a content address with a URL signed for that gateway: the gateway
fetches it at once, while its uplink is up, and keeps it pinned in its cache.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protocol.ids import DeviceId, MessageId
from protocol.models import FIELD_NAME_PATTERN, PRIORITY_NAMES, MediaRef, QuietHours, WarningRule, WarningRulesBody

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
MAX_VALUE = 1e9


class RuleIn(BaseModel):
    """One rule, in the units of its field (``above: 180`` cm, ``for_s: 300``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    id: MessageId
    device: DeviceId
    field: str = Field(default="water_level_cm", pattern=FIELD_NAME_PATTERN)
    above: float | None = Field(default=None, ge=-MAX_VALUE, le=MAX_VALUE, description="threshold (>=)")
    for_s: int = Field(default=60, ge=0, le=24 * 3600, description="the value stays above this long")
    rise_per_10min: float | None = Field(default=None, gt=0, le=MAX_VALUE)
    hysteresis: float = Field(default=0, ge=0, le=MAX_VALUE, description="cleared below above - hysteresis")
    media: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of an item of the audio library")
    targets: Literal["*"] | list[DeviceId] = "*"
    level: Literal["normal", "priority", "emergency"] | int = "emergency"
    volume: int = Field(default=100, ge=0, le=100)
    repeat_every_min: int = Field(default=0, ge=0, le=24 * 60)
    max_plays: int = Field(default=1, ge=1, le=100)
    quiet_hours: str | None = Field(default=None, description='"22:00-06:00" (local time, UTC+7)')
    title: str | None = Field(default=None, max_length=200)

    @field_validator("quiet_hours")
    @classmethod
    def _quiet(cls, v: str | None) -> str | None:
        if v is not None and not _HHMM.fullmatch(v):
            raise ValueError('quiet_hours is "HH:MM-HH:MM", e.g. "22:00-06:00"')
        return v

    @field_validator("level")
    @classmethod
    def _level(cls, v: str | int) -> str | int:
        if isinstance(v, int) and not 0 <= v <= 9:
            raise ValueError("level is normal, priority, emergency or 0-9")
        return v

    @model_validator(mode="after")
    def _condition(self) -> RuleIn:
        if self.above is None and self.rise_per_10min is None:
            raise ValueError(f"rule {self.id}: give 'above', 'rise_per_10min' or both")
        return self


class RulesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[RuleIn] = Field(max_length=100)


def _milli(v: float | None) -> int | None:
    return None if v is None else round(v * 1000)


def to_wire(rules: RulesIn, media_ref: Callable[[str], MediaRef]) -> WarningRulesBody:
    """The wire body; ``media_ref(sha256)`` gives the content address (KeyError: not in the library)."""
    out: list[WarningRule] = []
    for r in rules.rules:
        quiet = None
        if r.quiet_hours:
            m = _HHMM.fullmatch(r.quiet_hours)
            assert m is not None
            quiet = QuietHours(from_min=int(m[1]) * 60 + int(m[2]), to_min=int(m[3]) * 60 + int(m[4]))
        data: dict[str, Any] = {
            "id": r.id, "device": r.device, "field": r.field, "threshold_milli": _milli(r.above), "for_s": r.for_s,
            "rise_per_10min_milli": _milli(r.rise_per_10min), "hysteresis_milli": _milli(r.hysteresis) or 0,
            "media": media_ref(r.media), "targets": r.targets,
            "priority": PRIORITY_NAMES[r.level] if isinstance(r.level, str) else r.level, "volume": r.volume,
            "repeat_every_s": r.repeat_every_min * 60, "max_plays": r.max_plays, "quiet_hours": quiet,
            "title": r.title,
        }
        out.append(WarningRule.model_validate(data))
    return WarningRulesBody(rules=out)
