"""Sensors inside the real gateway core: the telemetry service runs the drivers, and the health
message on the central broker carries the sensors' summary and the Pi's own metrics."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.app import Gateway
from gateway.config import GatewayConfig
from loaxa.localsetup import gateway_config, make_signer
from protocol.models import Health
from tests.sensors.conftest import until

pytest.importorskip("gateway.telemetry.service", reason="the telemetry service runs the drivers")


async def test_gateway_health_reports_sensors_and_pi(tmp_path: Path, central_broker_factory: Any,
                                                     lan_broker_factory: Any) -> None:
    central, lan = central_broker_factory(gateways=["xa-sensors"]), lan_broker_factory("xa-sensors")
    devices = [
        {"id": "sim-song", "type": "sim_sensor", "kind": "water_level", "interval_s": 0.2, "seed": 3},
        {"id": "nhiet-do-tu", "type": "ds18b20", "sensor": "28-0000000000aa", "base_path": str(tmp_path / "w1"),
         "interval_s": 1},  # no such probe: it must show up as a fault, not stop anything
        {"id": "mqtt-song", "type": "mqtt_sensor", "measurement": "water_level"},  # no driver: LAN publisher
    ]
    cfg = GatewayConfig.model_validate(gateway_config(
        "xa-sensors", data_dir=tmp_path / "gw", uplink_url=central.url, lan_url=lan.url, signer=make_signer(),
        devices=devices, health_interval_s=1, uplink_auth=central.gateway_auth("xa-sensors"),
        lan_auth=lan.gateway_auth()))
    gw = Gateway(cfg)
    healths: list[dict[str, Any]] = []
    stop = asyncio.Event()
    viewer = central.user("viewer")
    async with aiomqtt.Client("127.0.0.1", port=central.port, identifier="watch", username=viewer.username,
                              password=viewer.password) as client:
        await client.subscribe("loaxa/v1/xa-sensors/health", qos=1)

        async def watch() -> None:
            async for msg in client.messages:
                healths.append(json.loads(bytes(msg.payload)))  # type: ignore[arg-type]

        watcher = asyncio.create_task(watch())
        gw_task = asyncio.create_task(gw.run(stop))
        try:
            await until(lambda: any(h.get("sensors_total") == 2 and h.get("sensors_online") == 1
                                    and "nhiet-do-tu" in h.get("sensor_faults", {}) for h in healths), 30,
                        what="sensor summary in the health message")
        finally:
            stop.set()
            await asyncio.wait_for(gw_task, 30)
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    assert "sensors" in gw.services
    assert [d.device_id for d in gw.context.sensor_drivers] == ["sim-song", "nhiet-do-tu"]
    h = next(h for h in healths if h.get("sensors_total") == 2 and h.get("sensors_online") == 1)
    Health.model_validate(h)
    assert "does not exist" in h["sensor_faults"]["nhiet-do-tu"]
    assert isinstance(h.get("clock_synced"), bool) and "load1" in h and "disk_used_pct" in h and "load15" in h
