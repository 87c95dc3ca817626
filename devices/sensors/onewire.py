"""DS18B20 temperature probes on the Pi's 1-wire bus, read through the kernel's sysfs files.

The ``w1_therm`` driver exposes ``/sys/bus/w1/devices/28-XXXXXXXXXXXX/w1_slave``::

    72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
    72 01 4b 46 7f ff 0e 10 57 t=23125

The first line ends in ``YES`` when the CRC is good; ``t=`` is thousandths of a degree Celsius.
Reading the file starts a conversion (~750 ms), so it is done in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from devices.sensors.common import PollingDriver, SensorError, make_reading
from devices.sensors.config import Ds18b20Config
from loaxa.clock import now_ms
from protocol.models import Reading

MAX_FILE_BYTES = 4096


def parse_w1_slave(text: str, *, reject_85c: bool = True) -> float:
    """Degrees Celsius from the text of a ``w1_slave`` file; :class:`SensorError` says what is wrong."""
    lines = [ln.strip() for ln in text.strip().splitlines()]
    if len(lines) < 2:
        raise SensorError(f"expected 2 lines, got {len(lines)}")
    if not lines[0].endswith("YES"):
        raise SensorError("bad CRC (first line does not end in YES): check the wiring and the 4.7 kΩ pull-up")
    _, sep, value = lines[1].rpartition("t=")
    if not sep:
        raise SensorError("no 't=' on the second line")
    try:
        milli = int(value)
    except ValueError as exc:
        raise SensorError(f"'t={value}' is not a number") from exc
    if reject_85c and milli == 85000:
        raise SensorError("85.000 °C is the power-on value: the probe reset (power supply?)")
    celsius = milli / 1000.0
    if not -55.0 <= celsius <= 125.0:
        raise SensorError(f"{celsius} °C is outside the DS18B20's range (-55..125)")
    return celsius


def _read_text(path: Path) -> str:
    with path.open("rb") as f:
        return f.read(MAX_FILE_BYTES).decode("ascii", errors="replace")


class Ds18b20Driver(PollingDriver):
    def __init__(self, cfg: Ds18b20Config) -> None:
        super().__init__(cfg.id, cfg.measurement, cfg.interval_s)
        self.cfg = cfg
        self.path = cfg.base_path / cfg.sensor / "w1_slave"

    async def poll(self) -> Sequence[Reading]:
        ts = now_ms()
        try:
            text = await asyncio.to_thread(_read_text, self.path)
        except FileNotFoundError as exc:
            raise SensorError(f"{self.path} does not exist: probe unplugged, or 1-wire not enabled "
                              f"(dtoverlay=w1-gpio in /boot/firmware/config.txt)") from exc
        except OSError as exc:
            raise SensorError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        try:
            celsius = parse_w1_slave(text, reject_85c=self.cfg.reject_85c)
        except SensorError as exc:
            raise SensorError(f"{self.path}: {exc}") from exc
        return [make_reading({self.cfg.field: celsius}, ts)]
