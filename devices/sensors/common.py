"""What the sensor drivers share: error counters, a drift-free polling loop, reading helpers."""

from __future__ import annotations

import abc
import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from devices.base import ReadingSink, SensorDriver
from loaxa.clock import now_ms
from protocol.models import Reading

log = logging.getLogger(__name__)


class SensorError(Exception):
    """A failed read that the driver counts and survives (bad CRC, exception response, missing file)."""


class SensorTimeout(SensorError):
    """The sensor did not answer in time."""


def make_reading(fields: Mapping[str, float], ts_ms: int | None = None) -> Reading:
    """A validated :class:`Reading`; non-finite values are dropped (a reading needs one field left)."""
    clean = {k: float(v) for k, v in fields.items() if math.isfinite(float(v))}
    return Reading(ts=now_ms() if ts_ms is None else ts_ms, fields=clean)


@dataclass
class DriverStats:
    """Per-driver counters. ``errors`` counts every failed read, timeouts included; ``timeouts`` only those."""

    reads: int = 0
    errors: int = 0
    timeouts: int = 0
    sink_errors: int = 0
    readings: int = 0
    last_error: str | None = None
    last_error_at: int | None = None
    last_ok_at: int | None = None

    def ok(self, n_readings: int) -> None:
        self.reads += 1
        self.readings += n_readings
        self.last_ok_at = now_ms()

    def failed(self, exc: BaseException, *, timeout: bool = False) -> None:
        self.errors += 1
        if timeout:
            self.timeouts += 1
        self.last_error = str(exc) or type(exc).__name__
        self.last_error_at = now_ms()

    def as_dict(self) -> dict[str, int | float | str | None]:
        return {
            "reads": self.reads, "errors": self.errors, "timeouts": self.timeouts,
            "sink_errors": self.sink_errors, "readings": self.readings, "last_error": self.last_error,
            "last_error_at": self.last_error_at, "last_ok_at": self.last_ok_at,
        }


class BaseSensorDriver(SensorDriver):
    """A driver with counters, an ``online`` flag and a safe way to hand readings to the sink."""

    measurement: str

    def __init__(self, device_id: str, measurement: str) -> None:
        self.device_id = device_id
        self.measurement = measurement
        self.counters = DriverStats()
        self.online = False

    def stats(self) -> Mapping[str, int | float | str | None]:
        return {"online": int(self.online), **self.counters.as_dict()}

    async def deliver(self, sink: ReadingSink, readings: Sequence[Reading]) -> bool:
        """Hand ``readings`` to the sink; a failing sink is counted and logged, never raised."""
        if not readings:
            return True
        try:
            await sink(self.device_id, self.measurement, readings)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.counters.sink_errors += 1
            self.counters.last_error = f"sink: {exc}"
            self.counters.last_error_at = now_ms()
            log.error("device %s: could not store %d reading(s): %s", self.device_id, len(readings), exc)
            return False
        return True


class PollingDriver(BaseSensorDriver):
    """Reads the sensor every ``interval_s`` (on a fixed grid: a slow read does not shift the next)."""

    def __init__(self, device_id: str, measurement: str, interval_s: float) -> None:
        super().__init__(device_id, measurement)
        self.interval_s = interval_s

    @abc.abstractmethod
    async def poll(self) -> Sequence[Reading]:
        """One read. Raise :class:`SensorTimeout` / :class:`SensorError` on failure."""

    async def poll_once(self) -> Sequence[Reading]:
        """``poll()`` with the counting; returns no readings when it failed."""
        try:
            readings = await self.poll()
        except asyncio.CancelledError:
            raise
        except SensorTimeout as exc:
            self._fail(exc, timeout=True)
            return []
        except (SensorError, OSError, ValueError, ValidationError) as exc:
            self._fail(exc)
            return []
        except Exception as exc:  # a driver bug must not stop the gateway; say so loudly
            log.exception("device %s: unexpected error while reading", self.device_id)
            self._fail(exc)
            return []
        self.counters.ok(len(readings))
        if not self.online:
            log.info("device %s: reading again", self.device_id)
        self.online = True
        return readings

    def _fail(self, exc: BaseException, *, timeout: bool = False) -> None:
        self.counters.failed(exc, timeout=timeout)
        if self.online or self.counters.errors == 1:
            log.warning("device %s: %s", self.device_id, self.counters.last_error)
        self.online = False

    async def open(self) -> None:
        """Prepare before the first poll (called by ``run``)."""

    async def close(self) -> None:
        """Release what ``open``/``poll`` opened (called when ``run`` ends)."""

    async def run(self, sink: ReadingSink) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        tick = 0
        await self.open()
        try:
            while True:
                readings = await self.poll_once()
                await self.deliver(sink, readings)
                tick += 1
                nxt = start + tick * self.interval_s
                now = loop.time()
                if nxt < now:  # we fell behind (slow bus): skip the missed slots
                    tick += math.ceil((now - nxt) / self.interval_s)
                    nxt = start + tick * self.interval_s
                await asyncio.sleep(nxt - now)
        finally:
            await self.close()
