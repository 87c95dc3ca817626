"""Shapes of programmes and schedules at the boundary (API, CLI, import), checked by pydantic.

Every field has a limit; times must carry their UTC offset (``AwareDatetime``). Errors name the
field (pydantic's ``loc``), and recurrence problems name the rule part.
"""

from __future__ import annotations

import re
from datetime import date, datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from scheduler.schedules.levels import parse_level
from scheduler.schedules.recurrence import DEFAULT_TZ, MAX_DATES, Recurrence, zone

_SHA256 = r"^[0-9a-f]{64}$"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_strip_whitespace=True)


class ProgrammeItemIn(_In):
    media_sha256: str | None = Field(default=None, pattern=_SHA256)
    text: str | None = Field(default=None, min_length=1, max_length=5000, description="read aloud in Vietnamese")
    volume: int | None = Field(default=None, ge=0, le=100)
    duration_ms: int | None = Field(
        default=None, ge=1, le=6 * 3600 * 1000,
        description="for a text item, once synthesised (media: from the library)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ProgrammeItemIn:
        if (self.media_sha256 is None) == (self.text is None):
            raise ValueError("give either media_sha256 or text, not both and not neither")
        return self


class ProgrammeIn(_In):
    title: str = Field(min_length=1, max_length=200)
    items: list[ProgrammeItemIn] = Field(min_length=1, max_length=100)


def parse_exdate(text: str) -> date | datetime:
    """An EXDATE as stored: ``2026-12-25`` (the whole local day) or an ISO instant with offset."""
    if _DATE.match(text):
        return date.fromisoformat(text)
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset: write 2026-12-25 or 2026-12-25T06:00+07:00")
    return dt


class ScheduleIn(_In):
    title: str = Field(min_length=1, max_length=200)
    programme_id: str = Field(min_length=1, max_length=64)
    rrule: str | None = Field(
        default=None, max_length=500, examples=["FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA;BYHOUR=6,17;BYMINUTE=0"]
    )
    tz: str = Field(default=DEFAULT_TZ, max_length=64)
    dtstart: AwareDatetime
    exdates: list[str] = Field(default_factory=list, max_length=MAX_DATES)
    rdates: list[AwareDatetime] = Field(default_factory=list, max_length=MAX_DATES)
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None
    priority: int | str = Field(
        default="normal", validate_default=True, description="0-9, or thông thường / ưu tiên / khẩn cấp"
    )
    volume: int = Field(default=70, ge=0, le=100)
    targets: list[str] = Field(min_length=1, max_length=500,
                               description='"GATEWAY", "GATEWAY/DEVICE" or "GATEWAY/@GROUP" (read at each occurrence)')
    conflict_order: int | None = Field(default=None, ge=0, le=1000)

    @field_validator("tz")
    @classmethod
    def _zone(cls, v: str) -> str:
        zone(v)
        return v

    @field_validator("exdates")
    @classmethod
    def _exdates(cls, v: list[str]) -> list[str]:
        for x in v:
            parse_exdate(x)
        return v

    @field_validator("priority")
    @classmethod
    def _priority(cls, v: int | str) -> int:
        return parse_level(v)

    @model_validator(mode="after")
    def _rule(self) -> ScheduleIn:
        self.recurrence()  # RecurrenceError is a ValueError: pydantic reports it
        return self

    def recurrence(self) -> Recurrence:
        return Recurrence(
            dtstart=self.dtstart,
            tz=self.tz,
            rrule=self.rrule,
            exdates=tuple(parse_exdate(x) for x in self.exdates),
            rdates=tuple(self.rdates),
            valid_from=self.valid_from,
            valid_until=self.valid_until,
        )
