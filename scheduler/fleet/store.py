"""Database reads and writes of the fleet (alarms, silences, notifications, speaker registry sync).

Methods are synchronous, one transaction each, and run on the scheduler's database thread
(:class:`scheduler.db.AsyncStore`), like the rest of the scheduler's database work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from scheduler.fleet.alarms.lifecycle import AlarmRecord
from scheduler.fleet.models import FleetAlarm, FleetAlarmLog, FleetNotification, FleetSilence
from scheduler.models import Speaker

_RECORD_FIELDS = [f.name for f in fields(AlarmRecord)]


def record_of(row: FleetAlarm) -> AlarmRecord:
    return AlarmRecord(
        id=row.id, source=row.source, type=row.type, gateway=row.gateway_id, device=row.device_id,
        severity=row.severity, message=row.message, details=dict(row.details or {}), first_seen=row.first_seen,
        last_seen=row.last_seen, status="cleared" if row.status == "cleared" else "active", count=row.count,
        acknowledged=row.acknowledged, ack_by=row.ack_by, ack_at=row.ack_at, ack_note=row.ack_note,
        cleared_at=row.cleared_at, cleared_by=row.cleared_by, clear_note=row.clear_note, notified=row.notified,
        silenced=row.silenced,
    )


def _copy_into(row: FleetAlarm, rec: AlarmRecord) -> None:
    row.source, row.type, row.gateway_id, row.device_id = rec.source, rec.type, rec.gateway, rec.device
    row.severity, row.status, row.message, row.details = rec.severity, rec.status, rec.message, rec.details
    row.first_seen, row.last_seen, row.count = rec.first_seen, rec.last_seen, rec.count
    row.acknowledged, row.ack_by, row.ack_at, row.ack_note = rec.acknowledged, rec.ack_by, rec.ack_at, rec.ack_note
    row.cleared_at, row.cleared_by, row.clear_note = rec.cleared_at, rec.cleared_by, rec.clear_note
    row.notified, row.silenced = rec.notified, rec.silenced


def alarm_dict(rec: AlarmRecord) -> dict[str, Any]:
    out = {name: getattr(rec, name) for name in _RECORD_FIELDS}
    out["state"] = rec.state
    return out


@dataclass(frozen=True)
class Silence:
    id: int
    gateway: str
    device: str | None
    types: list[str] | None
    starts_at: int
    ends_at: int
    reason: str | None
    created_by: str
    created_at: int

    def covers(self, gateway: str, device: str | None, alarm_type: str, at: int) -> bool:
        if not (self.starts_at <= at < self.ends_at) or gateway != self.gateway:
            return False
        if self.device is not None and device != self.device:
            return False
        return self.types is None or alarm_type in self.types

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("id", "gateway", "device", "types", "starts_at", "ends_at", "reason",
                                              "created_by", "created_at")}


def _silence(row: FleetSilence) -> Silence:
    end = row.ends_at if row.ended_early_at is None else min(row.ends_at, row.ended_early_at)
    return Silence(row.id, row.gateway_id, row.device_id, list(row.types) if row.types else None, row.starts_at, end,
                   row.reason, row.created_by, row.created_at)


@dataclass(frozen=True)
class Outgoing:
    id: int
    channel: str
    target: str
    subject: str
    body: str
    attempts: int


class FleetStore:
    def __init__(self, session: Callable[[], Session]):
        self._session = session

    # ------------------------------------------------------------ alarms

    def active_alarms(self) -> list[AlarmRecord]:
        with self._session() as s:
            rows = s.scalars(select(FleetAlarm).where(FleetAlarm.status == "active").order_by(FleetAlarm.id)).all()
            return [record_of(r) for r in rows]

    def save_alarms(self, changes: Sequence[tuple[AlarmRecord, str, str | None, str | None]], at: int
                    ) -> list[AlarmRecord]:
        """Write alarm records (new ones get their id) with one log line each: (record, action, actor, note)."""
        out: list[AlarmRecord] = []
        with self._session() as s, s.begin():
            for rec, action, actor, note in changes:
                row = s.get(FleetAlarm, rec.id) if rec.id is not None else None
                if row is None:
                    row = FleetAlarm()
                    s.add(row)
                _copy_into(row, rec)
                s.flush()
                if action != "seen":  # "still holds" is in last_seen, not worth a line of history
                    s.add(FleetAlarmLog(alarm_id=row.id, at=at, action=action[:32], actor=actor,
                                        note=(note or None) and note[:2000]))
                out.append(record_of(row))
        return out

    def get_alarm(self, alarm_id: int) -> AlarmRecord | None:
        with self._session() as s:
            row = s.get(FleetAlarm, alarm_id)
            return record_of(row) if row is not None else None

    def alarm_log(self, alarm_id: int) -> list[dict[str, Any]]:
        with self._session() as s:
            rows = s.scalars(select(FleetAlarmLog).where(FleetAlarmLog.alarm_id == alarm_id)
                             .order_by(FleetAlarmLog.id)).all()
            return [{"at": r.at, "action": r.action, "actor": r.actor, "note": r.note} for r in rows]

    def list_alarms(self, *, status: str | None = None, gateways: frozenset[str] | None = None,
                    gateway: str | None = None, device: str | None = None, limit: int = 200) -> list[AlarmRecord]:
        with self._session() as s:
            q = select(FleetAlarm)
            if status is not None:
                q = q.where(FleetAlarm.status == status)
            if gateways is not None:
                q = q.where(FleetAlarm.gateway_id.in_(sorted(gateways)))
            if gateway is not None:
                q = q.where(FleetAlarm.gateway_id == gateway)
            if device is not None:
                q = q.where(FleetAlarm.device_id == device)
            rows = s.scalars(q.order_by(FleetAlarm.last_seen.desc(), FleetAlarm.id.desc()).limit(limit)).all()
            return [record_of(r) for r in rows]

    # ------------------------------------------------------------ silences

    def add_silence(self, *, gateway: str, device: str | None, types: list[str] | None, starts_at: int,
                    ends_at: int, reason: str | None, created_by: str, now: int) -> Silence:
        with self._session() as s, s.begin():
            row = FleetSilence(gateway_id=gateway, device_id=device, types=types, starts_at=starts_at,
                               ends_at=ends_at, reason=reason, created_by=created_by[:200], created_at=now)
            s.add(row)
            s.flush()
            return _silence(row)

    def end_silence(self, silence_id: int, now: int) -> Silence | None:
        with self._session() as s, s.begin():
            row = s.get(FleetSilence, silence_id)
            if row is None:
                return None
            if row.ended_early_at is None and row.ends_at > now:
                row.ended_early_at = now
            return _silence(row)

    def silences(self, now: int, *, include_past: bool = False) -> list[Silence]:
        with self._session() as s:
            q = select(FleetSilence)
            if not include_past:
                q = q.where(FleetSilence.ends_at > now, FleetSilence.ended_early_at.is_(None))
            return [_silence(r) for r in s.scalars(q.order_by(FleetSilence.id)).all()]

    # ------------------------------------------------------------ notifications

    def queue_notifications(self, items: Iterable[tuple[str, str, str, str, list[int]]], now: int) -> int:
        """(channel, target, subject, body, alarm ids) each; due now."""
        n = 0
        with self._session() as s, s.begin():
            for channel, target, subject, body, alarm_ids in items:
                s.add(FleetNotification(channel=channel, target=target[:300], subject=subject[:300], body=body,
                                        alarm_ids=alarm_ids, created_at=now, next_at=now, attempts=0,
                                        state="pending"))
                n += 1
        return n

    def due_notifications(self, now: int, limit: int = 50) -> list[Outgoing]:
        with self._session() as s:
            rows = s.scalars(select(FleetNotification).where(FleetNotification.state == "pending",
                                                             FleetNotification.next_at <= now)
                             .order_by(FleetNotification.id).limit(limit)).all()
            return [Outgoing(r.id, r.channel, r.target, r.subject, r.body, r.attempts) for r in rows]

    def next_notification_at(self) -> int | None:
        with self._session() as s:
            return s.scalars(select(FleetNotification.next_at).where(FleetNotification.state == "pending")
                             .order_by(FleetNotification.next_at).limit(1)).first()

    def notification_done(self, nid: int, now: int, *, error: str | None, next_at: int | None) -> None:
        """Sent (error None), retry at ``next_at``, or given up (error and no next_at)."""
        with self._session() as s, s.begin():
            row = s.get(FleetNotification, nid)
            if row is None:
                return
            row.attempts += 1
            if error is None:
                row.state, row.sent_at, row.last_error = "sent", now, None
            else:
                row.last_error = error[:500]
                if next_at is None:
                    row.state = "failed"
                else:
                    row.next_at = next_at

    def notifications(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._session() as s:
            rows = s.scalars(select(FleetNotification).order_by(FleetNotification.id.desc()).limit(limit)).all()
            return [{"id": r.id, "channel": r.channel, "target": r.target, "subject": r.subject, "state": r.state,
                     "attempts": r.attempts, "created_at": r.created_at, "sent_at": r.sent_at,
                     "last_error": r.last_error, "alarm_ids": r.alarm_ids} for r in rows]

    # ------------------------------------------------------------ the speaker registry

    def sync_speakers(self, gateway: str, speakers: Iterable[tuple[str, str | None]]) -> tuple[int, int]:
        """Make the broadcast registry's speakers of ``gateway`` exactly the configured ones (the
        gateway's own list): new ones are added, ones no longer configured are removed, so a broadcast
        to the gateway never waits for a speaker that is not there. Returns (added, removed)."""
        wanted = dict(speakers)
        with self._session() as s, s.begin():
            from scheduler.models import Gateway

            if s.get(Gateway, gateway) is None:
                return (0, 0)  # not a gateway of this scheduler (registered by config or the API)
            have = {sp.device_id: sp for sp in s.scalars(select(Speaker).where(Speaker.gateway_id == gateway))}
            removed = [d for d in have if d not in wanted]
            if removed:
                s.execute(delete(Speaker).where(Speaker.gateway_id == gateway, Speaker.device_id.in_(removed)))
            added = 0
            for dev, name in wanted.items():
                row = have.get(dev)
                if row is None:
                    s.add(Speaker(gateway_id=gateway, device_id=dev, name=name))
                    added += 1
                elif name and row.name != name:
                    row.name = name
            return added, len(removed)

    def update_speakers(self, rows: Iterable[tuple[str, str, bool | None, int | None, int | None]]) -> None:
        """(gateway, device, online, volume, last_seen) into the broadcast registry, for older readers."""
        with self._session() as s, s.begin():
            for gw, dev, online, volume, seen in rows:
                s.execute(update(Speaker).where(Speaker.gateway_id == gw, Speaker.device_id == dev)
                          .values(online=online, volume=volume, last_seen=seen))

    def registered_gateways(self) -> list[tuple[str, str | None]]:
        from scheduler.models import Gateway

        with self._session() as s:
            return [(g.id, g.commune) for g in s.scalars(select(Gateway).order_by(Gateway.id))]

    def purge(self, before: int) -> int:
        """Forget cleared alarms and finished notifications older than ``before``."""
        with self._session() as s, s.begin():
            res = s.execute(delete(FleetAlarm).where(FleetAlarm.status == "cleared", FleetAlarm.cleared_at < before))
            n = getattr(res, "rowcount", 0) or 0
            s.execute(delete(FleetNotification).where(or_(FleetNotification.state == "sent",
                                                          FleetNotification.state == "failed"),
                                                      FleetNotification.created_at < before))
            s.execute(delete(FleetSilence).where(FleetSilence.ends_at < before))
            return int(n)
