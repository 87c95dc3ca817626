"""Simulated sensors that look like a Vietnamese commune's: flood waves, rain bursts, a daily
temperature cycle, rush-hour dust, mains outages with a battery behind them.

A generator is deterministic: the same ``seed`` and the same sequence of sample times give the
same readings. Events (a flood, an hour of rain, an outage) are drawn from the seed and the
day/hour they fall in, so two generators with one seed agree however often they are sampled.
Times are UTC epoch seconds of *simulated* time; local time is Asia/Ho_Chi_Minh (UTC+7).
"""

from __future__ import annotations

import abc
import math
import random
import zlib
from collections.abc import Sequence
from typing import ClassVar

from devices.sensors.common import PollingDriver, make_reading
from loaxa.clock import now_ms
from protocol.models import Reading

DAY = 86400.0
HOUR = 3600.0
UTC_OFFSET_H = 7.0
KINDS: tuple[str, ...] = ("water_level", "rain", "environment", "air_quality", "power")


def local_hour(t: float) -> float:
    return ((t / HOUR) + UTC_OFFSET_H) % 24.0


def _clamp(v: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, v))


class SensorModel(abc.ABC):
    """One simulated sensor. ``sample(t)`` returns its fields at simulated time ``t``."""

    kind: ClassVar[str]

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.noise = random.Random(f"{seed}:{self.kind}:noise")
        device = random.Random(f"{seed}:{self.kind}:device")
        self.setup(device)

    def setup(self, rng: random.Random) -> None:  # noqa: B027 - optional hook
        """Per-device constants (base level, climate) drawn once from the seed."""

    def event_rng(self, what: str, epoch: int) -> random.Random:
        """A random source fixed by seed, kind and period: the period's weather."""
        return random.Random(f"{self.seed}:{self.kind}:{what}:{epoch}")

    @abc.abstractmethod
    def sample(self, t: float) -> dict[str, float]:
        """Fields at simulated time ``t`` (UTC epoch seconds)."""


class WaterLevel(SensorModel):
    """River/canal level: a tidal swing plus flood waves (fast rise, slow recession)."""

    kind = "water_level"

    def setup(self, rng: random.Random) -> None:
        self.base_cm = rng.uniform(80, 200)
        self.tide_cm = rng.uniform(5, 30)
        self.tide_phase = rng.uniform(0, 2 * math.pi)
        self._waves: dict[int, tuple[float, float, float] | None] = {}

    def wave(self, day: int) -> tuple[float, float, float] | None:
        """(peak time, peak height cm, rise time s) of the flood wave that starts on ``day``, if any."""
        if day not in self._waves:
            rng = self.event_rng("flood", day)
            self._waves[day] = None if rng.random() > 0.35 else (
                day * DAY + rng.uniform(0, DAY), rng.uniform(50, 400), rng.uniform(3, 12) * HOUR)
            if len(self._waves) > 64:  # keep the recent days only
                del self._waves[min(self._waves)]
        return self._waves[day]

    def flood_cm(self, t: float) -> float:
        total = 0.0
        day = math.floor(t / DAY)
        for d in range(day - 5, day + 2):
            w = self.wave(d)
            if w is None:
                continue
            peak_at, height, rise = w
            tau = t - (peak_at - rise)  # time since the wave began
            if tau <= 0:
                continue
            x = tau / rise
            k = 2.5
            total += height * (x ** k) * math.exp(k * (1 - x))
        return total

    def sample(self, t: float) -> dict[str, float]:
        tide = self.tide_cm * math.sin(2 * math.pi * t / (12.42 * HOUR) + self.tide_phase)
        level = self.base_cm + tide + self.flood_cm(t) + self.noise.gauss(0, 0.5)
        return {"water_level_cm": round(max(0.0, level), 1)}


class Rain(SensorModel):
    """A tipping-bucket gauge (0.2 mm per tip) under showers that come in bursts."""

    kind = "rain"
    MM_PER_TIP = 0.2

    def setup(self, rng: random.Random) -> None:
        self.wetness = rng.uniform(0.08, 0.2)  # share of hours with rain
        self.last_t: float | None = None
        self.bucket = 0.0
        self.total_mm = 0.0

    def rate_mm_h(self, t: float) -> float:
        hour = math.floor(t / HOUR)
        h = self.event_rng("hour", hour)
        if h.random() > self.wetness:
            return 0.0
        intensity = h.expovariate(1 / 5.0)  # mean 5 mm/h, sometimes a downpour
        burst = self.event_rng("burst", math.floor(t / 600)).uniform(0, 2)
        return intensity * burst

    def sample(self, t: float) -> dict[str, float]:
        dt = 0.0 if self.last_t is None else _clamp(t - self.last_t, 0.0, HOUR)
        self.last_t = t
        self.bucket += self.rate_mm_h(t) * dt / HOUR
        tips = math.floor(self.bucket / self.MM_PER_TIP + 1e-9)
        self.bucket -= tips * self.MM_PER_TIP
        rain = round(tips * self.MM_PER_TIP, 4)
        self.total_mm = round(self.total_mm + rain, 4)
        rate = rain * HOUR / dt if dt > 0 else 0.0
        return {"rain_mm": rain, "rain_rate_mm_h": round(rate, 3), "tips": float(tips),
                "rain_total_mm": self.total_mm}


class Environment(SensorModel):
    """Temperature (coolest near dawn, warmest mid-afternoon), humidity opposite, pressure tides."""

    kind = "environment"

    def setup(self, rng: random.Random) -> None:
        self.site_offset = rng.uniform(-1.5, 1.5)

    def sample(self, t: float) -> dict[str, float]:
        day = self.event_rng("day", math.floor((t / HOUR + UTC_OFFSET_H) / 24))
        mean, amp = day.uniform(24, 30) + self.site_offset, day.uniform(3, 5.5)
        h = local_hour(t)
        temp = mean + amp * math.cos(2 * math.pi * (h - 14.5) / 24) + self.noise.gauss(0, 0.1)
        humidity = _clamp(95 - 3.2 * (temp - (mean - amp)) + self.noise.gauss(0, 0.8), 35, 100)
        pressure = 1009 + day.uniform(-3, 3) + 1.2 * math.cos(2 * math.pi * (h - 10) / 12) + self.noise.gauss(0, 0.1)
        return {"temperature_c": round(temp, 2), "humidity_pct": round(humidity, 1), "pressure_hpa": round(pressure, 1)}


class AirQuality(SensorModel):
    """Fine dust with morning and evening traffic peaks and evening cooking smoke; CO2 alongside."""

    kind = "air_quality"

    def setup(self, rng: random.Random) -> None:
        self.traffic = rng.uniform(15, 40)
        self.pm10_ratio = rng.uniform(1.4, 1.9)

    def sample(self, t: float) -> dict[str, float]:
        day = self.event_rng("day", math.floor((t / HOUR + UTC_OFFSET_H) / 24))
        base = day.uniform(12, 55)  # still days trap dust, rain washes it out
        h = local_hour(t)

        def peak(at: float, width: float) -> float:
            return math.exp(-(((h - at + 12) % 24 - 12) ** 2) / (2 * width**2))

        pm25 = base + self.traffic * (peak(7.25, 1.2) + peak(17.75, 1.5)) + 15 * peak(19.5, 1.0)
        pm25 = max(1.0, pm25 * (1 + self.noise.gauss(0, 0.05)))
        pm10 = pm25 * self.pm10_ratio * (1 + self.noise.gauss(0, 0.03))
        co2 = 420 + 2.5 * (pm25 - base) + self.noise.gauss(0, 4)
        return {"pm2_5_ugm3": round(pm25, 1), "pm10_ugm3": round(pm10, 1), "co2_ppm": round(max(380.0, co2), 0)}


class Power(SensorModel):
    """Mains voltage (evening sag, outages) and the 12 V battery that carries the cabinet through them."""

    kind = "power"

    def setup(self, rng: random.Random) -> None:
        self.nominal_v = rng.uniform(222, 232)
        self.battery_v = 13.4
        self.last_t: float | None = None

    def outage(self, day: int) -> tuple[float, float] | None:
        rng = self.event_rng("outage", day)
        if rng.random() > 0.4:
            return None
        start = day * DAY + rng.uniform(0, DAY)
        return start, start + rng.uniform(5, 180) * 60

    def mains_on(self, t: float) -> bool:
        day = math.floor(t / DAY)
        for d in (day - 1, day):
            o = self.outage(d)
            if o is not None and o[0] <= t < o[1]:
                return False
        return True

    def sample(self, t: float) -> dict[str, float]:
        on = self.mains_on(t)
        dt_h = 0.0 if self.last_t is None else _clamp(t - self.last_t, 0.0, DAY) / HOUR
        self.last_t = t
        if on:
            self.battery_v = min(13.6, self.battery_v + 0.5 * dt_h)
            sag = 8 * math.exp(-((local_hour(t) - 19) ** 2) / 4)  # everyone cooks and watches TV at 19h
            volts = self.nominal_v - sag + self.noise.gauss(0, 1.2)
        else:
            self.battery_v = max(11.0, self.battery_v - 0.35 * dt_h)
            volts = 0.0
        battery = self.battery_v + self.noise.gauss(0, 0.01)
        pct = _clamp((battery - 11.8) / (12.8 - 11.8) * 100, 0, 100)
        return {"mains_v": round(volts, 1), "mains_present": 1.0 if on else 0.0,
                "battery_v": round(battery, 2), "battery_pct": round(pct, 0)}


MODELS: dict[str, type[SensorModel]] = {m.kind: m for m in (WaterLevel, Rain, Environment, AirQuality, Power)}


def make_model(kind: str, seed: int) -> SensorModel:
    try:
        return MODELS[kind](seed)
    except KeyError:
        raise ValueError(f"unknown simulated sensor kind {kind!r}; choose from {', '.join(MODELS)}") from None


def default_seed(*parts: str) -> int:
    """A stable seed per device, so a restarted gateway continues the same weather."""
    return zlib.crc32(":".join(parts).encode())


class SimTime:
    """Simulated clock: real time, sped up ``speed`` times from the moment it was made."""

    def __init__(self, speed: float = 1.0, origin_s: float | None = None) -> None:
        self.speed = speed
        self.origin = now_ms() / 1000.0 if origin_s is None else origin_s

    def at(self, real_s: float) -> float:
        return self.origin + (real_s - self.origin) * self.speed


class SimSensorDriver(PollingDriver):
    """A ``sim_sensor`` entry: readings stamped with the real time, values from simulated time."""

    def __init__(self, cfg: object, *, gateway_id: str) -> None:
        from devices.config import SimSensorConfig

        assert isinstance(cfg, SimSensorConfig)
        super().__init__(cfg.id, cfg.kind, cfg.interval_s)
        seed = cfg.seed if cfg.seed is not None else default_seed(gateway_id, cfg.id)
        self.model = make_model(cfg.kind, seed)
        self.clock = SimTime(cfg.speed)

    async def poll(self) -> Sequence[Reading]:
        ts = now_ms()
        return [make_reading(self.model.sample(self.clock.at(ts / 1000.0)), ts)]
