"""Simulated sensors: deterministic, plausible generators; the in-gateway driver; and
`loaxa sim sensors` publishing to a real Mosquitto, checked against the wire contract."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
from collections.abc import Callable
from typing import Any

import aiomqtt
import pytest
import yaml

from devices.config import SimSensorConfig
from devices.sensors.factory import build_sensor_drivers
from devices.sensors.sim import DAY, HOUR, KINDS, SimSensorDriver, local_hour, make_model
from loaxa.brokers import LAN_GATEWAY_USER, LanBroker
from protocol.models import FIELD_NAME_PATTERN, Telemetry
from protocol.topics import parse_topic
from tests.conftest import run_loaxa
from tests.sensors.conftest import Collector, until

T0 = 1_764_000_000.0  # 2025-11-24, any fixed instant will do
MONTH = [T0 + i * 900 for i in range(30 * 96)]  # a month every 15 minutes


def series(kind: str, seed: int, times: list[float] = MONTH) -> list[dict[str, float]]:
    model = make_model(kind, seed)
    return [model.sample(t) for t in times]


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_readings_and_valid_fields(kind: str) -> None:
    a, b, c = series(kind, 7), series(kind, 7), series(kind, 8)
    assert a == b
    assert a != c
    for fields in a:
        for name, value in fields.items():
            assert re.fullmatch(FIELD_NAME_PATTERN, name) and math.isfinite(value)


def test_water_level_has_flood_waves() -> None:
    levels = [f["water_level_cm"] for f in series("water_level", 3)]
    assert min(levels) > 0
    assert max(levels) - min(levels) > 50  # at least one wave in a month, not just the tide
    rise = max(levels[i + 4] - levels[i] for i in range(len(levels) - 4))
    fall = max(levels[i] - levels[i + 4] for i in range(len(levels) - 4))
    assert rise > fall  # a flood comes up faster than it goes down


def test_rain_comes_in_tips_and_adds_up() -> None:
    rs = series("rain", 5)
    assert any(r["rain_mm"] > 0 for r in rs) and sum(1 for r in rs if r["rain_mm"] == 0) > len(rs) / 2
    for r in rs:
        assert r["rain_mm"] == pytest.approx(r["tips"] * 0.2)
    assert rs[-1]["rain_total_mm"] == pytest.approx(sum(r["rain_mm"] for r in rs))


def test_environment_daily_cycle() -> None:
    rows = list(zip(MONTH, series("environment", 11), strict=True))
    afternoon = [f["temperature_c"] for t, f in rows if 13 <= local_hour(t) < 16]
    dawn = [f["temperature_c"] for t, f in rows if 4 <= local_hour(t) < 7]
    assert sum(afternoon) / len(afternoon) > sum(dawn) / len(dawn) + 3
    hum_aft = [f["humidity_pct"] for t, f in rows if 13 <= local_hour(t) < 16]
    hum_dawn = [f["humidity_pct"] for t, f in rows if 4 <= local_hour(t) < 7]
    assert sum(hum_dawn) / len(hum_dawn) > sum(hum_aft) / len(hum_aft)
    assert all(35 <= f["humidity_pct"] <= 100 for _t, f in rows)


def test_air_quality_rush_hours() -> None:
    rows = list(zip(MONTH, series("air_quality", 2), strict=True))
    rush = [f["pm2_5_ugm3"] for t, f in rows if 7 <= local_hour(t) < 8]
    night = [f["pm2_5_ugm3"] for t, f in rows if 1 <= local_hour(t) < 4]
    assert sum(rush) / len(rush) > sum(night) / len(night)
    assert all(f["pm10_ugm3"] > f["pm2_5_ugm3"] for _t, f in rows)


def test_power_outage_drains_the_battery() -> None:
    times = [T0 + i * 300 for i in range(int(10 * DAY / 300))]
    rows = series("power", 4, times)
    assert any(r["mains_present"] == 0 for r in rows) and any(r["mains_present"] == 1 for r in rows)
    for prev, cur in itertools.pairwise(rows):
        if prev["mains_present"] == 0 and cur["mains_present"] == 0:
            assert cur["mains_v"] == 0 and cur["battery_v"] < prev["battery_v"] + 0.05
    assert min(r["battery_v"] for r in rows) < 13.4


async def test_sim_sensor_driver_from_config(collector: Collector) -> None:
    cfgs = [SimSensorConfig.model_validate({"id": f"sim-{k.replace('_', '-')}", "type": "sim_sensor", "kind": k,
                                            "interval_s": 0.1, "seed": 1, "speed": HOUR}) for k in KINDS]
    drivers = build_sensor_drivers(cfgs, gateway_id="xa-test")
    assert all(isinstance(d, SimSensorDriver) for d in drivers)
    tasks = [asyncio.create_task(d.run(collector)) for d in drivers]
    try:
        await until(lambda: all(len(collector.readings(d.device_id)) >= 3 for d in drivers), what="sim readings")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for k, d in zip(KINDS, drivers, strict=True):
        assert collector.measurements(d.device_id) == {k}  # measurement = kind, as DESIGN.md names them
        ts = [r.ts for r in collector.readings(d.device_id)]
        assert ts == sorted(ts)
        assert d.stats()["errors"] == 0


# ---------------------------------------------------------------- loaxa sim sensors → Mosquitto


async def collect_telemetry(broker: LanBroker, gw: str, args: list[str], expect: int) -> list[tuple[str, Any]]:
    """Run ``loaxa sim sensors`` as the devices themselves (one account each, on the LAN broker's
    device listener) and collect what the gateway's account receives."""
    got: list[tuple[str, Any]] = []
    printed = await asyncio.to_thread(run_loaxa, "sim", "sensors", "--broker", broker.device_url, "--gateway", gw,
                                      *args, "--print-config")
    ids = [d["id"] for d in yaml.safe_load(printed.stdout)["devices"]]
    creds = broker.write_credentials(broker.workdir / "sensors.json", ids)
    gw_user = broker.user(LAN_GATEWAY_USER)
    async with aiomqtt.Client("127.0.0.1", port=broker.port, identifier="test-sub", username=gw_user.username,
                              password=gw_user.password) as client:
        await client.subscribe(f"loaxa/v1/{gw}/dev/+/telemetry", qos=1)

        async def listen() -> None:
            async for msg in client.messages:
                got.append((str(msg.topic), json.loads(bytes(msg.payload))))  # type: ignore[arg-type]
                if len(got) >= expect:
                    return

        listener = asyncio.create_task(listen())
        result = await asyncio.to_thread(run_loaxa, "sim", "sensors", "--broker", broker.device_url, "--gateway", gw,
                                         "--credentials", str(creds), *args)
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary["errors"] == 0
        await asyncio.wait_for(listener, 15)
    return got


async def test_cli_publishes_single_readings(lan_broker_factory: Callable[..., LanBroker]) -> None:
    args = ["--count", "5", "--interval", "0.2", "--messages", "3", "--seed", "1"]
    got = await collect_telemetry(lan_broker_factory("xa-sim"), "xa-sim", args, expect=15)
    assert len(got) == 15
    per_device: dict[str, int] = {}
    for topic, payload in got:
        parsed = parse_topic(topic)
        assert parsed.gateway == "xa-sim" and parsed.kind == "telemetry" and parsed.device is not None
        tel = Telemetry.model_validate(payload)
        assert tel.readings is None and tel.fields  # the single form
        per_device[parsed.device] = per_device.get(parsed.device, 0) + 1
    assert per_device == {"sim-water-level-001": 3, "sim-rain-002": 3, "sim-environment-003": 3,
                          "sim-air-quality-004": 3, "sim-power-005": 3}
    fields = {parse_topic(t).device: set(p["fields"]) for t, p in got}
    assert fields["sim-water-level-001"] == {"water_level_cm"}
    assert {"temperature_c", "humidity_pct"} <= fields["sim-environment-003"]


async def test_cli_publishes_batches(lan_broker_factory: Callable[..., LanBroker]) -> None:
    args = ["--count", "2", "--kinds", "water_level,power", "--interval", "0.05", "--batch", "4", "--messages", "2"]
    got = await collect_telemetry(lan_broker_factory("xa-batch"), "xa-batch", args, expect=4)
    assert len(got) == 4
    for _topic, payload in got:
        tel = Telemetry.model_validate(payload)
        assert tel.readings is not None and len(tel.readings) == 4
        ts = [r.ts for r in tel.readings]
        assert ts == sorted(ts) and len(set(ts)) == 4


def test_cli_refuses_bad_arguments() -> None:
    r = run_loaxa("sim", "sensors", "--broker", "mqtt://127.0.0.1:1", "--gateway", "xa", "--kinds", "snow")
    assert r.returncode == 2 and "snow" in r.stderr
    r = run_loaxa("sim", "sensors", "--broker", "mqtt://127.0.0.1:1", "--gateway", "xa", "--prefix", "Bad_Prefix")
    assert r.returncode == 2 and "Bad_Prefix" in r.stderr


async def test_runner_restarts_a_crashing_driver_and_summarises(collector: Collector, monkeypatch: Any) -> None:
    import devices.sensors.runner as runner_mod
    from devices.sensors.runner import SensorRunner

    monkeypatch.setattr(runner_mod, "RESTART_MIN_S", 0.05)
    cfg = SimSensorConfig.model_validate({"id": "sim-a", "type": "sim_sensor", "kind": "rain",
                                          "interval_s": 0.05, "seed": 2})
    (good,) = build_sensor_drivers([cfg], gateway_id="xa-test")

    class Flaky(SimSensorDriver):
        runs = 0

        async def run(self, sink: Any) -> None:
            Flaky.runs += 1
            if Flaky.runs <= 2:
                raise RuntimeError("driver bug")
            await super().run(sink)

    flaky = Flaky(cfg.model_copy(update={"id": "sim-b"}), gateway_id="xa-test")
    runner = SensorRunner([good, flaky])
    task = asyncio.create_task(runner.run(collector))
    try:
        await until(lambda: collector.readings("sim-b") and collector.readings("sim-a"), what="both reading")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert runner.stats()["sim-b"]["crashes"] == 2
    h = runner.health()
    assert h["sensors_total"] == 2 and h["sensors_online"] == 2 and h["sensor_faults"] == {}
