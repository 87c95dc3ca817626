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
from protocol.signing import key_id_for, public_key_b64
from protocol.topics import health_topic

GW = "gw-test"


def config_dict(
    tmp_path: Path,
    broker_url: str,
    *,
    influx: dict[str, Any] | None,
    devices: Iterable[str] = ("s1",),
    measurement: str = "environment",
    **spool: Any,
) -> dict[str, Any]:
    public = Ed25519PrivateKey.generate().public_key()
    return {
        "gateway": {"id": GW, "commune": "Xã Thử Nghiệm", "data_dir": str(tmp_path / "gwdata")},
        "uplink": {"url": broker_url},
        "local_broker": {"url": broker_url},
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


class Publisher:
    """A paho client publishing QoS 1 and waiting for every PUBACK (what a well-behaved sensor does)."""

    def __init__(self, broker_url: str, client_id: str = "sensor-pub") -> None:
        host, port = broker_url.removeprefix("mqtt://").split(":")
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self._connected = threading.Event()
        self.client.on_connect = lambda c, u, f, r, p: self._connected.set()
        self.client.connect(host, int(port))
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("publisher could not connect")

    def publish(self, topic: str, payload: bytes | str | dict[str, Any], qos: int = 1) -> paho.MQTTMessageInfo:
        data = json.dumps(payload) if isinstance(payload, dict) else payload
        return self.client.publish(topic, data, qos=qos)

    def publish_all(self, items: Iterable[tuple[str, Any]], timeout: float = 60) -> None:
        infos = [self.publish(t, p) for t, p in items]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


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

    def __init__(self, port: int) -> None:
        self.latest: dict[str, Any] = {}
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(health_topic(GW), qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        self.latest = json.loads(msg.payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
