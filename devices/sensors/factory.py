"""Turn the ``devices:`` entries of the gateway YAML into sensor drivers, and run them.

``build_sensor_drivers`` returns one driver per entry the gateway reads itself (Modbus, GPIO,
1-wire, the Pi, simulated sensors). Entries that talk MQTT themselves (``mqtt_sensor``) and
speakers are not sensors the gateway polls, so they get no driver here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from devices.base import SensorDriver
from devices.sensors.config import (
    Ds18b20Config,
    GpioInputsConfig,
    GpioRainGaugeConfig,
    ModbusRtuConfig,
    PiHealthConfig,
    check_device_set,
)


def build_sensor_drivers(devices: Iterable[Any], *, gateway_id: str,
                         data_dir: Path | None = None) -> list[SensorDriver]:
    """One driver per sensor entry, in config order. ``data_dir`` keeps small driver state
    (the rain gauge's running total) and is the disk the Pi health reports on.

    Raises ``ValueError`` when entries conflict (one serial port set up two ways, a pin used twice).
    """
    from devices.config import SimSensorConfig

    devices = list(devices)
    problems = check_device_set(devices)
    if problems:
        raise ValueError("; ".join(problems))
    state_dir = data_dir / "sensors" if data_dir is not None else None
    drivers: list[SensorDriver] = []
    buses: dict[str, Any] = {}
    for dev in devices:
        if isinstance(dev, ModbusRtuConfig):
            from devices.sensors.modbus import ModbusBus, ModbusRtuDriver

            bus = buses.get(dev.port)
            if bus is None:
                bus = buses[dev.port] = ModbusBus.for_config(dev)
            else:
                bus.widen(dev)
            drivers.append(ModbusRtuDriver(dev, bus))
        elif isinstance(dev, GpioRainGaugeConfig):
            from devices.sensors.gpio import RainGaugeDriver

            drivers.append(RainGaugeDriver(dev, state_dir=state_dir))
        elif isinstance(dev, GpioInputsConfig):
            from devices.sensors.gpio import DigitalInputsDriver

            drivers.append(DigitalInputsDriver(dev))
        elif isinstance(dev, Ds18b20Config):
            from devices.sensors.onewire import Ds18b20Driver

            drivers.append(Ds18b20Driver(dev))
        elif isinstance(dev, PiHealthConfig):
            from devices.sensors.pihealth import PiHealthDriver

            drivers.append(PiHealthDriver(dev, data_dir=data_dir))
        elif isinstance(dev, SimSensorConfig):
            from devices.sensors.sim import SimSensorDriver

            drivers.append(SimSensorDriver(dev, gateway_id=gateway_id))
    return drivers
