"""The driver of one serial node: polls STATUS (and READ_SENSORS, events), keeps its state, turns
SET into speaker commands. It is both a :class:`SpeakerDriver` and a :class:`SensorDriver`.

A node that misses ``offline_after`` polls in a row goes offline (state + alarm); polling goes on,
so it comes back by itself, and on its way back its HELLO is read again (its firmware may have changed).

Audio: a serial speaker node controls an amplifier whose line input is fed by the gateway's own
audio output, so :meth:`play` switches it on, selects the line input and sets the volume at the start
time, and reports ``started``/``finished`` around the broadcast's duration.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from enum import IntEnum

from devices.base import PlaybackReport, PlayRequest, ReadingSink, SensorDriver, SpeakerDriver
from devices.serial_node.config import SerialNodeConfig
from firmware_bridge.client import NodeClient
from firmware_bridge.errors import BridgeError, LinkError
from firmware_bridge.fwupdate import FirmwareError, FirmwareUpdater, Progress, UpdateResult
from firmware_bridge.link import BusMaster
from firmware_bridge.messages import BootState, Event, EventKind, Fault, Hello, Source, Status
from loaxa.clock import now_ms
from protocol.models import AlarmEvent, DeviceState, PlaybackState, Reading

log = logging.getLogger(__name__)

StateSink = Callable[[str, DeviceState], Awaitable[None]]
AlarmSink = Callable[[AlarmEvent], Awaitable[None]]

EVENT_NAMES = {EventKind.FAULT: "fault", EventKind.BUTTON: "button", EventKind.TAMPER: "tamper",
               EventKind.BOOT: "boot", EventKind.POWER: "power"}
EVENT_SEVERITY = {EventKind.FAULT: "critical", EventKind.TAMPER: "critical", EventKind.BUTTON: "info",
                  EventKind.BOOT: "info", EventKind.POWER: "warning"}


def enum_name(cls: type[IntEnum], value: int) -> str:
    try:
        return cls(value).name.lower()
    except ValueError:
        return str(value)


def fault_names(flags: int) -> list[str]:
    return [f.name.lower() for f in Fault if f & flags and f.name]


class SerialNodeDriver(SpeakerDriver, SensorDriver):
    def __init__(self, cfg: SerialNodeConfig, bus: BusMaster, *, on_state: StateSink | None = None,
                 on_alarm: AlarmSink | None = None) -> None:
        self.cfg = cfg
        self.device_id = cfg.id
        self.bus = bus
        self.client = NodeClient(bus, cfg.address)
        self.online = False
        self.hello: Hello | None = None
        self.status: Status | None = None
        self._on_state = on_state
        self._on_alarm = on_alarm
        self._report: PlaybackReport | None = None
        self._playing: tuple[str, asyncio.Task[None]] | None = None
        self._misses = 0
        self._last_state: DeviceState | None = None
        self.counters: dict[str, int] = {"polls": 0, "missed_polls": 0, "readings": 0, "events": 0,
                                         "sink_errors": 0, "went_offline": 0}
        self.updating = False  # a firmware update owns the node: polls pause, its restarts are expected
        self._update_lock = asyncio.Lock()

    # ---------------------------------------------------------------- state and alarms

    def device_state(self) -> DeviceState:
        st, h = self.status, self.hello
        extra: dict[str, object] = {}
        if st is not None:
            extra = {"source": enum_name(Source, st.source),
                     "temperature_c": st.temperature_c, "supply_v": st.supply_v, "faults": fault_names(st.faults)}
        if h is not None:
            extra["boot_state"] = enum_name(BootState, h.boot_state)
            extra["hardware"] = h.hw_revision
        return DeviceState(online=self.online, ts=now_ms(), volume=st.volume if st else None,
                           power=st.power if st else None, firmware=h.fw_version if h else None,
                           playing=self._playing[0] if self._playing else None, **extra)  # type: ignore[arg-type]

    async def _publish_state(self, force: bool = False) -> None:
        if self._on_state is None:
            return
        state = self.device_state()
        comparable = state.model_dump(exclude={"ts", "temperature_c", "supply_v"})
        if not force and self._last_state is not None and \
                self._last_state.model_dump(exclude={"ts", "temperature_c", "supply_v"}) == comparable:
            return
        self._last_state = state
        try:
            await self._on_state(self.device_id, state)
        except Exception:
            log.exception("publishing the state of %s failed", self.device_id)

    async def _alarm(self, code: str, severity: str, message: str, *, at: int | None = None,
                     **details: object) -> None:
        if self._on_alarm is None:
            return
        try:
            await self._on_alarm(AlarmEvent(code=code, severity=severity, message=message,  # type: ignore[arg-type]
                                            at=at or now_ms(), device=self.device_id, details=dict(details)))
        except Exception:
            log.exception("sending an alarm for %s failed", self.device_id)

    # ---------------------------------------------------------------- polling (SensorDriver)

    async def run(self, sink: ReadingSink | None = None) -> None:
        """Poll until cancelled."""
        while True:
            try:
                if not self.updating:
                    await self.poll_once(sink)
            except Exception:  # a bug here must not stop the other nodes or the gateway
                log.exception("polling serial node %s failed", self.device_id)
            await asyncio.sleep(self.cfg.poll_interval_s)

    async def poll_once(self, sink: ReadingSink | None) -> bool:
        self.counters["polls"] += 1
        try:
            if self.hello is None or not self.online:
                self.hello = await self.client.hello()
            prev = self.status
            status = await self.client.status()
            if prev is not None and status.uptime_s + 1 < prev.uptime_s:
                self.hello = await self.client.hello()  # it restarted: its firmware may be another one
            self.status = status
            fields: dict[str, float] | None = None
            if self.cfg.role in ("sensor", "combo"):
                fields = await self.client.read_sensors()
            events: list[Event] = []
            if self.cfg.address in self.bus.events_pending:
                events = await self.client.poll_events()
        except LinkError as exc:
            self.counters["missed_polls"] += 1
            self._misses += 1
            if self.online and self._misses >= self.cfg.offline_after:
                self.online = False
                self.counters["went_offline"] += 1
                log.warning("serial node %s offline: %s", self.device_id, exc)
                await self._alarm("device_offline", "warning", f"{self.device_id} stopped answering: {exc}",
                                  port=self.cfg.port, address=self.cfg.address)
                await self._publish_state(force=True)
            return False
        except BridgeError as exc:  # an answer that does not parse: count it as a miss, never crash
            self.counters["missed_polls"] += 1
            log.warning("serial node %s: %s", self.device_id, exc)
            return False
        self._misses = 0
        if not self.online:
            self.online = True
            log.info("serial node %s online (firmware %s)", self.device_id, self.hello.fw_version)
            if self.counters["went_offline"]:
                await self._alarm("device_online", "info", f"{self.device_id} answers again",
                                  firmware=self.hello.fw_version)
        if prev is not None and status.faults & ~prev.faults:
            new = status.faults & ~prev.faults
            await self._alarm("device_fault", "critical", f"{self.device_id}: {', '.join(fault_names(new))}",
                              faults=fault_names(status.faults))
        for ev in events:
            self.counters["events"] += 1
            kind = EVENT_NAMES.get(ev.kind, f"event_{ev.kind}")  # type: ignore[call-overload]
            await self._alarm(f"device_{kind}", EVENT_SEVERITY.get(ev.kind, "warning"),  # type: ignore[call-overload]
                              f"{self.device_id}: {kind} (code {ev.code}, value {ev.value})",
                              at=max(0, now_ms() - ev.age_ms), event_id=ev.id, event_code=ev.code,
                              value=ev.value, age_ms=ev.age_ms)
        await self._publish_state()
        if sink is not None:
            ts = now_ms()
            health = {"temperature_c": status.temperature_c, "supply_v": status.supply_v,
                      "faults": float(status.faults), "uptime_s": float(status.uptime_s)}
            if self.cfg.role != "sensor":
                health.update(volume=float(status.volume), power=float(status.power))
            try:
                await sink(self.device_id, "device_health", [Reading(ts=ts, fields=health)])
                if fields:
                    await sink(self.device_id, self.cfg.measurement, [Reading(ts=ts, fields=fields)])
                    self.counters["readings"] += 1
            except Exception:
                self.counters["sink_errors"] += 1
                log.exception("storing readings of %s failed", self.device_id)
        return True

    def stats(self) -> Mapping[str, int | float]:
        return dict(self.counters)

    # ---------------------------------------------------------------- firmware

    async def update_firmware(self, image: bytes, version: str, *, expected_sha256: str | None = None,
                              force: bool = False, progress: Progress | None = None) -> UpdateResult:
        """Install ``image`` on this node while the gateway runs (other nodes keep being polled)."""
        if self._update_lock.locked():
            raise FirmwareError(f"an update of {self.device_id} is already running")
        async with self._update_lock:
            self.updating = True
            try:
                window = self.cfg.window if self.cfg.duplex == "full" else 1
                up = FirmwareUpdater(self.client, window=window, progress=progress)
                result = await up.update(image, version, expected_sha256=expected_sha256, force=force)
            finally:
                self.updating = False
                self.hello = None  # read who it is again at the next poll
                self._misses = 0
        await self._alarm("firmware_" + result.outcome, "info" if result.outcome != "rolled_back" else "warning",
                          f"{self.device_id}: firmware {result.old_version} → {result.version} ({result.outcome})"
                          + (f": {result.detail}" if result.detail else ""), size=result.size)
        await self.poll_once(None)
        return result

    # ---------------------------------------------------------------- speaker (SpeakerDriver)

    async def start(self, report: PlaybackReport) -> None:
        self._report = report

    async def set(self, *, volume: int | None = None, power: bool | None = None) -> None:
        self.status = await self.client.set(volume=volume, power=power)
        await self._publish_state()

    async def play(self, req: PlayRequest) -> None:
        if self._playing is not None:
            await self.stop(self._playing[0], "preempted", f"preempted by {req.broadcast_id}")
        task = asyncio.create_task(self._play(req))
        self._playing = (req.broadcast_id, task)

    async def _play(self, req: PlayRequest) -> None:
        delay = (req.start_at_ms - now_ms()) / 1000
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            self.status = await self.client.set(volume=req.volume, power=True, source=Source.LINE)
        except BridgeError as exc:
            self._playing = None
            await self._tell(req.broadcast_id, "failed", f"serial node did not switch on: {exc}")
            return
        await self._tell(req.broadcast_id, "started", None)
        await self._publish_state()
        await asyncio.sleep(req.duration_ms / 1000)
        self._playing = None
        await self._tell(req.broadcast_id, "finished", None)
        await self._publish_state()

    async def _tell(self, bid: str, state: PlaybackState, reason: str | None) -> None:
        if self._report is not None:
            await self._report(self.device_id, bid, state, now_ms(), reason)

    async def stop(self, broadcast_id: str, state: PlaybackState = "preempted", reason: str | None = None) -> None:
        if self._playing is None or self._playing[0] != broadcast_id:
            return
        _, task = self._playing
        self._playing = None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await self._tell(broadcast_id, state, reason)

    async def close(self) -> None:
        if self._playing is not None:
            await self.stop(self._playing[0], "failed", "gateway stopping")
