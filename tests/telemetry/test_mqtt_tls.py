"""The telemetry MQTT client over TLS (mqtts://, private CA) against a real Mosquitto TLS listener:
the event-loop-driven paho client reads every message, including bytes buffered inside TLS."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.telemetry.service import TelemetryService
from loaxa.brokers import lan_acl
from loaxa.servers import MosquittoTls

from .helpers import GW, config_dict, eventually, load, running, topic
from .test_tls_auth import make_ca_and_cert

#: accounts of the TLS broker (the production LAN ACL for GW)
PASSWORDS = {"gateway": "gw-secret", "s1": "s1-secret"}


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[MosquittoTls, Path]]:
    ca, cert, key = make_ca_and_cert(tmp_path)
    broker = MosquittoTls(tmp_path / "mosquitto-tls", passwords=PASSWORDS, acl=lan_acl(GW)).start_tls(ca, cert, key)
    yield broker, ca
    broker.stop()


async def test_ingest_over_tls(tmp_path: Path, tls_broker: tuple[MosquittoTls, Path]) -> None:
    broker, ca = tls_broker
    data = config_dict(tmp_path, f"mqtts://127.0.0.1:{broker.port}", influx=None)
    data["local_broker"].update(ca_file=str(ca), username="gateway", password={"value": PASSWORDS["gateway"]})
    data["uplink"]["ca_file"] = str(ca)
    svc = TelemetryService(load(tmp_path, data))
    t0 = int(time.time() * 1000) - 60_000
    n = 2000
    async with running(svc):
        pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="tls-sensor", protocol=paho.MQTTv5)
        pub.tls_set(ca_certs=str(ca))
        pub.username_pw_set("s1", PASSWORDS["s1"])
        pub.max_inflight_messages_set(500)
        pub.max_queued_messages_set(0)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()

        def publish() -> None:
            infos = [
                pub.publish(topic("s1"), json.dumps({"ts": t0 + i, "fields": {"v": i / 4}}), qos=1) for i in range(n)
            ]
            for info in infos:
                info.wait_for_publish(30)

        await asyncio.to_thread(publish)
        await eventually(lambda: svc.spool.pending == n and svc.ingest.acked == n, what="all committed and acked")
        pub.disconnect()
        pub.loop_stop()
        rows = await svc.spool.next_batch(0, n + 10)
    assert [(r.ts, r.fields) for r in rows] == [(t0 + i, f"v={i / 4!r}") for i in range(n)]
    assert svc.health()["telemetry_mqtt_received"] == n and svc.ingest.connects == 1
