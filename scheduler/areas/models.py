"""Tables of speaker groups, on the scheduler's one declarative ``Base`` (times: UTC epoch ms).

A group belongs to one commune (its gateway) and holds some of that gateway's speakers. It is
targeted as ``GW/@GROUP``; the members are looked up when a broadcast is made, and the broadcast
records what they were (``broadcasts.target_groups``), so a later change of the group never
rewrites history.
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from scheduler.models import Base


class SpeakerGroup(Base):
    __tablename__ = "speaker_groups"
    __table_args__ = (UniqueConstraint("gateway_id", "slug"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    gateway_id: Mapped[str] = mapped_column(ForeignKey("gateways.id", ondelete="CASCADE"))
    slug: Mapped[str] = mapped_column(String(64), doc="the id in targets: GW/@slug")
    name: Mapped[str] = mapped_column(String(200), doc='what staff call it, e.g. "Thôn Đông"')
    created_at: Mapped[int] = mapped_column()
    created_by: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[int] = mapped_column()
    updated_by: Mapped[str | None] = mapped_column(String(200))

    members: Mapped[list[SpeakerGroupMember]] = relationship(
        back_populates="group", cascade="all, delete-orphan", order_by="SpeakerGroupMember.device_id"
    )


class SpeakerGroupMember(Base):
    """One speaker of a group (a device of the group's gateway)."""

    __tablename__ = "speaker_group_members"
    __table_args__ = (UniqueConstraint("group_id", "device_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("speaker_groups.id", ondelete="CASCADE"))
    device_id: Mapped[str] = mapped_column(String(64))

    group: Mapped[SpeakerGroup] = relationship(back_populates="members")

