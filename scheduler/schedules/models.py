"""Tables of programmes and schedules (on the scheduler's one declarative ``Base``).

A **programme** is an ordered list of items (media, or text to be read aloud), each with an
optional volume. A **schedule** plays a programme at the instants of its recurrence (RFC 5545 rule,
EXDATE, RDATE in a named zone; see :mod:`scheduler.schedules.recurrence`), at a level, on targets.

Times are UTC epoch milliseconds like everywhere in the scheduler; the zone is stored next to the
rule (``tz``), never a naive local time. Status: ``draft`` (operators edit), ``approved`` (only
approved schedules are sent), ``rejected`` (with a reason). Editing an approved schedule makes it a
draft again (``version`` counts the edits).
"""

from __future__ import annotations

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from scheduler.models import Base

STATUS_DRAFT = "draft"
STATUS_APPROVED = "approved"
STATUS_REJECTED = "rejected"
SCHEDULE_STATUSES = (STATUS_DRAFT, STATUS_APPROVED, STATUS_REJECTED)


class Programme(Base):
    __tablename__ = "programmes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[int] = mapped_column()
    created_by: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[int] = mapped_column()

    items: Mapped[list[ProgrammeItem]] = relationship(
        back_populates="programme", cascade="all, delete-orphan", order_by="ProgrammeItem.position"
    )


class ProgrammeItem(Base):
    """One item of a programme: media from the library, or a text read aloud."""

    __tablename__ = "programme_items"
    __table_args__ = (
        UniqueConstraint("programme_id", "position"),
        CheckConstraint("(media_sha256 IS NULL) <> (text IS NULL)", name="ck_programme_items_media_or_text"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    programme_id: Mapped[str] = mapped_column(ForeignKey("programmes.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer, doc="0, 1, 2 … in playing order")
    media_sha256: Mapped[str | None] = mapped_column(ForeignKey("media.sha256"))
    text: Mapped[str | None] = mapped_column(Text, doc="Vietnamese text read aloud (when no media)")
    volume: Mapped[int | None] = mapped_column(Integer, doc="0-100; none: the schedule's volume")
    duration_ms: Mapped[int | None] = mapped_column(doc="known for media; for text once it is synthesised")

    programme: Mapped[Programme] = relationship(back_populates="items")


class Schedule(Base):
    __tablename__ = "schedules"
    __table_args__ = (Index("ix_schedules_status", "status"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    programme_id: Mapped[str] = mapped_column(ForeignKey("programmes.id"))
    rrule: Mapped[str | None] = mapped_column(String(500), doc="RFC 5545 RRULE value; none: once (plus RDATE)")
    tz: Mapped[str] = mapped_column(String(64), doc="IANA zone the rule is read in")
    dtstart: Mapped[int] = mapped_column(doc="first occurrence, UTC ms")
    exdates: Mapped[list[str]] = mapped_column(doc="ISO dates (whole local day) or ISO instants with offset")
    rdates: Mapped[list[str]] = mapped_column(doc="ISO instants with offset")
    valid_from: Mapped[int | None] = mapped_column()
    valid_until: Mapped[int | None] = mapped_column(doc="exclusive")
    priority: Mapped[int] = mapped_column(Integer, doc="0-9; the TT 39 level is derived from it")
    volume: Mapped[int] = mapped_column(Integer)
    targets: Mapped[list[str]] = mapped_column(doc='"GW" or "GW/DEV", as given')
    conflict_order: Mapped[int | None] = mapped_column(
        Integer, doc="explicit order among equal priorities (lower plays); none: equal-priority overlaps are refused"
    )
    status: Mapped[str] = mapped_column(String(16), default=STATUS_DRAFT)
    status_reason: Mapped[str | None] = mapped_column(String(500))
    status_by: Mapped[str | None] = mapped_column(String(200))
    status_at: Mapped[int | None] = mapped_column()
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[int] = mapped_column()
    created_by: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[int] = mapped_column()

    programme: Mapped[Programme] = relationship()


class ScheduleRun(Base):
    """One programme item of one occurrence of an approved schedule, as sent: the broadcast that
    carries it to the gateways (its per-speaker rows are the as-run log of that occurrence).

    Written by the planner (:mod:`scheduler.schedules.planner`) when the occurrence enters the
    horizon; ``(schedule_id, version, occurrence_at, position)`` is unique, so topping up twice sends
    nothing twice. Rows outlive their schedule (``schedule_id`` is not a foreign key): the as-run log
    of a removed schedule stays.
    """

    __tablename__ = "schedule_runs"
    __table_args__ = (
        UniqueConstraint("schedule_id", "version", "occurrence_at", "position"),
        Index("ix_schedule_runs_occurrence", "occurrence_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    schedule_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    occurrence_at: Mapped[int] = mapped_column(doc="the occurrence's start, UTC ms")
    position: Mapped[int] = mapped_column(Integer, doc="the programme item")
    broadcast_id: Mapped[str] = mapped_column(ForeignKey("broadcasts.id", ondelete="CASCADE"), unique=True)
    withdrawn: Mapped[bool] = mapped_column(Boolean, default=False, doc="cancelled because the schedule changed")


class IcsFeed(Base):
    """The signed ICS feed URL of one commune: ``generation`` is part of what is signed, so raising
    it (rotating) makes every URL given out before refused. No secret is stored here."""

    __tablename__ = "ics_feeds"

    gateway_id: Mapped[str] = mapped_column(ForeignKey("gateways.id", ondelete="CASCADE"), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    rotated_at: Mapped[int] = mapped_column()
    rotated_by: Mapped[str | None] = mapped_column(String(200))
