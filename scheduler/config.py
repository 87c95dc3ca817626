"""Scheduler configuration (YAML, validated here). See configs/scheduler.example.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from loaxa.mqttconf import MqttEndpoint
from loaxa.yamlconf import Secret, StrictModel, load_config
from protocol.ids import GatewayId
from scheduler.fleet.config import FleetSection


class SchedulerSection(StrictModel):
    data_dir: Path = Field(default=Path("/var/lib/loaxa/scheduler"))
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/scheduler.db (WAL)"
    )
    timezone: str = "Asia/Ho_Chi_Minh"


class SigningSection(StrictModel):
    key_id: str | None = Field(default=None, min_length=1, max_length=128, description=(
        "optional: the id is derived from the key (ed25519-<16 hex>); if given, it must be that id"))
    private_key: Secret = Field(description="base64 seed or PKCS#8 PEM of the Ed25519 signing key")
    command_ttl_s: int = Field(default=24 * 3600, ge=10, le=7 * 24 * 3600,
                               description="no command lives longer than 7 days (docs/protocol.md)")


class HttpSection(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_url: str | None = Field(default=None, description="URL gateways use to fetch media")
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    api_token: Secret | None = Field(
        default=None, description="removed: the API takes per-machine tokens now (`loaxa tokens create`)"
    )
    media_url_secret: Secret | None = Field(
        default=None,
        description="key (base64, >= 32 bytes) that signs gateways' media URLs; "
        "default: <data_dir>/media-url.key, created on first start",
    )


class AccessSection(StrictModel):
    """Browser sessions (accounts, roles and tokens live in the database: `loaxa users`, `loaxa tokens`)."""

    session_hours: int = Field(default=12, ge=1, le=24 * 30, description="a session ends this long after login")
    idle_minutes: int = Field(default=120, ge=5, le=24 * 60, description="... or after this long unused")
    secure_cookies: bool | None = Field(
        default=None, description="mark cookies Secure; default: when public_url is https or the request came over TLS"
    )


class MediaSection(StrictModel):
    """How uploaded audio is stored. Gateways and speakers play what is stored, byte for byte."""

    transcode: Literal["keep", "mp3", "opus"] = Field(
        default="mp3", description="keep the upload as is, or convert to MP3 / Opus (48 kHz mono)"
    )
    bitrate_kbps: int = Field(default=128, ge=16, le=320, description="music (kind=music uploads)")
    speech_bitrate_kbps: int = Field(
        default=48, ge=16, le=320, description="speech: text-to-speech and kind=speech uploads (the default)"
    )
    loudness_lufs: float = Field(default=-16.0, ge=-30.0, le=-10.0, description="integrated loudness of every item")
    true_peak_dbtp: float = Field(default=-1.5, ge=-9.0, le=0.0, description="true-peak ceiling of every item")
    max_duration_s: int = Field(default=4 * 3600, ge=1, le=24 * 3600)
    tts_voice: str = Field(default="vi", max_length=64, description="espeak-ng voice for text-to-speech")


class DispatchSection(StrictModel):
    """Delivery of plans to gateways."""

    resend_interval_s: float = Field(
        default=30.0, ge=1.0, le=3600.0, description="resend an unacknowledged command this often"
    )
    max_late_s: int = Field(
        default=3600,
        ge=0,
        le=7 * 24 * 3600,
        description="a plan is still delivered this long after its start (+ its duration); then it expires",
    )
    share_group: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="run as one of several scheduler workers: acks and playback reports are shared among the "
        "workers through the MQTT 5 shared subscriptions $share/<group>/loaxa/v1/+/ack and .../event "
        "(every worker: the same group, database and signing key; its own broker account); see docs/scaling.md",
    )
    schedule_horizon_days: int = Field(
        default=8, ge=7, le=30,
        description="approved schedules' occurrences this far ahead are sent to gateways (offline autonomy)",
    )
    schedule_top_up_s: float = Field(
        default=3600.0, ge=10.0, le=86400.0, description="how often the schedule horizon is topped up",
    )


class IocInfluxSection(StrictModel):
    """Where the IOC read API (scheduler/ioc/, docs/ioc-api.md) reads readings with InfluxQL."""

    url: str = Field(pattern=r"^https?://")
    database: str = Field(min_length=1, max_length=200)
    username: str | None = None
    password: Secret | None = None
    token: Secret | None = Field(default=None, description="InfluxDB 2.x/3.x token (instead of username/password)")
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    max_range_days: int = Field(default=31, ge=1, le=3660, description="longest from..to one request may ask")
    max_points: int = Field(default=50_000, ge=100, le=1_000_000, description="most points in one page")


LatLon = tuple[float, float]


class GatewayEntry(StrictModel):
    """A gateway this scheduler serves: its id is its user name on the central broker."""

    id: GatewayId
    commune: str | None = Field(default=None, max_length=200)
    code: str | None = Field(default=None, min_length=1, max_length=32,
                             description="the commune's administrative code (CAP <geocode> matches it)")
    location: LatLon | None = Field(default=None, description="[latitude, longitude] of the commune (WGS 84)")
    boundary: list[LatLon] | None = Field(default=None, min_length=4, max_length=5000,
                                          description="the commune's boundary: [[lat, lon], ...], closed")

    @field_validator("location")
    @classmethod
    def _location(cls, v: LatLon | None) -> LatLon | None:
        if v is not None and not (-90 <= v[0] <= 90 and -180 <= v[1] <= 180):
            raise ValueError("location is [latitude, longitude]: latitude -90..90, longitude -180..180")
        return v

    @field_validator("boundary")
    @classmethod
    def _boundary(cls, v: list[LatLon] | None) -> list[LatLon] | None:
        if v is None:
            return v
        if v[0] != v[-1]:
            raise ValueError("boundary must end with its first point")
        if any(not (-90 <= lat <= 90 and -180 <= lon <= 180) for lat, lon in v):
            raise ValueError("boundary points are [latitude, longitude] within WGS 84")
        return v


CapUrgency = Literal["Immediate", "Expected", "Future", "Past", "Unknown"]
CapSeverity = Literal["Extreme", "Severe", "Moderate", "Minor", "Unknown"]


class CapFeedEntry(StrictModel):
    url: str = Field(pattern=r"^https?://", max_length=2048, description="Atom or RSS feed of CAP 1.2 alerts")
    source: str = Field(min_length=1, max_length=100, description="name of this source for the trust policy")
    interval_s: float = Field(default=60.0, ge=5.0, le=86400.0)


class CapSection(StrictModel):
    """CAP 1.2 intake (docs/warnings.md): who may send at once, what goes out without an approver."""

    trusted_sources: list[str] = Field(default_factory=list, description=(
        "token/account names (POST /api/cap) and feed sources whose alerts may be sent at once"))
    auto_send_severities: list[CapSeverity] = Field(default_factory=lambda: list[CapSeverity](["Extreme"]))
    auto_send_urgencies: list[CapUrgency] = Field(default_factory=lambda: list[CapUrgency](["Immediate"]))
    volume: int = Field(default=100, ge=0, le=100)
    feeds: list[CapFeedEntry] = Field(default_factory=list, max_length=50)


class SchedulerConfig(StrictModel):
    scheduler: SchedulerSection = SchedulerSection()
    broker: MqttEndpoint
    signing: SigningSection
    http: HttpSection = HttpSection()
    access: AccessSection = AccessSection()
    media: MediaSection = MediaSection()
    dispatch: DispatchSection = DispatchSection()
    influx: IocInfluxSection | None = None
    cap: CapSection = CapSection()
    gateways: list[GatewayEntry] = Field(
        default_factory=list,
        description="the gateways this scheduler serves; messages of any other gateway id are ignored",
    )
    fleet: FleetSection = FleetSection()


def load_scheduler_config(path: str | Path) -> SchedulerConfig:
    return load_config(path, SchedulerConfig)
