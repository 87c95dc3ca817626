"""Words for the states and codes the scheduler stores (msgids; templates translate them)."""

from __future__ import annotations

from collections.abc import Callable

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

#: Reasons a gateway or speaker gives, in words staff understand. A reason may join several codes
#: with "; " (the speaker's own one first, e.g. "media_unavailable; no_start_report"): each is
#: translated on its own (:func:`reason_words`).
REASONS: dict[str, str] = {
    "media_unavailable": N_("the audio could not be fetched"),
    "media_mismatch": N_("the audio received was not the one signed"),
    "media_too_large": N_("the audio file is too large for the gateway"),
    "expired": N_("too late: the broadcast expired"),
    "cancelled": N_("cancelled"),
    "replay": N_("already received"),
    "bad_signature": N_("the signature was refused"),
    "no_ack": N_("the speaker did not confirm the order"),
    "no_start_report": N_("the speaker did not report that it started"),
    "no_finish_report": N_("the speaker did not report that it finished"),
    "went_offline": N_("the speaker went off line"),
    "device_offline": N_("the speaker is off line"),
    "device_error": N_("the speaker reported a fault"),
    "missed_start": N_("the start time had already passed"),
    "no_answer": N_("no answer"),
    "not_pingable": N_("this device cannot be pinged"),
    "preempted": N_("interrupted by a more urgent broadcast"),
}
#: "preempted by <broadcast id>", as the gateway writes it.
PREEMPTED_BY = "preempted by "
#: At most this many codes of one reason are translated (the rest is dropped, marked "…").
MAX_REASON_PARTS = 8


def reason_codes(reason: str | None) -> list[str]:
    """The codes of a reason as stored ("a; b" → ["a", "b"]), empty parts dropped."""
    if not reason:
        return []
    return [part.strip() for part in reason.split(";") if part.strip()]


def reason_words(reason: str | None, gettext: Callable[[str], str]) -> str:
    """A stored reason in the reader's words: each known code translated, unknown ones kept as sent."""
    parts = reason_codes(reason)
    out = []
    for code in parts[:MAX_REASON_PARTS]:
        if code in REASONS:
            out.append(gettext(REASONS[code]))
        elif code.startswith(PREEMPTED_BY):
            out.append(gettext(REASONS["preempted"]))
        else:
            out.append(code[:200])
    if len(parts) > MAX_REASON_PARTS:
        out.append("…")
    return "; ".join(out)


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
