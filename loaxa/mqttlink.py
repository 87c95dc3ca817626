"""A long-lived MQTT 5 connection that survives broker restarts and network cuts.

``MqttLink`` wraps ``aiomqtt.Client``: it reconnects with exponential backoff and jitter (at most
``reconnect_max_s`` of the endpoint, 10 s by default), re-subscribes,
runs ``on_connect`` hooks (e.g. publish a retained "online" status), and queues publishes made while
the broker is unreachable (in memory, bounded, oldest dropped and counted), flushing them in order on
reconnect. The session is persistent (``clean_start=False`` with a session expiry) so QoS 1 messages
sent to us while we were away are delivered when we come back.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel

from loaxa.mqttconf import MqttEndpoint

log = logging.getLogger(__name__)

Handler = Callable[[aiomqtt.Message], Awaitable[None]]
Payload = bytes | str | BaseModel
#: most packets read in one turn of the event loop (then the loop serves others and comes back)
PACKETS_PER_TURN = 64
#: how long a QoS 1/2 publish waits for the broker's acknowledgement before it counts as failed
PUBLISH_TIMEOUT_S = 30.0


#: attributes of a paho ``Properties`` that are not MQTT properties
_PROPERTIES_OWN = frozenset({"packetType", "types", "names", "properties"})


def speed_up_paho() -> bool:
    """Make paho's ``Properties()`` and ``ReasonCode()`` cheap. paho builds the same lookup tables (27
    property names, their types, the packets they belong to; 40-odd reason codes) for every MQTT 5
    message sent or received and walks them on every read: about 100 µs of CPU per message, more
    than the rest of paho's work on it, for a gateway several messages per speaker and broadcast
    (docs/broadcast.md, CPU budget). The tables are only ever read, so every instance can share one
    copy, and a reason code built from a name is looked up once. Applied only when both classes still
    have exactly the layout this was written for (paho-mqtt 2.x); returns whether it applied."""
    props: Any = Properties
    codes: Any = ReasonCode
    if getattr(props, "_loaxa_shared", False):
        return True
    probe = props(PacketTypes.PUBLISH)
    code_probe = codes(PacketTypes.PUBACK)
    if set(vars(probe)) != _PROPERTIES_OWN or set(vars(code_probe)) != {"names", "packetType", "value"}:
        log.info("paho's Properties/ReasonCode have another layout: left as they are")
        return False
    types, names, properties = probe.types, probe.names, probe.properties
    setattr_ = object.__setattr__

    def props_init(self: Any, packetType: int) -> None:
        setattr_(self, "packetType", packetType)
        setattr_(self, "types", types)
        setattr_(self, "names", names)
        setattr_(self, "properties", properties)

    def props_clear(self: Any) -> None:
        # the properties set are exactly the instance attributes other than paho's own four
        d = vars(self)
        for key in [k for k in d if k not in _PROPERTIES_OWN]:
            del d[key]

    def props_is_empty(self: Any) -> bool:
        return all(k in _PROPERTIES_OWN for k in vars(self))

    code_init = codes.__init__
    code_names = codes.names
    known: dict[tuple[int, str], int] = {}

    def reason_init(self: Any, packetType: int, aName: str = "Success", identifier: int = -1) -> None:
        value = known.get((packetType, aName)) if identifier == -1 else None
        if value is None:
            code_init(self, packetType, aName, identifier)
            if identifier == -1:
                known[(packetType, aName)] = self.value
            return
        self.names = code_names
        self.packetType = packetType
        self.value = value

    props.__init__ = props_init
    props.clear = props_clear
    props.isEmpty = props_is_empty
    codes.__init__ = reason_init
    props._loaxa_shared = True
    return True


speed_up_paho()


def encode_payload(payload: Payload) -> bytes:
    if isinstance(payload, BaseModel):
        return payload.model_dump_json(exclude_none=True).encode("utf-8")
    return payload.encode("utf-8") if isinstance(payload, str) else payload


@dataclass(frozen=True)
class AckToken:
    """A received QoS 1/2 message still to acknowledge (see :meth:`MqttLink.take_ack`)."""

    client: aiomqtt.Client
    mid: int
    qos: int


@dataclass(frozen=True)
class _Pending:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    expiry_s: int | None


class MqttLink:
    def __init__(
        self,
        endpoint: MqttEndpoint,
        *,
        client_id: str,
        will: aiomqtt.Will | None = None,
        name: str = "mqtt",
        session_expiry_s: int = 3600,
        max_queue: int = 10_000,
        max_inflight: int = 100,
        manual_ack: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.client_id = client_id
        self.will = will
        self.name = name
        self.session_expiry_s = session_expiry_s
        self.connected = asyncio.Event()
        self.dropped = 0  #: queued publishes dropped because the queue was full
        self.reconnects = 0
        self.last_error: str | None = None
        self._max_inflight = max_inflight
        #: with ``manual_ack`` a QoS 1 message is acknowledged to the broker only when the handler
        #: that took it (:meth:`take_ack`) calls :meth:`ack` (e.g. once it is in the database); else
        #: when its handlers return. Unacknowledged messages come again after a reconnect.
        self.manual_ack = manual_ack
        self._taken = False
        self._subs: list[tuple[str, int, Handler]] = []
        self._on_connect: list[Callable[[], Awaitable[None]]] = []
        self._queue: collections.deque[_Pending] = collections.deque(maxlen=max_queue)
        self._client: aiomqtt.Client | None = None
        self._pending_subs: set[asyncio.Task[Any]] = set()
        self._routes: dict[str, list[tuple[str, Handler]]] = {}
        #: QoS 1/2 publishes of the current connection waiting for their PUBACK, by message id
        self._unacked: dict[int, asyncio.Future[None]] = {}
        #: whether the current connection reads its packets in bulk (plain TCP; see _read_in_bulk)
        self.bulk_reads = False

    # ------------------------------------------------------------------ set-up

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Call ``handler`` for every message matching ``topic_filter`` (kept across reconnects)."""
        self._subs.append((topic_filter, qos, handler))
        self._routes.clear()
        if self._client is not None:  # already connected: subscribe now too (keep the task referenced)
            task = asyncio.get_running_loop().create_task(self._client.subscribe(topic_filter, qos))
            self._pending_subs.add(task)
            task.add_done_callback(self._pending_subs.discard)

    def on_connect(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` after each (re)connection, before queued publishes are flushed."""
        self._on_connect.append(hook)

    # ------------------------------------------------------------------ publishing

    async def publish(self, topic: str, payload: Payload, *, qos: int = 1, retain: bool = False,
                      expiry_s: int | None = None) -> bool:
        """Publish now if connected (True); otherwise queue for the next connection (False)."""
        item = _Pending(topic, encode_payload(payload), qos, retain, expiry_s)
        client = self._client
        if client is not None and not self._queue:
            try:
                await self._send(client, item)
                return True
            except aiomqtt.MqttError as exc:
                log.info("%s: publish to %s failed (%s); queued", self.name, topic, exc)
        self._enqueue(item)
        return False

    def _enqueue(self, item: _Pending) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(item)

    def _start(self, client: aiomqtt.Client, item: _Pending) -> asyncio.Future[None] | None:
        """Hand ``item`` to paho (it is written out by the event loop's writer callback) and return the
        future of its acknowledgement, or None for QoS 0 (nothing to wait for: the socket write is
        the end of it). This is aiomqtt's ``publish`` without a task, an event and a timer per message:
        a gateway sends several messages per speaker and broadcast (docs/broadcast.md, CPU budget)."""
        props = None
        if item.expiry_s is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = max(1, int(item.expiry_s))
        info = client._client.publish(item.topic, item.payload, item.qos, item.retain, props)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, f"could not publish to {item.topic}")
        if item.qos == 0 or info.is_published():
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unacked[info.mid] = fut
        return fut

    async def _send(self, client: aiomqtt.Client, item: _Pending) -> None:
        fut = self._start(client, item)
        if fut is not None:
            await self._acked(fut)

    @staticmethod
    async def _acked(fut: asyncio.Future[None]) -> None:
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await fut
        except TimeoutError:
            raise aiomqtt.MqttError(f"no acknowledgement within {PUBLISH_TIMEOUT_S:g} s") from None

    def _on_publish(self, mid: int) -> None:
        """paho's ``on_publish`` (PUBACK received, or a QoS 0 message written): wake its waiter."""
        fut = self._unacked.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _connection_lost(self) -> None:
        for fut in self._unacked.values():
            if not fut.done():
                fut.set_exception(aiomqtt.MqttError("connection lost before the broker acknowledged"))
                fut.exception()  # marked as seen: whoever still awaits it gets the error, nobody else logs it
        self._unacked.clear()

    async def publish_many(self, topic: str, payloads: list[Payload], *, qos: int = 1) -> int:
        """Publish ``payloads`` to ``topic`` in order, all in flight at once, and wait for them; returns
        how many, from the first, the broker acknowledged (0 when not connected: nothing is queued,
        the caller keeps the rest, e.g. in its persistent outbox)."""
        client = self._client
        if client is None or self._queue:
            return 0
        futs: list[asyncio.Future[None] | None] = []
        try:
            for payload in payloads:
                futs.append(self._start(client, _Pending(topic, encode_payload(payload), qos, False, None)))
        except aiomqtt.MqttError as exc:
            log.info("%s: publish to %s failed (%s)", self.name, topic, exc)
        done = 0
        try:
            for fut in futs:
                if fut is not None:
                    await self._acked(fut)
                done += 1
        except aiomqtt.MqttError as exc:
            log.info("%s: %d of %d publishes to %s unconfirmed (%s)", self.name, len(payloads) - done,
                     len(payloads), topic, exc)
        return done

    async def _flush(self, client: aiomqtt.Client) -> None:
        while self._queue:
            item = self._queue[0]
            await self._send(client, item)
            self._queue.popleft()

    @property
    def queued(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------------ running

    def _client_for_connect(self) -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        kw: dict[str, Any] = self.endpoint.client_kwargs()
        kw["identifier"] = self.endpoint.client_id or self.client_id
        client = aiomqtt.Client(**kw, will=self.will, clean_start=False, properties=props,
                                max_inflight_messages=self._max_inflight, timeout=10)
        # aiomqtt logs a WARNING for every publish made while more than 10 are in flight: a gateway
        # telling 50 speakers to play at once would spend more CPU on those lines than on MQTT
        client.pending_calls_threshold = max(self._max_inflight, 10) * 2
        if self.manual_ack:
            client._client.manual_ack_set(True)  # paho's own switch; aiomqtt does not wrap it
        inner = client._client.on_publish  # aiomqtt's, for its own publishes (none of ours)

        def on_publish(c: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
            self._on_publish(mid)
            if inner is not None:
                inner(c, userdata, mid, reason, properties)

        client._client.on_publish = on_publish
        return client

    # ------------------------------------------------------------------ manual acknowledgement

    def take_ack(self, message: aiomqtt.Message) -> AckToken | None:
        """Called by a handler: acknowledge ``message`` later, with :meth:`ack`, not when the handler returns."""
        if not self.manual_ack or message.qos == 0 or self._client is None:
            return None
        self._taken = True
        return AckToken(self._client, message.mid, message.qos)

    def ack(self, token: AckToken | None) -> None:
        """Acknowledge a taken message, if the connection it came on is still the current one (after a
        reconnect the broker sends it again)."""
        if token is None or token.client is not self._client:
            return
        try:
            token.client._client.ack(token.mid, token.qos)
        except (ValueError, OSError) as exc:  # a closing socket: the broker sends it again
            log.debug("%s: could not acknowledge message %d: %s", self.name, token.mid, exc)

    async def run(self) -> None:
        """Stay connected until cancelled."""
        backoff = 0.5
        while True:
            try:
                async with self._client_for_connect() as client:
                    for topic_filter, qos, _ in self._subs:
                        await client.subscribe(topic_filter, qos)
                    self._client = client
                    self.bulk_reads = _read_in_bulk(client)
                    self.connected.set()
                    log.info("%s: connected to %s", self.name, self.endpoint.url)
                    for hook in self._on_connect:
                        await hook()
                    await self._flush(client)
                    backoff = 0.5
                    # messages already received are taken straight from the queue; aiomqtt's iterator
                    # (a task and a wait per message) only when there is none
                    queue: asyncio.Queue[aiomqtt.Message] = client._queue
                    messages = client.messages
                    while True:
                        try:
                            message = queue.get_nowait()
                        except asyncio.QueueEmpty:
                            message = await anext(messages)
                        await self._dispatch(message)
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc)
                log.warning("%s: connection to %s lost or refused: %s", self.name, self.endpoint.url, exc)
            finally:
                self._client = None
                self.connected.clear()
                self._connection_lost()
            self.reconnects += 1
            # exponential backoff with "equal jitter", never longer than the endpoint's reconnect_max_s:
            # a broker that comes back is used again within that time
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self.endpoint.reconnect_max_s)

    def _handlers_for(self, message: aiomqtt.Message) -> list[tuple[str, Handler]]:
        """The subscriptions a topic matches, remembered per topic (matching a filter in aiomqtt
        costs more than handling a small message; a commune has a few hundred topics at most)."""
        topic = message.topic.value
        found = self._routes.get(topic)
        if found is None:
            found = [(f, h) for f, _q, h in self._subs if message.topic.matches(f)]
            if len(self._routes) >= 4096:
                self._routes.clear()
            self._routes[topic] = found
        return found

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        self._taken = False
        for topic_filter, handler in self._handlers_for(message):
            try:
                await handler(message)
            except Exception:  # a bad message must never take the link down
                log.exception("%s: handler for %s failed on %s", self.name, topic_filter, message.topic)
        if self.manual_ack and not self._taken and message.qos > 0 and self._client is not None:
            self.ack(AckToken(self._client, message.mid, message.qos))

    async def disconnect_gracefully(self, last: list[tuple[str, Payload, bool]] | None = None) -> None:
        """Publish ``last`` messages (topic, payload, retain) if connected; the caller then cancels run()."""
        client = self._client
        if client is None:
            return
        for topic, payload, retain in last or []:
            try:
                await self._send(client, _Pending(topic, encode_payload(payload), 1, retain, None))
            except aiomqtt.MqttError:
                break


def _read_in_bulk(client: aiomqtt.Client) -> bool:
    """Read every MQTT packet waiting on a plain TCP connection in one turn of the event loop, from
    one ``recv`` of up to 64 kB, instead of aiomqtt's one packet per turn and paho's three or four
    ``recv`` calls per packet (a command byte, the length bytes, the rest). The 50 reports of a
    commune's speakers then cost a few system calls and loop turns, not hundreds. TLS connections
    keep aiomqtt's reader (an SSL socket buffers on its own). Returns whether it applied."""
    pc: Any = client._client
    sock = pc._sock
    if type(sock) is not socket.socket:  # TLS, websockets: left as they are
        return False
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    pending = bytearray()  # read from the socket, not yet handed to paho

    def recv(bufsize: int) -> bytes:
        nonlocal pending
        if not pending:
            if pc._sock is None:
                raise ConnectionError("the connection is closed")
            data = pc._sock.recv(65536)  # BlockingIOError when there is nothing: paho's "again"
            if len(data) <= bufsize:
                return bytes(data)
            pending = bytearray(data)
        out = bytes(pending[:bufsize])
        del pending[:bufsize]
        return out

    def on_readable() -> None:
        try:
            for _ in range(PACKETS_PER_TURN):
                if pc._sock is None:
                    return
                rc = pc._packet_read()
                if rc > 0:
                    pc._loop_rc_handle(rc)
                    return
                if rc == paho.MQTT_ERR_AGAIN:  # the socket is drained, or a packet is still coming
                    break
            if pending:  # bytes already read wait here, not in the kernel: epoll would not say so
                loop.call_soon(on_readable)
        except Exception as exc:  # as aiomqtt's reader: a broken connection ends the session
            if not client._disconnected.done():
                client._disconnected.set_exception(exc)

    pc._sock_recv = recv
    loop.remove_reader(fd)
    loop.add_reader(fd, on_readable)
    return True
