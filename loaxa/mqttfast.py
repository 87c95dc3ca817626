"""A faster receive path for a paho MQTT client driven by an asyncio loop (aiomqtt).

Measured on the scheduler's ingest (docs/scaling.md, "Where the time goes"): paho spends most of
its time per received message on work that a burst of small QoS 1 messages does not need:

* it reads each packet with three or more ``recv`` calls (the command byte, each byte of the
  remaining length, then the rest), and only ONE packet per readable event of the socket, so every
  message costs an event-loop turn and several system calls (each a hand-over of the interpreter
  lock while the database thread wants it);
* it builds a :class:`paho.mqtt.properties.Properties` (which fills its lookup tables anew on every
  instance) and a ``threading.Condition`` for every message, also when the message carries no
  properties;
* it queues every PUBACK as its own packet, each with a wake-up write to an internal socket pair;
* every ``Properties`` object (one per PUBLISH sent with a Message Expiry, one per PUBACK received
  for the publish callback) fills paho's lookup tables of property names and types anew.

:func:`speed_up` changes one paho client instance: its socket is read in chunks of 64 KiB and every
complete packet in a chunk is handled in the same turn (at most :data:`PACKETS_PER_TURN` before the
loop gets a turn); a PUBLISH without properties is decoded directly (one with properties, e.g. a
Message Expiry, goes through paho's own decoder); the PUBACKs of one turn go out as one write. It
also installs :func:`share_property_tables`, process-wide (``Properties`` instances only read those
tables), so that paho builds its property tables once. Everything else (connecting, subscribing,
publishing, keep-alive, errors) is paho's own code. The MQTT semantics are unchanged: a QoS 1
message is acknowledged after its ``on_message`` has run (automatic acknowledgement), or when
:func:`ack_many` is called for it (``manual_ack``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)

#: bytes asked of the socket at once
CHUNK = 65536
#: complete packets handled per readable event before the event loop gets a turn back
PACKETS_PER_TURN = 2000
_PUBLISH = 0x30
_PUBACK = 0x40


class _Reader:
    """The chunked reader and lean PUBLISH decoder installed on one paho client."""

    def __init__(self, client: paho.Client) -> None:
        self.client = client
        self.data = b""
        self.pos = 0
        self.sock: Any = None
        self.acks: list[int] = []
        self.orig_recv = client._sock_recv
        self.orig_handle_publish = client._handle_publish
        self.orig_loop_read = client.loop_read

    # ---------------------------------------------------------------- socket

    def buffered(self) -> int:
        return len(self.data) - self.pos if self.sock is self.client._sock else 0

    def sock_recv(self, bufsize: int) -> bytes:
        c = self.client
        if self.sock is not c._sock:  # a new connection: nothing buffered belongs to it
            self.sock, self.data, self.pos = c._sock, b"", 0
        if self.pos >= len(self.data):
            data: bytes = self.orig_recv(max(bufsize, CHUNK))  # BlockingIOError when nothing is there
            if len(data) <= bufsize:
                self.data, self.pos = b"", 0
                return data
            self.data, self.pos = data, 0
        out = self.data[self.pos : self.pos + bufsize]
        self.pos += len(out)
        return out

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        c = self.client
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        try:
            for _ in range(PACKETS_PER_TURN):
                if c._sock is None:
                    return MQTTErrorCode.MQTT_ERR_NO_CONN
                rc = c._packet_read()
                if rc > 0:
                    return c._loop_rc_handle(rc)
                if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
            if self.buffered() or (isinstance(c._sock, ssl.SSLSocket) and c._sock.pending()):
                # packets left in the buffer: the socket may not signal them again, so come back
                asyncio.get_running_loop().call_soon(self._again)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        finally:
            self.flush_acks()

    def _again(self) -> None:
        try:
            self.loop_read()
        except Exception as exc:  # a broken connection: paho's keep-alive and the next read report it
            log.debug("reading buffered MQTT packets failed: %s", exc)

    # ---------------------------------------------------------------- PUBLISH and PUBACK

    def handle_publish(self) -> MQTTErrorCode:
        c = self.client
        if c._protocol != paho.MQTTv5:
            return self.orig_handle_publish()
        header = c._in_packet["command"]
        packet = c._in_packet["packet"]
        qos = (header & 0x06) >> 1
        if qos > 1 or len(packet) < 2:
            return self.orig_handle_publish()
        tlen = (packet[0] << 8) | packet[1]
        pos = 2 + tlen
        mid = 0
        if qos:
            if len(packet) < pos + 3:
                return self.orig_handle_publish()
            mid = (packet[pos] << 8) | packet[pos + 1]
            pos += 2
        if len(packet) <= pos or packet[pos] != 0:  # properties present (or malformed): paho's decoder
            return self.orig_handle_publish()
        msg = paho.MQTTMessage.__new__(paho.MQTTMessage)
        msg.timestamp = 0.0
        msg.state = paho.mqtt_ms_invalid
        msg.dup = bool(header & 0x08)
        msg.mid = mid
        msg._topic = bytes(packet[2 : 2 + tlen])
        msg.payload = bytes(packet[pos + 1 :])
        msg.qos = qos
        msg.retain = bool(header & 0x01)
        msg.info = None  # only paho's own publishes use it
        msg.properties = None
        try:
            msg._topic.decode("utf-8")
        except UnicodeDecodeError:
            return self.orig_handle_publish()  # paho reports such a topic its own way
        matcher_root = getattr(c._on_message_filtered, "_root", None)
        on_message = c.on_message
        if on_message is not None and matcher_root is not None and not matcher_root._children:
            # no per-topic callbacks (aiomqtt adds none): straight to on_message, without paho's
            # walk of its empty topic tree for every message
            with c._in_callback_mutex:
                on_message(c, c._userdata, msg)
        else:
            c._handle_on_message(msg)
        if qos == 1 and not c._manual_ack:
            self.acks.append(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def flush_acks(self) -> None:
        if self.acks:
            mids, self.acks = self.acks, []
            queue_pubacks(self.client, mids)


def queue_pubacks(client: paho.Client, mids: Iterable[int]) -> None:
    """Queue the PUBACKs of these message ids as ONE write (MQTT 5: a 2-byte PUBACK means success)."""
    out = bytearray()
    for mid in mids:
        out += bytes((_PUBACK, 2, (mid >> 8) & 0xFF, mid & 0xFF))
    if out and client._sock is not None:
        client._packet_queue(_PUBACK, bytes(out), 0, 0)


_TABLES: tuple[Any, Any, Any] | None = None
_paho_properties_init = Properties.__init__


def _shared_tables_init(self: Properties, packetType: int) -> None:
    """``Properties.__init__`` with paho's lookup tables built once and shared (they are only read):
    paho builds them for every instance, i.e. for every PUBLISH sent and every PUBACK received."""
    global _TABLES
    if _TABLES is None:
        model = Properties.__new__(Properties)
        _paho_properties_init(model, packetType)
        _TABLES = (model.types, model.names, model.properties)
    object.__setattr__(self, "packetType", packetType)
    object.__setattr__(self, "types", _TABLES[0])
    object.__setattr__(self, "names", _TABLES[1])
    object.__setattr__(self, "properties", _TABLES[2])


def share_property_tables() -> None:
    """Install :func:`_shared_tables_init` for every paho ``Properties`` of this process (idempotent)."""
    Properties.__init__ = _shared_tables_init


def speed_up(client: paho.Client) -> paho.Client:
    """Install the chunked reader, lean decoder and batched PUBACKs on this client (see the module)."""
    share_property_tables()
    r = _Reader(client)
    client._sock_recv = r.sock_recv
    client._handle_publish = r.handle_publish
    client.loop_read = r.loop_read
    return client


def ack_many(client: paho.Client, mids: Iterable[int]) -> None:
    """Acknowledge many QoS 1 messages taken with ``manual_ack`` in one write."""
    queue_pubacks(client, mids)
