"""The ``fleet:`` section of the scheduler config: alarm rules, flap suppression and notifications.

Every delay is in seconds and has a sensible default, so ``fleet: {}`` (or no section) gives the
rules of docs/alarms.md. Tests shorten the delays.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from loaxa.yamlconf import Secret, StrictModel
from protocol.ids import GatewayId
from protocol.models import FIELD_NAME_PATTERN

Severity = Literal["critical", "major", "minor", "warning"]
#: Most severe first: a route's ``min_severity`` takes this one and those before it.
SEVERITIES: tuple[Severity, ...] = ("critical", "major", "minor", "warning")


def severity_rank(s: str) -> int:
    """0 for critical … 3 for warning (unknown: 3)."""
    return SEVERITIES.index(s) if s in SEVERITIES else len(SEVERITIES) - 1


class Timing(StrictModel):
    """When a condition becomes an alarm and when the alarm clears by itself."""

    enabled: bool = True
    after_s: float = Field(default=300, ge=0, le=7 * 86400, description="the condition must hold this long")
    clear_after_s: float = Field(default=0, ge=0, le=7 * 86400,
                                 description="the condition must be gone this long before the alarm clears")
    severity: Severity = "major"


class ThresholdRule(StrictModel):
    """A sensor field above (or below) a limit for a while, with hysteresis on the way back."""

    name: str = Field(pattern=r"^[a-z0-9_]{1,48}$", description="alarm type is threshold_<name>")
    measurement: str = Field(pattern=FIELD_NAME_PATTERN)
    field: str = Field(pattern=FIELD_NAME_PATTERN)
    above: float | None = Field(default=None, description="alarm when value >= above")
    below: float | None = Field(default=None, description="alarm when value <= below")
    clear_at: float | None = Field(default=None, description=(
        "hysteresis: the alarm clears only once the value is back past this (default: the limit itself)"))
    for_s: float = Field(default=300, ge=0, le=86400, description="the value must stay past the limit this long")
    severity: Severity = "critical"
    gateways: list[GatewayId] | None = Field(default=None, max_length=10_000, description="default: all")
    devices: list[GatewayId] | None = Field(default=None, max_length=10_000, description="default: all")

    @model_validator(mode="after")
    def _one_side(self) -> ThresholdRule:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of 'above' and 'below'")
        if self.clear_at is not None:
            if self.above is not None and self.clear_at > self.above:
                raise ValueError("clear_at must be at or below 'above' (hysteresis on the way down)")
            if self.below is not None and self.clear_at < self.below:
                raise ValueError("clear_at must be at or above 'below' (hysteresis on the way up)")
        return self


class SilentRule(StrictModel):
    """A configured sensor with no reading in InfluxDB for ``after_s``."""

    enabled: bool = True
    after_s: float = Field(default=1800, ge=1, le=30 * 86400)
    severity: Severity = "minor"
    measurements: list[str] = Field(
        default_factory=lambda: ["environment", "water_level", "rain", "air_quality", "power"],
        max_length=100)

    @model_validator(mode="after")
    def _names(self) -> SilentRule:
        import re

        for m in self.measurements:
            if not re.fullmatch(FIELD_NAME_PATTERN, m):
                raise ValueError(f"measurement {m!r} must match {FIELD_NAME_PATTERN}")
        return self


class Rules(StrictModel):
    gateway_offline: Timing = Timing(after_s=300, severity="major")
    speaker_offline: Timing = Timing(after_s=300, severity="minor")
    broadcast_failed: Timing = Timing(after_s=0, severity="minor")
    spool_dropping: Timing = Timing(after_s=0, clear_after_s=1800, severity="major")
    telemetry_quarantine: Timing = Timing(after_s=0, clear_after_s=1800, severity="minor")
    disk_full: Timing = Timing(after_s=0, clear_after_s=300, severity="major")
    disk_pct: float = Field(default=90.0, gt=0, le=100)
    cpu_temp_high: Timing = Timing(after_s=120, clear_after_s=300, severity="major")
    cpu_temp_c: float = Field(default=80.0, gt=0, le=150)
    clock_unsynced: Timing = Timing(after_s=600, severity="minor")
    clock_offset_ms: float = Field(default=2000, gt=0, le=86_400_000)
    #: alarms the gateway sends itself (``kind: alarm`` events): cleared after this long without a repeat
    gateway_events: Timing = Timing(after_s=0, clear_after_s=1800, severity="minor")
    thresholds: list[ThresholdRule] = Field(default_factory=list, max_length=1000)
    sensor_silent: SilentRule = SilentRule()


class Flapping(StrictModel):
    """A condition that changes ``toggles`` times within ``window_s`` becomes one ``flapping`` alarm;
    it ends once the condition has not changed for a whole window."""

    toggles: int = Field(default=6, ge=2, le=1000)
    window_s: float = Field(default=600, ge=1, le=86400)
    severity: Severity = "minor"


class SmtpSection(StrictModel):
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = Field(
        default="starttls", description="none only on a trusted network (tests use a loopback server)")
    username: str | None = None
    password: Secret | None = None
    sender: str = Field(min_length=3, max_length=300, description='e.g. "Loa Xã <canh-bao@example.gov.vn>"')
    timeout_s: float = Field(default=20, gt=0, le=300)


class Contact(StrictModel):
    """A person who gets e-mails: for the alarms of their areas that a route sends to their roles."""

    name: str = Field(min_length=1, max_length=200)
    email: str = Field(pattern=r"^[^@\s<>,;]{1,64}@[^@\s<>,;]{1,253}$")
    roles: list[str] = Field(min_length=1, max_length=20)
    areas: list[GatewayId] | None = Field(default=None, max_length=10_000, description="gateway ids; default: all")


class Route(StrictModel):
    """Which roles hear of which alarms."""

    roles: list[str] = Field(min_length=1, max_length=20)
    min_severity: Severity = "warning"
    types: list[str] | None = Field(default=None, max_length=100, description="alarm types; default: all")
    recovery: bool = Field(default=True, description="also send the notice when the alarm clears")


class Webhook(StrictModel):
    """A JSON POST (HMAC-SHA256 signed) for each group of alarms: chat bridges, Zalo/SMS gateways."""

    name: str = Field(pattern=r"^[a-z0-9_-]{1,48}$")
    url: str = Field(pattern=r"^https?://", max_length=2048)
    secret: Secret = Field(description="the HMAC key; the receiver checks X-Loaxa-Signature with it")
    areas: list[GatewayId] | None = Field(default=None, max_length=10_000)
    min_severity: Severity = "warning"
    types: list[str] | None = Field(default=None, max_length=100)
    recovery: bool = True
    timeout_s: float = Field(default=10, gt=0, le=120)


class NotifySection(StrictModel):
    group_wait_s: float = Field(default=30, ge=0, le=3600, description=(
        "alarms of one commune within this long go out as one message"))
    max_attempts: int = Field(default=10, ge=1, le=100)
    retry_initial_s: float = Field(default=5, gt=0, le=3600)
    retry_max_s: float = Field(default=1800, gt=0, le=86400)
    public_url: str | None = Field(default=None, max_length=2048, description="link to the alarm page in messages")
    smtp: SmtpSection | None = None
    contacts: list[Contact] = Field(default_factory=list, max_length=10_000)
    routes: list[Route] = Field(default_factory=lambda: [Route(roles=["technician"])], max_length=100)
    webhooks: list[Webhook] = Field(default_factory=list, max_length=100)


class FleetSection(StrictModel):
    evaluate_interval_s: float = Field(default=10, ge=0.05, le=600, description="how often rules are checked")
    readings_interval_s: float = Field(default=60, ge=0.1, le=3600, description="how often InfluxDB is asked")
    action_timeout_s: float = Field(default=15, ge=1, le=300, description="how long an action waits for a report")
    rules: Rules = Rules()
    flapping: Flapping = Flapping()
    notify: NotifySection = NotifySection()
