"""The production ACL example, on a real Mosquitto: one gateway's credentials cannot act as another
gateway, cannot send commands, and cannot read another gateway's commands."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from loaxa.servers import Mosquitto, MosquittoUser
from tests.conftest import ROOT, wait_until

ACL = (ROOT / "configs" / "mosquitto" / "acl.example").read_text()


class Client:
    def __init__(self, port: int, user: str, password: str) -> None:
        self.got: list[str] = []
        self._lock = threading.Lock()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, client_id=f"t-{user}")
        self.c.username_pw_set(user, password)
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.got.append(msg.topic)

    def sub(self, topic: str) -> None:
        self.c.subscribe(topic, qos=1)

    def pub(self, topic: str) -> None:
        self.c.publish(topic, b"{}", qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_gateway_credentials_are_confined(tmp_path: Path) -> None:
    users = [MosquittoUser("xa-a", "pa"), MosquittoUser("xa-b", "pb"), MosquittoUser("scheduler", "ps"),
             MosquittoUser("viewer", "pv")]
    broker = Mosquitto(tmp_path / "central", users=users, acl_text=ACL).start()
    try:
        viewer = Client(broker.port, "viewer", "pv")
        viewer.sub("loaxa/v1/#")
        a = Client(broker.port, "xa-a", "pa")
        a.sub("loaxa/v1/xa-a/cmd")
        a.sub("loaxa/v1/xa-b/cmd")  # not its own: the broker delivers nothing
        b = Client(broker.port, "xa-b", "pb")
        sched = Client(broker.port, "scheduler", "ps")
        time.sleep(0.3)

        a.pub("loaxa/v1/xa-b/status")  # speak for another gateway
        a.pub("loaxa/v1/xa-b/dev/loa-01/cmd")  # drive another commune's speaker
        a.pub("loaxa/v1/xa-a/cmd")  # forge a command to itself
        viewer.pub("loaxa/v1/xa-a/status")  # read-only account
        a.pub("loaxa/v1/xa-a/status")  # allowed
        sched.pub("loaxa/v1/xa-a/cmd")  # allowed: the centre commands
        sched.pub("loaxa/v1/xa-b/cmd")

        wait_until(lambda: "loaxa/v1/xa-a/cmd" in a.got, what="xa-a receives its own command")
        wait_until(lambda: viewer.got.count("loaxa/v1/xa-b/cmd") == 1, what="viewer sees the centre's traffic")
        time.sleep(0.5)
        assert sorted(viewer.got) == ["loaxa/v1/xa-a/cmd", "loaxa/v1/xa-a/status", "loaxa/v1/xa-b/cmd"]
        assert a.got == ["loaxa/v1/xa-a/cmd"]
        for c in (viewer, a, b, sched):
            c.close()
    finally:
        broker.stop()


def test_wrong_password_is_refused(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "central", users=[MosquittoUser("xa-a", "pa")], acl_text=ACL).start()
    try:
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        c.username_pw_set("xa-a", "wrong")
        codes: list[Any] = []
        c.on_connect = lambda _c, _u, _f, rc, _p: codes.append(rc)
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        wait_until(lambda: codes, what="CONNACK")
        c.loop_stop()
        assert codes[0].is_failure
    finally:
        broker.stop()
