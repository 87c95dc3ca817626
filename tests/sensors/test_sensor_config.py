"""Sensor entries of the gateway YAML: the examples in docs/sensors.md and configs/ pass
`loaxa config check`; mistakes are reported with their line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import load_gateway_config
from loaxa.yamlconf import ConfigError
from tests.conftest import ROOT, run_loaxa

HEAD = """\
gateway:
  id: xa-test
uplink:
  url: mqtt://127.0.0.1:1883
local_broker:
  url: mqtt://127.0.0.1:1883
trust:
  keys:
    - id: ed25519-56475aa75463474c
      public_key: A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=
"""


def doc_device_blocks() -> list[str]:
    text = (ROOT / "docs" / "sensors.md").read_text(encoding="utf-8")
    return [b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if b.startswith("devices:")]


def test_docs_have_an_example_of_every_sensor_type() -> None:
    types = {t for b in doc_device_blocks() for t in re.findall(r"type: (\w+)", b)}
    assert {"modbus_rtu", "gpio_rain_gauge", "gpio_inputs", "ds18b20", "pi_health", "sim_sensor"} <= types


@pytest.mark.parametrize("block", doc_device_blocks())
def test_docs_examples_are_valid(block: str, tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(HEAD + block, encoding="utf-8")
    cfg = load_gateway_config(path)
    assert cfg.devices


def test_example_config_has_every_sensor_type_and_passes_check() -> None:
    cfg = load_gateway_config(ROOT / "configs" / "gateway.example.yaml")
    types = {d.type for d in cfg.devices}
    assert {"modbus_rtu", "gpio_rain_gauge", "gpio_inputs", "ds18b20", "pi_health", "sim_sensor"} <= types
    result = run_loaxa("config", "check", str(ROOT / "configs" / "gateway.example.yaml"))
    assert result.returncode == 0, result.stderr


BROKEN = HEAD + """\
devices:
  - id: muc-nuoc
    type: modbus_rtu
    port: /dev/ttyUSB0
    unit_id: 0
    measurement: water_level
    registers:
      - field: water level
        address: 70000
        type: float64
  - id: nhiet-do
    type: ds18b20
    sensor: 10-abc
  - id: mua
    type: gpio_rain_gauge
    pin: GPIO77
"""

EXPECTED = [
    (15, "devices[0].unit_id", "greater than or equal to 1"),
    (18, "devices[0].registers[0].field", "pattern"),
    (19, "devices[0].registers[0].address", "less than or equal to 65535"),
    (20, "devices[0].registers[0].type", "float32"),
    (23, "devices[1].sensor", "pattern"),
    (26, "devices[2].pin", "BCM number"),
]


def test_sensor_mistakes_are_reported_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_gateway_config(path)
    problems = err.value.problems
    for line, field, words in EXPECTED:
        assert any(p.line == line and p.field == field and words in p.message for p in problems), (
            line, field, [str(p) for p in problems])


def test_conflicting_entries_are_refused(tmp_path: Path) -> None:
    text = HEAD + """\
devices:
  - {id: a, type: modbus_rtu, port: /dev/ttyUSB0, baudrate: 9600, unit_id: 1, measurement: rain,
     registers: [{field: rain_mm, address: 0}]}
  - {id: b, type: modbus_rtu, port: /dev/ttyUSB0, baudrate: 19200, unit_id: 2, measurement: rain,
     registers: [{field: rain_mm, address: 0}]}
  - {id: c, type: gpio_rain_gauge, pin: 5}
  - {id: d, type: gpio_inputs, inputs: [{field: door_open, pin: GPIO5}]}
"""
    path = tmp_path / "gw.yaml"
    path.write_text(text, encoding="utf-8")
    result = run_loaxa("config", "check", str(path))
    assert result.returncode == 2
    assert "/dev/ttyUSB0" in result.stderr and "'a'" in result.stderr and "'b'" in result.stderr
    assert "GPIO5" in result.stderr and "'c'" in result.stderr


def test_conflicts_with_other_kinds_of_device() -> None:
    """Entries of other packages (the amplifier relay, serial nodes) are checked by their attributes."""
    from types import SimpleNamespace

    from devices.sensors.config import ModbusRtuConfig, check_device_set

    modbus = ModbusRtuConfig.model_validate({"id": "mb", "type": "modbus_rtu", "port": "/dev/ttyUSB0", "unit_id": 1,
                                             "measurement": "rain", "registers": [{"field": "rain_mm", "address": 0}]})
    amp = SimpleNamespace(id="loa-tai-cho", type="amplifier", relay_pin=17)
    node = SimpleNamespace(id="node-3", type="serial_node", port="/dev/ttyUSB0")
    door = SimpleNamespace(id="cua", type="gpio_rain_gauge", pin="GPIO17")
    problems = check_device_set([modbus, amp, node, door])
    assert any("port /dev/ttyUSB0" in p and "'mb'" in p and "'node-3'" in p for p in problems), problems
    assert any("'cua'" in p and "'loa-tai-cho'" in p for p in problems), problems
    assert check_device_set([modbus, amp]) == []
