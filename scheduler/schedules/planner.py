"""The rolling horizon: what keeps a commune's programme playing with the WAN cut for a week.

Every approved schedule's occurrences in the next ``horizon`` (8 days by default; at least the 7 days
the issue asks for plus a day of margin for the daily top-up) are sent to the gateways as ordinary
signed ``broadcast.plan`` items, one broadcast per programme item, with deterministic ids
(``DueRun.broadcast_id``) so that topping up again never sends anything twice. The gateway keeps
each plan in its durable plan store, prefetches and pins its media, plays it at its time with or
without the centre (and after reboots), and queues its playback reports in its outbox until the link
returns. docs/schedules.md explains why this was chosen over sending the rules themselves.

When a schedule stops being approved (edited, rejected, removed), the plans already sent for its
future occurrences are cancelled (``broadcast.cancel``). A plan more than 7 days ahead outlives its
envelope's maximum lifetime: the dispatcher signs it again if it is still undelivered at the cap.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from protocol.signing import now_ms
from scheduler.db import BadRequest, Target
from scheduler.dispatcher import Dispatcher
from scheduler.schedules.store import DueRun, ScheduleStore

log = logging.getLogger(__name__)

DEFAULT_HORIZON = timedelta(days=8)
DEFAULT_INTERVAL_S = 3600.0
#: A top-up sends at most this many broadcasts (the rest wait for the next one): bounds one pass.
MAX_PER_TOP_UP = 5000


class Planner:
    def __init__(self, schedules: ScheduleStore, dispatcher: Dispatcher, *, horizon: timedelta = DEFAULT_HORIZON,
                 interval_s: float = DEFAULT_INTERVAL_S):
        if horizon < timedelta(days=7):
            raise ValueError("the schedule horizon must cover at least 7 days (offline autonomy)")
        self.schedules = schedules
        self.dispatcher = dispatcher
        self.horizon = horizon
        self.interval_s = interval_s
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self.last_top_up: int | None = None

    def wake(self) -> None:
        """Top up soon (after an approval)."""
        self._wake.set()

    async def top_up(self, now: int | None = None) -> list[str]:
        """Send every due occurrence; returns the broadcast ids made."""
        async with self._lock:
            now = now_ms() if now is None else now
            astore = self.dispatcher.store
            due = await astore.call(self.schedules.due_runs, now, int(self.horizon.total_seconds() * 1000))
            made: list[str] = []
            for run in due[:MAX_PER_TOP_UP]:
                if await self._send(run):
                    made.append(run.broadcast_id)
                await astore.call(self.schedules.record_run, run)
            self.last_top_up = now
            if made:
                log.info("schedule horizon topped up: %d broadcast(s) sent", len(made))
            return made

    async def _send(self, run: DueRun) -> bool:
        unknown = sorted({Target.parse(t).gateway for t in run.targets} - self.dispatcher.known_gateways)
        if unknown:
            log.warning("schedule %s targets unknown gateway(s) %s; not sent", run.schedule_id, ", ".join(unknown))
            return False
        try:
            await self.dispatcher.create_broadcast(
                media_sha256=run.media_sha256, targets=run.targets, start_at=run.start_at, priority=run.priority,
                volume=run.volume, title=run.title, created_by=f"schedule:{run.schedule_id}",
                broadcast_id=run.broadcast_id,
            )
        except BadRequest as exc:
            if "already exists" in str(exc):
                return False  # made by an earlier pass that stopped before recording the run
            log.warning("schedule %s occurrence %s not sent: %s", run.schedule_id, run.start_at, exc)
            return False
        return True

    async def withdraw(self, sid: str, now: int | None = None) -> list[str]:
        """Cancel the plans already sent for ``sid`` that its current state no longer allows."""
        async with self._lock:
            astore = self.dispatcher.store
            bids = await astore.call(self.schedules.runs_to_withdraw, sid, now_ms() if now is None else now)
            for bid in bids:
                await self.dispatcher.cancel_broadcast(bid)
            await astore.call(self.schedules.mark_withdrawn, bids)
            if bids:
                log.info("schedule %s: %d plan(s) withdrawn", sid, len(bids))
            return bids

    async def run(self) -> None:
        """Top up now, then every ``interval_s`` (and soon after each approval), until cancelled."""
        while True:
            try:
                # with several scheduler workers only the holder of the dispatch lock tops up (the
                # broadcast ids are fixed per occurrence, so a second one would only repeat the work)
                if self.dispatcher.is_leader:
                    await self.top_up()
            except Exception:
                log.exception("schedule top-up failed; trying again at the next interval")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            except TimeoutError:
                pass
