"""The table of CAP alerts received (on the scheduler's one declarative ``Base``).

Every message is kept, raw, whatever was decided: the audit log entry of its receipt carries the raw
message's SHA-256 (so the hash chain vouches for the row) and its first characters.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from scheduler.models import Base

#: What the intake decided about one message
DECISION_SENT = "sent"  # a broadcast went to the matched communes
DECISION_PENDING = "pending_approval"  # a broadcast is ready and waits for an approver
DECISION_LOGGED = "logged"  # Test/Exercise/System/Draft, Ack/Error: kept, nothing plays
DECISION_NO_MATCH = "no_match"  # no commune in its areas
DECISION_EXPIRED = "expired"  # <expires> already passed
DECISION_CANCELLED = "cancelled"  # a Cancel: what the referenced alerts started was stopped
DECISION_DUPLICATE = "duplicate"  # the same sender,identifier,sent again
DECISION_REJECTED = "rejected"  # an approver refused it (who and why: the audit log's cap.reject)

#: Where an alert stands afterwards
STATE_ACTIVE = "active"
STATE_PENDING = "pending"
STATE_CANCELLED = "cancelled"
STATE_SUPERSEDED = "superseded"
STATE_DONE = "done"


class CapAlertRow(Base):
    __tablename__ = "cap_alerts"
    __table_args__ = (Index("ix_cap_alerts_received", "received_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(1100), unique=True)
    identifier: Mapped[str] = mapped_column(String(500))
    sender: Mapped[str] = mapped_column(String(500))
    sent: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16))
    msg_type: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(200))
    raw_sha256: Mapped[str] = mapped_column(String(64))
    raw: Mapped[str] = mapped_column(Text)
    decision: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    gateways: Mapped[list[str]] = mapped_column(JSON, default=list)
    references: Mapped[list[str]] = mapped_column(JSON, default=list)
    language: Mapped[str | None] = mapped_column(String(35), nullable=True)
    urgency: Mapped[str | None] = mapped_column(String(16), nullable=True)
    severity: Mapped[str | None] = mapped_column(String(16), nullable=True)
    priority: Mapped[int | None] = mapped_column(Integer, nullable=True)
    headline: Mapped[str | None] = mapped_column(String(500), nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    start_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    media_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    broadcast_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    approved_by: Mapped[str | None] = mapped_column(String(200), nullable=True)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id, "identifier": self.identifier, "sender": self.sender, "sent": self.sent,
            "status": self.status, "msgType": self.msg_type, "received_at": self.received_at,
            "source": self.source, "decision": self.decision, "state": self.state,
            "gateways": list(self.gateways or []), "references": list(self.references or []),
            "language": self.language, "urgency": self.urgency, "severity": self.severity,
            "priority": self.priority, "headline": self.headline, "text": self.text, "start_at": self.start_at,
            "expires_at": self.expires_at, "broadcast_id": self.broadcast_id, "approved_by": self.approved_by,
            "raw_sha256": self.raw_sha256,
        }
