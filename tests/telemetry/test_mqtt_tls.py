"""The telemetry MQTT client over TLS (mqtts://, private CA) against a real Mosquitto TLS listener:
the event-loop-driven paho client reads every message, including bytes buffered inside TLS."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.telemetry.service import TelemetryService
from loaxa.brokers import lan_acl
from loaxa.servers import _Process, find_binary, free_port, password_line, wait_for_port

from .helpers import GW, config_dict, eventually, load, running, topic
from .test_tls_auth import make_ca_and_cert

#: accounts of the TLS broker (the production LAN ACL for GW)
PASSWORDS = {"gateway": "gw-secret", "s1": "s1-secret"}


class TlsMosquitto(_Process):
    def start_tls(self, ca: Path, cert: Path, key: Path) -> TlsMosquitto:
        self.port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        passwd, acl = self.workdir / "passwd", self.workdir / "acl"
        passwd.write_text("".join(password_line(u, pw) + "\n" for u, pw in PASSWORDS.items()))
        acl.write_text(lan_acl(GW))
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"cafile {ca}",
            f"certfile {cert}",
            f"keyfile {key}",
            "allow_anonymous false",
            f"password_file {passwd}",
            f"acl_file {acl}",
            "persistence false",
            "log_dest stdout",
            "max_queued_messages 100000",
        ]
        if os.geteuid() == 0:
            import pwd

            lines.append(f"user {pwd.getpwuid(os.getuid()).pw_name}")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.proc = self._spawn([find_binary("mosquitto", "mosquitto"), "-c", str(conf)], "mosquitto.log")
        wait_for_port(self.port, self.proc, 15, "mosquitto (TLS)", self.log_path)
        return self


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[TlsMosquitto, Path]]:
    ca, cert, key = make_ca_and_cert(tmp_path)
    broker = TlsMosquitto(tmp_path / "mosquitto-tls").start_tls(ca, cert, key)
    yield broker, ca
    broker.stop()


async def test_ingest_over_tls(tmp_path: Path, tls_broker: tuple[TlsMosquitto, Path]) -> None:
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
