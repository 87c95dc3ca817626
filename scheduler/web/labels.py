"""Words for the states and codes the scheduler stores (msgids; templates translate them)."""

from __future__ import annotations

from protocol.models import PRIORITY_EMERGENCY, PRIORITY_HIGH, PRIORITY_NORMAL
from scheduler.web.nav import N_

#: Per-speaker delivery state → what the board says.
SPEAKER_STATES: dict[str, str] = {
    "pending": N_("waiting"),
    "delivered": N_("received, waiting to play"),
    "started": N_("playing"),
    "finished": N_("finished"),
    "failed": N_("failed"),
    "preempted": N_("interrupted by a more urgent broadcast"),
    "skipped": N_("skipped"),
}

#: Per-gateway delivery state of the signed command.
GATEWAY_STATES: dict[str, str] = {
    "pending": N_("not yet received"),
    "delivered": N_("received"),
    "refused": N_("refused"),
    "expired": N_("expired before delivery"),
}

#: Reasons a gateway or speaker gives, in words staff understand.
REASONS: dict[str, str] = {
    "media_unavailable": N_("the audio could not be fetched"),
    "expired": N_("too late: the broadcast expired"),
    "cancelled": N_("cancelled"),
    "replay": N_("already received"),
    "bad_signature": N_("the signature was refused"),
}

#: Thông tư 39/2020/TT-BTTTT: three levels, on the 0–9 scale the wire uses.
PRIORITIES: dict[str, tuple[int, str]] = {
    "normal": (PRIORITY_NORMAL, N_("Normal")),
    "priority": (PRIORITY_HIGH, N_("Priority")),
    "emergency": (PRIORITY_EMERGENCY, N_("Emergency")),
}


def priority_key(value: int) -> str:
    """The level of a 0–9 priority (the same cut-offs as the wire's names)."""
    if value >= PRIORITY_EMERGENCY:
        return "emergency"
    if value >= PRIORITY_HIGH:
        return "priority"
    return "normal"


TERMINAL = frozenset({"finished", "failed", "preempted", "skipped"})

#: Roles of the access package, in the words of a commune office.
ROLE_NAMES: dict[str, str] = {
    "admin": N_("Administrator"),
    "approver": N_("Approver (commune chairman)"),
    "operator": N_("Operator (commune staff)"),
    "technician": N_("Technician"),
    "viewer": N_("Read only"),
    "ioc": N_("IOC (read-only API)"),
}
