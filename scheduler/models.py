"""Tables of the scheduler's database (SQLAlchemy 2 typed ORM).

Times are UTC epoch milliseconds (``int``), like on the wire. Only portable SQL types are used, so
the same models work on SQLite (default) and PostgreSQL.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: Per-gateway delivery of one command (a plan or a cancel).
GW_PENDING = "pending"
GW_DELIVERED = "delivered"
GW_REFUSED = "refused"
GW_EXPIRED = "expired"

#: Per-speaker states, in the order they can be reached. Terminal states all share the last rank.
SPK_PENDING = "pending"
SPK_DELIVERED = "delivered"
SPK_STARTED = "started"
SPK_FINISHED = "finished"
SPK_FAILED = "failed"
SPK_PREEMPTED = "preempted"
SPK_SKIPPED = "skipped"
SPEAKER_RANK: dict[str, int] = {
    SPK_PENDING: 0,
    SPK_DELIVERED: 1,
    SPK_STARTED: 2,
    SPK_FINISHED: 3,
    SPK_FAILED: 3,
    SPK_PREEMPTED: 3,
    SPK_SKIPPED: 3,
}
TERMINAL_SPEAKER_STATES = frozenset(s for s, r in SPEAKER_RANK.items() if r == 3)

KIND_PLAN = "plan"
KIND_CANCEL = "cancel"


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {int: BigInteger, dict[str, Any]: JSON, list[str]: JSON}


class Gateway(Base):
    __tablename__ = "gateways"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    commune: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str | None] = mapped_column(String(16), doc="last retained status: online / offline")
    status_ts: Mapped[int | None] = mapped_column(doc="ts of that status message (gateway clock)")
    last_seen: Mapped[int | None] = mapped_column(doc="when we last heard anything from it (our clock)")
    version: Mapped[str | None] = mapped_column(String(64))

    speakers: Mapped[list[Speaker]] = relationship(back_populates="gateway", cascade="all, delete-orphan")


class Speaker(Base):
    __tablename__ = "speakers"
    __table_args__ = (UniqueConstraint("gateway_id", "device_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    gateway_id: Mapped[str] = mapped_column(ForeignKey("gateways.id", ondelete="CASCADE"))
    device_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    online: Mapped[bool | None] = mapped_column(Boolean)
    volume: Mapped[int | None] = mapped_column(Integer)
    last_seen: Mapped[int | None] = mapped_column()

    gateway: Mapped[Gateway] = relationship(back_populates="speakers")


class Media(Base):
    __tablename__ = "media"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column()
    duration_ms: Mapped[int] = mapped_column()
    content_type: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(500), doc="file name relative to <data_dir>/media")
    original_name: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[int] = mapped_column()
    # added with loudness normalisation (nullable: rows stored before have none)
    kind: Mapped[str | None] = mapped_column(String(16), doc="speech | music")
    bitrate_kbps: Mapped[int | None] = mapped_column(Integer)
    loudness_lufs: Mapped[float | None] = mapped_column(Float, doc="integrated loudness of the stored file")
    true_peak_dbtp: Mapped[float | None] = mapped_column(Float, doc="true peak of the stored file")


class Broadcast(Base):
    __tablename__ = "broadcasts"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    title: Mapped[str | None] = mapped_column(String(200))
    media_sha256: Mapped[str] = mapped_column(ForeignKey("media.sha256"))
    start_at: Mapped[int | None] = mapped_column(doc="null: play as soon as received")
    priority: Mapped[int] = mapped_column(Integer)
    volume: Mapped[int] = mapped_column(Integer)
    repeat: Mapped[int] = mapped_column(Integer, default=1)
    targets: Mapped[list[str]] = mapped_column(doc='"GW" or "GW/DEV"; a group (GW/@GROUP) is stored as its members')
    target_groups: Mapped[dict[str, Any] | None] = mapped_column(
        JSON, doc='the groups named, as resolved when the broadcast was made: {"GW/@GROUP": ["DEV", …]}'
    )
    created_at: Mapped[int] = mapped_column()
    created_by: Mapped[str | None] = mapped_column(String(200))
    expires_at: Mapped[int] = mapped_column(doc="after this, undelivered commands are given up")
    cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    cancelled_at: Mapped[int | None] = mapped_column()

    media: Mapped[Media] = relationship()
    deliveries: Mapped[list[GatewayDelivery]] = relationship(
        back_populates="broadcast", cascade="all, delete-orphan", order_by="GatewayDelivery.id"
    )
    speakers: Mapped[list[SpeakerDelivery]] = relationship(
        back_populates="broadcast", cascade="all, delete-orphan", order_by="SpeakerDelivery.id"
    )


class GatewayDelivery(Base):
    """One command (``kind`` plan or cancel) of one broadcast to one gateway, until it is acked."""

    __tablename__ = "gateway_deliveries"
    __table_args__ = (
        UniqueConstraint("broadcast_id", "gateway_id", "kind"),
        Index("ix_gateway_deliveries_pending", "gateway_id", "state"),
        Index("ix_gateway_deliveries_expiry", "state", "expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    broadcast_id: Mapped[str] = mapped_column(ForeignKey("broadcasts.id", ondelete="CASCADE"))
    gateway_id: Mapped[str] = mapped_column(ForeignKey("gateways.id"))
    kind: Mapped[str] = mapped_column(String(16), default=KIND_PLAN)
    command_id: Mapped[str] = mapped_column(String(128), unique=True)
    envelope: Mapped[str] = mapped_column(Text, doc="the signed envelope, sent again as is until acked")
    expires_at: Mapped[int] = mapped_column()
    state: Mapped[str] = mapped_column(String(16), default=GW_PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_sent_at: Mapped[int | None] = mapped_column()
    acked_at: Mapped[int | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(String(500))

    broadcast: Mapped[Broadcast] = relationship(back_populates="deliveries")


class SpeakerDelivery(Base):
    """What happened to one broadcast on one speaker."""

    __tablename__ = "speaker_deliveries"
    __table_args__ = (UniqueConstraint("broadcast_id", "gateway_id", "device_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    broadcast_id: Mapped[str] = mapped_column(ForeignKey("broadcasts.id", ondelete="CASCADE"))
    gateway_id: Mapped[str] = mapped_column(ForeignKey("gateways.id"))
    device_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=SPK_PENDING)
    delivered_at: Mapped[int | None] = mapped_column()
    started_at: Mapped[int | None] = mapped_column()
    ended_at: Mapped[int | None] = mapped_column(doc="finished / failed / preempted / skipped at")
    updated_at: Mapped[int | None] = mapped_column()
    reason: Mapped[str | None] = mapped_column(String(500))

    broadcast: Mapped[Broadcast] = relationship(back_populates="speakers")
