"""1-wire DS18B20 (sysfs files in a temporary folder) and the Pi's own health."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from devices.sensors.config import Ds18b20Config, PiHealthConfig
from devices.sensors.factory import build_sensor_drivers
from devices.sensors.onewire import Ds18b20Driver, parse_w1_slave
from devices.sensors.pihealth import HealthPaths, PiHealthDriver, clock_state, collect_health
from protocol.models import Health, Reading
from tests.sensors.conftest import Collector, until

GOOD = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
BAD_CRC = "72 01 4b 46 7f ff 0e 10 57 : crc=12 NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
NEGATIVE = "5e ff 55 05 7f a5 a5 66 ac : crc=ac YES\n5e ff 55 05 7f a5 a5 66 ac t=-10125\n"
RESET = "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000\n"
SENSOR = "28-0316a2795aff"


def probe(base: Path, text: str | None) -> Ds18b20Config:
    folder = base / SENSOR
    folder.mkdir(parents=True, exist_ok=True)
    if text is None:
        (folder / "w1_slave").unlink(missing_ok=True)
    else:
        (folder / "w1_slave").write_text(text)
    return Ds18b20Config.model_validate({"id": "nhiet-do-tu", "type": "ds18b20", "sensor": SENSOR,
                                         "base_path": str(base), "interval_s": 1})


def test_parse_w1_slave() -> None:
    assert parse_w1_slave(GOOD) == pytest.approx(23.125)
    assert parse_w1_slave(NEGATIVE) == pytest.approx(-10.125)
    assert parse_w1_slave(RESET, reject_85c=False) == pytest.approx(85.0)
    for text, msg in [(BAD_CRC, "bad CRC"), (RESET, "power-on"), ("", "2 lines"),
                      ("aa : crc=1 YES\naa x=1\n", "t="), ("a YES\na t=abc\n", "not a number"),
                      ("a YES\na t=150000\n", "range")]:
        with pytest.raises(Exception, match=msg):
            parse_w1_slave(text)


async def test_ds18b20_driver_counts_bad_reads_and_recovers(tmp_path: Path, collector: Collector) -> None:
    cfg = probe(tmp_path, GOOD)
    (drv,) = build_sensor_drivers([cfg], gateway_id="xa-test")
    assert isinstance(drv, Ds18b20Driver)
    assert [r.fields for r in await drv.poll_once()] == [{"temperature_c": 23.125}]
    probe(tmp_path, BAD_CRC)
    assert await drv.poll_once() == []
    assert "bad CRC" in str(drv.stats()["last_error"]) and drv.stats()["online"] == 0
    probe(tmp_path, None)
    assert await drv.poll_once() == []
    assert "does not exist" in str(drv.stats()["last_error"])
    probe(tmp_path, NEGATIVE)
    task = asyncio.create_task(drv.run(collector))
    await until(lambda: collector.readings("nhiet-do-tu"), what="a reading from run()")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert collector.readings("nhiet-do-tu")[0].fields == {"temperature_c": -10.125}
    assert collector.measurements("nhiet-do-tu") == {"environment"}
    s = drv.stats()
    assert (s["errors"], s["timeouts"], s["online"]) == (2, 0, 1) and s["reads"] >= 2


def fake_machine(root: Path) -> HealthPaths:
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "loadavg").write_text("0.52 0.41 0.30 1/180 4242\n")
    (root / "proc" / "uptime").write_text("86461.25 300000.00\n")
    (root / "proc" / "meminfo").write_text(
        "MemTotal:        3884200 kB\nMemFree:          200000 kB\nMemAvailable:    2913150 kB\n")
    (root / "temp").write_text("48312\n")
    (root / "get_throttled").write_text("50005\n")
    return HealthPaths(thermal=root / "temp", proc=root / "proc", throttled=root / "get_throttled")


def test_collect_health_reads_the_machine(tmp_path: Path) -> None:
    paths = fake_machine(tmp_path / "sys")
    h = collect_health(tmp_path, paths)
    du = shutil.disk_usage(tmp_path)
    assert h["cpu_temp_c"] == pytest.approx(48.3)
    assert (h["load1"], h["load5"], h["load15"]) == (0.52, 0.41, 0.30)
    assert h["uptime_s"] == pytest.approx(86461.25)
    assert h["mem_used_pct"] == pytest.approx(100 * (3884200 - 2913150) / 3884200, abs=0.05)
    assert h["disk_used_pct"] == pytest.approx(100 * du.used / du.total, abs=0.5)
    assert h["under_voltage"] is True and h["under_voltage_seen"] is True
    Health.model_validate({"ts": 1, **h})  # the contract's health message accepts every field

    # a machine without those files: the values are left out, nothing raises
    empty = collect_health(tmp_path / "missing", HealthPaths(thermal=tmp_path / "x", proc=tmp_path / "y",
                                                             throttled=tmp_path / "z"))
    assert not {"cpu_temp_c", "load1", "uptime_s", "mem_used_pct", "disk_used_pct"} & set(empty)


def test_clock_state_matches_timedatectl_when_available() -> None:
    state = clock_state()
    assert isinstance(state.get("clock_synced"), bool)  # adjtimex works on any Linux, container or Pi
    if state["clock_synced"]:
        assert "clock_offset_ms" in state
    try:
        out = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return
    if out.returncode == 0 and out.stdout.strip() in ("yes", "no"):
        assert state["clock_synced"] == (out.stdout.strip() == "yes")


async def test_pi_health_driver_writes_gateway_health(tmp_path: Path, collector: Collector) -> None:
    paths = fake_machine(tmp_path / "sys")
    cfg = PiHealthConfig.model_validate({"id": "gw-pi", "type": "pi_health", "interval_s": 1,
                                         "thermal_path": str(paths.thermal), "proc_path": str(paths.proc)})
    (drv,) = build_sensor_drivers([cfg], gateway_id="xa-test", data_dir=tmp_path)
    assert isinstance(drv, PiHealthDriver)
    task = asyncio.create_task(drv.run(collector))
    await until(lambda: collector.readings("gw-pi"), what="a health reading")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    (reading, *_) = collector.readings("gw-pi")
    Reading.model_validate(reading.model_dump())
    assert reading.fields["cpu_temp_c"] == pytest.approx(48.3) and reading.fields["load1"] == 0.52
    assert reading.fields["clock_synced"] in (0.0, 1.0)
    assert collector.measurements("gw-pi") == {"gateway_health"}
