"""Configuration of the devices behind one gateway: one entry per device, chosen by ``type``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from devices.speakers.amplifier import AmplifierConfig
from gateway.serial.config import SerialNodeConfig
from loaxa.yamlconf import StrictModel
from protocol.ids import DeviceId

MeasurementName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,63}$")]


class DeviceBase(StrictModel):
    id: DeviceId
    name: str | None = Field(default=None, max_length=200, description="human name, e.g. 'Loa chợ'")


class IpSpeakerConfig(DeviceBase):
    """A smart IP speaker on the commune LAN broker (``dev/{id}/cmd`` and ``dev/{id}/state``)."""

    type: Literal["ip_speaker"]
    volume: int = Field(default=70, ge=0, le=100, description="default volume when a plan gives none")


class MqttSensorConfig(DeviceBase):
    """A sensor that publishes readings itself on ``dev/{id}/telemetry`` to the commune broker."""

    type: Literal["mqtt_sensor"]
    measurement: MeasurementName = "environment"


class SimSensorConfig(DeviceBase):
    """A simulated sensor run inside the gateway process (demo and tests)."""

    type: Literal["sim_sensor"]
    kind: Literal["water_level", "rain", "environment", "air_quality", "power"] = "environment"
    interval_s: float = Field(default=10.0, gt=0, le=86400)


DeviceConfig = Annotated[
    IpSpeakerConfig | MqttSensorConfig | SimSensorConfig | AmplifierConfig | SerialNodeConfig,
    Field(discriminator="type"),
]
