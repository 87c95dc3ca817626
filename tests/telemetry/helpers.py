"""Helpers for the telemetry tests: gateway config, an MQTT publisher, an in-process service."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import GatewayConfig, load_gateway_config
from gateway.telemetry.service import TelemetryService
from loaxa.brokers import LAN_GATEWAY_USER, LanBroker
from protocol.signing import key_id_for, public_key_b64
from protocol.topics import health_topic

GW = "gw-test"


def config_dict(
    tmp_path: Path,
    broker: str | LanBroker,
    *,
    influx: dict[str, Any] | None,
    devices: Iterable[str] = ("s1",),
    measurement: str = "environment",
    **spool: Any,
) -> dict[str, Any]:
    """A gateway config whose uplink and LAN broker are both ``broker`` (telemetry needs no centre):
    a :class:`LanBroker` runs the production LAN ACL and the gateway logs in as ``gateway``."""
    public = Ed25519PrivateKey.generate().public_key()
    local: dict[str, Any] = broker.gateway_endpoint() if isinstance(broker, LanBroker) else {"url": broker}
    return {
        "gateway": {"id": GW, "commune": "Xã Thử Nghiệm", "data_dir": str(tmp_path / "gwdata")},
        "uplink": dict(local),
        "local_broker": dict(local),
        "trust": {"keys": [{"id": key_id_for(public), "public_key": public_key_b64(public)}]},
        "influx": influx,
        "spool": {"max_bytes": 64 * 1024 * 1024, **spool},
        "devices": [{"id": d, "type": "mqtt_sensor", "measurement": measurement} for d in devices],
    }


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}, allow_unicode=True))
    return path


def load(tmp_path: Path, data: dict[str, Any]) -> GatewayConfig:
    return load_gateway_config(write_config(tmp_path, data))


def v1(influxdb1: Any, **kw: Any) -> dict[str, Any]:
    return {
        "api": "v1",
        "url": influxdb1.url,
        "database": influxdb1.database,
        "flush_interval_s": 0.2,
        "retry_initial_s": 0.1,
        "retry_max_s": 0.5,
        **kw,
    }


def topic(dev: str, gw: str = GW) -> str:
    return f"loaxa/v1/{gw}/dev/{dev}/telemetry"


class DevicePublisher:
    """A paho client of one device (its own account on the LAN broker's device listener), publishing
    QoS 1 (what a well-behaved sensor does)."""

    def __init__(self, lan: LanBroker, device: str) -> None:
        account = lan.add_device(device)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=paho.MQTTv5)
        self.client.username_pw_set(account.username, account.password)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self._connected = threading.Event()
        self.refused: list[Any] = []

        def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            if rc.is_failure:
                self.refused.append(rc)
            self._connected.set()

        self.client.on_connect = on_connect
        self.client.connect("127.0.0.1", lan.device_port)
        self.client.loop_start()
        if not self._connected.wait(10) or self.refused:
            raise RuntimeError(f"device {device} could not connect to the LAN broker: {self.refused}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Publisher:
    """Publishes telemetry as the devices themselves: one connection per device, with that device's
    credentials, opened the first time the device publishes (the LAN ACL lets a device publish only
    its own topics)."""

    def __init__(self, lan: LanBroker) -> None:
        self.lan = lan
        self.devices: dict[str, DevicePublisher] = {}

    def device(self, dev: str) -> DevicePublisher:
        if dev not in self.devices:
            self.devices[dev] = DevicePublisher(self.lan, dev)
        return self.devices[dev]

    def publish(self, topic: str, payload: bytes | str | dict[str, Any], qos: int = 1) -> paho.MQTTMessageInfo:
        data = json.dumps(payload) if isinstance(payload, dict) else payload
        return self.device(topic.split("/")[4]).client.publish(topic, data, qos=qos)

    def publish_all(self, items: Iterable[tuple[str, Any]], timeout: float = 60) -> None:
        infos = [self.publish(t, p) for t, p in items]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        for d in self.devices.values():
            d.close()


@contextlib.asynccontextmanager
async def running(svc: TelemetryService) -> AsyncIterator[TelemetryService]:
    task = asyncio.create_task(svc.run())
    await asyncio.wait_for(svc.started.wait(), 10)
    if svc.mqtt_devices:
        await asyncio.wait_for(svc.ingest.connected.wait(), 10)
        await asyncio.sleep(0.2)  # subscription in place
    try:
        yield svc
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def eventually(pred: Any, within: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {within}s waiting for {what} (last: {last!r})")


def influx_values(influxdb1: Any, measurement: str, field: str) -> dict[tuple[str, int], float]:
    """{(device, ts_ms): value} of one field, from InfluxDB 1.x."""
    return {(p["device"], int(p["time"])): p[field] for p in influxdb1.points(measurement) if p.get(field) is not None}


def influx_count(influxdb1: Any, measurement: str, field: str) -> int:
    ans = influxdb1.query(f'SELECT count("{field}") FROM "{measurement}"')
    try:
        return int(ans["results"][0]["series"][0]["values"][0][1])
    except (KeyError, IndexError):
        return 0


class HealthWatcher:
    """Keeps the latest retained ``health`` of the gateway from the central broker."""

    def __init__(self, broker: LanBroker) -> None:
        self.latest: dict[str, Any] = {}
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, client_id="health-watcher")
        gw = broker.user(LAN_GATEWAY_USER)  # the uplink of these tests is the LAN broker itself
        self.client.username_pw_set(gw.username, gw.password)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(health_topic(GW), qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        self.latest = json.loads(msg.payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
