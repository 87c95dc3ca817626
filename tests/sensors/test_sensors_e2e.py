"""End to end on real servers: a `loaxa gateway run` process reads a simulated sensor and a
DS18B20, `loaxa sim sensors` publishes as LAN sensors, and every kind lands in InfluxDB 1.6.7.

Needs the telemetry service (spool + InfluxDB writer, gateway.telemetry); skipped without it.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from loaxa.localsetup import gateway_config, make_signer
from tests.conftest import run_loaxa, spawn_loaxa, wait_until

pytest.importorskip("gateway.telemetry.service", reason="the telemetry service (spool/InfluxDB writer) is not here")

W1 = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"


def test_sensor_readings_reach_influxdb(tmp_path: Path, central_broker_factory: Any, lan_broker_factory: Any,
                                       influxdb1: Any) -> None:
    central, lan = central_broker_factory(gateways=["xa-e2e"]), lan_broker_factory("xa-e2e")
    (tmp_path / "w1" / "28-0316a2795aff").mkdir(parents=True)
    (tmp_path / "w1" / "28-0316a2795aff" / "w1_slave").write_text(W1)
    lan_devices = yaml.safe_load(run_loaxa("sim", "sensors", "--broker", lan.device_url, "--gateway", "xa-e2e",
                                           "--count", "2", "--kinds", "rain,power", "--print-config").stdout)["devices"]
    creds = lan.write_credentials(tmp_path / "sensors.json", [d["id"] for d in lan_devices])
    devices = [
        {"id": "sim-song", "type": "sim_sensor", "kind": "water_level", "interval_s": 0.5, "seed": 9},
        {"id": "nhiet-do-tu", "type": "ds18b20", "sensor": "28-0316a2795aff", "base_path": str(tmp_path / "w1"),
         "interval_s": 1},
        *lan_devices,
    ]
    cfg = gateway_config("xa-e2e", data_dir=tmp_path / "gw", uplink_url=central.url, lan_url=lan.url,
                         signer=make_signer(), devices=devices, health_interval_s=2,
                         uplink_auth=central.gateway_auth("xa-e2e"), lan_auth=lan.gateway_auth(),
                         influx={"api": "v1", "url": influxdb1.url, "database": influxdb1.database,
                                 "flush_interval_s": 0.2})
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    gw = spawn_loaxa("gateway", "run", "--config", str(path), log=tmp_path / "gw.log")
    sim = None
    try:
        def tail() -> str:
            return (tmp_path / "gw.log").read_text(errors="replace")[-3000:]

        level = wait_until(lambda: influxdb1.points("water_level", where="WHERE device = 'sim-song'"), 60,
                           what="sim_sensor readings in InfluxDB")
        # the gateway is up and listening on its LAN broker: now the LAN sensors may talk
        sim = spawn_loaxa("sim", "sensors", "--broker", lan.device_url, "--gateway", "xa-e2e", "--count", "2",
                          "--credentials", str(creds),
                          "--kinds", "rain,power", "--interval", "0.3", "--messages", "5", "--seed", "3",
                          log=tmp_path / "sim.log")
        temp = wait_until(lambda: influxdb1.points("environment", where="WHERE device = 'nhiet-do-tu'"), 30,
                          what="DS18B20 readings in InfluxDB")
        power = wait_until(lambda: len(influxdb1.points("power")) >= 5 and influxdb1.points("power"), 30,
                           what="LAN sim sensor readings in InfluxDB")
        rain = wait_until(lambda: len(influxdb1.points("rain")) >= 5 and influxdb1.points("rain"), 30,
                          what="LAN sim rain readings in InfluxDB")
    finally:
        procs = [p for p in (sim, gw) if p is not None]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except Exception:
                p.kill()
    assert level[0]["gateway"] == "xa-e2e" and level[0]["water_level_cm"] > 0, tail()
    assert temp[0]["temperature_c"] == 23.125
    assert {p["device"] for p in power} == {"sim-power-002"} and all("battery_v" in p for p in power)
    assert {p["device"] for p in rain} == {"sim-rain-001"}
    assert abs(level[-1]["time"] - time.time() * 1000) < 120_000  # stamped with the real time, in ms
