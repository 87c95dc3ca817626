"""Sensors the gateway reads itself: Modbus RTU on RS-485, GPIO, 1-wire DS18B20, the Pi's health,
and simulated sensors. ``build_sensor_drivers`` turns the ``devices:`` list of the gateway YAML
into drivers; ``SensorRunner`` runs them and reports their health.

Imports stay lazy here: ``devices.config`` imports ``devices.sensors.config`` on every start.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devices.base import SensorDriver


def build_sensor_drivers(devices: Iterable[Any], *, gateway_id: str,
                         data_dir: Path | None = None) -> list[SensorDriver]:
    """Drivers for every device entry the gateway reads itself (see devices.sensors.factory)."""
    from devices.sensors.factory import build_sensor_drivers as build

    return build(devices, gateway_id=gateway_id, data_dir=data_dir)


__all__ = ["build_sensor_drivers"]
