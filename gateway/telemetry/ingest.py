"""MQTT ingest of LAN telemetry with the PUBACK sent only after the readings are on disk.

Why a dedicated paho client and not the gateway's aiomqtt link
    aiomqtt 2.5 acknowledges every QoS 1 message as soon as paho hands it over: it has no way to
    delay the PUBACK. paho-mqtt 2.x has ``manual_ack=True`` and ``Client.ack(mid, qos)``. Rather than
    reach into aiomqtt's private client, telemetry runs its own paho client (client id
    ``loaxa-gw-{gw}-telemetry``) and drives it from the asyncio event loop through paho's documented
    external-loop API (``on_socket_open`` / ``on_socket_register_write`` → ``loop.add_reader`` /
    ``add_writer`` calling ``loop_read`` / ``loop_write``, and ``loop_misc`` every second) — the same
    technique aiomqtt uses internally. No network thread: the first version ran paho's own thread
    (``loop_start``) and the two threads spent most of their time handing the GIL to each other
    (about 4x the CPU per message). The blocking TCP connect runs in an executor; reconnection with
    backoff is done here.

Flow
    paho decodes a PUBLISH and calls ``on_message`` on the event loop; messages are collected and
    handed, one event-loop turn at a time, to ``process`` (validation) and then to the spool's
    group commit; when the commit is done, ``Client.ack`` sends the PUBACKs, in arrival order.

MQTT 3.1.1 for this one client
    Devices publish with MQTT 5 or 3.1.1 as they like; the broker delivers to each subscriber in the
    subscriber's own protocol. This subscriber uses 3.1.1 by default (``mqtt_version=5`` is
    available): paho decodes an MQTT 5 properties block for every PUBLISH in pure Python, which
    doubled the gateway's CPU per single-reading message in our measurements, and nothing here uses
    properties. What MQTT 5 would add for this client (a receive maximum) is done by the ingest's own
    flow control below, and a 3.1.1 ``clean_session=False`` session is as persistent as an MQTT 5
    session with a long expiry (Mosquitto keeps it until ``persistent_client_expiration``, if set).

Persistent session
    The client connects with ``clean_session=False`` (MQTT 5: ``clean_start=False`` and a 7-day
    session expiry), so the broker keeps every unacknowledged and every newly published QoS 1 reading
    while the gateway is down or restarting, and sends them again when it is back. A PUBACK is only sent on the same
    connection the message came on (a message id means nothing on the next connection); anything
    not acked before a disconnect is redelivered by the broker: that is where at-least-once
    duplicates come from.
"""

from __future__ import annotations

import asyncio
import contextlib
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

DRAIN_MAX = 1000  # messages handled per event-loop turn ...
DRAIN_MAX_BYTES = 256 * 1024  # ... or this much payload, so that commits start early and stay small
#: Flow control: received but not yet committed+acked. Above the high mark the socket is not read
#: (TCP pushes back on the broker, which keeps the messages) until the spool catches up. This bounds
#: the gateway's memory whatever the broker's in-flight window is.
HOLD_HIGH_MSGS = 500
HOLD_HIGH_BYTES = 1024 * 1024


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
    def __init__(
        self,
        endpoint: MqttEndpoint,
        *,
        topic_filter: str,
        client_id: str,
        process: Process,
        spool: Spool,
        session_expiry_s: int = 7 * 86400,
        receive_maximum: int = 200,
        mqtt_version: int = 3,
    ) -> None:
        self.endpoint = endpoint
        self.topic_filter = topic_filter
        self.client_id = client_id
        self.process = process
        self.spool = spool
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.mqtt_version = mqtt_version
        self.connected = asyncio.Event()
        self.received = 0
        self.acked = 0
        self.connects = 0
        self.pauses = 0
        self.poisoned = 0
        self.last_error: str | None = None
        self._inbox: deque[InMsg] = deque()
        self._n_in = 0
        self._held_msgs = 0
        self._held_bytes = 0
        self._paused = False
        self._scheduled = False
        self._epoch = 0
        self._backoff = 1.0
        self._fd: int | None = None
        self._lost: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self.client: paho.Client | None = None

    # ------------------------------------------------------------------ paho callbacks (event loop,
    # except the socket callbacks paho makes from the executor thread while connecting)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.last_error = f"connect refused: {reason}"
            log.warning("telemetry MQTT connect to %s refused: %s", self.endpoint.url, reason)
            return
        self._epoch += 1
        self.connects += 1
        self._backoff = 1.0
        client.subscribe(self.topic_filter, qos=1)
        log.info(
            "telemetry ingest connected to %s (session present: %s)",
            self.endpoint.url,
            getattr(flags, "session_present", "?"),
        )
        self.connected.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._epoch += 1
        if reason is not None and getattr(reason, "is_failure", False):
            self.last_error = f"disconnected: {reason}"
        log.info("telemetry ingest disconnected from %s: %s", self.endpoint.url, reason)
        self.connected.clear()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._inbox.append(InMsg(msg.topic, bytes(msg.payload), msg.mid, msg.qos, self._epoch))
        self._n_in += 1
        self._held_msgs += 1
        self._held_bytes += len(msg.payload)
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _threadsafe(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the event loop: now if we are on it, else as soon as it can."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:  # paho calls the socket callbacks from the executor thread while connecting
            loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._threadsafe(self._add_reader, sock)

    def _add_reader(self, sock: Any) -> None:
        assert self._loop is not None
        fd = sock.fileno()
        if fd < 0:  # closed again before the loop got to it (a failed TLS handshake)
            return
        self._fd = fd
        self._paused = False
        self._loop.add_reader(fd, self._readable)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._threadsafe(self._drop_socket, sock.fileno())

    def _drop_socket(self, fd: int) -> None:
        assert self._loop is not None
        if fd >= 0:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        if self._fd == fd:
            self._fd = None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._threadsafe(self._add_writer, sock)

    def _add_writer(self, sock: Any) -> None:
        if self._loop is not None and self._fd is not None and sock.fileno() == self._fd:
            self._loop.add_writer(self._fd, self._writable)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._threadsafe(self._remove_writer, sock)

    def _remove_writer(self, sock: Any) -> None:
        if self._loop is not None and self._fd is not None:
            self._loop.remove_writer(self._fd)

    def _readable(self) -> None:
        client = self.client
        if client is None:
            return
        try:
            # several packets per wake-up while they keep coming (a PUBLISH burst); stop at the first
            # read that produced no message
            for _ in range(200):
                before = self._n_in
                if client.loop_read() != paho.MQTT_ERR_SUCCESS:
                    break
                sock = client.socket()
                if sock is None:
                    break
                if hasattr(sock, "pending") and sock.pending() > 0:  # TLS: decrypted bytes waiting
                    continue
                if self._n_in == before:
                    break
                if self._held_msgs >= HOLD_HIGH_MSGS or self._held_bytes >= HOLD_HIGH_BYTES:
                    self._pause()
                    break
        except Exception as exc:  # a broken connection surfaces here
            log.info("telemetry MQTT read failed: %s", exc)
            if self._lost is not None and not self._lost.done():
                self._lost.set_result(None)

    def _writable(self) -> None:
        client = self.client
        if client is None:
            return
        try:
            client.loop_write()
        except Exception as exc:
            log.info("telemetry MQTT write failed: %s", exc)
            if self._lost is not None and not self._lost.done():
                self._lost.set_result(None)

    def _pause(self) -> None:
        if not self._paused and self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._paused = True
            self.pauses += 1

    def _release(self, msgs: int, nbytes: int) -> None:
        self._held_msgs -= msgs
        self._held_bytes -= nbytes
        if (
            self._paused
            and self._held_msgs <= HOLD_HIGH_MSGS // 2
            and self._held_bytes <= HOLD_HIGH_BYTES // 2
            and self._loop is not None
            and self._fd is not None
        ):
            self._paused = False
            self._loop.add_reader(self._fd, self._readable)
            self._loop.call_soon(self._readable)  # bytes may already sit in paho's or the TLS buffer

    # ------------------------------------------------------------------ event loop

    def _drain(self) -> None:
        self._scheduled = False
        batch: list[InMsg] = []
        size = 0
        while self._inbox and len(batch) < DRAIN_MAX and size < DRAIN_MAX_BYTES:
            msg = self._inbox.popleft()
            size += len(msg.payload)
            batch.append(msg)
        if self._inbox and not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._drain)
        if not batch:
            return
        self.received += len(batch)
        try:
            rows = self.process(batch)
        except Exception:
            # ``process`` handles each message on its own; should it still fail, go one message at a
            # time: a message that fails alone is refused (acknowledged, never redelivered), so one
            # poison message cannot hold back the readings around it for ever.
            log.exception("telemetry processing failed for a batch of %d; retrying one by one", len(batch))
            rows = []
            for m in batch:
                try:
                    rows.extend(self.process([m]))
                except Exception:
                    self.poisoned += 1
                    log.exception("telemetry message on %s could not be processed; dropping it", m.topic[:200])
        acks = [(m.mid, m.qos, m.epoch) for m in batch if m.qos > 0]
        self._submit(rows, acks, len(batch), size)

    def _submit(self, rows: list[NewRow], acks: list[tuple[int, int, int]], msgs: int, nbytes: int) -> None:
        def done(exc: BaseException | None) -> None:
            if exc is None:
                self._ack(acks)
                self._release(msgs, nbytes)
            elif self._loop is not None and not self._loop.is_closed():
                # keep the messages unacknowledged and try the commit again: nothing is lost
                self._loop.call_later(1.0, self._submit, rows, acks, msgs, nbytes)

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

    def _make_client(self) -> paho.Client:
        ep = self.endpoint
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if self.mqtt_version == 5 else paho.MQTTv311,  # 3 means 3.1.1
            clean_session=None if self.mqtt_version == 5 else False,
            manual_ack=True,
            reconnect_on_failure=False,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        if ep.username:
            client.username_pw_set(ep.username, ep.password.get() if ep.password else None)
        ctx = ep.tls_context()
        if ctx is not None:
            client.tls_set_context(ctx)
        return client

    async def run(self) -> None:
        """Connect, and reconnect with backoff whenever the connection is lost, until cancelled."""
        self._loop = loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        ep = self.endpoint
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        client = self.client = self._make_client()
        try:
            while True:
                self._lost = loop.create_future()
                try:
                    if self.mqtt_version == 5:
                        await loop.run_in_executor(
                            None,
                            lambda: client.connect(
                                ep.host, ep.port, keepalive=ep.keepalive_s, clean_start=False, properties=props
                            ),
                        )
                    else:
                        await loop.run_in_executor(None, lambda: client.connect(ep.host, ep.port, ep.keepalive_s))
                except (OSError, ValueError) as exc:
                    self.last_error = f"cannot connect to {ep.url}: {exc}"
                    log.warning("telemetry ingest: %s; retrying in %.0f s", self.last_error, self._backoff)
                    await asyncio.sleep(self._backoff)
                    self._backoff = min(self._backoff * 2, 10.0)
                    continue
                misc = loop.create_task(self._misc_forever(client))
                try:
                    await self._lost
                finally:
                    misc.cancel()
                self.connected.clear()
                self._epoch += 1
                with contextlib.suppress(Exception):
                    client.disconnect()  # make sure the socket is closed before connecting again
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, 10.0)
        finally:
            # no clean DISCONNECT of the session: unacknowledged messages stay queued at the broker
            with contextlib.suppress(Exception):
                client.disconnect()
                client.loop_write()
            if self._fd is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(self._fd)
                    loop.remove_writer(self._fd)
                self._fd = None
            self.client = None

    async def _misc_forever(self, client: paho.Client) -> None:
        """Keepalive pings and timeouts (paho's ``loop_misc``)."""
        while True:
            if client.loop_misc() != paho.MQTT_ERR_SUCCESS:
                break
            await asyncio.sleep(1)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def stats(self) -> dict[str, int | bool]:
        return {
            "telemetry_mqtt_connected": self.connected.is_set(),
            "telemetry_mqtt_received": self.received,
            "telemetry_mqtt_acked": self.acked,
            "telemetry_mqtt_connects": self.connects,
            "telemetry_mqtt_pauses": self.pauses,
            "telemetry_mqtt_poisoned": self.poisoned,
        }
