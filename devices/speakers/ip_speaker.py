"""Driver of smart IP speakers on the commune broker (the LAN side of the broadcast path).

Contract with the speaker (see docs/broadcast.md):

- the gateway sends a :class:`~protocol.models.DeviceCommand` on ``loaxa/v1/{gw}/dev/{dev}/cmd``
  (QoS 1): ``play`` (broadcast_id, url, sha256, start_at, duration_ms, repeat, volume, priority),
  ``stop`` (broadcast_id, reason), ``volume``, ``power``;
- the speaker answers each command on ``…/dev/{dev}/ack`` with an :class:`~protocol.models.Ack`
  carrying the command id (``ok`` false and a ``reason`` when it refuses). No answer within
  ``ack_timeout_s``: the same command (same id, so the speaker can drop duplicates) is sent again,
  up to ``retries`` times; then the play is reported ``failed`` (``no_ack``);
- the speaker reports playback on ``…/dev/{dev}/event`` as :class:`~protocol.models.PlaybackEvent`
  with its own clock in ``at`` (``started`` when sound begins, ``finished``, ``failed``,
  ``preempted``, ``skipped``);
- the speaker keeps a retained :class:`~protocol.models.DeviceState` on ``…/dev/{dev}/state`` with
  an MQTT will ``{"online": false}``: a speaker that drops off while it has a broadcast is reported
  ``failed`` (``device_offline``).

One :class:`IpSpeakerHub` per gateway subscribes to the three device topics once and routes to the
:class:`IpSpeaker` drivers by device id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from devices.base import PlaybackReport, PlayRequest, SpeakerDriver
from loaxa.clock import now_ms
from protocol.errors import ProtocolError
from protocol.limits import parse_json
from protocol.models import Ack, DeviceCommand, DeviceState, PlaybackEvent, PlaybackState
from protocol.topics import device_topic, filter_devices, parse_topic

log = logging.getLogger(__name__)

#: ``await report_many([(device, broadcast_id, state, at, reason), ...])``: several playback reports at once
ReportMany = Callable[[Sequence[tuple[str, str, PlaybackState, int, str | None]]], Awaitable[None]]
#: how long the hub gathers playback reports before it hands them on together: a commune's speakers
#: report ``started`` at one instant, over a few ms of MQTT packets
REPORT_GATHER_S = 0.005


class Link(Protocol):
    """What the driver needs of the gateway's link to the commune broker (``loaxa.mqttlink.MqttLink``)."""

    def subscribe(self, topic_filter: str, handler: Any, qos: int = 1) -> Any: ...

    async def publish(self, topic: str, payload: bytes | str | BaseModel, *, qos: int = 1,
                      retain: bool = False) -> Any: ...


def _time_out(fut: asyncio.Future[Ack | None]) -> None:
    if not fut.done():
        fut.set_result(None)


def play_command_json(cmd_id: str, ts: int, req: PlayRequest) -> str:
    """``DeviceCommand(op="play", ...).model_dump_json(exclude_none=True)`` without building the
    model: every value is the gateway's own (a plan it accepted), so validating it again for every
    speaker only costs CPU (tests/test_broadcast_events.py checks the output is the same)."""
    return json.dumps({"id": cmd_id, "op": "play", "ts": ts, "broadcast_id": req.broadcast_id, "url": req.media_url,
                       "sha256": req.sha256, "start_at": req.start_at_ms, "volume": req.volume,
                       "priority": req.priority, "duration_ms": req.duration_ms, "repeat": req.repeat},
                      separators=(",", ":"), ensure_ascii=False)


class IpSpeaker(SpeakerDriver):
    def __init__(self, gateway_id: str, device_id: str, link: Link, *, ack_timeout_s: float = 1.0,
                 retries: int = 3) -> None:
        self.gateway_id = gateway_id
        self.device_id = device_id
        self.link = link
        self.ack_timeout_s = ack_timeout_s
        self.retries = retries
        self.online = False
        self.state: DeviceState | None = None
        self._report: PlaybackReport | None = None
        self._acks: dict[str, asyncio.Future[Ack | None]] = {}
        #: broadcasts this speaker was told to play and has not ended yet
        self._active: set[str] = set()
        self.stats_: dict[str, int] = {"commands": 0, "retries": 0, "no_ack": 0, "refused": 0}
        self._topic = device_topic(gateway_id, device_id, "cmd")

    async def start(self, report: PlaybackReport) -> None:
        self._report = report

    def _note(self, bid: str, state: PlaybackState) -> None:
        if state in ("finished", "failed", "preempted", "skipped"):
            self._active.discard(bid)

    async def _emit(self, bid: str, state: PlaybackState, at: int, reason: str | None) -> None:
        self._note(bid, state)
        if self._report is not None:
            await self._report(self.device_id, bid, state, at, reason)

    async def command(self, cmd: DeviceCommand) -> Ack | None:
        """Send ``cmd`` until the speaker acks it; None after the last retry."""
        return await self._command(cmd.id, cmd.model_dump_json(exclude_none=True))

    async def _command(self, cmd_id: str, payload: str) -> Ack | None:
        """Send ``payload`` (the JSON of a command with id ``cmd_id``, the same bytes on every retry)
        until the speaker acks it; None after the last retry."""
        loop = asyncio.get_running_loop()
        self.stats_["commands"] += 1
        try:
            for attempt in range(self.retries + 1):
                if attempt:
                    self.stats_["retries"] += 1
                # resolved by the ack (a late ack of an earlier attempt too: same id) or, with None,
                # by the timer: one future and one timer per attempt, no task
                fut: asyncio.Future[Ack | None] = loop.create_future()
                self._acks[cmd_id] = fut
                # QoS 0: the speaker's ack is the delivery receipt and a missing one is retried, so a
                # broker PUBACK would only cost the gateway a packet per speaker
                await self.link.publish(self._topic, payload, qos=0)
                if fut.done():
                    ack = fut.result()
                else:
                    timer = loop.call_later(self.ack_timeout_s, _time_out, fut)
                    try:
                        ack = await fut
                    finally:
                        timer.cancel()
                if ack is not None:
                    return ack
            self.stats_["no_ack"] += 1
            return None
        finally:
            self._acks.pop(cmd_id, None)

    async def play(self, req: PlayRequest) -> None:
        cmd_id = uuid.uuid4().hex
        payload = play_command_json(cmd_id, now_ms(), req)  # our own values: no model to validate them again
        self._active.add(req.broadcast_id)
        ack = await self._command(cmd_id, payload)
        if ack is None:
            await self._emit(req.broadcast_id, "failed", now_ms(), "no_ack")
        elif not ack.ok:
            self.stats_["refused"] += 1
            why = ack.reason or "refused"
            await self._emit(req.broadcast_id, "failed", now_ms(), f"device_refused: {why}"[:200])

    async def stop(self, broadcast_id: str, state: PlaybackState = "preempted", reason: str | None = None) -> None:
        cmd = DeviceCommand(id=uuid.uuid4().hex, op="stop", ts=now_ms(), broadcast_id=broadcast_id,
                            reason=(reason or state)[:64])
        ack = await self.command(cmd)
        if ack is None or not ack.ok:
            # the speaker did not confirm: report what we asked for, so the centre is not left waiting
            await self._emit(broadcast_id, state, now_ms(), f"{reason or state} (speaker did not confirm)")

    async def set(self, *, volume: int | None = None, power: bool | None = None) -> None:
        if volume is not None:
            await self.command(DeviceCommand(id=uuid.uuid4().hex, op="volume", ts=now_ms(), volume=volume))
        if power is not None:
            await self.command(DeviceCommand(id=uuid.uuid4().hex, op="power", ts=now_ms(), power=power))

    async def set_source(self, source: str) -> None:
        """Select the speaker's audio input; raises when the speaker refuses or does not answer."""
        ack = await self.command(DeviceCommand(id=uuid.uuid4().hex, op="source", ts=now_ms(), source=source))
        if ack is None:
            raise TimeoutError("no_ack")
        if not ack.ok:
            raise RuntimeError(ack.reason or "refused")

    async def ping(self) -> tuple[bool, str | None]:
        """Ask the speaker to answer (and publish its state again): (answered, reason)."""
        ack = await self.command(DeviceCommand(id=uuid.uuid4().hex, op="ping", ts=now_ms()))
        if ack is None:
            return False, "no_ack"
        if not ack.ok and ack.reason == "bad_command":
            return True, "answered but does not know ping"  # an older speaker: it is alive all the same
        return ack.ok, None if ack.ok else (ack.reason or "refused")

    # ---------------------------------------------------------------- from the hub

    def on_ack(self, ack: Ack) -> None:
        fut = self._acks.get(ack.id)
        if fut is not None and not fut.done():
            fut.set_result(ack)

    async def on_event(self, ev: PlaybackEvent) -> None:
        await self._emit(ev.broadcast_id, ev.state, ev.at, ev.reason)

    async def on_state(self, st: DeviceState) -> None:
        was = self.online
        self.state = st
        self.online = st.online
        if was and not st.online and self._active:
            for bid in list(self._active):
                await self._emit(bid, "failed", now_ms(), "device_offline")

    def stats(self) -> dict[str, int]:
        return dict(self.stats_)


class IpSpeakerHub:
    """Subscribes to ``dev/+/ack|event|state`` on the commune broker and routes to the drivers."""

    def __init__(self, gateway_id: str, link: Link) -> None:
        self.gateway_id = gateway_id
        self.link = link
        self.speakers: dict[str, IpSpeaker] = {}
        self.bad_messages = 0
        self._tasks: set[asyncio.Task[None]] = set()
        #: when set (the broadcast executor's ``report_many``), the speakers' playback reports are
        #: handed on in batches, in arrival order, instead of one task per report
        self.report_many: ReportMany | None = None
        self._reports: list[PlaybackEvent] = []

    def add(self, device_id: str, **kw: Any) -> IpSpeaker:
        spk = IpSpeaker(self.gateway_id, device_id, self.link, **kw)
        self.speakers[device_id] = spk
        return spk

    def subscribe(self) -> None:
        # acks are answered by a retry when lost and states are retained: QoS 0 spares the gateway a
        # PUBACK for each; playback reports keep QoS 1 (one lost ``finished`` would be a false failure)
        self.link.subscribe(filter_devices(self.gateway_id, "ack"), self._on_message, qos=0)
        self.link.subscribe(filter_devices(self.gateway_id, "event"), self._on_message, qos=1)
        self.link.subscribe(filter_devices(self.gateway_id, "state"), self._on_message, qos=0)

    async def _on_message(self, msg: Any) -> None:
        topic = str(msg.topic)
        try:
            parsed = parse_topic(topic)
            spk = self.speakers.get(parsed.device or "")
            if spk is None:
                return
            data = parse_json(msg.payload)
            if parsed.kind == "ack":
                spk.on_ack(Ack.model_validate(data))
            elif parsed.kind == "event":
                ev = PlaybackEvent.model_validate(data)
                if ev.device != spk.device_id:
                    raise ProtocolError(f"event names device {ev.device!r}")
                if self.report_many is None:
                    self._later(spk.on_event(ev))
                else:
                    if not self._reports:
                        asyncio.get_running_loop().call_later(REPORT_GATHER_S, self._hand_on)
                    self._reports.append(ev)
            elif parsed.kind == "state":
                if not msg.payload:
                    return
                state = DeviceState.model_validate(data)
                self._hand_on()  # reports received before this state go first (offline after finished)
                self._later(spk.on_state(state))
        except (ProtocolError, ValidationError) as exc:
            self.bad_messages += 1
            log.warning("ignored message on %s: %s", topic, exc)

    def _hand_on(self) -> None:
        batch, self._reports = self._reports, []
        if batch:
            self._later(self._report_batch(batch))

    async def _report_batch(self, batch: list[PlaybackEvent]) -> None:
        assert self.report_many is not None
        for ev in batch:
            self.speakers[ev.device]._note(ev.broadcast_id, ev.state)
        await self.report_many([(ev.device, ev.broadcast_id, ev.state, ev.at, ev.reason) for ev in batch])

    def _later(self, coro: Any) -> None:
        """Handle a report without holding up the LAN message loop (acks of other speakers must not
        wait behind disk writes). Tasks start in creation order and the plan store applies writes in
        submission order, so a speaker's ``started`` is still recorded before its ``finished``."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def online_count(self) -> int:
        return sum(1 for s in self.speakers.values() if s.online)
