"""Scheduler configuration (YAML, validated here). See configs/scheduler.example.yaml."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from loaxa.mqttconf import MqttEndpoint
from loaxa.yamlconf import Secret, StrictModel, load_config


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
    influx: IocInfluxSection | None = None


def load_scheduler_config(path: str | Path) -> SchedulerConfig:
    return load_config(path, SchedulerConfig)
