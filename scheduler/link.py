"""A small reconnecting MQTT 5 client for the dispatcher, shaped like ``loaxa.mqttlink.MqttLink``
(subscribe with a handler, on_connect callbacks, publish, run until cancelled) plus MQTT 5 publish
properties (the dispatcher needs Message Expiry). Unlike MqttLink it does not queue publishes while
disconnected: the dispatcher keeps every unacknowledged command in its database and sends it again
when the gateway is back online, so a lost publish is never lost work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from loaxa.mqttconf import MqttEndpoint

log = logging.getLogger(__name__)

Handler = Callable[[aiomqtt.Message], Awaitable[None]]


def publish_properties(*, expiry_s: int | None = None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if expiry_s is not None:
        props.MessageExpiryInterval = max(1, min(int(expiry_s), 2**32 - 1))
    return props


class Link:
    def __init__(
        self,
        endpoint: MqttEndpoint,
        *,
        client_id: str,
        name: str = "mqtt",
        session_expiry_s: int = 3600,
        reconnect_s: float = 2.0,
    ):
        self.endpoint = endpoint
        self.client_id = client_id
        self.name = name
        self.session_expiry_s = session_expiry_s
        self.reconnect_s = reconnect_s
        self.connected = asyncio.Event()
        self._subs: list[tuple[str, Handler, int]] = []
        self._on_connect: list[Callable[[], Awaitable[None]]] = []
        self._client: aiomqtt.Client | None = None

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        self._subs.append((topic_filter, handler, qos))

    def on_connect(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._on_connect.append(fn)

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> bool:
        """Publish now; False (and nothing sent) when not connected or the connection broke."""
        client = self._client
        if client is None or not self.connected.is_set():
            return False
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        except aiomqtt.MqttError as exc:
            log.warning("%s: publish to %s failed: %s", self.name, topic, exc)
            return False
        return True

    def _client_kwargs(self) -> dict[str, Any]:
        kw = self.endpoint.client_kwargs()
        kw.setdefault("identifier", self.client_id)
        connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect_props.SessionExpiryInterval = self.session_expiry_s
        kw["clean_start"] = False
        kw["properties"] = connect_props
        return kw

    async def _dispatch(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            for flt, handler, _qos in self._subs:
                if msg.topic.matches(flt):
                    try:
                        await handler(msg)
                    except Exception:  # a bad message must never stop the link
                        log.exception("%s: handler for %s failed on %s", self.name, flt, msg.topic)

    async def run(self) -> None:
        """Connect, subscribe, dispatch; reconnect forever until cancelled."""
        while True:
            try:
                async with aiomqtt.Client(**self._client_kwargs()) as client:
                    self._client = client
                    for flt, _h, qos in self._subs:
                        await client.subscribe(flt, qos=qos)
                    self.connected.set()
                    log.info("%s: connected to %s", self.name, self.endpoint.url)
                    for fn in self._on_connect:
                        try:
                            await fn()
                        except Exception:
                            log.exception("%s: on_connect callback failed", self.name)
                    await self._dispatch(client)
            except aiomqtt.MqttError as exc:
                log.warning(
                    "%s: connection to %s lost (%s); retrying in %.0f s",
                    self.name,
                    self.endpoint.url,
                    exc,
                    self.reconnect_s,
                )
            finally:
                self.connected.clear()
                self._client = None
            await asyncio.sleep(self.reconnect_s)
