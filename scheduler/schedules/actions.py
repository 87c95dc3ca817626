"""What a change to programmes and schedules does, once for the JSON API and the web pages.

Each action stores the change (``ScheduleStore``), keeps the gateways' horizon in step (withdraws the
plans an edit or a rejection invalidates, wakes the planner after an approval) and writes the audit
record. Permission and area checks stay with the caller (each front end answers a refusal its own
way), as does the translation of errors into responses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from protocol.signing import now_ms
from scheduler.schedules.models import STATUS_APPROVED
from scheduler.schedules.planner import Planner
from scheduler.schedules.schemas import ProgrammeIn, ScheduleIn

#: ``audit(action, target, detail)``: the caller binds who and from where.
Audit = Callable[[str, str | None, dict[str, Any]], Awaitable[None]]


class ScheduleActions:
    def __init__(self, planner: Planner):
        self.planner = planner
        self.sch = planner.schedules
        self.astore = planner.dispatcher.store

    async def create_programme(self, spec: ProgrammeIn, by: str, audit: Audit) -> str:
        pid: str = await self.astore.call(self.sch.create_programme, spec, by, now_ms())
        await audit("programme.create", pid, {"title": spec.title, "items": len(spec.items)})
        return pid

    async def update_programme(self, pid: str, spec: ProgrammeIn, by: str, audit: Audit) -> list[str]:
        """Replace the items; the approved schedules playing it go back to draft (returned)."""
        back: list[str] = await self.astore.call(self.sch.update_programme, pid, spec, by, now_ms())
        for sid in back:
            await self.planner.withdraw(sid)
        await audit("programme.update", pid, {"title": spec.title, "items": len(spec.items),
                                              "schedules_back_to_draft": back})
        return back

    async def create_schedule(self, spec: ScheduleIn, by: str, audit: Audit) -> str:
        """Save a draft (raises ``ConflictError`` on an unresolved equal-priority overlap)."""
        sid: str = await self.astore.call(self.sch.create_schedule, spec, by, now_ms())
        await audit("schedule.create", sid, {"title": spec.title, "targets": spec.targets,
                                             "priority": spec.priority, "rrule": spec.rrule})
        return sid

    async def update_schedule(self, sid: str, spec: ScheduleIn, by: str, audit: Audit) -> dict[str, Any]:
        """Replace a schedule (a draft again); the plans already sent for it are withdrawn."""
        out: dict[str, Any] = await self.astore.call(self.sch.update_schedule, sid, spec, by, now_ms())
        withdrawn = await self.planner.withdraw(sid)
        await audit("schedule.update", sid, {"version": out["version"], "status": out["status"],
                                             "targets": spec.targets, "withdrawn": len(withdrawn)})
        return out

    async def decide(self, sid: str, status: str, by: str, audit: Audit, *, reason: str | None = None,
                     version: int | None = None) -> dict[str, Any]:
        """Approve (the planner sends it soon) or reject with a reason (its plans are withdrawn)."""
        out: dict[str, Any] = await self.astore.call(self.sch.set_status, sid, status, by, now_ms(), reason,
                                                     version)
        approved = status == STATUS_APPROVED
        withdrawn = [] if approved else await self.planner.withdraw(sid)
        await audit("schedule.approve" if approved else "schedule.reject", sid,
                    {"version": out["version"], "reason": reason, "withdrawn": len(withdrawn)})
        if approved:
            self.planner.wake()
        return out
