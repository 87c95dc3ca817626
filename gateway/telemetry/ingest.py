"""MQTT ingest of LAN telemetry with the PUBACK sent only after the readings are on disk.

Why a dedicated paho client and not the gateway's aiomqtt link
    aiomqtt 2.5 acknowledges every QoS 1 message as soon as paho hands it over: it has no way to
    delay the PUBACK. paho-mqtt 2.x has ``manual_ack=True`` and ``Client.ack(mid, qos)``. Rather than
    reach into aiomqtt's private client, telemetry runs its own small paho client (client id
    ``{gw}-telemetry``) on paho's own network thread (``loop_start``), which also reconnects by
    itself. The thread only appends incoming messages to a deque and wakes the event loop; the
    event loop validates, hands rows to the spool's group commit, and calls ``ack`` once the commit
    is done. ``Client.ack`` only queues a packet under paho's lock, so calling it from the event loop
    thread is safe.

Persistent session
    The client connects with ``clean_start=False`` and a session expiry (7 days by default), so the
    broker keeps every unacknowledged and every newly published QoS 1 reading while the gateway is
    down or restarting, and sends them again when it is back. A PUBACK is only sent on the same
    connection the message came on (a message id means nothing on the next connection); anything
    not acked before a disconnect is redelivered by the broker: that is where at-least-once
    duplicates come from.

Acks go out in the order the messages arrived (the spool runs its callbacks in submission order).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from loaxa.mqttconf import MqttEndpoint

from .spool import NewRow, Spool

log = logging.getLogger(__name__)

DRAIN_MAX = 5000  # messages handled per event-loop turn


@dataclass(slots=True)
class InMsg:
    topic: str
    payload: bytes
    mid: int
    qos: int
    epoch: int


#: Turns a list of messages into rows to store (counting whatever it refuses).
Process = Callable[[list[InMsg]], list[NewRow]]


class TelemetryIngest:
    def __init__(self, endpoint: MqttEndpoint, *, topic_filter: str, client_id: str, process: Process,
                 spool: Spool, session_expiry_s: int = 7 * 86400, receive_maximum: int = 1000) -> None:
        self.endpoint = endpoint
        self.topic_filter = topic_filter
        self.client_id = client_id
        self.process = process
        self.spool = spool
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.connected = asyncio.Event()
        self.received = 0
        self.acked = 0
        self.connects = 0
        self.last_error: str | None = None
        self._inbox: deque[InMsg] = deque()
        self._scheduled = False
        self._epoch = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.client: paho.Client | None = None

    # ------------------------------------------------------------------ paho thread

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.last_error = f"connect refused: {reason}"
            log.warning("telemetry MQTT connect to %s refused: %s", self.endpoint.url, reason)
            return
        with self._lock:
            self._epoch += 1
        self.connects += 1
        client.subscribe(self.topic_filter, qos=1)
        log.info("telemetry ingest connected to %s (session present: %s)", self.endpoint.url,
                 getattr(flags, "session_present", "?"))
        self._call_loop(self.connected.set)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._lock:
            self._epoch += 1
        if reason is not None and getattr(reason, "is_failure", False):
            self.last_error = f"disconnected: {reason}"
        log.info("telemetry ingest disconnected from %s: %s", self.endpoint.url, reason)
        self._call_loop(self.connected.clear)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._inbox.append(InMsg(msg.topic, msg.payload, msg.mid, msg.qos, self._epoch))
        if not self._scheduled:
            self._scheduled = True
            self._call_loop(self._drain)

    def _call_loop(self, fn: Callable[[], Any]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn)

    # ------------------------------------------------------------------ event loop

    def _drain(self) -> None:
        self._scheduled = False
        batch: list[InMsg] = []
        while self._inbox and len(batch) < DRAIN_MAX:
            batch.append(self._inbox.popleft())
        if self._inbox and not self._scheduled:
            self._scheduled = True
            self._call_loop(self._drain)
        if not batch:
            return
        self.received += len(batch)
        try:
            rows = self.process(batch)
        except Exception:  # a bug in validation must not stop the ingest; the messages get redelivered
            log.exception("telemetry processing failed for %d messages; not acknowledging them", len(batch))
            return
        acks = [(m.mid, m.qos, m.epoch) for m in batch if m.qos > 0]
        self._submit(rows, acks)

    def _submit(self, rows: list[NewRow], acks: list[tuple[int, int, int]]) -> None:
        def done(exc: BaseException | None) -> None:
            if exc is None:
                self._ack(acks)
            elif self._loop is not None and not self._loop.is_closed():
                # keep the messages unacknowledged and try the commit again: nothing is lost
                self._loop.call_later(1.0, self._submit, rows, acks)

        self.spool.submit(rows, done)

    def _ack(self, acks: list[tuple[int, int, int]]) -> None:
        client = self.client
        if client is None:
            return
        epoch = self._epoch
        for mid, qos, msg_epoch in acks:
            if msg_epoch == epoch:
                client.ack(mid, qos)
                self.acked += 1

    async def run(self) -> None:
        """Connect (and reconnect) until cancelled."""
        self._loop = asyncio.get_running_loop()
        ep = self.endpoint
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5,
                             manual_ack=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        if ep.username:
            client.username_pw_set(ep.username, ep.password.get() if ep.password else None)
        ctx = ep.tls_context()
        if ctx is not None:
            client.tls_set_context(ctx)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        client.connect_async(ep.host, ep.port, keepalive=ep.keepalive_s, clean_start=False, properties=props)
        self.client = client
        client.loop_start()
        try:
            await asyncio.Event().wait()
        finally:
            # drop the connection without a clean DISCONNECT of the session: unacked messages stay queued
            await asyncio.to_thread(client.disconnect)
            await asyncio.to_thread(client.loop_stop)
            self.client = None

    def stats(self) -> dict[str, int | str | None]:
        return {"mqtt_received": self.received, "mqtt_acked": self.acked, "mqtt_connects": self.connects}
