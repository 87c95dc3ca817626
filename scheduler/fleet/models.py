"""Tables of the fleet: alarms and their history, maintenance silences, the notification outbox.

Self-contained: nothing here points at another package's tables (gateway and device ids are plain
strings, like on the wire), so the four tables are created, migrated or dropped as one group.
Times are UTC epoch milliseconds.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from scheduler.models import Base


class FleetAlarm(Base):
    """One alarm: one per (source, type) while active; a cleared one stays as history."""

    __tablename__ = "fleet_alarms"
    __table_args__ = (
        Index("ix_fleet_alarms_key", "source", "type", "status"),
        Index("ix_fleet_alarms_status", "status", "last_seen"),
        Index("ix_fleet_alarms_gateway", "gateway_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(200), doc="gw:GW or dev:GW/DEV")
    type: Mapped[str] = mapped_column(String(64))
    gateway_id: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str | None] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), doc="active / cleared")
    message: Mapped[str] = mapped_column(String(2000))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    first_seen: Mapped[int] = mapped_column()
    last_seen: Mapped[int] = mapped_column()
    count: Mapped[int] = mapped_column(Integer, default=1)
    acknowledged: Mapped[bool] = mapped_column(Boolean, default=False)
    ack_by: Mapped[str | None] = mapped_column(String(200))
    ack_at: Mapped[int | None] = mapped_column()
    ack_note: Mapped[str | None] = mapped_column(String(2000))
    cleared_at: Mapped[int | None] = mapped_column()
    cleared_by: Mapped[str | None] = mapped_column(String(200), doc="null: cleared by itself")
    clear_note: Mapped[str | None] = mapped_column(String(2000))
    notified: Mapped[bool] = mapped_column(Boolean, default=False)
    silenced: Mapped[bool] = mapped_column(Boolean, default=False)


class FleetAlarmLog(Base):
    """What happened to an alarm, in order: raised, updated, escalated, acknowledged, cleared, notified."""

    __tablename__ = "fleet_alarm_log"
    __table_args__ = (Index("ix_fleet_alarm_log_alarm", "alarm_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alarm_id: Mapped[int] = mapped_column(ForeignKey("fleet_alarms.id", ondelete="CASCADE"))
    at: Mapped[int] = mapped_column()
    action: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str | None] = mapped_column(String(200), doc="null: the scheduler itself")
    note: Mapped[str | None] = mapped_column(String(2000))


class FleetSilence(Base):
    """Maintenance: no notification for the alarms of a gateway (or one of its devices) until ``ends_at``."""

    __tablename__ = "fleet_silences"
    __table_args__ = (Index("ix_fleet_silences_end", "ends_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    gateway_id: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str | None] = mapped_column(String(64), doc="null: the gateway and all its devices")
    types: Mapped[list[str] | None] = mapped_column(JSON, doc="alarm types; null: all")
    starts_at: Mapped[int] = mapped_column()
    ends_at: Mapped[int] = mapped_column()
    reason: Mapped[str | None] = mapped_column(String(500))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[int] = mapped_column()
    ended_early_at: Mapped[int | None] = mapped_column()


class FleetNotification(Base):
    """A message to send (e-mail or webhook), kept until it went out or gave up: retried with backoff."""

    __tablename__ = "fleet_notifications"
    __table_args__ = (Index("ix_fleet_notifications_due", "state", "next_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(16), doc="email / webhook")
    target: Mapped[str] = mapped_column(String(300), doc="e-mail address or webhook name")
    subject: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text, doc="the e-mail text or the webhook's JSON")
    alarm_ids: Mapped[list[int]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column()
    next_at: Mapped[int] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), doc="pending / sent / failed")
    last_error: Mapped[str | None] = mapped_column(String(500))
    sent_at: Mapped[int | None] = mapped_column()
