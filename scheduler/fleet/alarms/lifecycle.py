"""The life of one alarm, as in ThingsBoard: pure functions on an :class:`AlarmRecord`, no I/O.

* One alarm per (source, type) at a time: while it is **active**, a new occurrence of the same
  condition updates it (``last_seen``, ``count``, maybe ``severity``) instead of making another.
  Once it is **cleared**, the next occurrence opens a new alarm (the old one stays in the history).
* Two independent axes: active / cleared, and acknowledged / not. A technician acknowledges with a
  note ("on my way", "speaker stolen, police informed"); the alarm stays active until its condition
  ends (it clears by itself) or someone clears it by hand.
* Escalation: an occurrence with a higher severity raises the alarm's severity and takes the
  acknowledgement away (someone must look again); a lower one does not lower it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from scheduler.fleet.config import severity_rank

Status = Literal["active", "cleared"]
Transition = Literal["raised", "updated", "escalated"]
MAX_NOTE = 2000
MAX_MESSAGE = 2000


class LifecycleError(ValueError):
    """An action that makes no sense in the alarm's state (the message says why)."""


@dataclass(frozen=True)
class Occurrence:
    """The condition behind an alarm holds (again)."""

    source: str
    type: str
    gateway: str
    device: str | None
    severity: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    at: int = 0


@dataclass(frozen=True)
class AlarmRecord:
    source: str
    type: str
    gateway: str
    device: str | None
    severity: str
    message: str
    first_seen: int
    last_seen: int
    id: int | None = None
    status: Status = "active"
    count: int = 1
    details: dict[str, Any] = field(default_factory=dict)
    acknowledged: bool = False
    ack_by: str | None = None
    ack_at: int | None = None
    ack_note: str | None = None
    cleared_at: int | None = None
    cleared_by: str | None = None  # None: cleared by itself
    clear_note: str | None = None
    notified: bool = False  # the "raised" notice went out (or was queued)
    silenced: bool = False  # raised while a silence covered it

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.type)

    @property
    def state(self) -> str:
        """ThingsBoard's four states: ACTIVE_UNACK, ACTIVE_ACK, CLEARED_UNACK, CLEARED_ACK."""
        return f"{self.status.upper()}_{'ACK' if self.acknowledged else 'UNACK'}"


def occur(current: AlarmRecord | None, occ: Occurrence) -> tuple[AlarmRecord, Transition]:
    """Apply an occurrence: a new alarm (``raised``) or the active one updated (``updated`` /
    ``escalated``). ``current`` is the latest alarm of this (source, type), active or not."""
    if current is not None and current.key != (occ.source, occ.type):
        raise LifecycleError(f"occurrence of {occ.source}/{occ.type} applied to alarm {current.source}/{current.type}")
    if current is None or current.status == "cleared":
        return AlarmRecord(
            source=occ.source, type=occ.type, gateway=occ.gateway, device=occ.device, severity=occ.severity,
            message=occ.message[:MAX_MESSAGE], details=dict(occ.details), first_seen=occ.at, last_seen=occ.at,
        ), "raised"
    escalated = severity_rank(occ.severity) < severity_rank(current.severity)
    updated = replace(
        current,
        last_seen=max(current.last_seen, occ.at),
        count=current.count + 1,
        message=occ.message[:MAX_MESSAGE] or current.message,
        details=dict(occ.details) or current.details,
        severity=occ.severity if escalated else current.severity,
    )
    if escalated:
        updated = replace(updated, acknowledged=False, ack_by=None, ack_at=None, ack_note=None, notified=False)
        return updated, "escalated"
    return updated, "updated"


def touch(current: AlarmRecord, at: int, message: str | None = None,
          details: dict[str, Any] | None = None) -> AlarmRecord:
    """The condition still holds: ``last_seen`` moves on and the message shows the latest value (a
    water level still rising); not a new occurrence, so ``count`` stays."""
    if current.status != "active":
        raise LifecycleError(f"alarm {current.id} is cleared")
    return replace(current, last_seen=max(current.last_seen, at),
                   message=(message or current.message)[:MAX_MESSAGE],
                   details=dict(details) if details is not None else current.details)


def clear(current: AlarmRecord, at: int, *, by: str | None = None, note: str | None = None) -> AlarmRecord:
    """Clear an active alarm: by itself (``by`` None) when its condition ended, or by a person."""
    if current.status == "cleared":
        raise LifecycleError(f"alarm {current.id} is already cleared")
    return replace(current, status="cleared", cleared_at=at, cleared_by=by,
                   clear_note=(note or None) and note[:MAX_NOTE])


def acknowledge(current: AlarmRecord, at: int, *, by: str, note: str | None = None) -> AlarmRecord:
    """Acknowledge (active or cleared); acknowledging twice is refused, so a note is never lost."""
    if current.acknowledged:
        raise LifecycleError(f"alarm {current.id} was already acknowledged by {current.ack_by}")
    return replace(current, acknowledged=True, ack_by=by[:200], ack_at=at, ack_note=(note or None) and note[:MAX_NOTE])
