"""YAML configuration of the sensors the gateway reads itself: Modbus RTU, GPIO, 1-wire, the Pi.

Each class is one ``type:`` of entry under ``devices:`` in the gateway YAML (see docs/sensors.md).
This module only depends on pydantic so that ``devices.config`` can import it cheaply.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from devices.config_base import DeviceBase, MeasurementName
from loaxa.yamlconf import StrictModel
from protocol.models import FIELD_NAME_PATTERN

#: A field name as written to InfluxDB (``water_level_cm``, ``temperature_c``...).
FieldName = Annotated[str, Field(pattern=FIELD_NAME_PATTERN)]

#: A GPIO pin: a BCM number (``17``) or a gpiozero pin name (``GPIO17``, ``BOARD11``).
GpioPin = Annotated[int | str, Field(description="BCM number (17) or name (GPIO17, BOARD11)")]


def _check_pin(v: int | str) -> int | str:
    if isinstance(v, bool):
        raise ValueError("a pin is a BCM number like 17 or a name like GPIO17 / BOARD11")
    if isinstance(v, int):
        if not 0 <= v <= 53:
            raise ValueError("BCM pin numbers go from 0 to 53")
        return v
    s = v.strip().upper()
    if s.isdigit():
        return _check_pin(int(s))
    for prefix, hi in (("GPIO", 53), ("BCM", 53), ("BOARD", 40)):
        if s.startswith(prefix) and s[len(prefix):].isdigit() and 0 <= int(s[len(prefix):]) <= hi:
            return s
    raise ValueError("a pin is a BCM number like 17 or a name like GPIO17 / BOARD11")


def pin_key(pin: int | str) -> str:
    """A canonical name for comparing pins (``17`` and ``GPIO17`` are the same pin)."""
    if isinstance(pin, int):
        return f"GPIO{pin}"
    s = pin.upper()
    if s.startswith("BCM"):
        return "GPIO" + s[3:]
    return s


# ---------------------------------------------------------------- Modbus RTU (RS-485)


class ModbusRegister(StrictModel):
    """One value read from a Modbus slave: where it is, how it is encoded, how to scale it."""

    field: FieldName = Field(description="field name written to InfluxDB, e.g. water_level_cm")
    address: int = Field(ge=0, le=65535, description="register address as sent on the wire (0-based)")
    function: Literal["holding", "input"] = Field(
        default="holding", description="holding = function 3, input = function 4")
    type: Literal["int16", "uint16", "int32", "uint32", "float32"] = "uint16"
    word_order: Literal["big", "little"] = Field(
        default="big", description="32-bit values: big = high word first (most devices), little = low word first")
    scale: float = Field(default=1.0, allow_inf_nan=False, description="value = raw * scale + offset")
    offset: float = Field(default=0.0, allow_inf_nan=False)
    unit: str | None = Field(default=None, max_length=32, description="for people only, e.g. 'cm'")
    min: float | None = Field(default=None, allow_inf_nan=False,
                              description="values below are a sensor fault: the field is dropped and counted")
    max: float | None = Field(default=None, allow_inf_nan=False,
                              description="values above are a sensor fault (e.g. 6553.5 for 0xFFFF)")

    @property
    def count(self) -> int:
        return 1 if self.type in ("int16", "uint16") else 2

    @model_validator(mode="after")
    def _range(self) -> ModbusRegister:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is larger than max")
        if self.address + self.count - 1 > 65535:
            raise ValueError("a 32-bit value cannot start at the last address")
        return self


class ModbusRtuConfig(DeviceBase):
    """A Modbus RTU slave on an RS-485 bus (water level, rain, temperature/humidity, air quality...).

    Several slaves may share one ``port``; they are then read one after the other, and must agree
    on ``baudrate``, ``parity``, ``stopbits`` and ``bytesize``.
    """

    type: Literal["modbus_rtu"]
    port: str = Field(min_length=1, max_length=256, description="serial device, e.g. /dev/ttyUSB0 or /dev/ttyAMA0")
    baudrate: int = Field(default=9600, ge=300, le=1_000_000)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout_s: float = Field(default=1.0, gt=0, le=30, description="wait this long for an answer")
    retries: int = Field(default=1, ge=0, le=5, description="extra attempts after a timeout")
    poll_interval_s: float = Field(default=30.0, ge=0.1, le=86400)
    unit_id: int = Field(ge=1, le=247, description="the slave address set on the sensor (1-247)")
    measurement: MeasurementName
    max_gap: int = Field(default=0, ge=0, le=32,
                         description="read registers up to this many addresses apart in one request")
    registers: list[ModbusRegister] = Field(min_length=1, max_length=64)

    @field_validator("registers")
    @classmethod
    def _unique_fields(cls, regs: list[ModbusRegister]) -> list[ModbusRegister]:
        seen: set[str] = set()
        for r in regs:
            if r.field in seen:
                raise ValueError(f"field {r.field!r} appears twice")
            seen.add(r.field)
        return regs

    def bus_settings(self) -> tuple[int, str, int, int]:
        return (self.baudrate, self.parity, self.stopbits, self.bytesize)


# ---------------------------------------------------------------- GPIO


class GpioRainGaugeConfig(DeviceBase):
    """A tipping-bucket rain gauge: its reed switch closes once per tip, between ``pin`` and ground."""

    type: Literal["gpio_rain_gauge"]
    pin: GpioPin
    mm_per_tip: float = Field(default=0.2, gt=0, le=10, description="rain per tip, from the gauge's datasheet")
    pull: Literal["up", "down"] = Field(default="up", description="up: switch to ground (usual)")
    bounce_time_s: float = Field(default=0.05, ge=0, le=1, description="ignore switch chatter shorter than this")
    report_interval_s: float = Field(default=60.0, ge=1, le=86400)
    measurement: MeasurementName = "rain"

    @field_validator("pin")
    @classmethod
    def _pin(cls, v: int | str) -> int | str:
        return _check_pin(v)


class GpioInput(StrictModel):
    """One on/off contact: a cabinet door switch, a mains-present relay, a float switch..."""

    field: FieldName = Field(description="field name, value 1 when active, 0 when not (e.g. door_open)")
    pin: GpioPin
    pull: Literal["up", "down", "none"] = Field(default="up", description="the Pi's internal resistor")
    active_when: Literal["low", "high"] | None = Field(
        default=None, description="pin level meaning 1; default: low with pull up, high otherwise")
    bounce_time_s: float = Field(default=0.05, ge=0, le=5)

    @field_validator("pin")
    @classmethod
    def _pin(cls, v: int | str) -> int | str:
        return _check_pin(v)

    @property
    def active_level(self) -> Literal["low", "high"]:
        if self.active_when is not None:
            return self.active_when
        return "low" if self.pull == "up" else "high"


class GpioInputsConfig(DeviceBase):
    """Digital inputs read together and reported on every change and every ``report_interval_s``."""

    type: Literal["gpio_inputs"]
    inputs: list[GpioInput] = Field(min_length=1, max_length=26)
    report_interval_s: float = Field(default=60.0, ge=1, le=86400)
    measurement: MeasurementName = "device_health"

    @field_validator("inputs")
    @classmethod
    def _unique(cls, inputs: list[GpioInput]) -> list[GpioInput]:
        fields: set[str] = set()
        pins: set[str] = set()
        for i in inputs:
            if i.field in fields:
                raise ValueError(f"field {i.field!r} appears twice")
            if pin_key(i.pin) in pins:
                raise ValueError(f"pin {i.pin!r} is used twice")
            fields.add(i.field)
            pins.add(pin_key(i.pin))
        return inputs


# ---------------------------------------------------------------- 1-wire


class Ds18b20Config(DeviceBase):
    """A DS18B20 temperature probe on the Pi's 1-wire bus (``dtoverlay=w1-gpio``, data on GPIO4)."""

    type: Literal["ds18b20"]
    sensor: str = Field(pattern=r"^28-[0-9a-f]{12}$", description="folder name under base_path, e.g. 28-0316a2795aff")
    base_path: Path = Field(default=Path("/sys/bus/w1/devices"))
    interval_s: float = Field(default=60.0, ge=1, le=86400)
    field: FieldName = "temperature_c"
    measurement: MeasurementName = "environment"
    reject_85c: bool = Field(default=True, description="85.000 °C is the chip's power-on value, not a reading")


# ---------------------------------------------------------------- the Pi itself


class PiHealthConfig(DeviceBase):
    """The gateway's own health as readings: CPU temperature, load, memory, disk, uptime, clock."""

    type: Literal["pi_health"]
    interval_s: float = Field(default=60.0, ge=1, le=86400)
    measurement: MeasurementName = "gateway_health"
    thermal_path: Path = Path("/sys/class/thermal/thermal_zone0/temp")
    proc_path: Path = Path("/proc")
    disk_path: Path | None = Field(default=None, description="default: the gateway's data_dir")


SENSOR_CONFIG_TYPES = (ModbusRtuConfig, GpioRainGaugeConfig, GpioInputsConfig, Ds18b20Config, PiHealthConfig)


def check_device_set(devices: Iterable[Any]) -> list[str]:
    """Problems that involve several device entries: a serial port set up two ways or claimed by
    a Modbus bus and another kind of device, a GPIO pin used twice (sensors, or any entry with a
    ``pin``/``relay_pin``, such as the amplifier relay). Returns one message per problem."""
    problems: list[str] = []
    buses: dict[str, tuple[str, tuple[int, str, int, int]]] = {}
    other_ports: dict[str, tuple[str, str]] = {}
    pins: dict[str, str] = {}
    for dev in devices:
        dev_id = getattr(dev, "id", "?")
        if isinstance(dev, ModbusRtuConfig):
            first = buses.setdefault(dev.port, (dev.id, dev.bus_settings()))
            if first[1] != dev.bus_settings():
                problems.append(
                    f"devices {first[0]!r} and {dev.id!r} share port {dev.port} but differ in "
                    f"baudrate/parity/stopbits/bytesize ({first[1]} vs {dev.bus_settings()})")
        elif isinstance(getattr(dev, "port", None), str):
            other_ports.setdefault(dev.port, (dev_id, str(getattr(dev, "type", "?"))))
        used: list[int | str] = []
        if isinstance(dev, GpioInputsConfig):
            used = [i.pin for i in dev.inputs]
        else:
            used = [p for p in (getattr(dev, "pin", None), getattr(dev, "relay_pin", None)) if isinstance(p, int | str)]
        for pin in used:
            key = pin_key(pin)
            if key in pins and pins[key] != dev_id:
                problems.append(f"pin {pin!r} of device {dev_id!r} is already used by device {pins[key]!r}")
            pins.setdefault(key, dev_id)
    for port, (bus_dev, _settings) in buses.items():
        if port in other_ports:
            other_id, other_type = other_ports[port]
            problems.append(f"port {port} is used by Modbus device {bus_dev!r} and by {other_type} device "
                            f"{other_id!r}: one serial port can serve only one of them")
    return problems
