"""The production ACL examples and broker settings, on real Mosquitto brokers.

Central: one gateway's credentials cannot act as another gateway, send commands, read another
gateway's commands, or take over another gateway's session by borrowing its client id; read-only
accounts publish nothing. Commune LAN: a device publishes only its own state, telemetry, acks and
events and reads only its own commands. Nobody gets in without a password. The example configs use
the user names the ACLs require.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import yaml
from paho.mqtt.reasoncodes import ReasonCode

from loaxa.brokers import (
    LAN_GATEWAY_USER,
    SCHEDULER_USER,
    VIEWER_USER,
    CentralBroker,
    LanBroker,
    central_acl,
    lan_acl,
)
from loaxa.servers import MosquittoUser
from tests.conftest import ROOT, wait_until

NOT_AUTHORIZED = 0x87


class Client:
    """A paho MQTT 5 client that records what it receives, PUBACK reason codes and disconnects."""

    def __init__(self, port: int, user: MosquittoUser | None, client_id: str = "", *,
                 clean_start: bool = True) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.disconnects: list[Any] = []
        self.connacks: list[Any] = []
        self._lock = threading.Lock()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                             client_id=client_id or f"t-{user.username if user else 'anon'}")
        if user is not None:
            self.c.username_pw_set(user.username, user.password)
        self.c.on_message = self._on
        self.c.on_connect = lambda _c, _u, _f, rc, _p: self.connacks.append(rc)
        self.c.on_disconnect = lambda _c, _u, _f, rc, _p: self.disconnects.append(rc)
        props = paho.Properties(paho.PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.c.connect("127.0.0.1", port, clean_start=clean_start, properties=props)
        self.c.loop_start()
        wait_until(lambda: self.connacks, what=f"CONNACK for {client_id or user}")

    @property
    def accepted(self) -> bool:
        return not self.connacks[0].is_failure

    def _on(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.got.append((msg.topic, msg.payload))

    def topics(self) -> list[str]:
        with self._lock:
            return [t for t, _ in self.got]

    def sub(self, topic: str) -> None:
        done = threading.Event()
        self.c.on_subscribe = lambda *_a: done.set()
        self.c.subscribe(topic, qos=1)
        assert done.wait(10), f"no SUBACK for {topic}"

    def pub(self, topic: str, payload: bytes = b"{}", *, retain: bool = False) -> int:
        """Publish QoS 1 and return the PUBACK reason code: 0 accepted (0x10 "no matching subscribers"
        is reported as 0 too), 0x87 not authorised."""
        codes: list[ReasonCode] = []
        done = threading.Event()

        def on_publish(_c: Any, _u: Any, _mid: int, rc: ReasonCode, _p: Any) -> None:
            codes.append(rc)
            done.set()

        self.c.on_publish = on_publish
        self.c.publish(topic, payload, qos=1, retain=retain)
        assert done.wait(10), f"no PUBACK for {topic}"
        code = int(codes[0].value)
        return 0 if code == 0x10 else code

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_gateway_credentials_are_confined(central_broker_factory: Callable[..., CentralBroker]) -> None:
    broker = central_broker_factory(gateways=["xa-a", "xa-b"])
    viewer = Client(broker.port, broker.user(VIEWER_USER))
    viewer.sub("loaxa/v1/#")
    a = Client(broker.port, broker.user("xa-a"))
    a.sub("loaxa/v1/xa-a/cmd")
    a.sub("loaxa/v1/xa-b/cmd")  # not its own: the broker delivers nothing
    sched = Client(broker.port, broker.user(SCHEDULER_USER))

    assert a.pub("loaxa/v1/xa-b/status") == NOT_AUTHORIZED  # speak for another gateway
    assert a.pub("loaxa/v1/xa-b/dev/loa-01/cmd") == NOT_AUTHORIZED  # drive another commune's speaker
    assert a.pub("loaxa/v1/xa-a/dev/loa-01/cmd") == NOT_AUTHORIZED  # or its own, unsigned, past the relay
    assert a.pub("loaxa/v1/xa-a/cmd") == NOT_AUTHORIZED  # forge a command to itself
    assert a.pub("loaxa/v1/xa-a/status") == 0
    assert a.pub("loaxa/v1/xa-a/dev/loa-01/state", retain=True) == 0  # the gateway relays device state up
    assert sched.pub("loaxa/v1/xa-a/cmd") == 0  # the centre commands
    assert sched.pub("loaxa/v1/xa-b/cmd") == 0
    assert sched.pub("loaxa/v1/xa-b/status") == NOT_AUTHORIZED  # ... and never speaks for a gateway

    wait_until(lambda: "loaxa/v1/xa-a/cmd" in a.topics(), what="xa-a receives its own command")
    wait_until(lambda: "loaxa/v1/xa-b/cmd" in viewer.topics(), what="viewer sees the centre's traffic")
    assert sorted(viewer.topics()) == ["loaxa/v1/xa-a/cmd", "loaxa/v1/xa-a/dev/loa-01/state",
                                       "loaxa/v1/xa-a/status", "loaxa/v1/xa-b/cmd"]
    assert a.topics() == ["loaxa/v1/xa-a/cmd"]
    for c in (viewer, a, sched):
        c.close()


def test_read_only_accounts_publish_nothing(central_broker_factory: Callable[..., CentralBroker]) -> None:
    """`pattern` lines would let `viewer` publish loaxa/v1/viewer/... and pass for a gateway."""
    broker = central_broker_factory(gateways=["xa-a"], readers=("viewer", "ioc"))
    watcher = Client(broker.port, broker.user("ioc"))
    watcher.sub("loaxa/v1/#")
    viewer = Client(broker.port, broker.user(VIEWER_USER))
    for topic in ("loaxa/v1/viewer/status", "loaxa/v1/viewer/event", "loaxa/v1/viewer/ack",
                  "loaxa/v1/viewer/health", "loaxa/v1/viewer/dev/x/state", "loaxa/v1/xa-a/status",
                  "loaxa/v1/xa-a/cmd", "loaxa/v1/viewer/cmd"):
        assert viewer.pub(topic) == NOT_AUTHORIZED, topic
    a = Client(broker.port, broker.user("xa-a"))
    assert a.pub("loaxa/v1/xa-a/status") == 0
    wait_until(lambda: watcher.topics(), what="the gateway's status at the watcher")
    assert watcher.topics() == ["loaxa/v1/xa-a/status"]
    for c in (watcher, viewer, a):
        c.close()


def test_borrowed_client_id_cannot_kick_another_gateway(central_broker_factory: Callable[..., CentralBroker]) -> None:
    """Gateway A's password with gateway B's client id leaves B connected and B's session intact."""
    broker = central_broker_factory(gateways=["xa-a", "xa-b"])
    b = Client(broker.port, broker.user("xa-b"), "loaxa-gw-xa-b", clean_start=False)
    b.sub("loaxa/v1/xa-b/cmd")
    sched = Client(broker.port, broker.user(SCHEDULER_USER))
    intruders = [Client(broker.port, broker.user("xa-a"), "loaxa-gw-xa-b", clean_start=True) for _ in range(3)]
    assert all(i.accepted for i in intruders)  # A may log in (as A) ...
    assert sched.pub("loaxa/v1/xa-b/cmd", b"after") == 0
    wait_until(lambda: ("loaxa/v1/xa-b/cmd", b"after") in b.got, what="B still gets its commands")
    assert b.disconnects == []  # ... but B was never kicked off
    for i in intruders:
        i.close()

    # B's persistent session is keyed by its user name: a command sent while B is away waits for it.
    b.close()
    assert sched.pub("loaxa/v1/xa-b/cmd", b"queued") == 0
    b2 = Client(broker.port, broker.user("xa-b"), "some-other-id", clean_start=False)
    wait_until(lambda: ("loaxa/v1/xa-b/cmd", b"queued") in b2.got, what="the queued command after reconnecting")
    b2.close()
    sched.close()


def test_anonymous_and_wrong_password_are_refused(central_broker_factory: Callable[..., CentralBroker],
                                                  lan_broker_factory: Callable[..., LanBroker]) -> None:
    central = central_broker_factory(gateways=["xa-a"])
    lan = lan_broker_factory("xa-a", devices=["loa-01"])
    for port in (central.port, lan.port, lan.device_port):
        assert not Client(port, None).accepted
        assert not Client(port, MosquittoUser("xa-a", "wrong")).accepted
        assert not Client(port, MosquittoUser("loa-01", "wrong")).accepted


def test_lan_device_is_confined_to_its_own_topics(lan_broker_factory: Callable[..., LanBroker]) -> None:
    lan = lan_broker_factory("xa-a", devices=["loa-01", "loa-02"])
    gw = Client(lan.port, lan.user(LAN_GATEWAY_USER), "loaxa-gw-xa-a-lan")
    gw.sub("loaxa/v1/xa-a/dev/+/#")
    spk = Client(lan.device_port, lan.user("loa-01"))
    spk.sub("loaxa/v1/xa-a/dev/loa-01/cmd")
    spk.sub("loaxa/v1/xa-a/dev/loa-02/cmd")  # another speaker's commands: nothing arrives
    other = Client(lan.device_port, lan.user("loa-02"))

    # its own ack, event, state and telemetry: what docs/broadcast.md has a speaker send
    for kind in ("ack", "event", "state", "telemetry"):
        assert spk.pub(f"loaxa/v1/xa-a/dev/loa-01/{kind}") == 0, kind
    # never a command (its own or another's), never another device's topics, never the uplink's
    for topic in ("loaxa/v1/xa-a/dev/loa-02/cmd", "loaxa/v1/xa-a/dev/loa-01/cmd", "loaxa/v1/xa-a/dev/loa-02/state",
                  "loaxa/v1/xa-a/dev/loa-02/ack", "loaxa/v1/xa-a/dev/loa-02/telemetry", "loaxa/v1/xa-a/cmd",
                  "loaxa/v1/xa-b/dev/loa-01/telemetry", "loaxa/v1/xa-a/status"):
        assert spk.pub(topic) == NOT_AUTHORIZED, topic
    assert gw.pub("loaxa/v1/xa-a/dev/loa-02/cmd", b"vol") == 0
    assert gw.pub("loaxa/v1/xa-a/dev/loa-01/cmd", b"play") == 0
    wait_until(lambda: ("loaxa/v1/xa-a/dev/loa-01/cmd", b"play") in spk.got, what="the speaker's own command")
    assert spk.topics() == ["loaxa/v1/xa-a/dev/loa-01/cmd"]
    assert sorted(set(gw.topics())) == sorted(
        {f"loaxa/v1/xa-a/dev/loa-01/{k}" for k in ("ack", "event", "state", "telemetry")}
        | {"loaxa/v1/xa-a/dev/loa-01/cmd", "loaxa/v1/xa-a/dev/loa-02/cmd"})
    for c in (gw, spk, other):
        c.close()


def test_lan_device_cannot_take_over_the_gateways_session(lan_broker_factory: Callable[..., LanBroker]) -> None:
    """On the device listener the client id is the device id: borrowing the gateway's telemetry
    client id (and a clean start, which would throw away its queued readings) does nothing to it."""
    lan = lan_broker_factory("xa-a", devices=["s1", "s2"])
    ingest = Client(lan.port, lan.user(LAN_GATEWAY_USER), "loaxa-gw-xa-a-telemetry", clean_start=False)
    ingest.sub("loaxa/v1/xa-a/dev/+/telemetry")
    s2 = Client(lan.device_port, lan.user("s2"), "s2")
    thief = Client(lan.device_port, lan.user("s1"), "loaxa-gw-xa-a-telemetry", clean_start=True)
    assert thief.accepted
    thief2 = Client(lan.device_port, lan.user("s1"), "s2", clean_start=True)  # another device's id
    assert thief2.accepted
    assert s2.pub("loaxa/v1/xa-a/dev/s2/telemetry", b"r1") == 0
    wait_until(lambda: ("loaxa/v1/xa-a/dev/s2/telemetry", b"r1") in ingest.got, what="the reading at the gateway")
    assert ingest.disconnects == []
    assert s2.disconnects == []
    for c in (ingest, s2, thief, thief2):
        c.close()


def test_example_configs_use_the_user_names_the_acls_require(tmp_path: Path,
                                                            central_broker_factory: Callable[..., CentralBroker],
                                                            lan_broker_factory: Callable[..., LanBroker]) -> None:
    from gateway.config import load_gateway_config
    from scheduler.config import load_scheduler_config

    gw_file = ROOT / "configs" / "gateway.example.yaml"
    raw = yaml.safe_load(gw_file.read_text())
    gw_id = raw["gateway"]["id"]
    assert raw["uplink"]["username"] == gw_id, "the central ACL grants a gateway's topics to user = gateway id"
    assert f"user {gw_id}\n" in central_acl([gw_id])
    assert raw["local_broker"]["username"] == LAN_GATEWAY_USER
    assert f"user {LAN_GATEWAY_USER}\n" in lan_acl(gw_id)
    sched = yaml.safe_load((ROOT / "configs" / "scheduler.example.yaml").read_text())
    assert sched["broker"]["username"] == SCHEDULER_USER

    # and with the example's names on real brokers, the gateway may do what it must
    (tmp_path / "secrets").mkdir()
    central = central_broker_factory(gateways=[gw_id])
    lan = lan_broker_factory(gw_id, devices=["loa-cho"])
    up = Client(central.port, MosquittoUser(raw["uplink"]["username"], central.user(gw_id).password),
                f"loaxa-gw-{gw_id}")
    for kind in ("status", "health", "ack", "event", "dev/loa-cho/state"):
        assert up.pub(f"loaxa/v1/{gw_id}/{kind}") == 0, kind
    local = Client(lan.port, MosquittoUser(raw["local_broker"]["username"], lan.user(LAN_GATEWAY_USER).password))
    assert local.pub(f"loaxa/v1/{gw_id}/dev/loa-cho/cmd") == 0
    up.close()
    local.close()
    # the example still loads (secrets are only read when used)
    cfg = load_gateway_config(gw_file)
    assert cfg.uplink.username == cfg.gateway.id
    load_scheduler_config(ROOT / "configs" / "scheduler.example.yaml")


def test_broker_acl_command_prints_the_generated_files() -> None:
    from tests.conftest import run_loaxa

    out = run_loaxa("broker", "acl", "central", "--gateway", "xa-a", "--gateway", "xa-b", "--reader", "ioc")
    assert out.returncode == 0 and out.stdout == central_acl(["xa-a", "xa-b"], ["ioc"])
    out = run_loaxa("broker", "acl", "lan", "--gateway", "xa-a")
    assert out.returncode == 0 and out.stdout == lan_acl("xa-a") and "xa-an-binh" not in out.stdout
    bad = run_loaxa("broker", "acl", "central", "--gateway", "viewer")
    assert bad.returncode == 2 and "viewer" in bad.stderr
