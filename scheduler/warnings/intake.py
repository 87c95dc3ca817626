"""From a CAP 1.2 message to a broadcast (or to the log): the intake's decisions.

1. Parse and validate (:mod:`.cap`); a refused message is still kept in the audit log.
2. The same ``sender,identifier,sent`` again is a duplicate: answered as before, nothing repeated.
3. The Vietnamese ``<info>`` (else the first) is chosen; its areas are matched against the communes
   of the scheduler's config (:mod:`.areas`).
4. Only ``status=Actual``, ``scope=Public`` alerts and updates can play. Test, Exercise, System and
   Draft messages, Ack/Error, and Restricted/Private ones (meant for named recipients) are logged.
   An alert whose ``<expires>`` has passed is logged as expired.
5. ``Cancel`` stops what the referenced alerts started (their broadcasts are cancelled on the
   gateways, their pending approvals withdrawn). ``Update`` does the same and then goes on as a new
   alert with its own text and areas.
6. The text (headline, description, instruction, onset) is read aloud by the TTS; urgency and
   severity give the level of Thông tư 39 (normal/priority/emergency); ``effective`` in the future
   becomes the broadcast's start.
7. The broadcast goes out at once when the source's policy allows it (a trusted source, and a
   severity and urgency in the auto-send lists: by default Extreme + Immediate); otherwise it waits,
   media ready, for an approver (``POST /api/cap/{id}/approve``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from loaxa.clock import now_ms
from protocol.models import PRIORITY_EMERGENCY, PRIORITY_HIGH, PRIORITY_NORMAL
from scheduler.config import CapSection, GatewayEntry

from .areas import Commune, match_areas
from .cap import Alert, CapError, Info, parse_cap
from .models import (
    DECISION_CANCELLED,
    DECISION_DUPLICATE,
    DECISION_EXPIRED,
    DECISION_LOGGED,
    DECISION_NO_MATCH,
    DECISION_PENDING,
    DECISION_REJECTED,
    DECISION_SENT,
    STATE_ACTIVE,
    STATE_CANCELLED,
    STATE_DONE,
    STATE_PENDING,
    STATE_SUPERSEDED,
    CapAlertRow,
)

log = logging.getLogger(__name__)

MAX_SPOKEN_CHARS = 3000
AUDIT_RAW_CHARS = 3000

Audit = Callable[[str, str, dict[str, Any]], Awaitable[None]]


class CapRefused(Exception):
    """Raised for a message that cannot be acted on; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, element: str, message: str) -> None:
        super().__init__(f"{element}: {message}")
        self.status = status
        self.element = element
        self.message = message


def communes_from_config(entries: Sequence[GatewayEntry]) -> list[Commune]:
    return [Commune(gateway=g.id, name=g.commune, code=g.code, location=g.location,
                    boundary=tuple(g.boundary) if g.boundary else None) for g in entries]


def tt39_priority(info: Info) -> int:
    """CAP urgency/severity → the level of Thông tư 39/2020/TT-BTTTT on the 0–9 wire scale."""
    if info.severity == "Extreme" or (info.severity == "Severe" and info.urgency in ("Immediate", "Expected")):
        return PRIORITY_EMERGENCY
    if info.severity in ("Severe", "Moderate"):
        return PRIORITY_HIGH
    return PRIORITY_NORMAL


def spoken_text(info: Info, tz: ZoneInfo) -> str:
    """What is read aloud: headline (or event), description, instruction, and the onset time."""
    parts = [info.headline or info.event]
    if info.onset is not None:
        t = datetime.fromtimestamp(info.onset / 1000, tz)
        parts.append(f"Thời gian dự kiến: {t.hour}h{t.minute:02d} ngày {t.day:02d}/{t.month:02d}/{t.year}")
    parts += [p for p in (info.description, info.instruction) if p]
    text = ". ".join(p.strip().rstrip(".") for p in parts if p and p.strip()) + "."
    return text if len(text) <= MAX_SPOKEN_CHARS else text[: MAX_SPOKEN_CHARS - 1] + "…"


# ---------------------------------------------------------------- database (run on the store's thread)


def _find(db: Any, key: str) -> CapAlertRow | None:
    with db.session() as s:
        row: CapAlertRow | None = s.scalars(select(CapAlertRow).where(CapAlertRow.key == key)).first()
        if row is not None:
            s.expunge(row)
        return row


def _get(db: Any, alert_id: int) -> CapAlertRow | None:
    with db.session() as s:
        row: CapAlertRow | None = s.get(CapAlertRow, alert_id)
        if row is not None:
            s.expunge(row)
        return row


def _insert(db: Any, row: CapAlertRow) -> CapAlertRow:
    with db.session() as s, s.begin():
        s.add(row)
        s.flush()
        s.expunge(row)
        return row


def _update(db: Any, alert_id: int, **values: Any) -> None:
    with db.session() as s, s.begin():
        row = s.get(CapAlertRow, alert_id)
        if row is not None:
            for k, v in values.items():
                setattr(row, k, v)


def _recent(db: Any, limit: int) -> list[dict[str, Any]]:
    with db.session() as s:
        rows = s.scalars(select(CapAlertRow).order_by(CapAlertRow.id.desc()).limit(limit)).all()
        return [r.public() for r in rows]


# ---------------------------------------------------------------- the intake


@dataclass
class Outcome:
    row: CapAlertRow
    cancelled_broadcasts: list[str]

    def answer(self) -> dict[str, Any]:
        r = self.row
        return {"id": r.id, "identifier": r.identifier, "sender": r.sender, "sent": r.sent, "status": r.status,
                "msgType": r.msg_type, "decision": r.decision, "state": r.state, "gateways": list(r.gateways or []),
                "priority": r.priority, "broadcast_id": r.broadcast_id, "start_at": r.start_at,
                "expires_at": r.expires_at, "references": list(r.references or []),
                "cancelled_broadcasts": self.cancelled_broadcasts}


class CapIntake:
    def __init__(self, dispatcher: Any, library: Any, communes: Sequence[Commune], policy: CapSection,
                 audit: Audit, *, timezone: str = "Asia/Ho_Chi_Minh") -> None:
        self.dispatcher = dispatcher
        self.library = library
        self.store = dispatcher.store
        self.db = dispatcher.db
        self.communes = list(communes)
        self.policy = policy
        self.audit = audit
        self.tz = ZoneInfo(timezone)
        self._lock = asyncio.Lock()

    def allows_at_once(self, source: str, info: Info) -> bool:
        p = self.policy
        bare = source.removeprefix("token:").removeprefix("feed:")
        trusted = source in p.trusted_sources or bare in p.trusted_sources
        return (trusted and info.severity in p.auto_send_severities
                and info.urgency in p.auto_send_urgencies)

    async def submit(self, raw: bytes, source: str, audit: Audit | None = None) -> Outcome:
        """Act on one message from ``source`` (a token/account name or a feed's source name)."""
        audit = audit or self.audit
        digest = hashlib.sha256(raw).hexdigest()
        text = raw.decode("utf-8", "replace")
        try:
            alert = await asyncio.to_thread(parse_cap, raw)
        except CapError as exc:
            await audit("cap.refused", exc.element, {"source": source, "raw_sha256": digest,
                                                          "error": str(exc)[:500], "raw": text[:AUDIT_RAW_CHARS]})
            raise CapRefused(400, exc.element, exc.message) from exc
        async with self._lock:
            earlier = await self.store.call(_find, self.db, alert.key)
            if earlier is not None:
                out = Outcome(earlier, [])
                out.row.decision = DECISION_DUPLICATE
                return out
            outcome = await self._decide(alert, raw, digest, source)
        r = outcome.row
        await audit("cap.receive", alert.key[:200], {
            "source": source, "raw_sha256": digest, "decision": r.decision, "gateways": r.gateways,
            "broadcast_id": r.broadcast_id, "cancelled": outcome.cancelled_broadcasts, "raw": text[:AUDIT_RAW_CHARS]})
        log.info("CAP %s from %s: %s %s", alert.key[:120], source, r.decision, ",".join(r.gateways or []))
        return outcome

    async def _stop_referenced(self, alert: Alert, new_state: str) -> tuple[list[str], list[str]]:
        """Cancel the broadcasts of the alerts ``alert`` references; (cancelled ids, their gateways)."""
        cancelled: list[str] = []
        gateways: list[str] = []
        for ref in alert.references:
            row = await self.store.call(_find, self.db, ",".join(ref))
            if row is None:
                continue
            gateways += [g for g in row.gateways or [] if g not in gateways]
            if row.state in (STATE_ACTIVE, STATE_PENDING):
                if row.broadcast_id is not None and row.state == STATE_ACTIVE:
                    try:
                        await self.dispatcher.cancel_broadcast(row.broadcast_id)
                        cancelled.append(row.broadcast_id)
                    except Exception as exc:  # already gone: nothing left to stop
                        log.warning("CAP %s: cancelling %s: %s", alert.key[:120], row.broadcast_id, exc)
                await self.store.call(_update, self.db, row.id, state=new_state)
        return cancelled, gateways

    async def _decide(self, alert: Alert, raw: bytes, digest: str, source: str) -> Outcome:
        now = now_ms()
        info = alert.chosen_info()
        gateways = match_areas(info.areas, self.communes) if info is not None else []
        row = CapAlertRow(
            key=alert.key, identifier=alert.identifier, sender=alert.sender, sent=alert.sent, status=alert.status,
            msg_type=alert.msg_type, received_at=now, source=source[:200], raw_sha256=digest,
            raw=raw.decode("utf-8", "replace"), decision=DECISION_LOGGED, state=STATE_DONE, gateways=gateways,
            references=[",".join(r) for r in alert.references],
            language=info.language if info else None, urgency=info.urgency if info else None,
            severity=info.severity if info else None, headline=info.headline if info else None,
            expires_at=info.expires if info else None,
        )
        cancelled: list[str] = []
        # Restricted and Private alerts are for named recipients, never for public loudspeakers
        if alert.status != "Actual" or alert.msg_type in ("Ack", "Error") or alert.scope != "Public":
            return Outcome(await self.store.call(_insert, self.db, row), cancelled)
        if alert.msg_type == "Cancel":
            cancelled, old_gws = await self._stop_referenced(alert, STATE_CANCELLED)
            row.decision, row.gateways = DECISION_CANCELLED, gateways or old_gws
            return Outcome(await self.store.call(_insert, self.db, row), cancelled)
        if alert.msg_type == "Update":
            cancelled, _ = await self._stop_referenced(alert, STATE_SUPERSEDED)
        if info is None:
            row.decision = DECISION_NO_MATCH
            return Outcome(await self.store.call(_insert, self.db, row), cancelled)
        if info.expires is not None and info.expires <= now:
            row.decision = DECISION_EXPIRED
            return Outcome(await self.store.call(_insert, self.db, row), cancelled)
        if not gateways:
            row.decision = DECISION_NO_MATCH
            return Outcome(await self.store.call(_insert, self.db, row), cancelled)
        row.priority = tt39_priority(info)
        start = info.effective if info.effective is not None and info.effective > now + 1000 else None
        row.start_at = start
        row.text = spoken_text(info, self.tz)
        media = await self.library.run_job(self.library.tts, row.text)
        stored = await self.store.call(self.db.add_media, media)
        row.media_sha256 = stored.sha256
        row.broadcast_id = "cap-" + hashlib.sha256(alert.key.encode()).hexdigest()[:24]
        if self.allows_at_once(source, info):
            row.decision, row.state = DECISION_SENT, STATE_ACTIVE
            inserted = await self.store.call(_insert, self.db, row)
            await self._broadcast(inserted, created_by=f"cap:{source}"[:200])
            return Outcome(inserted, cancelled)
        row.decision, row.state = DECISION_PENDING, STATE_PENDING
        try:
            return Outcome(await self.store.call(_insert, self.db, row), cancelled)
        except IntegrityError as exc:  # the same key, inserted meanwhile by another worker
            raise CapRefused(409, "alert/identifier",
                             "this message (sender, identifier, sent) is being handled") from exc

    async def _broadcast(self, row: CapAlertRow, *, created_by: str) -> None:
        assert row.media_sha256 is not None and row.broadcast_id is not None and row.priority is not None
        title = (row.headline or f"CAP {row.identifier}")[:200]
        await self.dispatcher.create_broadcast(
            media_sha256=row.media_sha256, targets=list(row.gateways), start_at=row.start_at, priority=row.priority,
            volume=self.policy.volume, title=title, created_by=created_by, broadcast_id=row.broadcast_id)

    async def approve(self, alert_id: int, approver: str) -> CapAlertRow:
        """Send the broadcast of a pending alert (the caller checked the approver's permissions)."""
        async with self._lock:
            row: CapAlertRow | None = await self.store.call(_get, self.db, alert_id)
            if row is None:
                raise CapRefused(404, "id", f"no CAP alert {alert_id}")
            if row.state != STATE_PENDING:
                raise CapRefused(409, "state", f"alert {alert_id} is {row.state}, not waiting for approval")
            if row.expires_at is not None and row.expires_at <= now_ms():
                await self.store.call(_update, self.db, row.id, state=STATE_DONE, decision=DECISION_EXPIRED)
                raise CapRefused(409, "expires", f"alert {alert_id} expired before it was approved")
            if row.start_at is not None and row.start_at <= now_ms():
                row.start_at = None  # its effective time came while it waited: now
            await self._broadcast(row, created_by=approver)
            await self.store.call(_update, self.db, row.id, state=STATE_ACTIVE, decision=DECISION_SENT,
                                  approved_by=approver, start_at=row.start_at)
            row.state, row.decision, row.approved_by = STATE_ACTIVE, DECISION_SENT, approver
            return row

    async def reject(self, alert_id: int) -> CapAlertRow:
        """Refuse a pending alert: nothing plays (the caller checked the approver's permissions and audits
        who refused it and why)."""
        async with self._lock:
            row: CapAlertRow | None = await self.store.call(_get, self.db, alert_id)
            if row is None:
                raise CapRefused(404, "id", f"no CAP alert {alert_id}")
            if row.state != STATE_PENDING:
                raise CapRefused(409, "state", f"alert {alert_id} is {row.state}, not waiting for approval")
            await self.store.call(_update, self.db, row.id, state=STATE_DONE, decision=DECISION_REJECTED)
            row.state, row.decision = STATE_DONE, DECISION_REJECTED
            return row

    async def get(self, alert_id: int) -> CapAlertRow | None:
        row: CapAlertRow | None = await self.store.call(_get, self.db, alert_id)
        return row

    async def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self.store.call(_recent, self.db, limit)
        return rows
