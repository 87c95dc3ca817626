"""Simulated IP speakers: the device side of the LAN broadcast contract (docs/broadcast.md).

Each simulated speaker has its own MQTT connection to the commune broker, with a retained
``DeviceState`` on ``loaxa/v1/{gw}/dev/{dev}/state`` and the MQTT will ``{"online": false}``. It
obeys ``play`` / ``stop`` / ``volume`` / ``power`` commands on ``…/dev/{dev}/cmd``, acks each on
``…/dev/{dev}/ack`` (a repeated command id gets the same answer again and is not acted on twice),
fetches and checks the media (sha256) when asked to, starts at the command's ``start_at`` by its own
clock and reports ``started`` / ``finished`` / ``preempted`` / ``skipped`` / ``failed`` on
``…/dev/{dev}/event`` with real timestamps. Its retained state changes when it comes online and
when its volume or power changes, not for every broadcast: the playback reports already say what it
plays, and the gateway would otherwise handle two more messages per speaker per broadcast. It plays
one thing at a time: a play whose start comes while another plays replaces it if its priority is
the same or higher (the old one is reported ``preempted``), otherwise it is reported ``skipped``
(``busy``).

Faults, for tests: ``no-ack`` (ignores every command), ``refuse`` (acks play commands with
``ok: false``), ``die-mid-play`` (drops its connection without a goodbye halfway through the first
broadcast it plays, so the broker publishes its will, and stays dead).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import aiohttp
import aiomqtt
from pydantic import ValidationError

from devices.sim.credentials import device_endpoint
from loaxa.clock import now_ms, sleep_until
from loaxa.mqttconf import MqttEndpoint
from loaxa.mqttfast import share_property_tables
from protocol.errors import ProtocolError
from protocol.limits import parse_json
from protocol.models import Ack, DeviceCommand, DeviceState, PlaybackEvent, PlaybackState
from protocol.topics import device_topic

log = logging.getLogger(__name__)
share_property_tables()  # a simulator process runs a whole commune's speakers: paho's per-message tables add up

FAULTS = ("no-ack", "refuse", "die-mid-play")
#: a simulated speaker reports ``started`` this long after it started (its timestamp is the start)
REPORT_DELAY_S = 0.05


@dataclass
class _Play:
    cmd: DeviceCommand
    task: asyncio.Task[None] | None = None
    started: bool = False
    events: list[PlaybackEvent] = field(default_factory=list)
    ended: bool = False


class SharedFetch:
    """Downloads shared by the simulated speakers of one process: each (url, sha256) is fetched and
    checked once. A real speaker fetches on its own CPU; a simulator running many speakers on a small
    machine would otherwise measure its own HTTP overhead instead of the system's."""

    def __init__(self) -> None:
        self._results: OrderedDict[tuple[str, str | None], asyncio.Task[str | None]] = OrderedDict()

    async def fetch(self, http: aiohttp.ClientSession, url: str, sha256: str | None) -> str | None:
        key = (url, sha256)
        task = self._results.get(key)
        if task is None or (task.done() and task.result() is not None):  # retry failures
            task = asyncio.create_task(self._get(http, url, sha256))
            self._results[key] = task
            while len(self._results) > 64:
                self._results.popitem(last=False)
        return await asyncio.shield(task)

    @staticmethod
    async def _get(http: aiohttp.ClientSession, url: str, sha256: str | None) -> str | None:
        try:
            async with http.get(url) as resp:
                if resp.status != 200:
                    return f"media_unavailable: HTTP {resp.status}"
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"media_unavailable: {exc}"[:200]
        if sha256 and hashlib.sha256(body).hexdigest() != sha256:
            return "media_mismatch"
        return None


class Alarms:
    """The wake-ups of the simulated speakers of one process, one timer per instant.

    Real speakers are separate devices that each start at ``start_at`` by their own clock. Twenty
    of them simulated on one CPU would otherwise wake one after another, each behind the others'
    work (publishing ``started``), and the simulator would measure its own queue instead of the
    system. Every speaker due at the same instant therefore waits on the same timer, and each takes
    its own timestamp as soon as it resumes, before any of them does anything else."""

    def __init__(self) -> None:
        self._due: dict[int, asyncio.Future[None]] = {}
        self._timers: set[asyncio.Task[None]] = set()

    async def wait(self, wall_ms: int) -> None:
        fut = self._due.get(wall_ms)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._due[wall_ms] = fut
            task = asyncio.get_running_loop().create_task(self._ring(wall_ms, fut))
            self._timers.add(task)
            task.add_done_callback(self._timers.discard)
        await asyncio.shield(fut)

    async def _ring(self, wall_ms: int, fut: asyncio.Future[None]) -> None:
        try:
            await sleep_until(wall_ms)
        finally:
            self._due.pop(wall_ms, None)
            if not fut.done():
                fut.set_result(None)


class SimSpeaker:
    def __init__(self, endpoint: MqttEndpoint, gateway: str, device_id: str, *, faults: Iterable[str] = (),
                 fetch: bool = True, volume: int = 70, http: aiohttp.ClientSession | None = None,
                 fetcher: SharedFetch | None = None, alarms: Alarms | None = None,
                 clock_offset_ms: int = 0) -> None:
        self.endpoint = endpoint
        self.gateway = gateway
        self.device_id = device_id
        self.faults = set(faults)
        self.fetch = fetch
        self.volume = volume
        self.power = True
        self.source = "stream"
        self.http = http
        self.fetcher = fetcher or SharedFetch()
        self.alarms = alarms or Alarms()
        #: this speaker's clock minus the machine's: every timestamp it reports and the instant it
        #: starts at are on its own clock, like a device whose NTP is off by this much
        self.clock_offset_ms = clock_offset_ms
        self.plays: OrderedDict[str, _Play] = OrderedDict()
        self.current: _Play | None = None
        self._acks: OrderedDict[str, Ack] = OrderedDict()
        self._client: aiomqtt.Client | None = None
        self.dead = False
        self.events: list[PlaybackEvent] = []  # everything reported, for tests
        self.t_cmd = device_topic(gateway, device_id, "cmd")
        self.t_ack = device_topic(gateway, device_id, "ack")
        self.t_event = device_topic(gateway, device_id, "event")
        self.t_state = device_topic(gateway, device_id, "state")
        self.connected = asyncio.Event()
        self._pending: set[asyncio.Task[None]] = set()

    def now(self) -> int:
        """This speaker's clock (ms since the epoch)."""
        return now_ms() + self.clock_offset_ms

    # ---------------------------------------------------------------- connection

    async def run(self) -> None:
        """Connect (and reconnect) until cancelled or dead."""
        will = aiomqtt.Will(self.t_state, DeviceState(online=False).model_dump_json(exclude_none=True), qos=1,
                            retain=True)
        kw = self.endpoint.client_kwargs()
        kw["identifier"] = f"sim-{self.gateway}-{self.device_id}"[:128]
        while not self.dead:
            try:
                async with aiomqtt.Client(**kw, will=will) as client:
                    self._client = client
                    await client.subscribe(self.t_cmd, qos=1)
                    await self._publish_state()
                    self.connected.set()
                    async for msg in client.messages:
                        await self._on_cmd(msg.payload)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                if self.dead:
                    return
                log.info("speaker %s: broker connection lost (%s); reconnecting", self.device_id, exc)
                await asyncio.sleep(1.0)
            finally:
                self._client = None

    async def _pub(self, topic: str, payload: str, retain: bool = False, qos: int = 1) -> None:
        """Hand a message to the client without waiting for the broker's PUBACK, so a speaker answers
        the next command at once (messages still leave in order). Acks go at QoS 0: a lost one is
        answered by the gateway's retry, as the LAN contract says."""
        client = self._client
        if client is None or self.dead:
            return
        task = asyncio.create_task(self._pub_wait(client, topic, payload, retain, qos))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    @staticmethod
    async def _pub_wait(client: aiomqtt.Client, topic: str, payload: str, retain: bool, qos: int) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(topic, payload, qos=qos, retain=retain)

    async def _publish_state(self) -> None:
        playing = self.current.cmd.broadcast_id if self.current and not self.current.ended else None
        st = DeviceState(online=True, ts=self.now(), volume=self.volume, playing=playing, power=self.power,
                         firmware="sim-1.0", rssi=-60, source=self.source)
        await self._pub(self.t_state, st.model_dump_json(exclude_none=True), retain=True)

    async def _event(self, play: _Play, state: PlaybackState, reason: str | None = None,
                     at: int | None = None) -> None:
        assert play.cmd.broadcast_id is not None
        ev = PlaybackEvent(broadcast_id=play.cmd.broadcast_id, device=self.device_id, state=state,
                           at=at if at is not None else self.now(), reason=reason)
        if state != "started":
            play.ended = True
        play.events.append(ev)
        self.events.append(ev)
        await self._pub(self.t_event, ev.model_dump_json(exclude_none=True))

    def die(self) -> None:
        """Drop the TCP connection without an MQTT DISCONNECT: the broker publishes the will."""
        self.dead = True
        client = self._client
        sock = None
        with contextlib.suppress(Exception):
            sock = client._client.socket() if client is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for p in self.plays.values():
            if p.task is not None:
                p.task.cancel()

    # ---------------------------------------------------------------- commands

    async def _ack(self, cmd_id: str, ok: bool, reason: str | None = None) -> None:
        ack = Ack(id=cmd_id, ok=ok, reason=reason, error=reason, ts=self.now())
        self._acks[cmd_id] = ack
        while len(self._acks) > 1000:
            self._acks.popitem(last=False)
        await self._pub(self.t_ack, ack.model_dump_json(exclude_none=True), qos=0)

    async def _on_cmd(self, payload: object) -> None:
        if "no-ack" in self.faults or self.dead:
            return
        try:
            if not isinstance(payload, bytes | bytearray | str):
                raise TypeError(f"payload of type {type(payload).__name__}")
            data = parse_json(bytes(payload) if isinstance(payload, bytearray) else payload)
            cmd = DeviceCommand.model_validate(data)
        except (ProtocolError, ValidationError, TypeError) as exc:
            log.warning("speaker %s: bad command: %s", self.device_id, exc)
            return
        old = self._acks.get(cmd.id)
        if old is not None:  # a retry of a command already handled: same answer, no second action
            await self._pub(self.t_ack, old.model_dump_json(exclude_none=True), qos=0)
            return
        if cmd.op == "play":
            await self._on_play(cmd)
        elif cmd.op == "stop":
            await self._on_stop(cmd)
        elif cmd.op == "volume" and cmd.volume is not None:
            self.volume = cmd.volume
            await self._ack(cmd.id, True)
            await self._publish_state()
        elif cmd.op == "power" and cmd.power is not None:
            self.power = cmd.power
            await self._ack(cmd.id, True)
            await self._publish_state()
        elif cmd.op == "source" and cmd.source is not None:
            self.source = cmd.source
            await self._ack(cmd.id, True)
            await self._publish_state()
        elif cmd.op == "ping":
            await self._ack(cmd.id, True)
            await self._publish_state()
        else:
            await self._ack(cmd.id, False, "bad_command")

    async def _on_play(self, cmd: DeviceCommand) -> None:
        if "refuse" in self.faults:
            await self._ack(cmd.id, False, "refused")
            return
        if cmd.broadcast_id is None or cmd.start_at is None or cmd.duration_ms is None:
            await self._ack(cmd.id, False, "bad_command")
            return
        known = self.plays.get(cmd.broadcast_id)
        if known is not None:  # the gateway asks again (e.g. after its restart): tell it what happened
            await self._ack(cmd.id, True)
            for ev in known.events:
                await self._pub(self.t_event, ev.model_dump_json(exclude_none=True))
            return
        play = _Play(cmd)
        self.plays[cmd.broadcast_id] = play
        while len(self.plays) > 200:
            self.plays.popitem(last=False)
        await self._ack(cmd.id, True)
        play.task = asyncio.create_task(self._play(play))

    async def _on_stop(self, cmd: DeviceCommand) -> None:
        play = self.plays.get(cmd.broadcast_id or "")
        await self._ack(cmd.id, True)
        if play is None or play.ended:
            return
        if play.task is not None:
            play.task.cancel()
        # interrupted while playing → preempted; stopped before it began → skipped
        state: PlaybackState = "preempted" if play.started else "skipped"
        await self._event(play, state, cmd.reason)
        if self.current is play:
            self.current = None

    async def _fetch(self, cmd: DeviceCommand) -> str | None:
        """Fetch and check the media; returns a failure reason or None."""
        if not self.fetch or not cmd.url or self.http is None:
            return None
        return await self.fetcher.fetch(self.http, cmd.url, cmd.sha256)

    async def _play(self, play: _Play) -> None:
        cmd = play.cmd
        assert cmd.start_at is not None and cmd.duration_ms is not None
        problem = await self._fetch(cmd)
        if problem is not None:
            await self._event(play, "failed", problem)
            return
        # start_at is on this speaker's clock: the machine's clock reads start_at - offset then
        await self.alarms.wait(cmd.start_at - self.clock_offset_ms)
        # a real speaker starts by itself: take the start time now, before this process also does the
        # work of the other simulated speakers that wake at the same moment
        started_at = self.now()
        # ... and report a moment later: on a bench machine the simulator processes of many
        # communes wake at the same instant, and one that publishes at once keeps the CPU from the
        # others, whose speakers would then "start" late (a real speaker has its own CPU)
        await asyncio.sleep(REPORT_DELAY_S)
        cur = self.current
        if cur is not None and not cur.ended and cur is not play:
            if (cur.cmd.priority or 0) > (cmd.priority or 0):
                await self._event(play, "skipped", "busy")
                return
            if cur.task is not None:
                cur.task.cancel()
            await self._event(cur, "preempted", f"preempted by {cmd.broadcast_id}", at=started_at)
        self.current = play
        play.started = True
        await self._event(play, "started", at=started_at)
        total = cmd.duration_ms * (cmd.repeat or 1)
        if "die-mid-play" in self.faults:
            await asyncio.sleep(total / 2000)
            self.die()
            return
        await sleep_until(cmd.start_at + total - self.clock_offset_ms)
        await self._event(play, "finished")
        if self.current is play:
            self.current = None


def speaker_ids(count: int, prefix: str = "loa", ids: list[str] | None = None) -> list[str]:
    """``loa-01`` … ``loa-NN`` (width follows the count), or the explicit ``ids``."""
    if ids:
        return ids
    width = max(2, len(str(count)))
    return [f"{prefix}-{i:0{width}d}" for i in range(1, count + 1)]


def parse_faults(specs: Iterable[str], ids: list[str]) -> dict[str, set[str]]:
    """``no-ack`` (every speaker) or ``no-ack:loa-02,loa-05`` → faults per speaker id."""
    out: dict[str, set[str]] = {i: set() for i in ids}
    for spec in specs:
        kind, _, who = spec.partition(":")
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}: choose from {', '.join(FAULTS)}")
        targets = [w for w in who.split(",") if w] if who else ids
        for t in targets:
            if t not in out:
                raise ValueError(f"fault {spec!r} names {t!r}, which is not one of the simulated speakers")
            out[t].add(kind)
    return out


def clock_offsets(ids: list[str], spread_ms: int) -> dict[str, int]:
    """A fixed, reproducible clock offset in [-spread_ms, +spread_ms] per speaker id (0 when 0)."""
    if spread_ms <= 0:
        return {i: 0 for i in ids}
    out = {}
    for i in ids:
        h = int.from_bytes(hashlib.sha256(i.encode()).digest()[:4], "big")
        out[i] = h % (2 * spread_ms + 1) - spread_ms
    return out


async def run_fleet(endpoint: MqttEndpoint, gateway: str, ids: list[str], faults: dict[str, set[str]] | None = None,
                    *, fetch: bool = True, ready: asyncio.Event | None = None,
                    credentials: Mapping[str, str] | None = None, clock_spread_ms: int = 0) -> list[SimSpeaker]:
    """Run simulated speakers until cancelled, all in this process on one event loop, each with its
    own MQTT connection (a real speaker has its own connection to the commune broker)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), auto_decompress=False) as http:
        fetcher = SharedFetch()
        alarms = Alarms()
        offsets = clock_offsets(ids, clock_spread_ms)
        speakers = [SimSpeaker(device_endpoint(endpoint, i, credentials), gateway, i, faults=(faults or {}).get(i, ()),
                               fetch=fetch, http=http, fetcher=fetcher, alarms=alarms, clock_offset_ms=offsets[i])
                    for i in ids]
        tasks = [asyncio.create_task(s.run(), name=f"sim-{s.device_id}") for s in speakers]
        try:
            await asyncio.gather(*(s.connected.wait() for s in speakers))
            if ready is not None:
                ready.set()
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return speakers
