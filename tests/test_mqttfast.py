"""The fast receive path (loaxa.mqttfast) and the bulk publish of MqttLink, against a real Mosquitto with
the production accounts and ACL: bursts pre-queued in a persistent session arrive complete, in order and
acknowledged (nothing comes again), packets that span read chunks and messages with properties are
decoded right, manual acknowledgement in one write leaves exactly the unacknowledged to come again."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from loaxa.brokers import CentralBroker
from loaxa.mqttconf import MqttEndpoint
from loaxa.mqttfast import CHUNK
from loaxa.mqttlink import AckToken, MqttLink, _filter_levels, topic_matches

GW = "xa-fast"


def gateway_publish(broker: CentralBroker, items: list[tuple[str, bytes]]) -> None:
    """Publish QoS 1 as the gateway account and return once the broker has acknowledged every one."""
    user, password = broker.gateway_auth(GW)
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=paho.MQTTv5)
    c.username_pw_set(user, password)
    c.max_inflight_messages_set(200)
    c.max_queued_messages_set(0)
    left = len(items)
    done = threading.Event()

    def on_publish(*_a: Any) -> None:
        nonlocal left
        left -= 1
        if left == 0:
            done.set()

    c.on_publish = on_publish
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        for topic, payload in items:
            c.publish(topic, payload, qos=1)
        assert done.wait(60), f"{left} publishes not acknowledged by the broker"
    finally:
        c.disconnect()
        c.loop_stop()


class Receiver:
    """A scheduler-account MqttLink collecting what arrives on the gateways' event topics."""

    def __init__(self, broker: CentralBroker, *, manual_ack: bool = False) -> None:
        ep = MqttEndpoint.model_validate(broker.endpoint("scheduler"))
        self.link = MqttLink(ep, client_id="scheduler", name="fast-test", manual_ack=manual_ack)
        self.got: list[aiomqtt.Message] = []
        self.tokens: list[AckToken | None] = []
        self.changed = asyncio.Event()
        self.link.subscribe("loaxa/v1/+/event", self._on)
        self.task: asyncio.Task[None] | None = None

    async def _on(self, msg: aiomqtt.Message) -> None:
        self.got.append(msg)
        if self.link.manual_ack:
            self.tokens.append(self.link.take_ack(msg))
        self.changed.set()

    async def start(self) -> None:
        self.task = asyncio.create_task(self.link.run())
        await asyncio.wait_for(self.link.connected.wait(), 30)

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def wait_until(self, cond: Callable[[], bool], what: str, within: float = 60) -> None:
        async with asyncio.timeout(within):
            while not cond():
                self.changed.clear()
                await self.changed.wait()
        assert cond(), what


def payload(i: int) -> bytes:
    """Mostly small reports, with some larger than a read chunk so that packets span chunks."""
    size = CHUNK + 1000 if i % 500 == 7 else 60 + i % 200
    head = f'{{"n":{i},"pad":"'.encode()
    return head + b"x" * (size - len(head) - 2) + b'"}'


async def test_burst_from_a_persistent_session_arrives_whole_in_order_and_acknowledged(
        central_broker_factory: Callable[..., CentralBroker]) -> None:
    broker = central_broker_factory(gateways=[GW])
    rx = Receiver(broker)
    await rx.start()  # subscribes: the session now exists at the broker
    await rx.stop()
    n = 3000
    items = [(f"loaxa/v1/{GW}/event", payload(i)) for i in range(n)]
    await asyncio.to_thread(gateway_publish, broker, items)  # queued in the scheduler's session
    await rx.start()
    await rx.wait_until(lambda: len(rx.got) >= n, f"all {n} queued messages")
    assert [m.payload for m in rx.got] == [p for _, p in items]
    assert all(str(m.topic) == f"loaxa/v1/{GW}/event" and m.qos == 1 and not m.retain for m in rx.got)
    # every one was acknowledged (in batched PUBACKs): after a reconnect only a new marker comes. The
    # broker handles one connection's packets in order, so once a publish of ours is acknowledged, so
    # are the PUBACKs written before it (without this barrier a stop could close the connection first)
    assert await rx.link.publish(f"loaxa/v1/{GW}/cmd", b"{}", qos=1)
    await rx.stop()
    rx.got.clear()
    await rx.start()
    await asyncio.to_thread(gateway_publish, broker, [(f"loaxa/v1/{GW}/event", b'{"marker":1}')])
    await rx.wait_until(lambda: len(rx.got) >= 1, "the marker")
    assert [m.payload for m in rx.got] == [b'{"marker":1}']
    await rx.stop()


async def test_manual_ack_many_leaves_only_the_unacknowledged_to_come_again(
        central_broker_factory: Callable[..., CentralBroker]) -> None:
    broker = central_broker_factory(gateways=[GW])
    rx = Receiver(broker, manual_ack=True)
    await rx.start()
    items = [(f"loaxa/v1/{GW}/event", f'{{"n":{i}}}'.encode()) for i in range(10)]
    await asyncio.to_thread(gateway_publish, broker, items)
    await rx.wait_until(lambda: len(rx.got) >= 10, "the 10 messages")
    rx.link.ack_many(rx.tokens[:6])  # the first six are "in the database"
    # a marker acknowledged too, so that we know the acknowledgements were written before we stop
    await asyncio.to_thread(gateway_publish, broker, [(f"loaxa/v1/{GW}/event", b'{"n":"marker"}')])
    await rx.wait_until(lambda: len(rx.got) >= 11, "the marker")
    rx.link.ack_many([rx.tokens[10]])
    await asyncio.to_thread(gateway_publish, broker, [(f"loaxa/v1/{GW}/event", b'{"n":"last"}')])
    await rx.wait_until(lambda: len(rx.got) >= 12, "the last message")
    rx.link.ack_many([rx.tokens[11]])
    await rx.stop()
    rx.got.clear()
    rx.tokens.clear()
    await rx.start()  # the broker sends the four unacknowledged ones again
    await rx.wait_until(lambda: len(rx.got) >= 4, "the unacknowledged messages again")
    assert sorted(m.payload for m in rx.got) == [f'{{"n":{i}}}'.encode() for i in range(6, 10)]
    rx.link.ack_many(rx.tokens)
    await rx.stop()


async def test_publish_many_is_acknowledged_and_messages_with_properties_decode(
        central_broker_factory: Callable[..., CentralBroker]) -> None:
    broker = central_broker_factory(gateways=[GW])
    user, password = broker.gateway_auth(GW)
    gw_ep = MqttEndpoint.model_validate({"url": broker.url, "username": user, "password": {"value": password}})
    gw_link = MqttLink(gw_ep, client_id=user, name="fast-gw")
    got: list[aiomqtt.Message] = []
    arrived = asyncio.Event()

    async def on_cmd(msg: aiomqtt.Message) -> None:
        got.append(msg)
        arrived.set()

    gw_link.subscribe(f"loaxa/v1/{GW}/cmd", on_cmd)
    sched = MqttLink(MqttEndpoint.model_validate(broker.endpoint("scheduler")), client_id="scheduler",
                     name="fast-sched", max_inflight=100)
    assert await sched.publish_many([(f"loaxa/v1/{GW}/cmd", b"{}", 60)]) == [False]  # not connected
    tasks = [asyncio.create_task(gw_link.run()), asyncio.create_task(sched.run())]
    try:
        await asyncio.wait_for(asyncio.gather(gw_link.connected.wait(), sched.connected.wait()), 30)
        n = 300  # more than the window: the window refills as PUBACKs come
        items: list[tuple[str, bytes, int | None]] = [
            (f"loaxa/v1/{GW}/cmd", f'{{"i":{i}}}'.encode(), 60 if i % 2 else None) for i in range(n)]
        assert await sched.publish_many(items, window=50) == [True] * n
        async with asyncio.timeout(60):
            while len(got) < n:
                arrived.clear()
                await arrived.wait()
        assert [m.payload for m in got] == [p for _, p, _ in items]
        expiry = [getattr(m.properties, "MessageExpiryInterval", None) if m.properties else None for m in got]
        assert all(e is not None and 0 < e <= 60 for e in expiry[1::2])  # decoded by paho's own decoder
        assert all(e is None for e in expiry[0::2])  # decoded by the lean path
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("topic_filter,topic", [
    ("loaxa/v1/+/event", "loaxa/v1/x/event"), ("loaxa/v1/+/event", "loaxa/v1/x/y/event"),
    ("$share/g/loaxa/v1/+/ack", "loaxa/v1/a/ack"), ("loaxa/#", "loaxa"), ("loaxa/#", "loaxa/v1/a"),
    ("+/x", "/x"), ("a/+", "a/"), ("a/+/#", "a/b"), ("loaxa/v1/+/dev/+/state", "loaxa/v1/g/dev/d/state"),
    ("a/b", "a/b/c"), ("a/b/c", "a/b"), ("a/+/c", "a/b/d"),
])
def test_topic_matches_as_aiomqtt_does(topic_filter: str, topic: str) -> None:
    assert topic_matches(_filter_levels(topic_filter), topic.split("/")) == aiomqtt.Topic(topic).matches(topic_filter)


def test_wildcards_never_match_dollar_topics() -> None:
    assert not topic_matches(_filter_levels("#"), "$SYS/broker/load".split("/"))
    assert not topic_matches(_filter_levels("+/broker/load"), "$SYS/broker/load".split("/"))
