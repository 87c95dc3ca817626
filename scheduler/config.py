"""Scheduler configuration (YAML, validated here). See configs/scheduler.example.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from loaxa.mqttconf import MqttEndpoint
from loaxa.yamlconf import Secret, StrictModel, load_config
from scheduler.fleet.config import FleetSection


class SchedulerSection(StrictModel):
    data_dir: Path = Field(default=Path("/var/lib/loaxa/scheduler"))
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/scheduler.db (WAL)"
    )
    timezone: str = "Asia/Ho_Chi_Minh"


class SigningSection(StrictModel):
    key_id: str = Field(min_length=1, max_length=128)
    private_key: Secret = Field(description="base64 seed or PKCS#8 PEM of the Ed25519 signing key")
    command_ttl_s: int = Field(default=24 * 3600, ge=10, le=30 * 24 * 3600)


class HttpSection(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_url: str | None = Field(default=None, description="URL gateways use to fetch media")
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    api_token: Secret | None = Field(
        default=None, description="if set, /api/* needs 'Authorization: Bearer <token>'; /media stays open"
    )


class MediaSection(StrictModel):
    """How uploaded audio is stored. Gateways and speakers play what is stored, byte for byte."""

    transcode: Literal["keep", "mp3", "opus"] = Field(
        default="mp3", description="keep the upload as is, or convert to MP3 / Opus (48 kHz mono)"
    )
    bitrate_kbps: int = Field(default=64, ge=16, le=320)
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


class IocInfluxSection(StrictModel):
    url: str = Field(pattern=r"^https?://")
    database: str
    username: str | None = None
    password: Secret | None = None


class SchedulerConfig(StrictModel):
    scheduler: SchedulerSection = SchedulerSection()
    broker: MqttEndpoint
    signing: SigningSection
    http: HttpSection = HttpSection()
    media: MediaSection = MediaSection()
    dispatch: DispatchSection = DispatchSection()
    influx: IocInfluxSection | None = None
    fleet: FleetSection = FleetSection()


def load_scheduler_config(path: str | Path) -> SchedulerConfig:
    return load_config(path, SchedulerConfig)
