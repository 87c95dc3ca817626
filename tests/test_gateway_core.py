"""The gateway process against real Mosquitto brokers: birth/death status and command verification."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from loaxa.brokers import SCHEDULER_USER
from loaxa.localsetup import gateway_config, make_signer, write_yaml
from loaxa.servers import MosquittoUser
from protocol.models import PingBody
from protocol.signing import Signer
from tests.conftest import spawn_loaxa, wait_until

GW = "xa-test"


class Watcher:
    """A plain paho client that records every message on loaxa/v1/#."""

    def __init__(self, port: int, user: MosquittoUser | None = None) -> None:
        """``user``: ``scheduler`` on a production central broker (reads everything, sends commands)."""
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, client_id="watcher")
        if user is not None:
            self.client.username_pw_set(user.username, user.password)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("loaxa/v1/#", qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        try:
            payload = json.loads(msg.payload) if msg.payload else {}
        except ValueError:  # the junk this test itself sends on cmd
            payload = {"_raw": msg.payload[:100]}
        with self._lock:
            self.messages.append((msg.topic, payload, bool(msg.retain)))

    def on(self, topic: str) -> list[dict[str, Any]]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def publish(self, topic: str, payload: bytes | str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def setup(tmp_path: Path, central_broker_factory, lan_broker_factory):  # type: ignore[no-untyped-def]
    central = central_broker_factory(gateways=["xa-test"])
    lan = lan_broker_factory("xa-test")
    signer = make_signer()
    cfg = gateway_config("xa-test", data_dir=tmp_path / "gw", uplink_url=central.url, lan_url=lan.url,
                         signer=signer, health_interval_s=1, commune="Xã Thử Nghiệm",
                         uplink_auth=central.gateway_auth("xa-test"), lan_auth=lan.gateway_auth())
    path = write_yaml(tmp_path / "gw.yaml", cfg)
    watcher = Watcher(central.port, central.user(SCHEDULER_USER))
    procs = []

    def start(**env: str) -> Any:
        proc = spawn_loaxa("gateway", "run", "--config", str(path), log=tmp_path / "gw.log", env=env)
        procs.append(proc)
        return proc

    yield {"central": central, "signer": signer, "watcher": watcher, "start": start, "log": tmp_path / "gw.log"}
    watcher.close()
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _status(watcher: Watcher) -> list[str]:
    return [p["state"] for p in watcher.on("loaxa/v1/xa-test/status")]


def test_online_then_offline_by_will_on_kill(setup) -> None:  # type: ignore[no-untyped-def]
    w = setup["watcher"]
    proc = setup["start"]()
    wait_until(lambda: _status(w)[-1:] == ["online"], what="status online")
    assert w.on("loaxa/v1/xa-test/status")[-1]["commune"] == "Xã Thử Nghiệm"
    health = wait_until(lambda: w.on("loaxa/v1/xa-test/health"), what="health")
    assert health[-1]["version"] and health[-1]["ts"] > 0 and health[-1]["uplink_connected"] is True
    proc.send_signal(signal.SIGKILL)
    wait_until(lambda: _status(w)[-1:] == ["offline"], timeout=40, what="will: status offline")


def test_clean_stop_publishes_offline(setup) -> None:  # type: ignore[no-untyped-def]
    w = setup["watcher"]
    proc = setup["start"]()
    wait_until(lambda: _status(w)[-1:] == ["online"], what="status online")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    wait_until(lambda: _status(w)[-1:] == ["offline"], timeout=5, what="status offline on SIGTERM")


class NotifySocket:
    """systemd's side of ``Type=notify``: a datagram socket, read by a thread, every message kept."""

    def __init__(self, path: Path) -> None:
        self.path, self.notes = path, list[str]()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                self.notes.append(self.sock.recv(4096).decode())
            except OSError:
                return  # closed

    def said(self, text: str) -> bool:
        return any(text in n for n in list(self.notes))

    def close(self) -> None:
        self.sock.close()


def test_ready_for_systemd_with_the_wan_cut(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A gateway that boots with the WAN cut (after a power cut, say) tells systemd it has started once
    its LAN link is up; waiting for the centre, Type=notify would kill it every TimeoutStartSec."""
    central = setup["central"]
    central.stop()
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        proc = setup["start"](NOTIFY_SOCKET=str(notify.path))
        wait_until(lambda: notify.said("READY=1"), timeout=30, what="READY=1 with the central broker down")
        assert notify.said("without the centre") and not notify.said(f"gateway {GW} online"), notify.notes
        assert proc.poll() is None
        central.start()
        wait_until(lambda: notify.said(f"STATUS=gateway {GW} online"), timeout=60, what="STATUS online once back")
    finally:
        notify.close()


def _acks(w: Watcher) -> dict[str, dict[str, Any]]:
    return {a["id"]: a for a in w.on("loaxa/v1/xa-test/ack")}


def test_commands_are_verified_and_acked(setup) -> None:  # type: ignore[no-untyped-def]
    w: Watcher = setup["watcher"]
    signer: Signer = setup["signer"]
    setup["start"]()
    wait_until(lambda: _status(w)[-1:] == ["online"], what="status online")
    topic = "loaxa/v1/xa-test/cmd"

    good = signer.envelope("ping", PingBody(), gw=GW, cmd_id="good-1")
    w.publish(topic, good.model_dump_json())
    wait_until(lambda: "good-1" in _acks(w), what="ack of a good ping")
    assert _acks(w)["good-1"]["ok"] is True

    w.publish(topic, good.model_dump_json())  # the same command again: a replay
    stranger = make_signer()  # a key the gateway does not trust
    forged = good.model_copy(update={"id": "forged-1"})  # id changed after signing
    expired = signer.envelope("ping", PingBody(), gw=GW, cmd_id="expired-1", issued_at=int(time.time() * 1000) - 10_000,
                              ttl_ms=5_000)
    unknown_kind = signer.envelope("self.destruct", {}, gw=GW, cmd_id="kind-1")
    bad_body = signer.envelope("broadcast.cancel", {"broadcast_ids": []}, gw=GW, cmd_id="body-1")
    from_stranger = stranger.envelope("ping", PingBody(), gw=GW, cmd_id="stranger-1")
    for env in (from_stranger, forged, expired, unknown_kind, bad_body):
        w.publish(topic, env.model_dump_json())
    w.publish(topic, b'{"id": "junk-1", "v": 1')  # truncated JSON
    w.publish(topic, json.dumps({"id": "schema-1", "v": 2}))
    w.publish(topic, b"x" * (259 * 1024))  # over the 256 KiB limit, under the broker's packet limit

    expected = {"stranger-1": "unknown_key", "forged-1": "bad_signature", "expired-1": "expired",
                "kind-1": "unknown_kind", "schema-1": "malformed"}
    wait_until(lambda: all(i in _acks(w) for i in expected), what="acks of every refused command")
    acks = _acks(w)
    for cmd_id, reason in expected.items():
        assert acks[cmd_id]["ok"] is False and acks[cmd_id]["reason"] == reason, acks[cmd_id]
    # bad_body has a registered kind only once the broadcast service is attached; either way it is refused
    wait_until(lambda: "body-1" in _acks(w), what="ack of the bad body")
    assert _acks(w)["body-1"]["ok"] is False
    good_acks = [a for a in w.on("loaxa/v1/xa-test/ack") if a["id"] == "good-1"]
    assert [a["ok"] for a in good_acks] == [True, False] and good_acks[1]["reason"] == "replay"
    # payloads whose id cannot be read are acked as "unknown", still with the reason
    unknown = wait_until(lambda: len([a for a in w.on("loaxa/v1/xa-test/ack") if a["id"] == "unknown"]) == 2
                         and [a for a in w.on("loaxa/v1/xa-test/ack") if a["id"] == "unknown"],
                         what="acks of truncated and oversize payloads")
    assert sorted(a["reason"] for a in unknown) == ["bad_json", "too_large"]
    assert all(a["ok"] is False for a in unknown)


def test_replay_refused_after_restart(setup) -> None:  # type: ignore[no-untyped-def]
    w: Watcher = setup["watcher"]
    signer: Signer = setup["signer"]
    proc = setup["start"]()
    wait_until(lambda: _status(w)[-1:] == ["online"], what="status online")
    env = signer.envelope("ping", PingBody(), gw=GW, cmd_id="once-1")
    w.publish("loaxa/v1/xa-test/cmd", env.model_dump_json())
    wait_until(lambda: "once-1" in _acks(w), what="first ack")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    setup["start"]()
    wait_until(lambda: _status(w)[-1:] == ["online"], timeout=40, what="online again")
    w.publish("loaxa/v1/xa-test/cmd", env.model_dump_json())
    wait_until(lambda: len([a for a in w.on("loaxa/v1/xa-test/ack") if a["id"] == "once-1"]) == 2,
               what="second ack")
    second = [a for a in w.on("loaxa/v1/xa-test/ack") if a["id"] == "once-1"][1]
    assert second["ok"] is False and second["reason"] == "replay"
