"""Run sensor drivers, restart one that crashes, and summarise their health.

In the gateway, the telemetry service (which owns the spool) builds the drivers with
``devices.sensors.build_sensor_drivers`` and runs them itself, and devices.sensors.service puts
:func:`sensors_summary` into the health message. :class:`SensorRunner` does the running for a
program without the telemetry service (tools, tests)::

    await SensorRunner(drivers).run(sink)     # sink: await sink(device_id, measurement, readings)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from devices.base import ReadingSink, SensorDriver

log = logging.getLogger(__name__)

RESTART_MIN_S = 1.0
RESTART_MAX_S = 60.0


class SensorRunner:
    def __init__(self, drivers: Sequence[SensorDriver]) -> None:
        self.drivers = list(drivers)
        self.crashes: dict[str, int] = {d.device_id: 0 for d in self.drivers}

    async def _keep_running(self, driver: SensorDriver, sink: ReadingSink) -> None:
        delay = RESTART_MIN_S
        while True:
            try:
                await driver.run(sink)
                return  # a driver that ends by itself has nothing more to read
            except asyncio.CancelledError:
                raise
            except Exception:
                self.crashes[driver.device_id] += 1
                log.exception("sensor driver %s crashed; restarting in %gs", driver.device_id, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_MAX_S)

    async def run(self, sink: ReadingSink) -> None:
        """Run all drivers until cancelled (never returns by itself: the gateway treats a service
        that ends as failed)."""
        if self.drivers:
            log.info("reading %d sensor(s): %s", len(self.drivers), ", ".join(d.device_id for d in self.drivers))
            async with asyncio.TaskGroup() as tg:
                for d in self.drivers:
                    tg.create_task(self._keep_running(d, sink), name=f"sensor-{d.device_id}")
        await asyncio.Event().wait()

    def stats(self) -> dict[str, Mapping[str, Any]]:
        """Each driver's counters, by device id."""
        return {d.device_id: {**d.stats(), "crashes": self.crashes[d.device_id]} for d in self.drivers}

    def health(self) -> dict[str, Any]:
        return sensors_summary(self.drivers)


def sensors_summary(drivers: Sequence[SensorDriver]) -> dict[str, Any]:
    """For the gateway's health message: how many sensors answer, error totals, and the last
    error of each sensor that does not answer (``sensor_faults``)."""
    stats = {d.device_id: d.stats() for d in drivers}
    online = [dev for dev, s in stats.items() if s.get("online")]
    faults = {dev: str(s.get("last_error") or "no reading yet") for dev, s in stats.items() if not s.get("online")}
    return {
        "sensors_total": len(stats),
        "sensors_online": len(online),
        "sensor_errors": sum(int(s.get("errors") or 0) for s in stats.values()),
        "sensor_timeouts": sum(int(s.get("timeouts") or 0) for s in stats.values()),
        "sensor_faults": faults,
    }
