"""The broadcast executor: plays each accepted plan at its wall-clock start on its target speakers.

Life of one plan item (see docs/broadcast.md):

1. ``accept``: the item is written to the plan store with the start time the gateway fixes for it
   (``start_at``, or for a ``now`` broadcast the moment of receipt plus ``now_lead_ms``) and one
   ``pending`` outcome per target speaker; its media download starts at once (prefetch).
2. The plan's task waits for the media. A scheduled item whose media is not verified in the cache
   by its start is reported ``failed`` (reason ``media_unavailable`` / ``media_mismatch``) with an
   alarm; a ``now`` item waits up to ``now_media_wait_ms`` and starts ``now_lead_ms`` after it has the media.
3. ``dispatch_ahead_ms`` before the start the play request goes to every target's driver with the
   absolute ``start_at``: each speaker starts by its own (NTP-synced) clock, so the speakers of a
   commune start together however long the LAN took to deliver the command.
4. A speaker plays one thing at a time. Each speaker has a *slot* held by the broadcast it plays (or
   is about to play) until it reports an end. A higher priority item takes the slot: the holder is
   stopped and reported ``preempted``. An item of the same or lower priority waits until the slot is
   free and then starts (late; its report carries ``scheduled_at`` so the lateness is visible).
5. Drivers report ``started`` / ``finished`` / ``failed`` / ``preempted`` / ``skipped`` with the
   device's own timestamps; each report moves the outcome forward (never back) and goes to the
   persistent outbox in one transaction. An outcome with no end report by the planned end plus
   ``report_grace_ms`` is reported ``failed`` (``no_report``).

After a restart, pending plans are loaded from the store and resume at step 2. An item whose start
passed more than ``late_max_ms`` ago without being sent to a speaker is reported ``skipped``
(``missed_start``); one that is less late plays at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from devices.base import PlayRequest, SpeakerDriver
from gateway.broadcast.media import MediaCache, MediaError
from gateway.broadcast.outbox import Outbox
from gateway.broadcast.store import TERMINAL, PlanStore, StoredPlan
from loaxa.clock import now_ms, sleep_until
from protocol.models import AlarmEvent, MediaRef, PlanItem, PlaybackEvent, PlaybackState

log = logging.getLogger(__name__)

#: one driver report: (device, broadcast_id, state, at, reason)
Report = tuple[str, str, PlaybackState, int, str | None]


def playback_json(broadcast_id: str, device: str, state: str, at: int, reason: str | None,
                  scheduled_at: int | None) -> str:
    """``PlaybackEvent(...).model_dump_json(exclude_none=True)`` without building the model: the
    values are the gateway's own (ids it accepted, states it knows), so validating them again for
    every speaker's every report only costs CPU (tests/test_broadcast_events.py checks the output
    is the same)."""
    ev: dict[str, object] = {"kind": "playback", "broadcast_id": broadcast_id, "device": device, "state": state,
                             "at": at}
    if reason is not None:
        ev["reason"] = reason
    if scheduled_at is not None:
        ev["scheduled_at"] = scheduled_at
    return json.dumps(ev, separators=(",", ":"), ensure_ascii=False)


@dataclass
class ExecutorSettings:
    now_lead_ms: int = 400
    dispatch_ahead_ms: int = 3000
    late_max_ms: int = 60_000
    now_media_wait_ms: int = 120_000
    report_grace_ms: int = 15_000
    preempt_early_ms: int = 50
    keep_done_ms: int = 30 * 24 * 3600 * 1000  # finished plans stay in the store this long
    #: media that cannot be fetched (centre unreachable, 404) is tried again, the pause doubling from
    #: the first to the longest, until the plan's deadline (its start; a ``now`` plan's media wait)
    media_retry_first_ms: int = 5_000
    media_retry_max_ms: int = 300_000


@dataclass
class Slot:
    broadcast_id: str
    priority: int
    end_at: int


MediaUrl = Callable[[MediaRef], str]


class Executor:
    def __init__(self, store: PlanStore, media: MediaCache, drivers: Mapping[str, SpeakerDriver],
                 outbox: Outbox, *, media_url: MediaUrl = lambda m: m.url,
                 settings: ExecutorSettings | None = None) -> None:
        self.store = store
        self.media = media
        self.drivers = dict(drivers)
        self.outbox = outbox
        self.media_url = media_url
        self.s = settings or ExecutorSettings()
        self._plans: dict[str, StoredPlan] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._slots: dict[str, Slot] = {}
        self._changed = asyncio.Condition()
        self._bg: set[asyncio.Task[None]] = set()
        #: (broadcast, device) pairs whose play command has gone to the driver
        self._sent: set[tuple[str, str]] = set()
        #: pending "stop the lower priority broadcast at my start" tasks, by the preempting broadcast
        self._preempts: dict[str, set[asyncio.Task[None]]] = {}
        #: set when an outcome of that broadcast reaches an end (its plan task then looks again)
        self._ended: dict[str, asyncio.Event] = {}
        self.stats: dict[str, int] = {"accepted": 0, "duplicates": 0, "started": 0, "finished": 0,
                                      "failed": 0, "preempted": 0, "skipped": 0}

    # ------------------------------------------------------------------ entry points

    async def start(self) -> None:
        """Load pending plans from the store and schedule them (after a restart)."""
        purged = await self.store.purge(now_ms() - self.s.keep_done_ms)
        if purged:
            log.info("plan store: forgot %d finished plan(s)", purged)
        for plan in await self.store.pending():
            self._schedule(plan)
        log.info("broadcast executor: %d pending plan(s) restored", len(self._plans))

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def accept(self, item: PlanItem, cmd_id: str | None = None) -> bool:
        """Store ``item`` and schedule it; False when this broadcast id was already accepted."""
        received = now_ms()
        now_plan = item.start_at is None
        start = received + self.s.now_lead_ms if item.start_at is None else item.start_at
        end = start + item.media.duration_ms * item.repeat
        devices, skipped = self._resolve(item)
        self.media.prefetch(item.media)  # start the download while the plan is being written
        added = await self.store.add(item, start, end, now_plan, received, devices, cmd_id, skipped)
        if not added:
            self.stats["duplicates"] += 1
            return False
        self.stats["accepted"] += 1
        for dev, why in skipped.items():
            await self.outbox.put(PlaybackEvent(broadcast_id=item.broadcast_id, device=dev, state="skipped",
                                                at=received, reason=why, scheduled_at=start))
        plan = StoredPlan(item, start, end, now_plan, "pending", received)
        self._schedule(plan)
        return True

    async def cancel(self, broadcast_ids: Iterable[str]) -> dict[str, str]:
        """Cancel broadcasts: not yet started → ``skipped``; playing → stopped, ``preempted`` (``cancelled``)."""
        result: dict[str, str] = {}
        for bid in broadcast_ids:
            plan = await self.store.get(bid)
            if plan is None:
                result[bid] = "unknown"
                continue
            if plan.state != "pending":
                result[bid] = plan.state
                continue
            await self.store.set_plan_state(bid, "cancelled")
            task = self._tasks.pop(bid, None)
            if task is not None:
                task.cancel()
            for t in self._preempts.pop(bid, set()):  # a cancelled broadcast interrupts nothing
                t.cancel()
            at = now_ms()
            stops = []
            for dev, out in (await self.store.outcomes(bid)).items():
                if out.state == "pending" and (bid, dev) not in self._sent:
                    await self.report(dev, bid, "skipped", at, "cancelled")
                elif out.state not in TERMINAL and dev in self.drivers:
                    # interrupted while playing → preempted; told but not yet started → skipped
                    state: PlaybackState = "preempted" if out.state == "started" else "skipped"
                    stops.append(self._stop(dev, bid, state, "cancelled"))
            await asyncio.gather(*stops)
            self._plans.pop(bid, None)
            self._sent = {k for k in self._sent if k[0] != bid}
            # whatever a speaker does not confirm gets a final state all the same
            t = asyncio.create_task(self._close_cancelled(bid))
            self._bg.add(t)
            t.add_done_callback(self._bg.discard)
            result[bid] = "cancelled"
        return result

    async def _close_cancelled(self, bid: str) -> None:
        await asyncio.sleep(self.s.report_grace_ms / 1000)
        await self._fail_open(bid, "skipped", "cancelled", only=("pending", "sent"))
        await self._fail_open(bid, "preempted", "cancelled", only=("started",))

    async def set_devices(self, targets: list[str] | None, *, volume: int | None, power: bool | None) -> list[str]:
        """``device.set`` on the known speakers among ``targets`` (all when None); returns
        ``"id (error)"`` for each speaker that could not apply it."""
        ids = [d for d in (list(self.drivers) if targets is None else targets) if d in self.drivers]
        results = await asyncio.gather(*(self.drivers[d].set(volume=volume, power=power) for d in ids),
                                       return_exceptions=True)
        failed = []
        for d, r in zip(ids, results, strict=True):
            if isinstance(r, asyncio.CancelledError):
                raise r
            if isinstance(r, Exception):
                log.warning("device.set on %s failed: %s", d, r)
                failed.append(f"{d} ({r})")
        return failed

    async def report(self, device: str, broadcast_id: str, state: PlaybackState, at: int,
                     reason: str | None = None) -> None:
        """The drivers' ``PlaybackReport``: record, forward to the centre, free the slot on an end."""
        await self.report_many([(device, broadcast_id, state, at, reason)])

    async def report_many(self, reports: Sequence[Report]) -> None:
        """Several reports at once, in order (the speakers of a commune start, and end, at one
        instant): one plan store operation, one outbox wake-up, one pass over the slots."""
        rows = []
        for device, bid, state, at, reason in reports:
            plan = self._plans.get(bid)
            rows.append((bid, device, state, at, reason,
                         playback_json(bid, device, state, at, reason, plan.start_at if plan is not None else None)))
        applied = await self.store.advance_many(rows)
        ended: list[tuple[str, str]] = []
        for (device, bid, state, _at, reason), ok in zip(reports, applied, strict=True):
            if ok:
                self.stats[state] = self.stats.get(state, 0) + 1
                log.info("playback %s on %s: %s%s", bid, device, state, f" ({reason})" if reason else "")
            if state in TERMINAL:
                ended.append((device, bid))
        if any(applied):
            self.outbox.wake()
        if ended:
            for _dev, bid in ended:
                event = self._ended.get(bid)
                if event is not None:
                    event.set()
            await self._release_many(ended)

    # ------------------------------------------------------------------ internals

    def _resolve(self, item: PlanItem) -> tuple[list[str], dict[str, str]]:
        if item.targets_all():
            extra = [t for t in item.targets if t != "*"] if isinstance(item.targets, list) else []
            return list(self.drivers), {t: "unknown_device" for t in extra if t not in self.drivers}
        assert isinstance(item.targets, list)
        targets = list(dict.fromkeys(item.targets))
        return [t for t in targets if t in self.drivers], {t: "unknown_device" for t in targets
                                                            if t not in self.drivers}

    def needed_media(self) -> set[str]:
        return {p.item.media.sha256 for p in self._plans.values()}

    def pending_count(self) -> int:
        """Plans accepted and not done yet (for the health message)."""
        return len(self._plans)

    def _schedule(self, plan: StoredPlan) -> None:
        bid = plan.broadcast_id
        self._plans[bid] = plan
        task = asyncio.create_task(self._run_plan(plan), name=f"plan-{bid}")
        self._tasks[bid] = task
        task.add_done_callback(functools.partial(self._done, bid))

    def _done(self, bid: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(bid) is task:
            self._tasks.pop(bid, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("plan %s crashed", bid, exc_info=task.exception())

    async def _fail_open(self, bid: str, state: PlaybackState, reason: str,
                         only: Iterable[str] = ("pending", "sent", "started")) -> list[str]:
        at = now_ms()
        devs = [d for d, o in (await self.store.outcomes(bid)).items() if o.state in set(only)]
        if devs:
            await self.report_many([(dev, bid, state, at, reason) for dev in devs])
        return devs

    async def _run_plan(self, plan: StoredPlan) -> None:
        bid = plan.broadcast_id
        item = plan.item
        open_devs = [d for d, o in (await self.store.outcomes(bid)).items() if o.state not in TERMINAL]
        if open_devs:
            path = await self._wait_media(plan)
            if path is not None:
                await self._dispatch(plan, path)
        await self._wait_ends(plan)
        await self.store.set_plan_state(bid, "done")
        self._plans.pop(bid, None)
        self._preempts.pop(bid, None)
        self._sent = {k for k in self._sent if k[0] != bid}
        await self.media.evict()
        log.info("plan %s (%s) done", bid, item.title or item.media.sha256[:12])

    async def _wait_media(self, plan: StoredPlan) -> object | None:
        item = plan.item
        ready = self.media.ready(item.media)  # hashed during this run and still of its size: no I/O
        if ready is not None:
            return ready
        # a scheduled item must have its media by its start; one restored after its start (gateway
        # outage) gets a moment, then the late-start rule decides
        deadline = (plan.received_at + self.s.now_media_wait_ms if plan.now_plan
                    else max(plan.start_at, now_ms() + 1000))
        try:
            path = await self._fetch_until(plan, deadline)
        except TimeoutError:
            reason, msg = "media_unavailable", f"media {item.media.url} not in the cache before the start"
        except MediaError as exc:
            reason, msg = exc.reason, str(exc)
        else:
            # the speakers still need the command and the media (from the gateway, over the LAN): the
            # common start stands if half the lead is left, else it moves to a whole lead from now
            if plan.now_plan and now_ms() > plan.start_at - self.s.now_lead_ms // 2:
                plan.start_at = now_ms() + self.s.now_lead_ms
                plan.end_at = plan.start_at + item.media.duration_ms * item.repeat
                await self.store.reschedule(plan.broadcast_id, plan.start_at, plan.end_at)
            return path
        devs = await self._fail_open(plan.broadcast_id, "failed", reason)
        await self.outbox.put(AlarmEvent(code=reason, severity="critical", at=now_ms(), message=(
            f"broadcast {plan.broadcast_id} will not play on {len(devs)} speaker(s): {msg}"),
            details={"broadcast_id": plan.broadcast_id, "sha256": item.media.sha256, "url": item.media.url}))
        return None

    async def _fetch_until(self, plan: StoredPlan, deadline: int) -> object:
        """The verified local path of the plan's media, fetching it until ``deadline`` (epoch ms): a
        fetch that fails ``media_unavailable`` is tried again after a pause (doubling up to
        ``media_retry_max_ms``) while the deadline allows, so a plan days ahead is not failed because
        the centre was unreachable for an hour. Bytes that do not match (``media_mismatch``) fail at
        once. Raises the last :class:`MediaError`, or ``TimeoutError`` when a fetch is still running
        at the deadline."""
        media = plan.item.media
        pause = self.s.media_retry_first_ms
        while True:
            task = self.media.prefetch(media)
            try:
                return await asyncio.wait_for(asyncio.shield(task), max(0.0, (deadline - now_ms()) / 1000))
            except MediaError as exc:
                left = deadline - now_ms()
                if exc.reason != "media_unavailable" or left <= 0:
                    raise
                wait = min(pause, left)
                log.warning("plan %s: %s; trying again in %.0f s (%.0f s before the start)", plan.broadcast_id,
                            exc, wait / 1000, left / 1000)
                await asyncio.sleep(wait / 1000)
                pause = min(pause * 2, self.s.media_retry_max_ms)
                if now_ms() >= deadline:
                    raise

    async def _dispatch(self, plan: StoredPlan, path: object) -> None:
        await sleep_until(plan.start_at - self.s.dispatch_ahead_ms)
        bid = plan.broadcast_id
        outcomes = await self.store.outcomes(bid)
        late = now_ms() - plan.start_at
        jobs = []
        for dev, out in outcomes.items():
            if out.state in TERMINAL or dev not in self.drivers:
                continue
            if out.state == "pending" and late > self.s.late_max_ms:
                await self.report(dev, bid, "skipped", now_ms(), "missed_start")
                continue
            if out.state == "started":  # restart while it played: the device reports its end itself
                continue
            jobs.append(self._play_on(dev, plan, path))
        sent = [dev for dev in await asyncio.gather(*jobs) if dev is not None]
        if sent:  # one store operation for the whole commune, not one per speaker
            await self.store.advance_many([(bid, dev, "sent", None, None, None) for dev in sent])

    async def _play_on(self, dev: str, plan: StoredPlan, path: object) -> str | None:
        """Play ``plan`` on ``dev`` when its slot allows; returns ``dev`` once the driver took the
        command at the plan's start (the caller records ``sent`` for the whole commune at once),
        None when it failed or when it had to wait for the speaker (then it records ``sent`` itself,
        not held up by the others)."""
        item = plan.item
        bid = plan.broadcast_id
        start = plan.start_at
        async with self._changed:
            while True:
                slot = self._slots.get(dev)
                if slot is None or slot.broadcast_id == bid or slot.end_at <= start:
                    break
                if slot.priority < item.priority:
                    victim = slot.broadcast_id
                    t = asyncio.create_task(self._preempt_at(dev, victim, bid, start))
                    tasks = self._preempts.setdefault(bid, set())
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                    break
                # same or higher priority holds the speaker: wait for its end (or for its slot to expire)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), max(0.01, (slot.end_at - now_ms()) / 1000))
                if self._slots.get(dev) is slot and slot.end_at <= now_ms():
                    del self._slots[dev]
                start = max(start, now_ms() + self.s.now_lead_ms)
            end = start + item.media.duration_ms * item.repeat
            self._slots[dev] = Slot(bid, item.priority, end + self.s.report_grace_ms)
        req = PlayRequest(broadcast_id=bid, media_path=Path(str(path)), media_url=self.media_url(item.media),
                          sha256=item.media.sha256, duration_ms=item.media.duration_ms, start_at_ms=start,
                          volume=item.volume, priority=item.priority, repeat=item.repeat)
        self._sent.add((bid, dev))
        try:
            await self.drivers[dev].play(req)
        except Exception as exc:  # a driver bug must not stop the other speakers
            log.exception("driver %s failed to play %s", dev, bid)
            await self.report(dev, bid, "failed", now_ms(), f"driver_error: {exc}"[:200])
            return None
        if start != plan.start_at:  # it waited behind another broadcast
            await self.store.advance(bid, dev, "sent", None, None)
            return None
        return dev

    async def _preempt_at(self, dev: str, victim: str, by: str, start: int) -> None:
        await sleep_until(start - self.s.preempt_early_ms)
        if victim in self._plans:
            out = (await self.store.outcomes(victim)).get(dev)
            if out is None or out.state in TERMINAL:
                return
            state: PlaybackState = "preempted" if out.state == "started" else "skipped"
            await self._stop(dev, victim, state, f"preempted by {by}")

    async def _stop(self, dev: str, bid: str, state: PlaybackState, reason: str) -> None:
        try:
            await self.drivers[dev].stop(bid, state, reason)
        except Exception:
            log.exception("driver %s failed to stop %s", dev, bid)
            await self.report(dev, bid, state, now_ms(), reason)

    async def _release_many(self, ended: Iterable[tuple[str, str]]) -> None:
        async with self._changed:
            freed = False
            for dev, bid in ended:
                slot = self._slots.get(dev)
                if slot is not None and slot.broadcast_id == bid:
                    del self._slots[dev]
                    freed = True
            if freed:
                self._changed.notify_all()

    async def _wait_ends(self, plan: StoredPlan) -> None:
        bid = plan.broadcast_id
        ended = self._ended.setdefault(bid, asyncio.Event())
        try:
            await self._wait_ends_loop(plan, ended)
        finally:
            self._ended.pop(bid, None)

    async def _wait_ends_loop(self, plan: StoredPlan, ended: asyncio.Event) -> None:
        bid = plan.broadcast_id
        while True:
            ended.clear()
            outcomes = await self.store.outcomes(bid)
            open_ = {d: o for d, o in outcomes.items() if o.state not in TERMINAL}
            if not open_:
                return
            # a device that waits behind another broadcast has its own later end: use its slot
            ends = [self._slots[d].end_at for d in open_ if d in self._slots and self._slots[d].broadcast_id == bid]
            deadline = max([plan.end_at + self.s.report_grace_ms, *ends])
            if now_ms() >= deadline:
                at = now_ms()
                await self.report_many([(dev, bid, "failed", at, "no_finish_report" if out.state == "started"
                                         else "no_start_report") for dev, out in open_.items()])
                return
            # woken by the reports themselves (no polling while a broadcast plays); the timeout
            # re-checks slots that moved and the deadline
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), min(30.0, max(0.05, (deadline - now_ms()) / 1000)))
