"""Gateway configuration (YAML, validated here). See configs/gateway.example.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from devices.config import DeviceConfig, device_set_problems
from gateway.broadcast.config import BroadcastSection
from loaxa.mqttconf import MqttEndpoint
from loaxa.yamlconf import Secret, StrictModel, load_config
from protocol.ids import GatewayId


class GatewaySection(StrictModel):
    id: GatewayId = Field(description="commune code or slug, [a-z0-9-]{1,64}")
    commune: str | None = Field(default=None, max_length=200, description="commune name, used as a tag")
    data_dir: Path = Field(default=Path("/var/lib/loaxa/gateway"), description="spool, plans, media cache")


class TrustedKey(StrictModel):
    id: str = Field(min_length=1, max_length=128)
    public_key: str = Field(max_length=200, description="base64 of the 32-byte Ed25519 key")

    @field_validator("public_key")
    @classmethod
    def _valid(cls, v: str) -> str:
        from protocol.signing import load_public_key

        load_public_key(v)
        return v

    @model_validator(mode="after")
    def _derived_id(self) -> TrustedKey:
        from protocol.signing import key_id_for, load_public_key

        derived = key_id_for(load_public_key(self.public_key))
        if self.id != derived:
            raise ValueError(f"id {self.id!r} is not the id of this key: it must be {derived!r} "
                             "(`loaxa keys generate` prints a key with its id)")
        return self


class TrustSection(StrictModel):
    keys: list[TrustedKey] = Field(min_length=1)
    clock_skew_s: int = Field(default=120, ge=0, le=3600)
    command_timeout_s: float = Field(default=30.0, gt=0, le=3600,
                                     description="a command's handler is stopped (and refused 'timeout') after this")


class InfluxSection(StrictModel):
    api: Literal["v1", "v2"] = Field(description="v1: InfluxDB 1.x /write; v2: InfluxDB 2.x/3.x write API")
    url: str = Field(pattern=r"^https?://")
    database: str | None = Field(default=None, description="v1: database name")
    retention_policy: str | None = None
    bucket: str | None = Field(default=None, description="v2: bucket")
    org: str | None = Field(default=None, description="v2: organisation")
    token: Secret | None = None
    username: str | None = None
    password: Secret | None = None
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    flush_interval_s: float = Field(default=1.0, gt=0, le=600)
    gzip: bool = True
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    ca_file: Path | None = None
    verify_tls: bool = True
    retry_initial_s: float = Field(default=0.5, gt=0, le=60, description="first retry delay after a failure")
    retry_max_s: float = Field(
        default=10.0, gt=0, le=3600,
        description="longest delay between write retries (with jitter): InfluxDB back → writes resume within it",
    )

    @model_validator(mode="after")
    def _target(self) -> InfluxSection:
        if self.api == "v1" and not self.database:
            raise ValueError("api v1 needs 'database'")
        if self.api == "v2" and not self.bucket:
            raise ValueError("api v2 needs 'bucket'")
        return self


class SpoolSection(StrictModel):
    max_bytes: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024)
    retain_days: int = Field(default=60, ge=0, le=3650, description="keep delivered readings this long")
    alarm_interval_s: float = Field(default=60.0, ge=1, le=86400,
                                    description="at most one 'telemetry_rejected' alarm per this long")


class HealthSection(StrictModel):
    interval_s: float = Field(default=30.0, ge=1, le=3600)


class MediaSection(StrictModel):
    max_bytes: int = Field(default=2 * 1024**3, ge=1024 * 1024, description="media cache size cap")


class GatewayConfig(StrictModel):
    gateway: GatewaySection
    uplink: MqttEndpoint
    local_broker: MqttEndpoint
    trust: TrustSection
    influx: InfluxSection | None = None
    spool: SpoolSection = SpoolSection()
    health: HealthSection = HealthSection()
    media: MediaSection = MediaSection()
    broadcast: BroadcastSection = BroadcastSection()
    devices: list[DeviceConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_devices(self) -> GatewayConfig:
        problems = device_set_problems(self.devices)  # an id twice, one serial port set up two ways, …
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _speakers_fetch_from_the_gateway(self) -> GatewayConfig:
        """IP speakers fetch media over HTTP from the URL in their play command: without a media
        server on the gateway that is the centre's URL, and a broadcast whose file the gateway holds
        fails ``media_unavailable`` whenever the centre is unreachable (issue 15). Refused, not
        defaulted: only the technician knows the address the speakers reach the Pi at."""
        speakers = [d.id for d in self.devices if d.type == "ip_speaker"]
        bc = self.broadcast
        if not speakers or (bc.media_listen and bc.media_public_url):
            return self
        field = "media_public_url" if not bc.media_public_url else "media_listen"
        named = ", ".join(speakers[:3]) + (", …" if len(speakers) > 3 else "")
        msg = (f"{len(speakers)} IP speaker(s) ({named}) fetch media over HTTP: set broadcast.media_public_url "
               "to the gateway's LAN address as the speakers reach it (e.g. \"http://192.168.10.1:8091\") and "
               "broadcast.media_listen to where the gateway serves its media cache (e.g. \"0.0.0.0:8091\"); "
               "without them the speakers are told to fetch from the centre and fail media_unavailable "
               "whenever it is unreachable")
        # located at the missing field, or at the section when there is no broadcast section at all
        loc = ("broadcast", field) if "broadcast" in self.model_fields_set else ("broadcast",)
        raise ValidationError.from_exception_data("GatewayConfig", [InitErrorDetails(
            type=PydanticCustomError("media_not_local", msg), loc=loc, input=None)])


def load_gateway_config(path: str | Path) -> GatewayConfig:
    return load_config(path, GatewayConfig)
