"""Configuration of the devices behind one gateway: one entry per device, chosen by ``type``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from devices.config_base import DeviceBase, MeasurementName
from devices.sensors.config import (
    Ds18b20Config,
    GpioInputsConfig,
    GpioRainGaugeConfig,
    ModbusRtuConfig,
    PiHealthConfig,
)
from devices.speakers.amplifier import AmplifierConfig
from gateway.serial.config import SerialNodeConfig

__all__ = ["DeviceBase", "DeviceConfig", "MeasurementName"]


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
    seed: int | None = Field(default=None, description="fixed seed: the same readings every run (tests)")
    speed: float = Field(default=1.0, ge=0.001, le=100_000,
                         description="simulated seconds per real second (e.g. 60 to see a flood in minutes)")


DeviceConfig = Annotated[
    IpSpeakerConfig | MqttSensorConfig | SimSensorConfig | AmplifierConfig | SerialNodeConfig
    | ModbusRtuConfig | GpioRainGaugeConfig | GpioInputsConfig | Ds18b20Config | PiHealthConfig,
    Field(discriminator="type"),
]
