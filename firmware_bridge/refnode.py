"""The reference node: the device side of the protocol in Python, as a firmware engineer would write it
in C (docs/firmware-protocol.md), including the A/B firmware update with trial boot and rollback.

It is pure logic: :meth:`RefNode.handle` takes a frame and returns the answer frame (or ``None``);
:meth:`RefNode.tick` advances timers. I/O, baud-rate pacing and fault injection live in
:mod:`firmware_bridge.simbus`. "Flash" (:class:`Flash`) survives :meth:`RefNode.reboot`; RAM does not.

Simulator convention (not part of the protocol): an image containing ``LOAXA-SIM:crash`` never
answers after booting (a boot loop, so the boot loader rolls back); one containing ``LOAXA-SIM:fault``
boots but reports a fault in STATUS, so the gateway's health check fails and it asks for a rollback.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from dataclasses import dataclass, field

from firmware_bridge.errors import MessageError
from firmware_bridge.frame import ADDR_BROADCAST, FLAG_EVENTS_PENDING, FLAG_RESPONSE, Frame
from firmware_bridge.messages import (
    BootState,
    Cap,
    Event,
    EventKind,
    EventPoll,
    Events,
    Fault,
    FwBegin,
    FwBeginReply,
    FwChunk,
    Hello,
    MsgType,
    Nak,
    NakCode,
    Offset,
    Sensors,
    SetRequest,
    Source,
    Status,
)

log = logging.getLogger(__name__)

SLOT_SIZE = 1024 * 1024
MAX_CHUNK = 512
MAX_TRIAL_BOOTS = 3
MAX_EVENTS_QUEUED = 32
MAX_EVENTS_PER_ANSWER = 16


@dataclass
class Slot:
    version: str = ""
    image: bytes = b""


@dataclass
class Session:
    """An update being received into the inactive slot. Persisted: resumable after a reboot."""

    size: int
    sha256: bytes
    version: str
    slot: int
    data: bytearray = field(default_factory=bytearray)
    verified: bool = False


@dataclass
class Flash:
    slots: list[Slot] = field(default_factory=lambda: [Slot("1.0.0", b"factory image"), Slot()])
    active: int = 0  # the confirmed image
    trial: int | None = None  # the slot to boot on trial, until confirmed or rolled back
    boot_attempts: int = 0
    rolled_back: bool = False
    session: Session | None = None


@dataclass
class RefNode:
    address: int
    device_id: str = "node"
    kind: str = "speaker"  # speaker | sensor | combo
    hw_revision: str = "rev-b"
    flash: Flash = field(default_factory=Flash)
    reboot_s: float = 0.3
    trial_timeout_s: float = 30.0
    seed: int | None = None
    #: fault injection: reboot when an update reaches one of these offsets (each once)
    reboot_at_offsets: list[int] = field(default_factory=list)
    #: fault injection: a flash write error flips one bit at this image offset (the digest check must catch it)
    corrupt_flash_at: int | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.stats: dict[str, int] = {"requests": 0, "duplicates": 0, "naks": 0, "reboots": 0, "ignored": 0}
        self.dead_until: float = 0.0
        self.crashed = False
        self._boot(time.monotonic(), first=True)

    # ---------------------------------------------------------------- boot loader

    def _boot(self, now: float, first: bool = False) -> None:
        f = self.flash
        if f.trial is not None:
            f.boot_attempts += 1
            if f.boot_attempts > MAX_TRIAL_BOOTS:
                log.warning("node %d: new image failed %d boots, rolling back", self.address, MAX_TRIAL_BOOTS)
                f.trial, f.boot_attempts, f.rolled_back = None, 0, True
        self.running = f.trial if f.trial is not None else f.active
        image = f.slots[self.running].image
        self.crashed = b"LOAXA-SIM:crash" in image
        self.boot_time = now
        self.trial_started = now
        # RAM
        self.power = False
        self.volume = 50
        self.source = Source.OFF
        self.faults = int(Fault.SENSOR_FAIL) if b"LOAXA-SIM:fault" in image else 0
        self.last_seq: int | None = None
        self.last_answer: Frame | None = None
        self.events: list[Event] = []
        self.next_event_id = self.rng.randrange(0x10000)
        self.temperature = 31.0 + self.rng.random() * 4
        self.supply = 24.0 + self.rng.random()
        self.water_level = 120.0 + self.rng.random() * 20
        self.rain = 0.0
        if not first:
            self.add_event(EventKind.BOOT, self.flash.slots[self.running].version.count("."), now=now)

    def reboot(self, now: float | None = None) -> None:
        """Reset: RAM is lost, flash survives; silent for ``reboot_s``."""
        now = time.monotonic() if now is None else now
        self.stats["reboots"] += 1
        self.dead_until = now + self.reboot_s
        self._pending_boot = True
        log.info("node %d rebooting", self.address)

    def tick(self, now: float) -> None:
        if getattr(self, "_pending_boot", False) and now >= self.dead_until:
            self._pending_boot = False
            self._boot(now)
            return
        if self.is_alive(now) and self.flash.trial is not None and now - self.trial_started > self.trial_timeout_s:
            log.warning("node %d: trial image not confirmed in %.0fs, rolling back", self.address,
                        self.trial_timeout_s)
            self.flash.trial, self.flash.boot_attempts, self.flash.rolled_back = None, 0, True
            self.reboot(now)
        elif self.crashed and not getattr(self, "_pending_boot", False):
            self.reboot(now)  # a crashing image resets through the watchdog again and again
        # slow drift of the simulated measurements
        self.temperature += self.rng.uniform(-0.05, 0.05)
        self.water_level += self.rng.uniform(-0.2, 0.2)

    def is_alive(self, now: float) -> bool:
        return now >= self.dead_until and not getattr(self, "_pending_boot", False) and not self.crashed

    # ---------------------------------------------------------------- events

    def add_event(self, kind: int, code: int = 0, value: int = 0, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self.events) >= MAX_EVENTS_QUEUED:
            self.events.pop(0)  # the oldest is lost; the queue never grows without bound
        self.events.append(Event(self.next_event_id, kind, code, value, int(now * 1000)))
        self.next_event_id = (self.next_event_id + 1) & 0xFFFF

    # ---------------------------------------------------------------- requests

    @property
    def capabilities(self) -> int:
        caps = Cap.EVENTS | Cap.FW_UPDATE
        if self.kind in ("speaker", "combo"):
            caps |= Cap.AMPLIFIER | Cap.VOLUME | Cap.SOURCE_IP | Cap.SOURCE_FM | Cap.SOURCE_LINE
        if self.kind in ("sensor", "combo"):
            caps |= Cap.SENSORS
        return int(caps)

    def boot_state(self) -> int:
        if self.flash.trial is not None:
            return BootState.TRIAL
        return BootState.ROLLED_BACK if self.flash.rolled_back else BootState.NORMAL

    def handle(self, frame: Frame, now: float | None = None) -> Frame | None:
        now = time.monotonic() if now is None else now
        if frame.address not in (self.address, ADDR_BROADCAST) or frame.is_response:
            return None
        if not self.is_alive(now):
            self.stats["ignored"] += 1
            return None
        self.stats["requests"] += 1
        if frame.seq == self.last_seq and self.last_answer is not None and self.last_answer.type in (
                frame.type, MsgType.NAK):
            self.stats["duplicates"] += 1  # the gateway missed our answer: send the same one again
            answer = self.last_answer
        else:
            try:
                mtype, payload = self._dispatch(frame, now)
            except MessageError:
                mtype, payload = MsgType.NAK, Nak(NakCode.BAD_PAYLOAD).pack()
            except _Refuse as r:
                mtype, payload = MsgType.NAK, Nak(r.code, r.detail).pack()
            if mtype == MsgType.NAK:
                self.stats["naks"] += 1
            answer = Frame(self.address, mtype, frame.seq, payload, FLAG_RESPONSE)
            self.last_seq, self.last_answer = frame.seq, answer
        if frame.address == ADDR_BROADCAST:
            return None
        flags = FLAG_RESPONSE | (FLAG_EVENTS_PENDING if self.events else 0)
        return Frame(answer.address, answer.type, answer.seq, answer.payload, flags)

    def _dispatch(self, frame: Frame, now: float) -> tuple[int, bytes]:
        t, p = frame.type, frame.payload
        if t == MsgType.HELLO:
            return t, Hello(self.device_id, self.flash.slots[self.running].version, self.hw_revision,
                            self.capabilities, self.boot_state(), MAX_CHUNK, self.running).pack()
        if t == MsgType.STATUS:
            return t, self._status(now).pack()
        if t == MsgType.SET:
            req = SetRequest.unpack(p)
            if self.kind == "sensor":
                raise _Refuse(NakCode.NOT_SUPPORTED)
            if req.volume is not None:
                self.volume = req.volume
            if req.power is not None:
                self.power = req.power
            if req.source is not None:
                self.source = Source(req.source)
            return t, self._status(now).pack()
        if t == MsgType.READ_SENSORS:
            if self.kind == "speaker":
                raise _Refuse(NakCode.NOT_SUPPORTED)
            return t, Sensors({"water_level_cm": round(self.water_level, 1), "rain_mm": round(self.rain, 1),
                               "temperature_c": round(self.temperature, 1)}).pack()
        if t == MsgType.EVENT_POLL:
            poll = EventPoll.unpack(p)
            if poll.has_ack:
                for i, ev in enumerate(self.events):
                    if ev.id == poll.ack_id:
                        del self.events[: i + 1]
                        break
            now_ms = int(now * 1000)
            batch = [Event(e.id, e.kind, e.code, e.value, max(0, now_ms - e.age_ms))
                     for e in self.events[:MAX_EVENTS_PER_ANSWER]]
            return t, Events(tuple(batch)).pack()
        if MsgType.FW_BEGIN <= t <= MsgType.FW_ROLLBACK:
            return t, self._firmware(t, p, now)
        raise _Refuse(NakCode.UNKNOWN_TYPE, t)

    def _status(self, now: float) -> Status:
        return Status(self.power, self.volume, int(self.source), round(self.temperature, 1),
                      round(self.supply, 3), int(self.faults), int(now - self.boot_time))

    # ---------------------------------------------------------------- firmware update

    def _firmware(self, t: int, p: bytes, now: float) -> bytes:
        f = self.flash
        if t == MsgType.FW_BEGIN:
            req = FwBegin.unpack(p)
            if req.size > SLOT_SIZE or req.size == 0:
                raise _Refuse(NakCode.TOO_LARGE, SLOT_SIZE)
            if f.trial is not None:
                raise _Refuse(NakCode.BUSY)  # confirm or roll back the image on trial first
            s = f.session
            if not (s and s.size == req.size and s.sha256 == req.sha256 and s.version == req.version):
                s = f.session = Session(req.size, req.sha256, req.version, 1 - f.active)
                f.slots[s.slot] = Slot()  # erase the inactive slot
            return FwBeginReply(len(s.data), MAX_CHUNK).pack()
        s = f.session
        if t == MsgType.FW_CHUNK:
            chunk = FwChunk.unpack(p)
            if s is None:
                raise _Refuse(NakCode.NO_SESSION)
            if len(chunk.data) > MAX_CHUNK:
                raise _Refuse(NakCode.TOO_LARGE, MAX_CHUNK)
            if chunk.offset + len(chunk.data) > s.size:
                raise _Refuse(NakCode.BAD_VALUE, s.size)
            if chunk.offset > len(s.data):
                raise _Refuse(NakCode.OUT_OF_ORDER, len(s.data))
            if chunk.offset == len(s.data):
                s.data += chunk.data
                bad = self.corrupt_flash_at
                if bad is not None and chunk.offset <= bad < len(s.data):
                    s.data[bad] ^= 0x01
                s.verified = False
                for mark in list(self.reboot_at_offsets):
                    if len(s.data) >= mark:
                        self.reboot_at_offsets.remove(mark)
                        self.reboot(now)
            return Offset(len(s.data)).pack()
        if t == MsgType.FW_END:
            if s is None:
                raise _Refuse(NakCode.NO_SESSION)
            if len(s.data) != s.size:
                raise _Refuse(NakCode.OUT_OF_ORDER, len(s.data))
            if hashlib.sha256(s.data).digest() != s.sha256:
                f.session = None
                f.slots[1 - f.active] = Slot()
                raise _Refuse(NakCode.BAD_DIGEST)
            s.verified = True
            return b""
        if t == MsgType.FW_COMMIT:
            if s is None or not s.verified:
                raise _Refuse(NakCode.NOT_VERIFIED)
            f.slots[s.slot] = Slot(s.version, bytes(s.data))
            f.trial, f.boot_attempts, f.rolled_back, f.session = s.slot, 0, False, None
            self.reboot(now + 0.05)  # answer first, then reset into the new image
            self.dead_until = now + 0.05 + self.reboot_s
            return b""
        if t == MsgType.FW_CONFIRM:
            if f.trial is not None:
                f.active, f.trial, f.boot_attempts = f.trial, None, 0
            elif self.running != f.active:
                raise _Refuse(NakCode.NOT_IN_TRIAL)
            f.rolled_back = False
            return b""
        if t == MsgType.FW_ROLLBACK:
            if f.trial is None:
                raise _Refuse(NakCode.NOT_IN_TRIAL)
            f.trial, f.boot_attempts, f.rolled_back = None, 0, True
            self.reboot(now + 0.05)
            self.dead_until = now + 0.05 + self.reboot_s
            return b""
        raise _Refuse(NakCode.UNKNOWN_TYPE, t)


class _Refuse(Exception):
    def __init__(self, code: int, detail: int = 0):
        super().__init__(code)
        self.code = code
        self.detail = detail
