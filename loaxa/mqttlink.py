"""A long-lived MQTT 5 connection that survives broker restarts and network cuts.

``MqttLink`` wraps ``aiomqtt.Client``: it reconnects with exponential backoff and jitter (at most
``reconnect_max_s`` of the endpoint, 10 s by default), re-subscribes,
runs ``on_connect`` hooks (e.g. publish a retained "online" status), and queues publishes made while
the broker is unreachable (in memory, bounded, oldest dropped and counted), flushing them in order on
reconnect. The session is persistent (``clean_start=False`` with a session expiry) so QoS 1 messages
sent to us while we were away are delivered when we come back.

Each connection attempt uses a new ``aiomqtt.Client``; one that is done with (connection lost, a
failed publish, a connect that timed out) is *retired*: a connect that timed out may still complete
later and would leave a ghost connection under our client id, and aiomqtt's disconnection error would
stay unread ("Future exception was never retrieved … MqttCodeError" in the log).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel

from loaxa.mqttconf import MqttEndpoint
from loaxa.mqttfast import queue_pubacks, speed_up

log = logging.getLogger(__name__)

Handler = Callable[[aiomqtt.Message], Awaitable[None]]
T = TypeVar("T")
#: Message Expiry properties by value (:meth:`MqttLink._expiry`)
_EXPIRY_PROPS: dict[int, Properties] = {}
Payload = bytes | str | BaseModel


def encode_payload(payload: Payload) -> bytes:
    if isinstance(payload, BaseModel):
        return payload.model_dump_json(exclude_none=True).encode("utf-8")
    return payload.encode("utf-8") if isinstance(payload, str) else payload


@functools.lru_cache(maxsize=256)
def _filter_levels(topic_filter: str) -> tuple[str, ...]:
    """The levels of a subscription filter, without a ``$share/<group>/`` prefix."""
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2]
    return tuple(topic_filter.split("/"))


def topic_matches(filter_levels: tuple[str, ...], levels: list[str]) -> bool:
    """Whether a topic (split in levels) matches a filter (split, ``+`` and ``#`` wildcards)."""
    if levels and levels[0].startswith("$") and filter_levels and filter_levels[0] in ("+", "#"):
        return False  # MQTT: wildcards at the first level never match $SYS-like topics
    for i, f in enumerate(filter_levels):
        if f == "#":
            return True
        if i >= len(levels) or (f != "+" and f != levels[i]):
            return False
    return len(levels) == len(filter_levels)


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
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self.connect_timeout_s = connect_timeout_s
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
        self._memo_of: aiomqtt.Message | None = None
        self._memo: dict[str, Any] = {}
        #: per connection: message id -> what to do when its PUBACK comes (:meth:`publish_many`)
        self._bulk_acks: dict[int, dict[int, Callable[[], None]]] = {}

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

    async def publish_many(self, items: list[tuple[str, bytes, int | None]], *, window: int = 500,
                           timeout_s: float = 30.0) -> list[bool]:
        """Publish many QoS 1 messages (topic, payload, expiry in seconds or None) now, at most ``window``
        awaiting their PUBACK; for each, whether the broker acknowledged it. Nothing is queued for a
        later connection: the caller keeps what was not acknowledged (e.g. in its database).

        Straight through paho, without aiomqtt's per-publish future and bookkeeping (which grow with
        the number in flight: a national broadcast is 10,000 publishes)."""
        result = [False] * len(items)
        client = self._client
        if client is None:
            return result
        bulk = self._bulk_acks.get(id(client))
        if bulk is None:
            return result
        paho_client = client._client
        free = asyncio.Event()
        in_flight = 0
        loop = asyncio.get_running_loop()

        def acked(i: int) -> Callable[[], None]:
            def done() -> None:
                nonlocal in_flight
                result[i] = True
                in_flight -= 1
                free.set()
            return done

        deadline = loop.time() + timeout_s
        window = max(1, min(window, self._max_inflight))
        for i, (topic, payload, expiry_s) in enumerate(items):
            while in_flight >= window:
                free.clear()
                left = deadline - loop.time()
                if left <= 0 or self._client is not client:
                    return result
                try:
                    await asyncio.wait_for(free.wait(), min(left, 1.0))
                except TimeoutError:
                    continue
            if self._client is not client:
                return result
            props = None if expiry_s is None else self._expiry(max(1, int(expiry_s)))
            info = paho_client.publish(topic, payload, qos=1, properties=props)
            if info.rc != 0:
                log.info("%s: publish to %s failed (code %s)", self.name, topic, info.rc)
                return result
            bulk[info.mid] = acked(i)
            in_flight += 1
            deadline = loop.time() + timeout_s
        while in_flight > 0 and loop.time() < deadline and self._client is client:
            free.clear()
            try:
                await asyncio.wait_for(free.wait(), min(deadline - loop.time(), 1.0))
            except TimeoutError:
                continue
        return result

    def _enqueue(self, item: _Pending) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(item)

    @staticmethod
    def _expiry(expiry_s: int) -> Properties:
        """PUBLISH properties with this Message Expiry, made once per value (paho only reads them)."""
        props = _EXPIRY_PROPS.get(expiry_s)
        if props is None:
            if len(_EXPIRY_PROPS) >= 4096:
                _EXPIRY_PROPS.clear()
            props = _EXPIRY_PROPS[expiry_s] = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = expiry_s
        return props

    @classmethod
    async def _send(cls, client: aiomqtt.Client, item: _Pending) -> None:
        props = None if item.expiry_s is None else cls._expiry(max(1, int(item.expiry_s)))
        await client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain, properties=props,
                             timeout=30)

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
                                max_inflight_messages=self._max_inflight, timeout=self.connect_timeout_s)
        # aiomqtt logs a WARNING for every publish made while more than 10 are in flight: a gateway
        # telling 50 speakers to play at once would spend more CPU on those lines than on MQTT
        client.pending_calls_threshold = max(self._max_inflight, 10) * 2
        if self.manual_ack:
            client._client.manual_ack_set(True)  # paho's own switch; aiomqtt does not wrap it
        speed_up(client._client)  # chunked reads, lean decoding, batched PUBACKs (loaxa.mqttfast)
        aiomqtt_on_publish = client._client.on_publish
        bulk: dict[int, Callable[[], None]] = {}

        def on_publish(c: Any, userdata: Any, mid: int, *rest: Any) -> None:
            done = bulk.pop(mid, None)
            if done is not None:
                done()
            elif aiomqtt_on_publish is not None:
                aiomqtt_on_publish(c, userdata, mid, *rest)

        client._client.on_publish = on_publish
        self._bulk_acks[id(client)] = bulk
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

    def ack_many(self, tokens: list[AckToken | None]) -> None:
        """Acknowledge many taken messages in one write (those of the current connection; after a
        reconnect the broker sends the others again)."""
        client = self._client
        mids = [t.mid for t in tokens if t is not None and t.client is client and t.qos == 1]
        if client is None or not mids:
            return
        try:
            queue_pubacks(client._client, mids)
        except (ValueError, OSError) as exc:  # a closing socket: the broker sends them again
            log.debug("%s: could not acknowledge %d message(s): %s", self.name, len(mids), exc)

    async def run(self) -> None:
        """Stay connected until cancelled."""
        backoff = 0.5
        while True:
            client = self._client_for_connect()
            try:
                async with client:
                    for topic_filter, qos, _ in self._subs:
                        await client.subscribe(topic_filter, qos)
                    self._client = client
                    self.connected.set()
                    log.info("%s: connected to %s", self.name, self.endpoint.url)
                    for hook in self._on_connect:
                        await hook()
                    await self._flush(client)
                    backoff = 0.5
                    incoming = client._queue  # aiomqtt's own queue of received messages
                    async for message in client.messages:
                        await self._dispatch(message)
                        # what else arrived in the same turn, without aiomqtt's task and wait per
                        # message (three loop turns each: most of the cost of a small message)
                        while not incoming.empty():
                            await self._dispatch(incoming.get_nowait())
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc)
                log.warning("%s: connection to %s lost or refused: %s", self.name, self.endpoint.url, exc)
            finally:
                if self._client is not None:
                    self._bulk_acks.pop(id(self._client), None)
                self._client = None
                self.connected.clear()
                _retire(client)
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
            levels = topic.split("/")
            found = [(f, h) for f, _q, h in self._subs if topic_matches(_filter_levels(f), levels)]
            if len(self._routes) >= 4096:
                self._routes.clear()
            self._routes[topic] = found
        return found

    def memo(self, message: aiomqtt.Message, key: str, make: Callable[[], T]) -> T:
        """What ``make`` derives from ``message`` (its parsed topic, its JSON, a model), computed once
        for all the handlers of that message: several subscribers of one topic (the dispatcher and the
        fleet both read every playback report) then parse it once. An exception is not remembered."""
        if self._memo_of is not message:
            self._memo_of, self._memo = message, {}
        try:
            return cast(T, self._memo[key])
        except KeyError:
            value = self._memo[key] = make()
            return value

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


def _retire(client: aiomqtt.Client) -> None:
    """``client`` is never used again. aiomqtt keeps the error of a lost connection in a future that
    it reads only while messages are awaited: after a failed publish or flush, or a connect that timed
    out and completed later, nobody reads it and asyncio logs "Future exception was never retrieved"
    when the client is collected. Read it (now, or when it is set), and close what a timed-out connect
    left open so that it cannot complete into a ghost connection under our client id."""
    disconnected: asyncio.Future[None] = client._disconnected  # aiomqtt has no public handle on it
    disconnected.add_done_callback(_read_outcome)
    if not disconnected.done():  # the connect failed: paho may still hold a socket that is connecting
        with contextlib.suppress(Exception):
            client._client.disconnect()


def _read_outcome(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()
