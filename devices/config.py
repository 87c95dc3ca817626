"""Configuration of the devices behind one gateway: one entry per device, chosen by ``type``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from devices.config_base import DeviceBase, MeasurementName
from devices.sensors.config import (
    Ds18b20Config,
    GpioInputsConfig,
    GpioRainGaugeConfig,
    ModbusRtuConfig,
    PiHealthConfig,
    check_device_set,
)
from devices.serial_node.config import SerialNodeConfig
from devices.speakers.amplifier import AmplifierConfig
from loaxa.yamlconf import load_config
from protocol.ids import GatewayId

__all__ = ["DeviceBase", "DeviceConfig", "DevicesFile", "MeasurementName", "device_set_problems", "load_devices"]


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


def device_set_problems(devices: list[DeviceConfig]) -> list[str]:
    """Problems between device entries: an id twice, a serial port set up two ways, a GPIO pin twice."""
    problems: list[str] = []
    seen: set[str] = set()
    for dev in devices:
        if dev.id in seen:
            problems.append(f"device id {dev.id!r} appears twice")
        seen.add(dev.id)
    return problems + check_device_set(devices)


class _Host(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: GatewayId
    data_dir: Path = Path("/var/lib/loaxa/gateway")


class DevicesFile(BaseModel):
    """The devices' view of a gateway YAML: which gateway, its data folder, and the ``devices`` list.

    Technician tools that drive the devices (``loaxa sensors read``) read the gateway's own file
    through this model, so that devices/ needs nothing from gateway/. The other sections are the
    gateway's business and are not checked here: ``loaxa config check`` checks the whole file."""

    model_config = ConfigDict(extra="ignore")

    gateway: _Host
    devices: list[DeviceConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> DevicesFile:
        problems = device_set_problems(self.devices)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def load_devices(path: str | os.PathLike[str]) -> DevicesFile:
    """Read the devices of a gateway YAML; raises ``loaxa.yamlconf.ConfigError`` naming PATH:LINE:COL."""
    return load_config(path, DevicesFile)
