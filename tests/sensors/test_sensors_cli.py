"""`loaxa sensors read` and `loaxa sensors scan-modbus` in a child process, against pymodbus's
serial server on the far end of a socat pseudo-terminal and DS18B20 files in a temp folder."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from loaxa.localsetup import gateway_config, make_signer
from tests.conftest import run_loaxa
from tests.sensors.conftest import PtyPair
from tests.sensors.test_modbus import SensorSide

GOOD = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"


def write_config(tmp_path: Path, port: str) -> Path:
    (tmp_path / "w1" / "28-0316a2795aff").mkdir(parents=True)
    (tmp_path / "w1" / "28-0316a2795aff" / "w1_slave").write_text(GOOD)
    devices = [
        {"id": "muc-nuoc", "type": "modbus_rtu", "port": port, "baudrate": 19200, "unit_id": 1, "timeout_s": 0.3,
         "measurement": "water_level", "registers": [{"field": "water_level_cm", "address": 0, "scale": 0.1}]},
        {"id": "khong-tra-loi", "type": "modbus_rtu", "port": port, "baudrate": 19200, "unit_id": 9,
         "timeout_s": 0.3, "retries": 0, "measurement": "rain", "registers": [{"field": "rain_mm", "address": 0}]},
        {"id": "nhiet-do", "type": "ds18b20", "sensor": "28-0316a2795aff", "base_path": str(tmp_path / "w1")},
        {"id": "loa-1", "type": "ip_speaker"},
    ]
    cfg = gateway_config("xa-cli", data_dir=tmp_path / "gw", uplink_url="mqtt://127.0.0.1:1",
                         lan_url="mqtt://127.0.0.1:1", signer=make_signer(), devices=devices)
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


async def test_read_prints_values_and_errors(tmp_path: Path, pty_pair: PtyPair) -> None:
    side = SensorSide(pty_pair.b, units=[1])
    side.table[(1, 3, 0)] = 1234
    await side.start()
    try:
        path = write_config(tmp_path, pty_pair.a)
        ok = await asyncio.to_thread(run_loaxa, "sensors", "read", "--config", str(path), "muc-nuoc", "nhiet-do")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        lines = {ln.split()[0]: ln for ln in ok.stdout.splitlines()}
        assert "OK" in lines["muc-nuoc"] and "water_level_cm=123.4" in lines["muc-nuoc"]
        assert "OK" in lines["nhiet-do"] and "temperature_c=23.125" in lines["nhiet-do"]
        bad = await asyncio.to_thread(run_loaxa, "sensors", "read", "--config", str(path))
        assert bad.returncode == 1
        lines = {ln.split()[0]: ln for ln in bad.stdout.splitlines()}
        assert "ERROR" in lines["khong-tra-loi"] and "unit 9" in lines["khong-tra-loi"]
        assert "loa-1" not in lines  # a speaker is not a sensor
    finally:
        await side.stop()


async def test_scan_finds_the_slaves(pty_pair: PtyPair) -> None:
    side = SensorSide(pty_pair.b, units=[2, 4])
    side.table[(4, 3, 0)] = 77
    await side.start()
    try:
        r = await asyncio.to_thread(run_loaxa, "sensors", "scan-modbus", "--port", pty_pair.a, "--baudrate", "19200",
                                    "--to", "5", "--timeout", "0.2")
    finally:
        await side.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    present = [ln for ln in r.stdout.splitlines() if ln.startswith("address")]
    assert [ln.split()[1].rstrip(":") for ln in present] == ["2", "4"]
    assert "= 77" in present[1]
    assert "2 slave(s) answered" in r.stdout


def test_read_gpio_with_mock_pins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")  # gpiozero's own simulated pins, in the child process
    devices = [
        {"id": "mua", "type": "gpio_rain_gauge", "pin": 5},
        {"id": "tu-dien", "type": "gpio_inputs", "inputs": [
            {"field": "door_open", "pin": 17, "pull": "up", "active_when": "high"},
            {"field": "mains_present", "pin": 27, "pull": "down"}]},
    ]
    cfg = gateway_config("xa-cli", data_dir=tmp_path / "gw", uplink_url="mqtt://127.0.0.1:1",
                         lan_url="mqtt://127.0.0.1:1", signer=make_signer(), devices=devices)
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = run_loaxa("sensors", "read", "--config", str(path), "--watch", "0.2")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines()}
    assert "rain_mm=0 " in lines["mua"] and "tips=0" in lines["mua"]
    # pull-up holds the open door's pin high; pull-down holds the mains pin low
    assert "door_open=1 mains_present=0" in lines["tu-dien"] and "0 change(s)" in lines["tu-dien"]
