"""Reads and writes of programmes and schedules, on the scheduler's :class:`~scheduler.db.Store`.

No permission checks here: the HTTP routes that call these (with access control) decide who may.
What this layer guarantees: every schedule saved has a valid recurrence, an existing programme
with known durations, valid targets, and no equal-priority overlap with another live schedule on a
shared speaker (unless an explicit ``conflict_order`` resolves it). Editing an approved schedule
makes it a draft again.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from scheduler.db import BadRequest, NotFound, Store, Target
from scheduler.models import Broadcast, Media, Speaker
from scheduler.schedules.conflicts import Occurrence, Overlap, find_overlaps
from scheduler.schedules.levels import level_of
from scheduler.schedules.models import (
    SCHEDULE_STATUSES,
    STATUS_APPROVED,
    STATUS_DRAFT,
    STATUS_REJECTED,
    Programme,
    ProgrammeItem,
    Schedule,
    ScheduleRun,
)
from scheduler.schedules.recurrence import MAX_WINDOW, Recurrence
from scheduler.schedules.schemas import ProgrammeIn, ProgrammeItemIn, ScheduleIn, parse_exdate

#: How far ahead a new or edited schedule is checked for conflicts.
CONFLICT_HORIZON = timedelta(days=62)


class ConflictError(BadRequest):
    """Equal-priority overlaps on shared speakers; ``overlaps`` lists them."""

    def __init__(self, overlaps: Sequence[Overlap], tz: tzinfo | None = None):
        self.overlaps = list(overlaps)
        shown = "; ".join(o.describe(tz) for o in self.overlaps[:5])
        more = f" (and {len(self.overlaps) - 5} more)" if len(self.overlaps) > 5 else ""
        super().__init__(f"{len(self.overlaps)} conflict(s) of equal priority: {shown}{more}. Change the time "
                         "or the level, or give both schedules a conflict_order")


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def recurrence_of(row: Schedule) -> Recurrence:
    return Recurrence(
        dtstart=_dt(row.dtstart),
        tz=row.tz,
        rrule=row.rrule,
        exdates=tuple(parse_exdate(x) for x in row.exdates),
        rdates=tuple(datetime.fromisoformat(x) for x in row.rdates),
        valid_from=_dt(row.valid_from) if row.valid_from is not None else None,
        valid_until=_dt(row.valid_until) if row.valid_until is not None else None,
    )


@dataclass(frozen=True)
class DueRun:
    """One programme item of one occurrence that should be sent and is not yet."""

    schedule_id: str
    version: int
    occurrence_at: int  # UTC ms
    position: int
    start_at: int  # UTC ms: the occurrence plus the items before this one
    media_sha256: str
    priority: int
    volume: int
    targets: list[str]
    title: str

    @property
    def broadcast_id(self) -> str:
        """Deterministic, so a second top-up (or one after a crash) finds it already made."""
        return f"{self.schedule_id}.v{self.version}.{self.occurrence_at}.{self.position}"


def programme_duration_ms(p: Programme) -> int:
    """The programme's length; refuses when an item's length is not known yet (text not synthesised)."""
    total = 0
    for item in p.items:
        if item.duration_ms is None:
            raise BadRequest(f"programme {p.id} item {item.position + 1} (text) has no known duration yet: "
                             "synthesise it first")
        total += item.duration_ms
    return total


class ScheduleStore:
    def __init__(self, store: Store, *, conflict_horizon: timedelta = CONFLICT_HORIZON):
        self.store = store
        self.conflict_horizon = min(conflict_horizon, MAX_WINDOW)

    # ------------------------------------------------------------ programmes

    def create_programme(self, spec: ProgrammeIn, created_by: str | None, now: int,
                         programme_id: str | None = None) -> str:
        pid = programme_id or f"pg-{uuid.uuid4().hex[:20]}"
        with self.store.session() as s, s.begin():
            if s.get(Programme, pid) is not None:
                raise BadRequest(f"programme {pid} already exists")
            p = Programme(id=pid, title=spec.title, created_at=now, created_by=created_by, updated_at=now)
            for n, item in enumerate(spec.items):
                p.items.append(self._item(s, n, item))
            s.add(p)
        return pid

    @staticmethod
    def _item(s: Session, n: int, item: ProgrammeItemIn) -> ProgrammeItem:
        duration = item.duration_ms
        if item.media_sha256 is not None:
            media = s.get(Media, item.media_sha256)
            if media is None:
                raise BadRequest(f"items[{n}].media_sha256: {item.media_sha256} is not in the library")
            duration = media.duration_ms
        return ProgrammeItem(position=n, media_sha256=item.media_sha256, text=item.text, volume=item.volume,
                             duration_ms=duration)

    def programme(self, pid: str) -> dict[str, Any]:
        with self.store.session() as s:
            p = s.get(Programme, pid, options=[selectinload(Programme.items)])
            if p is None:
                raise NotFound(f"no programme {pid}")
            known = all(i.duration_ms is not None for i in p.items)
            return {
                "id": p.id, "title": p.title, "created_at": p.created_at, "created_by": p.created_by,
                "duration_ms": sum(i.duration_ms or 0 for i in p.items) if known else None,
                "items": [{"position": i.position, "media_sha256": i.media_sha256, "text": i.text,
                           "volume": i.volume, "duration_ms": i.duration_ms} for i in p.items],
            }

    def list_programmes(self, limit: int = 200) -> list[dict[str, Any]]:
        with self.store.session() as s:
            ids = s.scalars(select(Programme.id).order_by(Programme.created_at.desc(), Programme.id)
                            .limit(max(1, min(limit, 1000)))).all()
        return [self.programme(pid) for pid in ids]

    def update_programme(self, pid: str, spec: ProgrammeIn, by: str | None, now: int) -> list[str]:
        """Replace a programme's items. Every approved schedule that plays it goes back to draft (what
        was approved is no longer what would play); returns their ids."""
        with self.store.session() as s, s.begin():
            p = s.get(Programme, pid, options=[selectinload(Programme.items)])
            if p is None:
                raise NotFound(f"no programme {pid}")
            p.items.clear()
            s.flush()
            p.title = spec.title
            p.updated_at = now
            for n, item in enumerate(spec.items):
                p.items.append(self._item(s, n, item))
            back: list[str] = []
            for row in s.scalars(select(Schedule).where(Schedule.programme_id == pid,
                                                        Schedule.status == STATUS_APPROVED)).all():
                row.status = STATUS_DRAFT
                row.status_reason = f"programme {pid} was edited"
                row.status_by = by
                row.status_at = now
                row.version += 1
                back.append(row.id)
            return back

    def remove_programme(self, pid: str) -> None:
        with self.store.session() as s, s.begin():
            p = s.get(Programme, pid)
            if p is None:
                raise NotFound(f"no programme {pid}")
            used = s.scalars(select(Schedule.id).where(Schedule.programme_id == pid).limit(5)).all()
            if used:
                raise BadRequest(f"programme {pid} is played by schedule(s) {', '.join(used)}: remove them first")
            s.delete(p)

    # ------------------------------------------------------------ schedules

    def _check(self, s: Session, spec: ScheduleIn) -> Programme:
        from scheduler.areas.resolve import check_groups

        parsed: list[Target] = []
        for n, t in enumerate(spec.targets):
            try:
                parsed.append(Target.parse(t))
            except BadRequest as exc:
                raise BadRequest(f"targets[{n}]: {exc}") from exc
        check_groups(s, parsed)  # a group must exist when saved; its members are read at each occurrence
        p = s.get(Programme, spec.programme_id, options=[selectinload(Programme.items)])
        if p is None:
            raise BadRequest(f"programme_id: no programme {spec.programme_id}")
        programme_duration_ms(p)
        return p

    @staticmethod
    def _fill(row: Schedule, spec: ScheduleIn) -> None:
        row.title = spec.title
        row.programme_id = spec.programme_id
        rule = spec.recurrence().rule
        row.rrule = rule.text if rule is not None else None  # normalised: upper case, no RRULE: prefix
        row.tz = spec.tz
        row.dtstart = _ms(spec.dtstart)
        row.exdates = list(spec.exdates)
        row.rdates = [r.isoformat() for r in spec.rdates]
        row.valid_from = _ms(spec.valid_from) if spec.valid_from else None
        row.valid_until = _ms(spec.valid_until) if spec.valid_until else None
        row.priority = int(spec.priority)
        row.volume = spec.volume
        row.targets = [str(Target.parse(t)) for t in spec.targets]
        row.conflict_order = spec.conflict_order

    def create_schedule(self, spec: ScheduleIn, created_by: str | None, now: int,
                        schedule_id: str | None = None) -> str:
        """Save a new schedule as a draft; raises :class:`ConflictError` on an unresolved overlap."""
        sid = schedule_id or f"sch-{uuid.uuid4().hex[:20]}"
        with self.store.session() as s, s.begin():
            if s.get(Schedule, sid) is not None:
                raise BadRequest(f"schedule {sid} already exists")
            self._check(s, spec)
            row = Schedule(id=sid, status=STATUS_DRAFT, version=1, created_at=now, created_by=created_by,
                           updated_at=now)
            self._fill(row, spec)
            s.add(row)
            s.flush()
            self._refuse_conflicts(s, row, now)
        return sid

    def update_schedule(self, sid: str, spec: ScheduleIn, by: str | None, now: int) -> dict[str, Any]:
        """Replace a schedule's content; an approved or rejected one becomes a draft again."""
        with self.store.session() as s, s.begin():
            row = s.get(Schedule, sid)
            if row is None:
                raise NotFound(f"no schedule {sid}")
            self._check(s, spec)
            self._fill(row, spec)
            if row.status != STATUS_DRAFT:
                row.status_reason = f"edited after being {row.status}"
                row.status = STATUS_DRAFT
                row.status_by = by
                row.status_at = now
            row.version += 1
            row.updated_at = now
            s.flush()
            self._refuse_conflicts(s, row, now)
            return schedule_dict(row)

    def set_status(self, sid: str, status: str, by: str | None, now: int, reason: str | None = None,
                   expected_version: int | None = None) -> dict[str, Any]:
        """Approve or reject (a rejection needs a reason). ``expected_version`` guards against approving
        content that changed since the approver looked at it."""
        if status not in SCHEDULE_STATUSES:
            raise BadRequest(f"status {status!r}: one of {', '.join(SCHEDULE_STATUSES)}")
        if status == STATUS_REJECTED and not (reason and reason.strip()):
            raise BadRequest("a rejection needs a reason")
        with self.store.session() as s, s.begin():
            row = s.get(Schedule, sid)
            if row is None:
                raise NotFound(f"no schedule {sid}")
            if expected_version is not None and row.version != expected_version:
                raise BadRequest(f"schedule {sid} changed (version {row.version}, you saw {expected_version})")
            if status == STATUS_APPROVED:
                p = s.get(Programme, row.programme_id, options=[selectinload(Programme.items)])
                assert p is not None  # foreign key
                text = [i.position + 1 for i in p.items if i.media_sha256 is None]
                if text:
                    raise BadRequest(f"programme {p.id} item(s) {text} are text: turn each into audio with "
                                     "POST /api/tts (or loaxa tts) and put that media in the programme; only "
                                     "audio is sent to gateways")
                self._refuse_conflicts(s, row, now)
            row.status = status
            row.status_reason = reason.strip()[:500] if reason else None
            row.status_by = by
            row.status_at = now
            return schedule_dict(row)

    def schedule(self, sid: str) -> dict[str, Any]:
        with self.store.session() as s:
            row = s.get(Schedule, sid)
            if row is None:
                raise NotFound(f"no schedule {sid}")
            return schedule_dict(row)

    def list_schedules(self, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        with self.store.session() as s:
            q = select(Schedule).order_by(Schedule.created_at.desc(), Schedule.id).limit(max(1, min(limit, 1000)))
            if status is not None:
                q = q.where(Schedule.status == status)
            return [schedule_dict(r) for r in s.scalars(q).all()]

    def remove_schedule(self, sid: str) -> None:
        with self.store.session() as s, s.begin():
            row = s.get(Schedule, sid)
            if row is None:
                raise NotFound(f"no schedule {sid}")
            s.delete(row)

    def occurrences(self, sid: str, start: datetime, end: datetime) -> list[datetime]:
        with self.store.session() as s:
            row = s.get(Schedule, sid)
            if row is None:
                raise NotFound(f"no schedule {sid}")
            rec = recurrence_of(row)
        return rec.occurrences(start, end)

    def export_ics(self, gateway: str | None = None, *, include_drafts: bool = False) -> bytes:
        """An iCalendar file of the approved schedules (all, or those that reach ``gateway``): the
        read-only feed a commune can subscribe to in any calendar program."""
        from scheduler.schedules.ics import IcsSchedule, export_ics

        with self.store.session() as s:
            q = select(Schedule).order_by(Schedule.dtstart, Schedule.id)
            if not include_drafts:
                q = q.where(Schedule.status == STATUS_APPROVED)
            events = []
            for row in s.scalars(q).all():
                if gateway is not None and not any(Target.parse(t).gateway == gateway for t in row.targets):
                    continue
                p = s.get(Programme, row.programme_id, options=[selectinload(Programme.items)])
                assert p is not None
                known = all(i.duration_ms is not None for i in p.items)
                duration = timedelta(milliseconds=sum(i.duration_ms or 0 for i in p.items)) if known else None
                # a commune's feed names its own targets only, never another commune's speakers
                shown = [t for t in row.targets if gateway is None or Target.parse(t).gateway == gateway]
                events.append(IcsSchedule(f"{row.id}@loaxa", row.title, recurrence_of(row), duration, row.priority,
                                          f"{p.title}; targets: {', '.join(shown)}"))
        return export_ics(events, name=f"Loa Xã {gateway}" if gateway else "Loa Xã")

    def import_ics(self, data: bytes, *, programme_id: str, targets: Sequence[str], created_by: str | None,
                   now: int, volume: int = 70) -> list[str]:
        """Drafts from the events of an .ics file, all playing ``programme_id`` on ``targets``.

        All or nothing: a refused event (or a conflict) saves none of them. The events' own level
        (``X-LOAXA-PRIORITY`` or iCalendar PRIORITY) is kept, normal when absent.
        """
        from pydantic import ValidationError

        from scheduler.schedules.ics import IcsError, import_ics

        try:
            events = import_ics(data)
        except IcsError as exc:
            raise BadRequest(str(exc)) from exc
        specs: list[ScheduleIn] = []
        for ev in events:
            rec = ev.recurrence
            try:
                specs.append(ScheduleIn(
                    title=ev.summary or ev.uid, programme_id=programme_id,
                    rrule=rec.rule.text if rec.rule else None, tz=rec.tz, dtstart=rec.dtstart,
                    exdates=[x.isoformat() for x in rec.exdates],
                    rdates=list(rec.rdates), valid_from=rec.valid_from, valid_until=rec.valid_until,
                    priority=ev.priority if ev.priority is not None else "normal", volume=volume,
                    targets=list(targets),
                ))
            except ValidationError as exc:
                raise BadRequest(f"event {ev.uid}: {exc.errors()[0]['msg']}") from exc
        with self.store.session() as s, s.begin():
            rows: list[Schedule] = []
            for spec in specs:
                self._check(s, spec)
                row = Schedule(id=f"sch-{uuid.uuid4().hex[:20]}", status=STATUS_DRAFT, version=1, created_at=now,
                               created_by=created_by, updated_at=now)
                self._fill(row, spec)
                s.add(row)
                rows.append(row)
            s.flush()
            for row in rows:  # against each other too: they are all in the session now
                self._refuse_conflicts(s, row, now)
            return [row.id for row in rows]

    def gateways_of(self, sid: str) -> set[str]:
        """The gateways a schedule reaches (for area checks)."""
        with self.store.session() as s:
            row = s.get(Schedule, sid)
            if row is None:
                raise NotFound(f"no schedule {sid}")
            return {Target.parse(t).gateway for t in row.targets}

    # ------------------------------------------------------------ the horizon (scheduler.schedules.planner)

    def due_runs(self, now: int, horizon_ms: int) -> list[DueRun]:
        """Programme items of approved schedules' occurrences starting in ``[now, now + horizon)`` that
        have not been sent as broadcasts yet (for this version of the schedule)."""
        start, end = _dt(now), _dt(now + horizon_ms)
        out: list[DueRun] = []
        with self.store.session() as s:
            rows = s.scalars(select(Schedule).where(Schedule.status == STATUS_APPROVED).order_by(Schedule.id)).all()
            for row in rows:
                p = s.get(Programme, row.programme_id, options=[selectinload(Programme.items)])
                assert p is not None
                if any(i.media_sha256 is None or i.duration_ms is None for i in p.items):
                    continue  # refused at approval; a text item added since sent it back to draft
                done = set(s.execute(
                    select(ScheduleRun.occurrence_at, ScheduleRun.position).where(
                        ScheduleRun.schedule_id == row.id, ScheduleRun.version == row.version,
                        ScheduleRun.occurrence_at >= now)
                ).all())
                for occ in recurrence_of(row).occurrences(start, end):
                    at = _ms(occ)
                    offset = 0
                    for item in p.items:
                        assert item.media_sha256 is not None and item.duration_ms is not None
                        if (at, item.position) not in done:
                            title = row.title if len(p.items) == 1 else \
                                f"{row.title} ({item.position + 1}/{len(p.items)})"
                            out.append(DueRun(row.id, row.version, at, item.position, at + offset,
                                              item.media_sha256, row.priority,
                                              item.volume if item.volume is not None else row.volume,
                                              list(row.targets), title[:200]))
                        offset += item.duration_ms
        return out

    def record_run(self, run: DueRun) -> None:
        """Link the broadcast made for ``run`` to its schedule (idempotent)."""
        with self.store.session() as s, s.begin():
            if s.get(Broadcast, run.broadcast_id) is None:
                return
            found = s.scalars(select(ScheduleRun).where(ScheduleRun.broadcast_id == run.broadcast_id)).first()
            if found is None:
                s.add(ScheduleRun(schedule_id=run.schedule_id, version=run.version, occurrence_at=run.occurrence_at,
                                  position=run.position, broadcast_id=run.broadcast_id, withdrawn=False))

    def runs_to_withdraw(self, sid: str, now: int) -> list[str]:
        """Broadcasts of ``sid`` still to come that no longer match an approved version of it."""
        with self.store.session() as s:
            row = s.get(Schedule, sid)
            q = select(ScheduleRun.broadcast_id).join(Broadcast, Broadcast.id == ScheduleRun.broadcast_id).where(
                ScheduleRun.schedule_id == sid, ScheduleRun.withdrawn.is_(False), Broadcast.cancelled.is_(False),
                Broadcast.expires_at > now)
            if row is not None and row.status == STATUS_APPROVED:
                q = q.where(ScheduleRun.version != row.version)
            return list(s.scalars(q).all())

    def mark_withdrawn(self, broadcast_ids: Sequence[str]) -> None:
        if not broadcast_ids:
            return
        with self.store.session() as s, s.begin():
            for run in s.scalars(select(ScheduleRun).where(ScheduleRun.broadcast_id.in_(list(broadcast_ids)))).all():
                run.withdrawn = True

    # ------------------------------------------------------------ conflicts

    def preview_conflicts(self, spec: ScheduleIn, now: int, sid: str | None = None) -> list[Overlap]:
        """The equal-priority overlaps ``spec`` would have if saved (as ``sid`` when editing); nothing is stored."""
        with self.store.session() as s:
            try:
                self._check(s, spec)
                row = s.get(Schedule, sid) if sid is not None else None
                if row is None:
                    row = Schedule(id=sid or "(new)", status=STATUS_DRAFT, version=1, created_at=now, updated_at=now)
                    s.add(row)
                self._fill(row, spec)
                s.flush()
                return self._conflicts(s, row, now)
            finally:
                s.rollback()

    def _refuse_conflicts(self, s: Session, row: Schedule, now: int) -> None:
        found = self._conflicts(s, row, now)
        if found:
            raise ConflictError(found, recurrence_of(row).zoneinfo)

    def conflicts(self, sid: str, now: int) -> list[Overlap]:
        """Equal-priority overlaps of ``sid`` with itself or any live schedule, over the horizon."""
        with self.store.session() as s:
            row = s.get(Schedule, sid)
            if row is None:
                raise NotFound(f"no schedule {sid}")
            return self._conflicts(s, row, now)

    def _conflicts(self, s: Session, row: Schedule, now: int) -> list[Overlap]:
        start = max(_dt(now), _dt(row.dtstart), _dt(row.valid_from) if row.valid_from else _dt(0))
        end = start + self.conflict_horizon
        others = s.scalars(
            select(Schedule).where(Schedule.status != STATUS_REJECTED, Schedule.id != row.id)
        ).all()
        rows = [row, *others]
        # the speakers a whole-gateway target reaches: those known, those named by any schedule, and
        # "*" (so that two whole-gateway targets collide even before any speaker is known)
        from scheduler.areas.resolve import group_members

        universe: dict[str, set[str]] = {}
        named: list[Target] = []
        for r in rows:
            for t in map(Target.parse, r.targets):
                universe.setdefault(t.gateway, {"*"})
                named.append(t)
                if t.device is not None:
                    universe[t.gateway].add(t.device)
        groups = group_members(s, named)  # as they are now: what the next occurrences would play on
        if universe:
            for gw, dev in s.execute(
                select(Speaker.gateway_id, Speaker.device_id).where(Speaker.gateway_id.in_(list(universe)))
            ).all():
                universe[gw].add(dev)

        def speakers(r: Schedule) -> frozenset[str]:
            out: set[str] = set()
            for t in map(Target.parse, r.targets):
                if t.group is not None:
                    devs: set[str] = set(groups.get(t) or ())
                else:
                    devs = universe[t.gateway] if t.device is None else {t.device}
                out.update(f"{t.gateway}/{d}" for d in devs)
            return frozenset(out)

        durations: dict[str, timedelta] = {}
        for r in rows:
            p = s.get(Programme, r.programme_id, options=[selectinload(Programme.items)])
            assert p is not None  # foreign key
            durations[r.id] = timedelta(milliseconds=programme_duration_ms(p))
        # an occurrence that started before the window may still be playing in it
        since = start - max(durations.values())
        occurrences: list[Occurrence] = []
        for r in rows:
            spk = speakers(r)
            occurrences.extend(
                Occurrence(r.id, t, durations[r.id], r.priority, spk, r.conflict_order)
                for t in recurrence_of(r).occurrences(since, end)
            )
        return [o for o in find_overlaps(occurrences)
                if o.is_conflict and row.id in (o.first.schedule, o.second.schedule)]


def schedule_dict(row: Schedule) -> dict[str, Any]:
    level = level_of(row.priority)
    tz = recurrence_of(row).zoneinfo
    return {
        "id": row.id,
        "title": row.title,
        "programme_id": row.programme_id,
        "rrule": row.rrule,
        "tz": row.tz,
        "dtstart": _dt(row.dtstart).astimezone(tz).isoformat(),
        "exdates": row.exdates,
        "rdates": row.rdates,
        "valid_from": _dt(row.valid_from).astimezone(tz).isoformat() if row.valid_from is not None else None,
        "valid_until": _dt(row.valid_until).astimezone(tz).isoformat() if row.valid_until is not None else None,
        "priority": row.priority,
        "level": level.name,
        "level_vi": level.vi,
        "volume": row.volume,
        "targets": row.targets,
        "conflict_order": row.conflict_order,
        "status": row.status,
        "status_reason": row.status_reason,
        "status_by": row.status_by,
        "status_at": row.status_at,
        "version": row.version,
        "created_at": row.created_at,
        "created_by": row.created_by,
        "updated_at": row.updated_at,
    }
