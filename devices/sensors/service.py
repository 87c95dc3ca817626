"""Gateway service (``gateway.app.SERVICE_MODULES``): the Pi's own metrics and a summary of the
sensors in every health message.

The telemetry service builds and runs the sensor drivers (it owns the spool they write to) and
lists them in the context's ``sensor_drivers``; this service only reports on them, when a health
message is assembled, so the two can be attached in either order. devices/ never imports gateway/:
:class:`SensorsHost` is the part of ``gateway.context.GatewayContext`` this service uses, which mypy
checks the real context against (``gateway.app``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from devices.base import SensorDriver
from devices.sensors.pihealth import health_provider
from devices.sensors.runner import sensors_summary


class SensorsHost(Protocol):
    @property
    def data_dir(self) -> Path: ...

    @property
    def sensor_drivers(self) -> Sequence[SensorDriver]: ...

    def add_health(self, provider: Callable[[], Mapping[str, Any]]) -> None: ...


def attach(ctx: SensorsHost) -> None:
    ctx.add_health(health_provider(ctx.data_dir))

    def summary() -> dict[str, Any]:
        return sensors_summary(list(ctx.sensor_drivers))

    ctx.add_health(summary)
