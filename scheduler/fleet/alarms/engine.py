"""The alarm engine: conditions in, alarms (lifecycle.py) and notices out.

Each (source, type) has a :class:`Tracker` of its raw condition. Two kinds of input:

* ``observe`` — a *level* condition (a speaker is offline, the disk is full): it holds or not. The
  alarm is raised once it has held for the rule's ``after_s`` and cleared once it has been gone for
  ``clear_after_s``.
* ``occur`` — an *event* (a broadcast failed on a speaker, the gateway reported an alarm): each one
  counts; the alarm clears when ``resolve`` says the condition ended (the next broadcast played) or
  after ``clear_after_s`` without a repeat.

Flap suppression: a condition that changes ``flapping.toggles`` times within ``flapping.window_s``
stops making alarms of its own; one ``flapping`` alarm of its source stands for it until the
condition has been steady for a whole window. Silences (maintenance) do not stop alarms from being
recorded; they stop the notices (raised and recovery). An alarm raised during a silence that is still
active when the silence ends is notified then.

All methods run on the event loop; database work goes through the scheduler's database thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from protocol.signing import now_ms
from scheduler.db import AsyncStore
from scheduler.fleet.alarms.lifecycle import (
    AlarmRecord,
    LifecycleError,
    Occurrence,
    acknowledge,
    clear,
    occur,
    touch,
)
from scheduler.fleet.config import Flapping, Timing
from scheduler.fleet.store import FleetStore, Silence

log = logging.getLogger(__name__)

FLAPPING = "flapping"
#: ``last_seen`` of an active alarm is written to the database at most this often.
TOUCH_EVERY_MS = 60_000
#: Silences are read again from the database this often (and at once when one is added).
SILENCE_REFRESH_MS = 30_000

NoticeKind = Literal["raised", "cleared"]
#: Where notices go: ``await notify(kind, alarm)`` (scheduler/fleet/notify).
Notify = Callable[[NoticeKind, AlarmRecord], Awaitable[None]]


@dataclass
class Tracker:
    source: str
    type: str
    gateway: str
    device: str | None
    timing: Timing
    event_like: bool = False
    holds: bool = False
    since: int = 0
    severity: str = "major"
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    occurrences: int = 0  # event occurrences not yet applied to the alarm
    last_occurrence: int | None = None
    toggles: deque[int] = field(default_factory=deque)
    flapping: bool = False
    last_touch: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.type)


class AlarmEngine:
    def __init__(self, astore: AsyncStore, store: FleetStore, flapping: Flapping, notify: Notify | None = None):
        self.astore = astore
        self.store = store
        self.flapping = flapping
        self.notify = notify
        self.trackers: dict[tuple[str, str], Tracker] = {}
        self.alarms: dict[tuple[str, str], AlarmRecord] = {}  # the active ones
        self.silences: list[Silence] = []
        self._silences_read = 0
        self._lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.ticks = 0
        self.changed = asyncio.Condition()  # notified after each tick that changed an alarm
        self.version = 0

    async def load(self) -> None:
        """Take up the active alarms left by the previous run."""
        for rec in await self.astore.call(self.store.active_alarms):
            self.alarms[rec.key] = rec
        await self.refresh_silences(force=True)

    # ------------------------------------------------------------ input

    def _tracker(self, source: str, type_: str, gateway: str, device: str | None, timing: Timing,
                 event_like: bool) -> Tracker:
        t = self.trackers.get((source, type_))
        if t is None:
            t = Tracker(source, type_, gateway, device, timing, event_like, since=now_ms())
            self.trackers[t.key] = t
        t.timing, t.event_like = timing, event_like
        return t

    def _toggle(self, t: Tracker, holds: bool, at: int) -> None:
        if holds != t.holds:
            t.holds, t.since = holds, at
            t.toggles.append(at)
            while len(t.toggles) > 4 * self.flapping.toggles:
                t.toggles.popleft()
            self.wake.set()

    def observe(self, source: str, type_: str, *, gateway: str, device: str | None, timing: Timing, holds: bool,
                severity: str, message: str, details: dict[str, Any] | None = None, at: int | None = None) -> None:
        """A level condition's current value."""
        if not timing.enabled:
            return
        at = now_ms() if at is None else at
        t = self._tracker(source, type_, gateway, device, timing, event_like=False)
        t.severity, t.message = severity, message
        t.details = dict(details or {})
        self._toggle(t, holds, at)

    def occur(self, source: str, type_: str, *, gateway: str, device: str | None, timing: Timing, severity: str,
              message: str, details: dict[str, Any] | None = None, at: int | None = None) -> None:
        """One event of a condition (counts toward the alarm's ``count``)."""
        if not timing.enabled:
            return
        at = now_ms() if at is None else at
        t = self._tracker(source, type_, gateway, device, timing, event_like=True)
        t.severity, t.message = severity, message
        t.details = dict(details or {})
        t.occurrences += 1
        t.last_occurrence = at
        self._toggle(t, True, at)
        self.wake.set()

    def resolve(self, source: str, type_: str, at: int | None = None) -> None:
        """An event condition ended (a later broadcast played on the speaker)."""
        t = self.trackers.get((source, type_))
        if t is not None:
            self._toggle(t, False, now_ms() if at is None else at)

    def forget(self, source: str) -> None:
        """The source is gone (a device removed from its gateway's configuration): its conditions end."""
        for key, t in list(self.trackers.items()):
            if key[0] == source:
                self._toggle(t, False, now_ms())
                t.timing = t.timing.model_copy(update={"clear_after_s": 0})
        for key, rec in list(self.alarms.items()):
            if key[0] == source and key not in self.trackers:
                self.trackers[key] = Tracker(rec.source, rec.type, rec.gateway, rec.device,
                                             Timing(after_s=0, clear_after_s=0), since=now_ms())
        self.wake.set()

    # ------------------------------------------------------------ silences

    async def refresh_silences(self, *, force: bool = False) -> None:
        now = now_ms()
        if force or now - self._silences_read >= SILENCE_REFRESH_MS:
            self.silences = await self.astore.call(self.store.silences, now)
            self._silences_read = now

    def silenced(self, gateway: str, device: str | None, type_: str, at: int) -> bool:
        return any(s.covers(gateway, device, type_, at) for s in self.silences)

    # ------------------------------------------------------------ evaluation

    async def tick(self, now: int | None = None) -> int:
        """Bring every alarm in line with its condition; returns how many alarms changed."""
        async with self._lock:
            return await self._tick(now_ms() if now is None else now)

    async def _tick(self, now: int) -> int:
        await self.refresh_silences()
        self.ticks += 1
        changes: list[tuple[AlarmRecord, str, str | None, str | None]] = []
        notices: list[tuple[NoticeKind, tuple[str, str]]] = []

        def put(rec: AlarmRecord, action: str, note: str | None = None) -> AlarmRecord:
            changes.append((rec, action, None, note))
            self.alarms[rec.key] = rec
            return rec

        def raise_(occ: Occurrence, count: int = 1) -> None:
            current = self.alarms.get((occ.source, occ.type))
            rec, transition = occur(current, occ)
            if transition == "raised" and count > 1:
                rec = replace(rec, count=count)
            elif transition != "raised" and count > 1:
                rec = replace(rec, count=rec.count + count - 1)
            if transition in ("raised", "escalated"):
                quiet = self.silenced(rec.gateway, rec.device, rec.type, now)
                rec = replace(rec, silenced=quiet, notified=not quiet)
                if not quiet:
                    notices.append(("raised", rec.key))
            put(rec, transition, occ.message)

        def clear_(key: tuple[str, str], note: str | None, *, notice: bool = True) -> None:
            rec = self.alarms.pop(key, None)
            if rec is None:
                return
            cleared = clear(rec, now, note=note)
            changes.append((cleared, "cleared", None, note))
            if notice and rec.notified and not self.silenced(rec.gateway, rec.device, rec.type, now):
                notices.append(("cleared", key))
                self._cleared[key] = cleared

        self._cleared: dict[tuple[str, str], AlarmRecord] = {}
        window_ms = int(self.flapping.window_s * 1000)
        for key, t in list(self.trackers.items()):
            while t.toggles and t.toggles[0] < now - window_ms:
                t.toggles.popleft()
            flap_key = (t.source, FLAPPING)
            if not t.flapping and len(t.toggles) >= self.flapping.toggles:
                t.flapping = True
                log.warning("%s %s is flapping (%d changes in %.0f s)", t.source, t.type, len(t.toggles),
                            self.flapping.window_s)
                if key in self.alarms:
                    clear_(key, "flapping: replaced by one 'flapping' alarm", notice=False)
                raise_(Occurrence(t.source, FLAPPING, t.gateway, t.device, self.flapping.severity,
                                  f"{t.source}: {t.type} changed {len(t.toggles)} times in "
                                  f"{self.flapping.window_s:.0f} s", {"condition": t.type,
                                                                       "toggles": len(t.toggles)}, now))
                t.occurrences = 0
                continue
            if t.flapping:
                if t.toggles:
                    t.occurrences = 0
                    continue
                t.flapping = False
                if not any(o.flapping for o in self.trackers.values() if o.source == t.source):
                    clear_(flap_key, f"{t.type} steady for {self.flapping.window_s:.0f} s")
            # event conditions end by themselves after a quiet period
            if (t.event_like and t.holds and t.timing.clear_after_s > 0 and t.last_occurrence is not None
                    and now - t.last_occurrence >= t.timing.clear_after_s * 1000):
                t.holds, t.since = False, now
            rec = self.alarms.get(key)
            if t.holds and now - t.since >= t.timing.after_s * 1000:
                occ = Occurrence(t.source, t.type, t.gateway, t.device, t.severity, t.message, t.details, now)
                if rec is None:
                    raise_(occ, max(1, t.occurrences))
                    t.last_touch = now
                elif t.occurrences > 0 or t.severity != rec.severity:
                    raise_(occ, max(1, t.occurrences))
                    t.last_touch = now
                elif now - t.last_touch >= TOUCH_EVERY_MS or t.message != rec.message:
                    put(touch(rec, now, t.message, t.details), "seen")
                    t.last_touch = now
                t.occurrences = 0
            elif not t.holds and rec is not None:
                quiet_for = 0 if t.event_like else t.timing.clear_after_s
                if now - t.since >= quiet_for * 1000:
                    clear_(key, "condition ended")
            if not t.holds and key not in self.alarms and not t.toggles and not t.flapping:
                del self.trackers[key]  # nothing left to remember
        # alarms raised during a silence that has ended: notify now
        for key, rec in list(self.alarms.items()):
            if rec.status == "active" and not rec.notified and not self.silenced(rec.gateway, rec.device, rec.type,
                                                                                 now):
                put(replace(rec, notified=True, silenced=False), "notified", "after the silence")
                notices.append(("raised", key))
        if not changes:
            return 0
        saved = await self.astore.call(self.store.save_alarms, changes, now)
        for rec in saved:  # the database ids of new alarms
            if rec.status == "active":
                self.alarms[rec.key] = rec
            elif rec.key in self._cleared:
                self._cleared[rec.key] = rec
        if self.notify is not None:
            for kind, key in notices:
                target = self.alarms.get(key) if kind == "raised" else self._cleared.get(key)
                if target is not None:
                    try:
                        await self.notify(kind, target)
                    except Exception:
                        log.exception("could not queue the notice of alarm %s", target.id)
        async with self.changed:
            self.version += 1
            self.changed.notify_all()
        return len(changes)

    async def run(self, interval_s: float) -> None:
        """Evaluate every ``interval_s``, and at once when a condition changes."""
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), interval_s)
            except TimeoutError:
                pass
            self.wake.clear()
            try:
                await self.tick()
            except Exception:
                log.exception("alarm evaluation failed; trying again")

    # ------------------------------------------------------------ people

    async def acknowledge(self, alarm_id: int, by: str, note: str | None, at: int | None = None) -> AlarmRecord:
        async with self._lock:
            rec = next((r for r in self.alarms.values() if r.id == alarm_id), None)
            if rec is None:
                rec = await self.astore.call(self.store.get_alarm, alarm_id)
            if rec is None:
                raise LookupError(f"no alarm {alarm_id}")
            now = now_ms() if at is None else at
            acked = acknowledge(rec, now, by=by, note=note)
            (saved,) = await self.astore.call(self.store.save_alarms, [(acked, "acknowledged", by, note)], now)
            if saved.status == "active":
                self.alarms[saved.key] = saved
            return saved

    async def clear_by_hand(self, alarm_id: int, by: str, note: str | None, at: int | None = None) -> AlarmRecord:
        """Clear an alarm whose condition the scheduler cannot see end (it comes back if it still holds)."""
        async with self._lock:
            rec = next((r for r in self.alarms.values() if r.id == alarm_id), None)
            if rec is None:
                stored = await self.astore.call(self.store.get_alarm, alarm_id)
                if stored is None:
                    raise LookupError(f"no alarm {alarm_id}")
                raise LifecycleError(f"alarm {alarm_id} is already cleared")
            now = now_ms() if at is None else at
            cleared = clear(rec, now, by=by, note=note)
            (saved,) = await self.astore.call(self.store.save_alarms, [(cleared, "cleared", by, note)], now)
            self.alarms.pop(rec.key, None)
            t = self.trackers.get(rec.key)
            if t is not None and t.holds:
                t.since = now  # it must hold for its full delay again before it comes back
                t.occurrences = 0
            return saved
