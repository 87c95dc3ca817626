"""GPIO sensors through gpiozero: a tipping-bucket rain gauge (pulse counter) and on/off inputs.

gpiozero calls its edge callbacks on its own threads; they only hand the event to the asyncio
loop with ``loop.call_soon_threadsafe``. Off a Raspberry Pi, set ``GPIOZERO_PIN_FACTORY=mock``
(or ``Device.pin_factory = MockFactory()`` in tests) to get simulated pins.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from devices.base import ReadingSink
from devices.sensors.common import BaseSensorDriver, make_reading
from devices.sensors.config import GpioInput, GpioInputsConfig, GpioRainGaugeConfig
from protocol.models import Reading

log = logging.getLogger(__name__)

RETRY_OPEN_S = 30.0
MIN_CHANGE_GAP_S = 0.2


def _open_input(pin: int | str, pull: str, bounce_time_s: float) -> Any:
    """A gpiozero DigitalInputDevice; ``is_active`` follows gpiozero's rule (active low with pull up)."""
    from gpiozero import DigitalInputDevice

    pull_up: bool | None = {"up": True, "down": False, "none": None}[pull]
    return DigitalInputDevice(pin, pull_up=pull_up, active_state=True if pull_up is None else None,
                              bounce_time=bounce_time_s or None)


class _GpioDriver(BaseSensorDriver):
    """Opens its pins (retrying while the GPIO is unavailable) and closes them when cancelled."""

    def __init__(self, device_id: str, measurement: str) -> None:
        super().__init__(device_id, measurement)
        self._devices: list[Any] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def _threadsafe(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Wrap ``fn`` so a gpiozero thread can call it: it runs on the event loop."""
        loop = self._loop
        assert loop is not None

        def from_gpio_thread() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed while a pin changed
                loop.call_soon_threadsafe(fn)

        return from_gpio_thread

    def _open(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        for dev in self._devices:
            with contextlib.suppress(Exception):
                dev.close()
        self._devices = []

    async def _open_until_ok(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            try:
                self._open()
            except Exception as exc:  # gpiozero raises many kinds (BadPinFactory, GPIOPinInUse...)
                self._close()
                self.counters.failed(exc)
                self.online = False
                log.warning("device %s: cannot open GPIO: %s (retrying in %gs)", self.device_id, exc, RETRY_OPEN_S)
                await asyncio.sleep(RETRY_OPEN_S)
                continue
            self.online = True
            return


class RainGaugeDriver(_GpioDriver):
    """Counts bucket tips; every ``report_interval_s`` reports ``rain_mm`` (this interval),
    ``rain_rate_mm_h``, ``tips`` and ``rain_total_mm`` (kept across restarts in ``state_dir``)."""

    def __init__(self, cfg: GpioRainGaugeConfig, *, state_dir: Path | None = None) -> None:
        super().__init__(cfg.id, cfg.measurement)
        self.cfg = cfg
        self.tips_pending = 0
        self.tips_total = 0
        self.total_mm = 0.0
        self.state_file = state_dir / f"{cfg.id}.rain.json" if state_dir is not None else None
        self._load_state()

    def _load_state(self) -> None:
        if self.state_file is None:
            return
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
            self.total_mm = float(data["rain_total_mm"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("device %s: ignoring unreadable %s: %s", self.device_id, self.state_file, exc)

    def _save_state(self) -> None:
        if self.state_file is None:
            return
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"rain_total_mm": self.total_mm}), encoding="utf-8")
            os.replace(tmp, self.state_file)
        except OSError as exc:
            log.warning("device %s: cannot save %s: %s", self.device_id, self.state_file, exc)

    def _on_tip(self) -> None:  # on the event loop
        self.tips_pending += 1
        self.tips_total += 1

    def _open(self) -> None:
        dev = _open_input(self.cfg.pin, self.cfg.pull, self.cfg.bounce_time_s)
        self._devices = [dev]
        dev.when_activated = self._threadsafe(self._on_tip)

    def take_reading(self) -> Reading:
        """The reading for the interval that just ended; resets the interval's count."""
        tips, self.tips_pending = self.tips_pending, 0
        rain = round(tips * self.cfg.mm_per_tip, 4)
        self.total_mm = round(self.total_mm + rain, 4)
        rate = rain * 3600.0 / self.cfg.report_interval_s
        return make_reading({"rain_mm": rain, "rain_rate_mm_h": round(rate, 3), "tips": tips,
                             "rain_total_mm": self.total_mm})

    async def run(self, sink: ReadingSink) -> None:
        await self._open_until_ok()
        loop = asyncio.get_running_loop()
        start = loop.time()
        tick = 0
        try:
            while True:
                tick += 1
                await asyncio.sleep(max(0.0, start + tick * self.cfg.report_interval_s - loop.time()))
                reading = self.take_reading()
                self.counters.ok(1)
                await self.deliver(sink, [reading])
                await asyncio.to_thread(self._save_state)
        finally:
            self._close()
            self.online = False

    def stats(self) -> Mapping[str, int | float | str | None]:
        return {**super().stats(), "tips_total": self.tips_total}


class DigitalInputsDriver(_GpioDriver):
    """On/off inputs (door switch, mains relay...): one reading on every change and every interval."""

    def __init__(self, cfg: GpioInputsConfig) -> None:
        super().__init__(cfg.id, cfg.measurement)
        self.cfg = cfg
        self.changes = 0
        self._changed = asyncio.Event()

    def _on_change(self) -> None:  # on the event loop
        self.changes += 1
        self._changed.set()

    def _open(self) -> None:
        self._devices = []
        for inp in self.cfg.inputs:
            dev = _open_input(inp.pin, inp.pull, inp.bounce_time_s)
            self._devices.append(dev)
            cb = self._threadsafe(self._on_change)
            dev.when_activated = cb
            dev.when_deactivated = cb

    @staticmethod
    def _level(inp: GpioInput, dev: Any) -> int:
        active = bool(dev.is_active)
        pin_high = (not active) if inp.pull == "up" else active
        return int(pin_high if inp.active_level == "high" else not pin_high)

    def take_reading(self) -> Reading:
        return make_reading({inp.field: self._level(inp, dev) for inp, dev in zip(self.cfg.inputs, self._devices,
                                                                                strict=True)})

    async def run(self, sink: ReadingSink) -> None:
        self._changed = asyncio.Event()
        await self._open_until_ok()
        last: dict[str, float] | None = None
        try:
            while True:
                self._changed.clear()
                reading = self.take_reading()
                self.counters.ok(1)
                if last is not None and reading.fields != last:
                    log.info("device %s: %s", self.device_id,
                             ", ".join(f"{k}={v:g}" for k, v in reading.fields.items()))
                last = reading.fields
                await self.deliver(sink, [reading])
                # a chattering contact must not flood the spool: changes within this pause are
                # reported together, with the state at the end of it
                await asyncio.sleep(MIN_CHANGE_GAP_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), self.cfg.report_interval_s)
        finally:
            self._close()
            self.online = False

    def stats(self) -> Mapping[str, int | float | str | None]:
        return {**super().stats(), "changes": self.changes}


__all__: Sequence[str] = ("DigitalInputsDriver", "RainGaugeDriver")
