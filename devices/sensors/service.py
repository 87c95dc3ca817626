"""Gateway service (``gateway.app.SERVICE_MODULES``): the Pi's own metrics and a summary of the
sensors in every health message.

The telemetry service builds and runs the sensor drivers (it owns the spool they write to) and
leaves them in ``gw.sensor_drivers``; this service only reports on them, so the two can be
attached in either order.
"""

from __future__ import annotations

from typing import Any

from devices.sensors.pihealth import health_provider
from devices.sensors.runner import sensors_summary


def attach(gw: Any) -> None:
    gw.health.add_provider(health_provider(gw.data_dir))

    def summary() -> dict[str, Any]:
        return sensors_summary(list(getattr(gw, "sensor_drivers", None) or []))

    gw.health.add_provider(summary)
