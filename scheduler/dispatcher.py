"""The dispatcher: sends signed broadcast plans and cancels to gateways and tracks what happened.

* Every plan/cancel is a signed envelope (``protocol.signing.Signer``) published QoS 1 on
  ``loaxa/v1/{gw}/cmd`` with MQTT 5 Message Expiry = its remaining lifetime, so a broker never
  hands a gateway a stale command.
* Each command is stored (the exact signed JSON) with its gateway until that gateway acks it.
  When a gateway's status is ``online`` (a retained status on start-up, or a reconnect), all its
  pending commands are sent again, and every ``dispatch.resend_interval_s`` while it stays online.
  A resend is the SAME envelope (same id): a gateway that got the first copy but whose ack was lost
  refuses it as a replay, and an ack refusing with reason ``replay``/``duplicate`` counts as
  delivered. A gateway therefore never acts twice on one command.
* A refusal that can heal is not final (``scheduler.db.RETRY_REASONS``): ``deferred`` (the
  gateway keeps it until its clock catches up), ``future``/``expired`` by the gateway's clock
  (wrong after a power cut), ``internal``, ``timeout``, ``in_progress``. The command stays pending and
  is sent again every ``resend_interval_s`` until it is acked or expires by the scheduler's clock.
* Every envelope names its gateway (``gw``) and lives at most 7 days (the contract's cap); a command
  that reaches the cap undelivered while its broadcast is still to come is signed again (new id).
* ``loaxa/v1/+/ack`` updates per-gateway delivery; ``loaxa/v1/+/event`` playback reports update
  per-speaker state (never backwards); ``loaxa/v1/+/dev/+/state`` (retained) teaches the speakers.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, Literal, cast

import aiomqtt
from pydantic import BaseModel

from loaxa.mqttlink import AckToken, MqttLink
from protocol.errors import ProtocolError
from protocol.limits import parse_json, parse_payload
from protocol.models import (
    Ack,
    BroadcastPlanBody,
    Envelope,
    MediaRef,
    PlanItem,
    PlaybackEvent,
    Status,
    Targets,
)
from protocol.signing import MAX_LIFETIME_MS, Signer, now_ms
from protocol.topics import ROOT, cmd_topic, filter_all_gateways, parse_topic
from scheduler.db import AsyncStore, BadRequest, DispatchLock, Incoming, Outgoing, Store, Target
from scheduler.models import Broadcast

log = logging.getLogger(__name__)

#: Incoming messages wait here for the database worker; when it is full the MQTT reader waits too.
INBOX_SIZE = 50_000
#: At most this many incoming messages are applied in one database transaction...
BATCH_MAX = 2000
#: ...gathered for at most this long once the first one is there (a lone ack waits this much more).
BATCH_WAIT_S = 0.005
#: Publishes awaiting their PUBACK at once when sending many commands (the QoS 1 in-flight window,
#: at most the MQTT client's own ``max_inflight``).
PUBLISH_WINDOW = 500

#: Speakers are told apart from sensors by a retained state carrying one of these keys.
SPEAKER_STATE_KEYS = ("volume", "playing")


def looks_like_speaker(state: dict[str, Any]) -> bool:
    kind = state.get("kind") or state.get("type")
    if isinstance(kind, str):
        return "speaker" in kind
    return any(state.get(k) is not None for k in SPEAKER_STATE_KEYS)


class Dispatcher:
    def __init__(
        self,
        store: AsyncStore,
        link: MqttLink,
        signer: Signer,
        media_url: Callable[[str, str, int], str],
        *,
        resend_interval_s: float = 30.0,
        max_late_s: int = 3600,
        gateways: Iterable[str] = (),
        share_group: str | None = None,
    ):
        #: the registered gateways (configured, or registered through the API); messages on any other
        #: gateway's topics are ignored: a read-only account or a misconfigured broker must not make a
        #: gateway appear
        self.known_gateways: set[str] = set(gateways)
        self._ignored: set[str] = set()
        #: set by the fleet: False for a device its gateway no longer lists (a retained state left on
        #: the broker must not bring a removed speaker back into the broadcast registry)
        self.accept_device: Callable[[str, str], bool] | None = None
        self.store = store
        self.link = link
        self.signer = signer
        self.media_url = media_url
        self.resend_interval_s = resend_interval_s
        self.max_late_ms = max_late_s * 1000
        self.sent = 0
        self.received = 0
        self._inbox: asyncio.Queue[tuple[Incoming, AckToken | None]] = asyncio.Queue(maxsize=INBOX_SIZE)
        self._tasks: set[asyncio.Task[Any]] = set()
        #: commands whose ack someone awaits (``await_ack``), by command id
        self._ack_waiters: dict[str, asyncio.Future[Ack]] = {}
        #: one of several workers (see docs/scaling.md): acks and reports are shared among them through
        #: MQTT 5 shared subscriptions and acknowledged to the broker only once in the database, and only
        #: the holder of the dispatch lock sends pending commands again. Retained status and speaker
        #: states are never delivered on shared subscriptions, so every worker reads those itself.
        self.share_group = share_group
        self.lock: DispatchLock | None = DispatchLock(store.store) if share_group else None
        if share_group:
            link.manual_ack = True
        shared = f"$share/{share_group}/" if share_group else ""
        link.subscribe(filter_all_gateways("status"), self._on_status)
        link.subscribe(shared + filter_all_gateways("ack"), self._on_ack)
        link.subscribe(shared + filter_all_gateways("event"), self._on_event)
        link.subscribe(f"{ROOT}/+/dev/+/state", self._on_device_state)

    @property
    def db(self) -> Store:
        return self.store.store

    # ------------------------------------------------------------ building commands (DB thread)

    def make_plan(self, b: Broadcast, targets: list[str] | str, gateway: str) -> BroadcastPlanBody:
        """The plan for one gateway; its media URL is signed for that gateway, valid while the plan is."""
        m = b.media
        item = PlanItem(
            broadcast_id=b.id,
            media=MediaRef(
                sha256=m.sha256,
                url=self.media_url(m.sha256, gateway, b.expires_at),
                bytes=m.size,
                duration_ms=m.duration_ms,
                content_type=m.content_type,
            ),
            start_at=b.start_at,
            targets=cast(Targets, targets),
            volume=b.volume,
            priority=b.priority,
            repeat=b.repeat,
            title=b.title,
        )
        return BroadcastPlanBody(items=[item])

    def make_envelope(self, kind: str, body: BaseModel, ttl_ms: int, gw: str) -> Envelope:
        """A signed command for gateway ``gw`` (named in the envelope, which the gateway checks);
        its lifetime is capped at the contract's maximum (7 days)."""
        return self.signer.envelope(kind, body, gw=gw, ttl_ms=min(max(1000, ttl_ms), MAX_LIFETIME_MS))

    # ------------------------------------------------------------ API used by the HTTP side / CLI

    async def create_broadcast(
        self,
        *,
        media_sha256: str,
        targets: Sequence[str],
        start_at: int | None,
        priority: int,
        volume: int,
        repeat: int = 1,
        title: str | None = None,
        created_by: str | None = None,
        broadcast_id: str | None = None,
    ) -> str:
        unknown = sorted({Target.parse(t).gateway for t in targets} - self.known_gateways)
        if unknown:
            raise BadRequest(f"unknown gateway(s) {', '.join(unknown)}: a target must be one of the scheduler's"
                             " configured 'gateways'")
        bid, out = await self.store.call(
            self.db.create_broadcast,
            media_sha256=media_sha256,
            targets=cast(Targets, targets),
            start_at=start_at,
            priority=priority,
            volume=volume,
            repeat=repeat,
            title=title,
            created_by=created_by,
            max_late_ms=self.max_late_ms,
            now=now_ms(),
            make_plan=self.make_plan,
            make_envelope=self.make_envelope,
            broadcast_id=broadcast_id,
        )
        log.info("broadcast %s created for %d target(s): %s", bid, len(targets), ", ".join(targets[:20]))
        # durable now: the answer need not wait for the publishes (a command that does not go out
        # now stays pending in the database and goes with the resend loop or the gateway's return)
        self._background(self.send(out), f"publish {bid}")
        return bid

    def _background(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=what)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for the publishes started in the background (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def register_gateway(self, gw: str, commune: str | None) -> None:
        """Register a gateway (or rename its commune): from then on its messages count."""
        await self.store.call(self.db.set_commune, gw, commune)
        self.known_gateways.add(gw)
        self._ignored.discard(gw)

    async def cancel_broadcast(self, bid: str) -> int:
        out = await self.store.call(self.db.cancel_broadcast, bid, self.make_envelope, now_ms())
        await self.send(out)
        return len(out)

    async def send_and_wait(self, env: Envelope, gw: str, timeout_s: float) -> Ack | None:
        """Publish one command that is not tracked in the database (e.g. ``warning.rules``) and wait
        for the gateway's ack; None when none came in time (offline: the caller says so)."""
        fut: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._ack_waiters[env.id] = fut
        try:
            if not self.link.connected.is_set():
                return None
            remaining_s = max(1, math.ceil((env.expires_at - now_ms()) / 1000))
            await self.link.publish(cmd_topic(gw), env.model_dump_json(), qos=1, expiry_s=remaining_s)
            self.sent += 1
            try:
                return await asyncio.wait_for(fut, timeout_s)
            except TimeoutError:
                return None
        finally:
            self._ack_waiters.pop(env.id, None)

    # ------------------------------------------------------------ sending

    async def send(self, out: Sequence[Outgoing]) -> int:
        """Publish commands now, pipelined (up to :data:`PUBLISH_WINDOW` awaiting their PUBACK); those
        the broker acknowledged are marked sent, in one statement. Returns how many went."""
        if not self.link.connected.is_set():
            return 0  # not queued in memory: the database has them, and they go when the gateway is online
        now = now_ms()
        items: list[tuple[str, bytes, int | None]] = []
        going: list[Outgoing] = []
        for o in out:
            remaining_s = math.ceil((o.expires_at - now) / 1000)
            if remaining_s > 0:
                items.append((cmd_topic(o.gateway), o.envelope.encode(), remaining_s))
                going.append(o)
        acked = await self.link.publish_many(items, window=PUBLISH_WINDOW)
        sent = [o.command_id for o, ok in zip(going, acked, strict=True) if ok]
        if sent:
            await self.store.call(self.db.mark_sent, sent, now_ms())
            self.sent += len(sent)
        return len(sent)

    async def resend_pending(
        self, gateways: Sequence[str] | Literal["online"] | None = None, *, only_due: bool = False
    ) -> int:
        now = now_ms()
        sent_before = now - int(self.resend_interval_s * 1000) if only_due else None
        out = await self.store.call(self.db.pending_commands, gateways, now, sent_before, self.make_envelope)
        if out:
            log.info("sending %d pending command(s) again", len(out))
        return await self.send(out)

    async def _resend_loop(self) -> None:
        tick = max(0.5, min(5.0, self.resend_interval_s / 2))
        while True:
            await asyncio.sleep(tick)
            if not self.link.connected.is_set():
                continue
            try:
                await self._check_lock()
                if not self.is_leader:
                    continue
                await self.resend_pending("online", only_due=True)
            except Exception:
                log.exception("resend loop failed; trying again")

    # ------------------------------------------------------------ incoming

    def _known(self, gw: str, topic: object) -> bool:
        if gw in self.known_gateways:
            return True
        if gw not in self._ignored and len(self._ignored) < 1000:
            self._ignored.add(gw)
            log.warning("ignoring messages of gateway %r (first on %s): it is not in the scheduler's 'gateways'",
                        gw[:64], str(topic)[:200])
        return False

    def _gateway_of(self, msg: aiomqtt.Message) -> str | None:
        try:
            gw = self.link.memo(msg, "topic", lambda: parse_topic(str(msg.topic))).gateway
        except ProtocolError as exc:
            log.warning("ignoring message on %s: %s", msg.topic, exc)
            return None
        return gw if self._known(gw, msg.topic) else None

    async def _on_status(self, msg: aiomqtt.Message) -> None:
        gw = self._gateway_of(msg)
        if gw is None or not msg.payload:
            return
        try:
            status = self.link.memo(msg, "status", lambda: parse_payload(bytes(msg.payload), Status))
        except ProtocolError as exc:
            log.warning("bad status on %s: %s", msg.topic, exc)
            return
        await self._inbox.put((Incoming(gw, status), self.link.take_ack(msg)))

    async def _on_ack(self, msg: aiomqtt.Message) -> None:
        gw = self._gateway_of(msg)
        if gw is None:
            return
        try:
            ack = self.link.memo(msg, "ack", lambda: parse_payload(bytes(msg.payload), Ack))
        except ProtocolError as exc:
            log.warning("bad ack on %s: %s", msg.topic, exc)
            return
        if not ack.ok:
            log.warning("gateway %s answered command %s: %s (%s)", gw, ack.id, ack.reason, ack.error)
        waiter = self._ack_waiters.get(ack.id)
        if waiter is not None and not waiter.done() and ack.reason != "deferred":
            waiter.set_result(ack)
        await self._inbox.put((Incoming(gw, ack), self.link.take_ack(msg)))

    async def _on_event(self, msg: aiomqtt.Message) -> None:
        gw = self._gateway_of(msg)
        if gw is None:
            return
        try:
            data = self.link.memo(msg, "json", lambda: parse_json(bytes(msg.payload)))
        except ProtocolError as exc:
            log.warning("bad event on %s: %s", msg.topic, exc)
            return
        if isinstance(data, dict) and data.get("kind") == "warning":
            # a gateway's local warning rule started, repeated or cleared (docs/warnings.md): its plays
            # come as playback events; raising it as a fleet alarm is the alarms' business
            log.warning("gateway %s: local warning %s %s (%s %s = %s)", gw, str(data.get("rule_id"))[:128],
                        str(data.get("state"))[:16], str(data.get("device"))[:64], str(data.get("field"))[:64],
                        str(data.get("value"))[:32])
            return
        if not isinstance(data, dict) or data.get("kind") != "playback":
            return  # alarms and other events are not the dispatcher's business
        try:
            ev = self.link.memo(msg, "playback", lambda: PlaybackEvent.model_validate(data))
        except ValueError as exc:
            log.warning("bad playback event on %s: %s", msg.topic, exc)
            return
        await self._inbox.put((Incoming(gw, ev), self.link.take_ack(msg)))

    async def _on_device_state(self, msg: aiomqtt.Message) -> None:
        try:
            t = self.link.memo(msg, "topic", lambda: parse_topic(str(msg.topic)))
        except ProtocolError:
            return
        if t.device is None or not msg.payload or not self._known(t.gateway, msg.topic):
            return
        if self.accept_device is not None and not self.accept_device(t.gateway, t.device):
            return
        try:
            data = parse_json(bytes(msg.payload))
        except ProtocolError as exc:
            log.warning("bad device state on %s: %s", msg.topic, exc)
            return
        if isinstance(data, dict) and looks_like_speaker(data):
            await self._inbox.put((Incoming(t.gateway, data, t.device), self.link.take_ack(msg)))

    async def _apply_loop(self) -> None:
        """Apply incoming messages to the database in batches, in arrival order; with manual
        acknowledgement, tell the broker only once a batch is committed."""
        while True:
            taken = [await self._inbox.get()]
            deadline = asyncio.get_running_loop().time() + BATCH_WAIT_S
            while len(taken) < BATCH_MAX:  # one transaction per BATCH_MAX messages or per few ms
                if self._inbox.empty():
                    left = deadline - asyncio.get_running_loop().time()
                    if left <= 0:
                        break
                    try:
                        taken.append(await asyncio.wait_for(self._inbox.get(), left))
                    except TimeoutError:
                        break
                else:
                    taken.append(self._inbox.get_nowait())
            batch = [item for item, _ in taken]
            results = await self._apply_batch(batch)
            if results is None:
                continue
            self.link.ack_many([token for _, token in taken])
            self.received += len(batch)
            online: list[str] = []
            for item, result in zip(batch, results, strict=True):
                if isinstance(item.message, Status) and result and item.gateway not in online:
                    online.append(item.gateway)
                elif result is None and isinstance(item.message, Ack | PlaybackEvent):
                    log.debug(
                        "%s from %s is about nothing this scheduler sent", type(item.message).__name__, item.gateway
                    )
            if online and self.is_leader:
                n = await self.resend_pending(online)
                if n:
                    log.info("%s online: sent %d pending command(s)", ", ".join(online), n)

    async def _apply_batch(self, batch: list[Incoming]) -> list[Any] | None:
        """Apply a batch; None when the database failed. A worker sharing the ingest (manual acks)
        tries again until the database answers: the broker holds back further messages meanwhile,
        and dropping the batch would lose messages it was already given."""
        delay = 0.5
        while True:
            try:
                return await self.store.call(self.db.apply, batch, now_ms())
            except Exception:
                log.exception("could not apply %d incoming message(s)%s", len(batch),
                              "; trying again" if self.share_group else "")
                if not self.share_group:
                    return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    @property
    def is_leader(self) -> bool:
        """Whether this worker sends pending commands again (always, when it is the only worker)."""
        return self.lock is None or self.lock.held

    async def _check_lock(self) -> None:
        if self.lock is None:
            return
        was = self.lock.held
        now = await self.store.call(self.lock.try_acquire)
        if now and not was:
            log.info("this worker holds the dispatch lock now: it sends pending commands again")
            await self.resend_pending("online")
        elif was and not now:
            log.warning("this worker lost the dispatch lock")

    # ------------------------------------------------------------ running

    async def run(self) -> None:
        """Run the MQTT link and the resend loop until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.link.run(), name="dispatcher-mqtt")
                tg.create_task(self._resend_loop(), name="dispatcher-resend")
                tg.create_task(self._apply_loop(), name="dispatcher-apply")
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self.lock is not None:
                self.lock.release()
