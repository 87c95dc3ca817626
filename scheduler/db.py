"""The scheduler's database: the :class:`Store`, whose methods are the only code that reads or writes the tables.

Store methods are synchronous and each runs in one transaction. The dispatcher and the HTTP API run
them on one dedicated thread (:class:`AsyncStore`), so the event loop never waits on the disk and
SQLite never sees two writers from this process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, ParamSpec, TypeVar

from pydantic import BaseModel
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, selectinload

from protocol.ids import validate_id
from protocol.models import (
    COMMAND_BODIES,
    Ack,
    BroadcastCancelBody,
    BroadcastPlanBody,
    Envelope,
    PlaybackEvent,
    Status,
)
from scheduler.models import (
    GW_DELIVERED,
    GW_EXPIRED,
    GW_PENDING,
    GW_REFUSED,
    KIND_CANCEL,
    KIND_PLAN,
    SPEAKER_RANK,
    SPK_DELIVERED,
    SPK_FAILED,
    SPK_PENDING,
    SPK_SKIPPED,
    SPK_STARTED,
    TERMINAL_SPEAKER_STATES,
    Base,
    Broadcast,
    Gateway,
    GatewayDelivery,
    Media,
    Speaker,
    SpeakerDelivery,
)
from scheduler.store.engine import default_url as default_url  # re-exported: scheduler.service uses it
from scheduler.store.engine import make_engine as make_engine
from scheduler.store.engine import make_sessionmaker

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: Refusal reasons that mean "I have already seen this command": the first copy got through.
ALREADY_SEEN_REASONS = frozenset({"replay", "duplicate", "seen", "already_seen", "replayed"})
#: Refusals that can heal: the command stays pending and is sent again (same envelope) until it is
#: acked or expires by this scheduler's clock. ``deferred``: kept by a gateway whose clock is behind;
#: ``future``/``expired``: judged by a gateway clock that may be wrong (a Pi after a power cut);
#: ``internal``/``timeout``: a gateway fault or a slow device; ``in_progress``: a copy is running.
RETRY_REASONS = frozenset({"deferred", "future", "expired", "internal", "timeout", "in_progress"})


class NotFound(LookupError):
    """No such broadcast / media / gateway."""


class BadRequest(ValueError):
    """The request cannot be carried out as asked (message says why)."""


@dataclass(frozen=True)
class Target:
    gateway: str
    device: str | None  # None: every speaker of the gateway

    @classmethod
    def parse(cls, text: str) -> Target:
        """``GW`` or ``GW/DEV``; raises :class:`BadRequest` naming the bad part."""
        parts = text.strip().split("/")
        if len(parts) > 2 or not parts[0]:
            raise BadRequest(f"target {text!r}: write GATEWAY or GATEWAY/DEVICE")
        try:
            gw = validate_id(parts[0], "gateway id")
            dev = validate_id(parts[1], "device id") if len(parts) == 2 else None
        except ValueError as exc:
            raise BadRequest(f"target {text!r}: {exc}") from exc
        return cls(gw, dev)

    def __str__(self) -> str:
        return self.gateway if self.device is None else f"{self.gateway}/{self.device}"


@dataclass(frozen=True)
class Incoming:
    """A message from a gateway, parsed and validated: Status, Ack, PlaybackEvent, or a speaker's
    state (a dict, with ``device``)."""

    gateway: str
    message: Status | Ack | PlaybackEvent | dict[str, Any]
    device: str | None = None


@dataclass(frozen=True)
class Outgoing:
    """A signed command ready to publish to one gateway."""

    gateway: str
    command_id: str
    envelope: str
    expires_at: int


#: Builds a signed envelope: (kind, body, ttl_ms) -> Envelope. Supplied by the dispatcher.
#: ``make_envelope(kind, body, ttl_ms, gateway_id)``: a signed envelope naming its gateway
MakeEnvelope = Callable[[str, BaseModel, int, str], Envelope]
#: Builds the plan body for one gateway: (broadcast, device targets or "*", gateway) -> BroadcastPlanBody.
MakePlan = Callable[[Broadcast, list[str] | str, str], BroadcastPlanBody]


def advance_speaker(row: SpeakerDelivery, state: str, at: int, now: int, reason: str | None = None) -> bool:
    """Move ``row`` to ``state`` unless that would go backwards. Returns True when the state changed.

    Timestamps are filled even when the state does not change (a ``started`` that arrives after
    ``finished`` still records when it started). The first terminal state wins.
    """
    if state == SPK_DELIVERED and row.delivered_at is None:
        row.delivered_at = at
    elif state == SPK_STARTED and row.started_at is None:
        row.started_at = at
    elif state in TERMINAL_SPEAKER_STATES and row.state not in TERMINAL_SPEAKER_STATES:
        row.ended_at = at
    if SPEAKER_RANK[state] <= SPEAKER_RANK[row.state]:
        return False
    row.state = state
    row.updated_at = now
    if reason is not None:
        row.reason = reason[:500]
    return True


class Store:
    """All database reads and writes of the scheduler."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._session = make_sessionmaker(self.engine)

    def upgrade(self) -> str | None:
        """Bring the schema to the newest migration (a pre-migration database is adopted first).

        Raises :class:`~scheduler.store.migrate.MigrationError` for a database the scheduler did not make.
        """
        from scheduler.store.migrate import upgrade

        return upgrade(self.engine)

    def create_all(self) -> None:
        """Tables straight from the models, without migrations: for throwaway databases only."""
        import scheduler.access.models  # noqa: F401  (its tables join Base.metadata)

        Base.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def session(self) -> Session:
        return self._session()

    def ping(self) -> None:
        """A trivial query: the database answers."""
        with self.engine.connect() as conn:
            conn.execute(select(1))

    # ------------------------------------------------------------ gateways and speakers

    # Rows looked up once per session (one transaction, possibly a batch of many messages) are
    # kept in ``session.info``: a batch of reports for one broadcast then costs a few queries.

    @staticmethod
    def _memo(s: Session) -> dict[tuple[str, ...], Any]:
        memo: dict[tuple[str, ...], Any] = s.info.setdefault("memo", {})
        return memo

    def _gateway(self, s: Session, gw: str) -> Gateway:
        memo = self._memo(s)
        row: Gateway | None = memo.get(("gw", gw))
        if row is not None:
            return row
        row = s.get(Gateway, gw)
        if row is None:
            row = Gateway(id=gw)
            s.add(row)
            s.flush()
        memo[("gw", gw)] = row
        return row

    def _plan_of(self, s: Session, bid: str, gw: str) -> GatewayDelivery | None:
        memo = self._memo(s)
        key = ("plan", bid, gw)
        if key not in memo:
            memo[key] = s.scalars(
                select(GatewayDelivery).where(
                    GatewayDelivery.broadcast_id == bid,
                    GatewayDelivery.gateway_id == gw,
                    GatewayDelivery.kind == KIND_PLAN,
                )
            ).first()
        plan: GatewayDelivery | None = memo[key]
        return plan

    def _speaker_rows(self, s: Session, bid: str, gw: str) -> dict[str, SpeakerDelivery]:
        """Every speaker row of one broadcast on one gateway, by device id (new rows go in too)."""
        memo = self._memo(s)
        key = ("spk", bid, gw)
        if key not in memo:
            rows = s.scalars(
                select(SpeakerDelivery).where(SpeakerDelivery.broadcast_id == bid, SpeakerDelivery.gateway_id == gw)
            ).all()
            memo[key] = {r.device_id: r for r in rows}
        found: dict[str, SpeakerDelivery] = memo[key]
        return found

    def _status(self, s: Session, gw: str, status: Status, now: int) -> bool:
        """Store a gateway's status; returns True when it is online.

        Messages are taken in arrival order (the broker keeps one topic in order), not by ``ts``: a
        Raspberry Pi without a clock battery may boot with its clock in the past.
        """
        row = self._gateway(s, gw)
        row.last_seen = now
        row.status = status.state
        row.status_ts = status.ts
        if status.version:
            row.version = status.version[:64]
        commune = status.commune
        if isinstance(commune, str) and commune:
            row.commune = commune[:200]
        return status.state == "online"

    def record_status(self, gw: str, status: Status, now: int) -> bool:
        with self.session() as s, s.begin():
            return self._status(s, gw, status, now)

    def register_gateways(self, entries: Iterable[tuple[str, str | None]]) -> None:
        """Create (or name the commune of) the configured gateways: the only way a gateway row is
        born. A gateway id that merely appears in a topic is never registered."""
        with self.session() as s, s.begin():
            for gw, commune in entries:
                row = self._gateway(s, gw)
                if commune is not None:
                    row.commune = commune[:200] or None

    def gateway_ids(self) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(Gateway.id)).all())

    def touch_gateway(self, gw: str, now: int) -> None:
        with self.session() as s, s.begin():
            self._gateway(s, gw).last_seen = now

    def _speaker(self, s: Session, gw: str, dev: str, state: dict[str, Any], now: int) -> None:
        """Register or refresh a speaker from its retained device state."""
        self._gateway(s, gw)
        row = s.scalars(select(Speaker).where(Speaker.gateway_id == gw, Speaker.device_id == dev)).first()
        if row is None:
            row = Speaker(gateway_id=gw, device_id=dev)
            s.add(row)
        name = state.get("name")
        if isinstance(name, str) and name:
            row.name = name[:200]
        online = state.get("online")
        if isinstance(online, bool):
            row.online = online
        volume = state.get("volume")
        if isinstance(volume, int) and not isinstance(volume, bool):
            row.volume = volume
        row.last_seen = now

    def record_speaker(self, gw: str, dev: str, state: dict[str, Any], now: int) -> None:
        with self.session() as s, s.begin():
            self._speaker(s, gw, dev, state, now)

    def gateways(self) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(Gateway).options(selectinload(Gateway.speakers)).order_by(Gateway.id)).all()
            return [
                {
                    "id": g.id,
                    "commune": g.commune,
                    "status": g.status,
                    "status_ts": g.status_ts,
                    "last_seen": g.last_seen,
                    "version": g.version,
                    "speakers": [
                        {
                            "device": sp.device_id,
                            "name": sp.name,
                            "online": sp.online,
                            "volume": sp.volume,
                            "last_seen": sp.last_seen,
                        }
                        for sp in sorted(g.speakers, key=lambda x: x.device_id)
                    ],
                }
                for g in rows
            ]

    def online_gateways(self) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(Gateway.id).where(Gateway.status == "online")).all())

    def set_commune(self, gw: str, commune: str | None) -> None:
        """Name the commune of a gateway (gateways may also announce it in their status)."""
        with self.session() as s, s.begin():
            self._gateway(s, gw).commune = commune

    def gateway_states(self, ids: Iterable[str]) -> dict[str, str | None]:
        """Last status of each gateway (None: never heard from)."""
        wanted = list(ids)
        with self.session() as s:
            rows = s.execute(select(Gateway.id, Gateway.status).where(Gateway.id.in_(wanted))).all()
        known = {gid: status for gid, status in rows}
        return {gid: known.get(gid) for gid in wanted}

    # ------------------------------------------------------------ media

    def add_media(self, media: Media) -> Media:
        """Insert (or return the existing row for) content-addressed media."""
        with self.session() as s, s.begin():
            existing = s.get(Media, media.sha256)
            if existing is not None:
                return existing
            s.add(media)
            return media

    def get_media(self, sha256: str) -> Media | None:
        with self.session() as s:
            return s.get(Media, sha256)

    def list_media(self, limit: int = 100) -> list[Media]:
        """The library, newest first."""
        with self.session() as s:
            return list(s.scalars(select(Media).order_by(Media.created_at.desc()).limit(limit)))

    # ------------------------------------------------------------ broadcasts

    def create_broadcast(
        self,
        *,
        media_sha256: str,
        targets: Sequence[str],
        start_at: int | None,
        priority: int,
        volume: int,
        repeat: int,
        title: str | None,
        created_by: str | None,
        max_late_ms: int,
        now: int,
        make_plan: MakePlan,
        make_envelope: MakeEnvelope,
        broadcast_id: str | None = None,
    ) -> tuple[str, list[Outgoing]]:
        """Record a broadcast, its per-gateway plan commands and per-speaker rows, in one transaction."""
        parsed = [Target.parse(t) for t in targets]
        if not parsed:
            raise BadRequest("a broadcast needs at least one target (GATEWAY or GATEWAY/DEVICE)")
        bid = broadcast_id or f"bc-{uuid.uuid4().hex[:20]}"
        with self.session() as s, s.begin():
            media = s.get(Media, media_sha256)
            if media is None:
                raise BadRequest(f"media {media_sha256} is not in the library; upload it first")
            if s.get(Broadcast, bid) is not None:
                raise BadRequest(f"broadcast {bid} already exists")
            expires_at = max(start_at or now, now) + media.duration_ms * repeat + max_late_ms
            b = Broadcast(
                id=bid,
                title=title,
                media_sha256=media_sha256,
                start_at=start_at,
                priority=priority,
                volume=volume,
                repeat=repeat,
                targets=[str(t) for t in parsed],
                created_at=now,
                created_by=created_by,
                expires_at=expires_at,
                cancelled=False,
            )
            b.media = media
            s.add(b)
            # gateway -> None (all speakers) or the set of devices
            per_gw: dict[str, set[str] | None] = {}
            for t in parsed:
                if t.device is None:
                    per_gw[t.gateway] = None
                elif t.gateway not in per_gw or per_gw[t.gateway] is not None:
                    devs = per_gw.setdefault(t.gateway, set())
                    assert devs is not None
                    devs.add(t.device)
            out: list[Outgoing] = []
            for gw, devs in per_gw.items():
                self._gateway(s, gw)
                if devs is None:
                    speaker_ids = list(s.scalars(select(Speaker.device_id).where(Speaker.gateway_id == gw)).all())
                    plan_targets: list[str] | str = "*"
                else:
                    speaker_ids = sorted(devs)
                    plan_targets = speaker_ids
                    known = set(
                        s.scalars(
                            select(Speaker.device_id).where(
                                Speaker.gateway_id == gw, Speaker.device_id.in_(speaker_ids)
                            )
                        ).all()
                    )
                    for dev in speaker_ids:
                        if dev not in known:  # registered by being named as a target
                            s.add(Speaker(gateway_id=gw, device_id=dev))
                for dev in sorted(speaker_ids):
                    s.add(SpeakerDelivery(broadcast_id=bid, gateway_id=gw, device_id=dev, state=SPK_PENDING))
                env = make_envelope("broadcast.plan", make_plan(b, plan_targets, gw), expires_at - now, gw)
                raw = env.model_dump_json()
                s.add(
                    GatewayDelivery(
                        broadcast_id=bid,
                        gateway_id=gw,
                        kind=KIND_PLAN,
                        command_id=env.id,
                        envelope=raw,
                        expires_at=env.expires_at,
                        state=GW_PENDING,
                        attempts=0,
                    )
                )
                out.append(Outgoing(gw, env.id, raw, env.expires_at))
            return bid, out

    def cancel_broadcast(self, bid: str, make_envelope: MakeEnvelope, now: int) -> list[Outgoing]:
        """Mark a broadcast cancelled; speakers that have not started are skipped; returns cancel commands."""
        with self.session() as s, s.begin():
            b = s.get(Broadcast, bid, options=[selectinload(Broadcast.deliveries), selectinload(Broadcast.speakers)])
            if b is None:
                raise NotFound(f"no broadcast {bid}")
            if b.cancelled:
                return []
            b.cancelled = True
            b.cancelled_at = now
            for sp in b.speakers:
                if sp.state in (SPK_PENDING, SPK_DELIVERED):
                    advance_speaker(sp, SPK_SKIPPED, now, now, "cancelled")
            out: list[Outgoing] = []
            if b.expires_at <= now:
                return out
            for d in list(b.deliveries):
                if d.kind != KIND_PLAN:
                    continue
                if d.state == GW_PENDING:
                    # never delivered as far as we know: stop sending it, but cancel anyway in case
                    # the first copy arrived and only its ack was lost
                    d.state = GW_EXPIRED
                    d.error = "cancelled before delivery"
                elif d.state != GW_DELIVERED:
                    continue
                env = make_envelope("broadcast.cancel", BroadcastCancelBody(broadcast_ids=[bid]), b.expires_at - now,
                                    d.gateway_id)
                raw = env.model_dump_json()
                s.add(
                    GatewayDelivery(
                        broadcast_id=bid,
                        gateway_id=d.gateway_id,
                        kind=KIND_CANCEL,
                        command_id=env.id,
                        envelope=raw,
                        expires_at=env.expires_at,
                        state=GW_PENDING,
                        attempts=0,
                    )
                )
                out.append(Outgoing(d.gateway_id, env.id, raw, env.expires_at))
            return out

    # ------------------------------------------------------------ delivery

    def _expire_overdue(self, s: Session, now: int, renew: MakeEnvelope | None = None) -> None:
        """Unacknowledged commands past their expiry: ``expired``; their speakers ``failed``.

        With ``renew``, a command that only reached the contract's lifetime cap (7 days) while its
        broadcast is still to come is signed again instead (same body, new id and lifetime)."""
        q = select(GatewayDelivery).where(GatewayDelivery.state == GW_PENDING, GatewayDelivery.expires_at <= now)
        for d in s.scalars(q).all():
            if renew is not None and not d.broadcast.cancelled and d.broadcast.expires_at > now:
                old = json.loads(d.envelope)
                body = COMMAND_BODIES[old["kind"]].model_validate(old["body"])
                env = renew(old["kind"], body, d.broadcast.expires_at - now, d.gateway_id)
                log.info("command %s to %s reached its lifetime undelivered; sent again as %s",
                         d.command_id, d.gateway_id, env.id)
                d.command_id, d.envelope, d.expires_at = env.id, env.model_dump_json(), env.expires_at
                d.error = "signed again: the previous command reached the 7-day lifetime cap undelivered"
                continue
            d.state = GW_EXPIRED
            d.error = "not acknowledged before it expired"
            if d.kind == KIND_PLAN:
                self._speakers_of(s, d, (SPK_PENDING,), SPK_FAILED, now, "not delivered in time")

    def pending_commands(
        self,
        gateways: Iterable[str] | Literal["online"] | None,
        now: int,
        sent_before: int | None = None,
        renew: MakeEnvelope | None = None,
    ) -> list[Outgoing]:
        """Unacknowledged, unexpired commands: for ``gateways`` (a list, every gateway whose status
        is online, or all), optionally only those last sent before a time.

        Expired ones (of every gateway) are marked ``expired`` on the way, or signed again with
        ``renew`` when only the lifetime cap ended them (see :meth:`_expire_overdue`).
        """
        with self.session() as s, s.begin():
            self._expire_overdue(s, now, renew)
            q = select(GatewayDelivery).where(GatewayDelivery.state == GW_PENDING)
            if gateways == "online":
                q = q.join(Gateway, Gateway.id == GatewayDelivery.gateway_id).where(Gateway.status == "online")
            elif gateways is not None:
                q = q.where(GatewayDelivery.gateway_id.in_(list(gateways)))
            if sent_before is not None:
                q = q.where(or_(GatewayDelivery.last_sent_at.is_(None), GatewayDelivery.last_sent_at < sent_before))
            return [
                Outgoing(d.gateway_id, d.command_id, d.envelope, d.expires_at)
                for d in s.scalars(q.order_by(GatewayDelivery.id)).all()
            ]

    def mark_sent(self, command_ids: Sequence[str], now: int) -> None:
        if not command_ids:
            return
        with self.session() as s, s.begin():
            s.execute(
                update(GatewayDelivery)
                .where(GatewayDelivery.command_id.in_(list(command_ids)))
                .values(attempts=GatewayDelivery.attempts + 1, last_sent_at=now)
            )

    def _speakers_of(
        self,
        s: Session,
        d: GatewayDelivery,
        from_states: tuple[str, ...],
        to: str,
        now: int,
        reason: str | None,
    ) -> None:
        rows = self._speaker_rows(s, d.broadcast_id, d.gateway_id).values()
        for row in [r for r in rows if r.state in from_states]:
            advance_speaker(row, to, now, now, reason)

    def _ack(self, s: Session, gw: str, ack: Ack, now: int) -> str | None:
        """Apply a gateway's ack; returns the new delivery state, or None for an unknown command id."""
        d = s.scalars(select(GatewayDelivery).where(GatewayDelivery.command_id == ack.id)).first()
        if d is None:
            return None
        if d.gateway_id != gw:
            log.warning("ack for command %s came from gateway %s, not %s; ignored", ack.id, gw, d.gateway_id)
            return None
        self._gateway(s, gw).last_seen = now
        if d.state in (GW_DELIVERED, GW_REFUSED):
            return d.state  # the first answer counts
        reason = (ack.reason or "").lower()
        if not ack.ok and reason in RETRY_REASONS and d.expires_at > now:
            d.error = f"not yet: {ack.reason}: {ack.error or ''}".strip().rstrip(":")[:500]
            return d.state  # still pending: the resend loop sends it again
        if ack.ok or reason in ALREADY_SEEN_REASONS:
            d.state = GW_DELIVERED
            d.acked_at = now
            if not ack.ok:
                d.error = f"gateway had already seen it ({ack.reason})"
            if d.kind == KIND_PLAN:
                self._speakers_of(s, d, (SPK_PENDING,), SPK_DELIVERED, now, None)
        else:
            d.state = GW_REFUSED
            d.acked_at = now
            d.error = f"{ack.reason or 'refused'}: {ack.error or ''}".strip().rstrip(":")[:500]
            if d.kind == KIND_PLAN:
                self._speakers_of(
                    s,
                    d,
                    (SPK_PENDING, SPK_DELIVERED),
                    SPK_FAILED,
                    now,
                    f"gateway refused the plan: {d.error}",
                )
        return d.state

    def record_ack(self, gw: str, ack: Ack, now: int) -> str | None:
        with self.session() as s, s.begin():
            return self._ack(s, gw, ack, now)

    def _playback(self, s: Session, gw: str, ev: PlaybackEvent, now: int) -> str | None:
        """Apply a playback report; returns the speaker's state, or None for a broadcast unknown here."""
        plan = self._plan_of(s, ev.broadcast_id, gw)
        if plan is None:
            return None
        self._gateway(s, gw).last_seen = now
        if plan.state in (GW_PENDING, GW_EXPIRED):
            # a report proves the plan arrived even if its ack was lost
            plan.state = GW_DELIVERED
            plan.acked_at = plan.acked_at or now
            self._speakers_of(s, plan, (SPK_PENDING,), SPK_DELIVERED, now, None)
        rows = self._speaker_rows(s, ev.broadcast_id, gw)
        row = rows.get(ev.device)
        if row is None:  # a speaker we did not know of (targets "*"): learn it
            row = SpeakerDelivery(
                broadcast_id=ev.broadcast_id,
                gateway_id=gw,
                device_id=ev.device,
                state=SPK_DELIVERED,
                delivered_at=now,
            )
            s.add(row)
            rows[ev.device] = row
            if (
                s.scalars(select(Speaker).where(Speaker.gateway_id == gw, Speaker.device_id == ev.device)).first()
                is None
            ):
                s.add(Speaker(gateway_id=gw, device_id=ev.device, last_seen=now))
        advance_speaker(row, ev.state, ev.at, now, ev.reason)
        return row.state

    def record_playback(self, gw: str, ev: PlaybackEvent, now: int) -> str | None:
        with self.session() as s, s.begin():
            return self._playback(s, gw, ev, now)

    def _apply_one(self, s: Session, item: Incoming, now: int) -> Any:
        gw, what = item.gateway, item.message
        if isinstance(what, Status):
            return self._status(s, gw, what, now)
        if isinstance(what, Ack):
            return self._ack(s, gw, what, now)
        if isinstance(what, PlaybackEvent):
            return self._playback(s, gw, what, now)
        assert item.device is not None and isinstance(what, dict)
        return self._speaker(s, gw, item.device, what, now)

    def apply(self, items: Sequence[Incoming], now: int) -> list[Any]:
        """Apply many incoming messages in arrival order, in one transaction (one disk sync).

        Should the batch fail as a whole, each message is applied again in its own transaction so
        that one bad message costs only itself. Returns each message's result (None on failure).
        """
        try:
            with self.session() as s, s.begin():
                return [self._apply_one(s, item, now) for item in items]
        except Exception:
            if len(items) == 1:
                log.exception("could not apply %s from %s", type(items[0].message).__name__, items[0].gateway)
                return [None]
        results: list[Any] = []
        for item in items:
            results.extend(self.apply([item], now))
        return results

    # ------------------------------------------------------------ reads

    def broadcast_status(self, bid: str) -> dict[str, Any]:
        with self.session() as s:
            b = s.get(
                Broadcast,
                bid,
                options=[
                    selectinload(Broadcast.deliveries),
                    selectinload(Broadcast.speakers),
                    selectinload(Broadcast.media),
                ],
            )
            if b is None:
                raise NotFound(f"no broadcast {bid}")
            return broadcast_dict(b)

    def list_broadcasts(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(Broadcast).order_by(Broadcast.created_at.desc()).limit(limit)).all()
            return [
                {
                    "id": b.id,
                    "title": b.title,
                    "start_at": b.start_at,
                    "priority": b.priority,
                    "targets": b.targets,
                    "created_at": b.created_at,
                    "cancelled": b.cancelled,
                }
                for b in rows
            ]


def broadcast_dict(b: Broadcast) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for sp in b.speakers:
        counts[sp.state] = counts.get(sp.state, 0) + 1
    return {
        "id": b.id,
        "title": b.title,
        "media": {
            "sha256": b.media.sha256,
            "bytes": b.media.size,
            "duration_ms": b.media.duration_ms,
            "content_type": b.media.content_type,
            "original_name": b.media.original_name,
        },
        "start_at": b.start_at,
        "priority": b.priority,
        "volume": b.volume,
        "repeat": b.repeat,
        "targets": b.targets,
        "created_at": b.created_at,
        "created_by": b.created_by,
        "expires_at": b.expires_at,
        "cancelled": b.cancelled,
        "cancelled_at": b.cancelled_at,
        "gateways": [
            {
                "gateway": d.gateway_id,
                "kind": d.kind,
                "command_id": d.command_id,
                "state": d.state,
                "attempts": d.attempts,
                "last_sent_at": d.last_sent_at,
                "acked_at": d.acked_at,
                "error": d.error,
            }
            for d in b.deliveries
        ],
        "speakers": [
            {
                "gateway": sp.gateway_id,
                "device": sp.device_id,
                "state": sp.state,
                "delivered_at": sp.delivered_at,
                "started_at": sp.started_at,
                "ended_at": sp.ended_at,
                "reason": sp.reason,
            }
            for sp in sorted(b.speakers, key=lambda x: (x.gateway_id, x.device_id))
        ],
        "summary": counts,
    }


class AsyncStore:
    """Runs :class:`Store` methods on one dedicated thread, off the event loop."""

    def __init__(self, store: Store):
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scheduler-db")

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.store.close()
