"""The gateway's own health: CPU temperature, load, memory, disk, uptime, power supply, clock.

:func:`collect_health` returns the fields of the contract's ``Health`` message (plus a few
extras the model accepts); the gateway's health reporter calls it through :func:`health_provider`.
:class:`PiHealthDriver` writes the same numbers as ``gateway_health`` readings to InfluxDB.
Every value that cannot be known on this machine is simply left out. All reads are small
files under /proc and /sys plus one ``adjtimex`` system call (no subprocess).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices.sensors.common import PollingDriver, SensorError, make_reading
from devices.sensors.config import PiHealthConfig
from loaxa.clock import now_ms
from protocol.models import Reading

log = logging.getLogger(__name__)

THROTTLED_PATH = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")


@dataclass(frozen=True)
class HealthPaths:
    """Where to read; tests point these at a temporary folder."""

    thermal: Path = Path("/sys/class/thermal/thermal_zone0/temp")
    proc: Path = Path("/proc")
    throttled: Path = THROTTLED_PATH


def _read_small(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            return f.read(65536).decode("ascii", errors="replace")
    except OSError:
        return None


def cpu_temp_c(path: Path) -> float | None:
    text = _read_small(path)
    try:
        return round(int(text.strip()) / 1000.0, 1) if text else None
    except ValueError:
        return None


def load_avg(proc: Path) -> dict[str, float]:
    text = _read_small(proc / "loadavg")
    try:
        parts = (text or "").split()
        return {"load1": float(parts[0]), "load5": float(parts[1]), "load15": float(parts[2])}
    except (IndexError, ValueError):
        return {}


def memory(proc: Path) -> dict[str, float]:
    info: dict[str, int] = {}
    for line in (_read_small(proc / "meminfo") or "").splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            info[name] = int(fields[0])  # kB
    total, avail = info.get("MemTotal"), info.get("MemAvailable")
    if not total or avail is None:
        return {}
    return {"mem_used_pct": round(100.0 * (total - avail) / total, 1), "mem_available_mb": round(avail / 1024, 1)}


def uptime_s(proc: Path) -> float | None:
    text = _read_small(proc / "uptime")
    try:
        return float(text.split()[0]) if text else None
    except (IndexError, ValueError):
        return None


def disk(path: Path) -> dict[str, float]:
    try:
        du = shutil.disk_usage(path)
    except OSError:
        return {}
    if du.total <= 0:
        return {}
    return {"disk_used_pct": round(100.0 * du.used / du.total, 1), "disk_free_mb": round(du.free / 2**20, 1)}


def throttled(path: Path) -> dict[str, Any]:
    """The Pi firmware's power/thermal flags (``vcgencmd get_throttled``): under-voltage is the
    usual cause of SD-card corruption in a commune cabinet."""
    text = _read_small(path)
    if not text:
        return {}
    try:
        flags = int(text.strip(), 16)
    except ValueError:
        return {}
    return {"throttled_flags": flags, "under_voltage": bool(flags & 0x1), "under_voltage_seen": bool(flags & 0x10000)}


# ---------------------------------------------------------------- clock (adjtimex)


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """``struct timex`` of Linux (<sys/timex.h>), read-only use (modes = 0)."""

    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int), ("_pad", ctypes.c_int * 11),
    ]


STA_UNSYNC = 0x0040
STA_NANO = 0x2000
TIME_ERROR = 5
_adjtimex: Any = None


def clock_state() -> dict[str, Any]:
    """Whether the kernel clock is synchronised (what ``timedatectl`` shows as NTPSynchronized),
    the offset the kernel is still correcting, and its estimated error. Empty when unknown."""
    global _adjtimex
    try:
        if _adjtimex is None:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            _adjtimex = libc.adjtimex
        tx = _Timex()
        state = _adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError, TypeError):
        return {}
    if state < 0:
        return {}
    synced = state != TIME_ERROR and not tx.status & STA_UNSYNC
    out: dict[str, Any] = {"clock_synced": synced}
    if synced:
        per_ms = 1e6 if tx.status & STA_NANO else 1e3
        out["clock_offset_ms"] = round(tx.offset / per_ms, 3)
        out["clock_error_ms"] = round(tx.esterror / 1e3, 3)
    return out


# ---------------------------------------------------------------- together


def collect_health(data_dir: Path, paths: HealthPaths = HealthPaths()) -> dict[str, Any]:
    """Fields of ``protocol.models.Health`` (uptime_s, cpu_temp_c, load1, mem_used_pct,
    disk_used_pct, clock_synced, clock_offset_ms) plus extras; unknown values are left out."""
    out: dict[str, Any] = {}
    up = uptime_s(paths.proc)
    if up is not None:
        out["uptime_s"] = up
    temp = cpu_temp_c(paths.thermal)
    if temp is not None:
        out["cpu_temp_c"] = temp
    out.update(load_avg(paths.proc))
    out.update(memory(paths.proc))
    out.update(disk(data_dir))
    out.update(throttled(paths.throttled))
    out.update(clock_state())
    return out


def health_provider(data_dir: Path, paths: HealthPaths = HealthPaths()) -> Callable[[], dict[str, Any]]:
    """For ``ctx.add_health(...)``: the Pi's metrics merged into every health report."""
    return lambda: collect_health(data_dir, paths)


def as_fields(health: dict[str, Any]) -> dict[str, float]:
    """Numeric fields for a reading (booleans become 0/1)."""
    return {k: float(v) for k, v in health.items() if isinstance(v, int | float)}


class PiHealthDriver(PollingDriver):
    def __init__(self, cfg: PiHealthConfig, *, data_dir: Path | None = None) -> None:
        super().__init__(cfg.id, cfg.measurement, cfg.interval_s)
        self.disk_path = cfg.disk_path or data_dir or Path(os.sep)
        self.paths = HealthPaths(thermal=cfg.thermal_path, proc=cfg.proc_path)

    async def poll(self) -> Sequence[Reading]:
        ts = now_ms()
        health = await asyncio.to_thread(collect_health, self.disk_path, self.paths)
        fields = as_fields(health)
        if not fields:
            raise SensorError(f"nothing readable under {self.paths.proc} or {self.paths.thermal}")
        return [make_reading(fields, ts)]
