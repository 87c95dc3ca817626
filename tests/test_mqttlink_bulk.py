"""MqttLink on a real broker (accounts and the production ACL): packets read in bulk arrive whole
and in order, however the TCP stream splits them; publish_many is acknowledged by the broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiomqtt

from loaxa.brokers import SCHEDULER_USER, CentralBroker
from loaxa.mqttconf import MqttEndpoint
from loaxa.mqttlink import MqttLink
from loaxa.yamlconf import Secret


async def test_bulk_reads_keep_every_message_whole_and_in_order(
        central_broker_factory: Callable[..., CentralBroker]) -> None:
    broker = central_broker_factory(gateways=["xa-bulk"])
    user, password = broker.gateway_auth("xa-bulk")
    link = MqttLink(MqttEndpoint(url=broker.url, username=user, password=Secret(value=password)),
                    client_id="xa-bulk", name="test")
    got: list[bytes] = []
    done = asyncio.Event()
    # small messages around one larger than the 64 kB read, so packets straddle reads
    sent = [f"m{i:04d}".encode() * (1 + i % 7) for i in range(400)]
    sent.insert(200, bytes(range(256)) * 800)  # 204,800 bytes

    async def on_cmd(msg: aiomqtt.Message) -> None:
        assert isinstance(msg.payload, bytes)
        got.append(msg.payload)
        if len(got) == len(sent):
            done.set()

    link.subscribe("loaxa/v1/xa-bulk/cmd", on_cmd, qos=1)
    runner = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.connected.wait(), 30)
        assert link.bulk_reads
        sched = broker.user(SCHEDULER_USER)
        async with aiomqtt.Client("127.0.0.1", broker.port, username=sched.username, password=sched.password,
                                  identifier=sched.username, max_inflight_messages=1000) as centre:
            await asyncio.gather(*(centre.publish("loaxa/v1/xa-bulk/cmd", p, qos=1) for p in sent))
        await asyncio.wait_for(done.wait(), 60)
        assert got == sent
        # and the other way: a batch of events, all acknowledged by the broker
        assert await link.publish_many("loaxa/v1/xa-bulk/event", [f'{{"n":{i}}}' for i in range(120)]) == 120
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_publish_many_when_not_connected_sends_nothing() -> None:
    link = MqttLink(MqttEndpoint(url="mqtt://127.0.0.1:1"), client_id="never", name="test")
    assert await link.publish_many("loaxa/v1/x/event", ["{}", "{}"]) == 0
    assert link.queued == 0
