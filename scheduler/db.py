"""The scheduler's database: the :class:`Store`, whose methods are the only code that reads or writes the tables.

Store methods are synchronous and each runs in one transaction. The dispatcher and the HTTP API run
them on one dedicated thread (:class:`AsyncStore`), so the event loop never waits on the disk and
SQLite never sees two writers from this process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, ParamSpec, TypeVar

from pydantic import BaseModel
from sqlalchemy import Table, func, insert, or_, select, text, update
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
    refined_reason,
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

#: the tables themselves, for Core statements
GATEWAY_DELIVERIES: Table = GatewayDelivery.__table__  # type: ignore[assignment]
SPEAKER_DELIVERIES: Table = SpeakerDelivery.__table__  # type: ignore[assignment]

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
    """What a broadcast or schedule names: a commune's gateway (every speaker of it), one speaker
    (``GW/DEV``) or a speaker group of that commune (``GW/@GROUP``, see :mod:`scheduler.areas`)."""

    gateway: str
    device: str | None  # None: every speaker of the gateway (or the group's, when group is set)
    group: str | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        """``GW``, ``GW/DEV`` or ``GW/@GROUP``; raises :class:`BadRequest` naming the bad part."""
        parts = text.strip().split("/")
        if len(parts) > 2 or not parts[0]:
            raise BadRequest(f"target {text!r}: write GATEWAY, GATEWAY/DEVICE or GATEWAY/@GROUP")
        try:
            gw = validate_id(parts[0], "gateway id")
            if len(parts) == 2 and parts[1].startswith("@"):
                return cls(gw, None, validate_id(parts[1][1:], "group id"))
            dev = validate_id(parts[1], "device id") if len(parts) == 2 else None
        except ValueError as exc:
            raise BadRequest(f"target {text!r}: {exc}") from exc
        return cls(gw, dev)

    def __str__(self) -> str:
        if self.group is not None:
            return f"{self.gateway}/@{self.group}"
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


_RANK_SQL = "CASE state " + " ".join(f"WHEN '{k}' THEN {v}" for k, v in SPEAKER_RANK.items()) + " ELSE 0 END"
_TERMINAL_SQL = ", ".join(f"'{k}'" for k in sorted(TERMINAL_SPEAKER_STATES))
#: :func:`advance_speaker` as one statement, for many reports at once (executemany). Every right-hand
#: side reads the row as it was before the statement (SQL semantics), like the Python version.
ADVANCE_SPEAKER_SQL = f"""
UPDATE speaker_deliveries SET
  delivered_at = CASE WHEN :is_delivered = 1 AND delivered_at IS NULL THEN :at ELSE delivered_at END,
  started_at = CASE WHEN :is_started = 1 AND started_at IS NULL THEN :at ELSE started_at END,
  ended_at = CASE WHEN :is_terminal = 1 AND state NOT IN ({_TERMINAL_SQL}) THEN :at ELSE ended_at END,
  reason = CASE WHEN {_RANK_SQL} < :rank AND :has_reason = 1 THEN :reason ELSE reason END,
  updated_at = CASE WHEN {_RANK_SQL} < :rank THEN :now ELSE updated_at END,
  state = CASE WHEN {_RANK_SQL} < :rank THEN :state ELSE state END
WHERE broadcast_id = :bid AND gateway_id = :gw AND device_id = :dev
"""
#: an answered command: only while it is still open, so the first answer counts (and only once)
ANSWER_COMMAND_SQL = """
UPDATE gateway_deliveries SET state = :state, acked_at = :now,
  error = CASE WHEN :has_error = 1 THEN :error ELSE error END
WHERE id = :id AND state IN ('pending', 'expired')
"""
#: a refusal that can heal: note why, keep it pending
NOTE_RETRY_SQL = "UPDATE gateway_deliveries SET error = :error WHERE id = :id AND state = 'pending'"
#: the speakers of an answered plan follow it: delivered (from pending) or failed (from pending or
#: delivered), only if the plan is in that state now (whoever answered it), never backwards
PLAN_SPEAKERS_SQL = """
UPDATE speaker_deliveries SET state = :to, updated_at = :now,
  delivered_at = CASE WHEN :to = 'delivered' AND delivered_at IS NULL THEN :now ELSE delivered_at END,
  ended_at = CASE WHEN :to = 'failed' THEN :now ELSE ended_at END,
  reason = CASE WHEN :has_reason = 1 THEN :reason ELSE reason END
WHERE broadcast_id = :bid AND gateway_id = :gw
  AND (state = 'pending' OR (:to = 'failed' AND state = 'delivered'))
  AND EXISTS (SELECT 1 FROM gateway_deliveries g WHERE g.id = :pid AND g.state = :plan_state)
"""

#: a speaker's retained state: only the fields it carries (its row exists: inserted just before)
SPEAKER_STATE_SQL = """
UPDATE speakers SET last_seen = :now,
  name = CASE WHEN :has_name = 1 THEN :name ELSE name END,
  online = CASE WHEN :has_online = 1 THEN :online ELSE online END,
  volume = CASE WHEN :has_volume = 1 THEN :volume ELSE volume END
WHERE gateway_id = :gw AND device_id = :dev
"""


#: a gateway's status (retained ``loaxa/v1/{gw}/status``); applied in arrival order, so the last wins
GATEWAY_STATUS_SQL = """
UPDATE gateways SET last_seen = :now, status = :state, status_ts = :ts,
  version = CASE WHEN :has_version = 1 THEN :version ELSE version END,
  commune = CASE WHEN :has_commune = 1 THEN :commune ELSE commune END
WHERE id = :gw
"""


def driver_sql(s: Session, sql: str) -> str:
    """``sql`` written with ``:name`` parameters, for this connection's driver (run with
    ``exec_driver_sql``: many rows at once without SQLAlchemy's per-row work)."""
    if s.get_bind().dialect.paramstyle == "pyformat":
        return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql)
    return sql


def executemany(s: Session, sql: str, rows: list[dict[str, Any]]) -> None:
    if rows:
        s.connection().exec_driver_sql(driver_sql(s, sql), rows)


@dataclass
class _ReportBatch:
    """Per-transaction state of the playback reports of one batch."""

    #: (broadcast, gateway) -> (plan row id, plan state), or None: no such plan here
    plans: dict[tuple[str, str], tuple[int, str] | None] = field(default_factory=dict)
    #: (broadcast, gateway) -> device ids that have a speaker row
    devices: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    #: parameters of :data:`ADVANCE_SPEAKER_SQL`, written at the next non-report message or the end
    updates: list[dict[str, Any]] = field(default_factory=list)
    #: command id -> (row id, broadcast, gateway, kind, state, expires_at), or None: unknown
    commands: dict[str, tuple[int, str, str, str, str, int] | None] = field(default_factory=dict)
    answers: list[dict[str, Any]] = field(default_factory=list)
    retries: list[dict[str, Any]] = field(default_factory=list)
    plan_speakers: list[dict[str, Any]] = field(default_factory=list)
    #: parameters of :data:`SPEAKER_STATE_SQL` (speakers' retained states)
    speakers: list[dict[str, Any]] = field(default_factory=list)
    #: parameters of :data:`GATEWAY_STATUS_SQL` (gateways' retained statuses), in arrival order
    statuses: list[dict[str, Any]] = field(default_factory=list)


def copy_speaker_rows(s: Session, rows: list[dict[str, Any]]) -> None:
    """Insert new speaker rows with PostgreSQL's COPY, in the session's transaction (psycopg 3). An
    ``executemany`` INSERT sends one statement per row: 5 s for a national broadcast's 150,000 rows."""
    if not rows:
        return
    raw = s.connection().connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur, cur.copy(
        "COPY speaker_deliveries (broadcast_id, gateway_id, device_id, state) FROM STDIN"
    ) as copy:
        for r in rows:
            copy.write_row((r["broadcast_id"], r["gateway_id"], r["device_id"], r["state"]))


def _batch_of(s: Session) -> _ReportBatch:
    """The batch state of this transaction (made once: ``setdefault`` would build one per message)."""
    batch: _ReportBatch | None = s.info.get("reports")
    if batch is None:
        batch = s.info["reports"] = _ReportBatch()
    return batch


C = TypeVar("C")


def chunks(seq: Sequence[C], n: int = 900) -> Iterator[Sequence[C]]:
    """Slices of at most ``n`` (bound parameters per statement stay under every engine's limit)."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def insert_ignore(s: Session, table: Any, rows: list[dict[str, Any]]) -> None:
    """INSERT rows, skipping those that would break a unique constraint (SQLite and PostgreSQL)."""
    if not rows:
        return
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        s.execute(pg_insert(table).on_conflict_do_nothing(), rows)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        s.execute(sqlite_insert(table).on_conflict_do_nothing(), rows)


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
    if state == row.state == SPK_FAILED:
        # a gateway's inferred reason (no_start_report) refined by the speaker's own (issue 15)
        better = refined_reason(row.reason, reason)
        if better is None:
            return False
        row.reason = better[:500]
        row.updated_at = now
        return True
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
        import scheduler.store.metadata  # noqa: F401  (every package's tables join Base.metadata)

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

    def _status(self, s: Session, gw: str, status: Status, now: int) -> bool:
        """Store a gateway's status; returns True when it is online.

        Messages are taken in arrival order (the broker keeps one topic in order), not by ``ts``: a
        Raspberry Pi without a clock battery may boot with its clock in the past.
        """
        batch = _batch_of(s)
        commune = status.commune
        has_commune = isinstance(commune, str) and bool(commune)
        batch.statuses.append({
            "gw": gw, "now": now, "state": status.state, "ts": status.ts,
            "has_version": int(bool(status.version)), "version": (status.version or "")[:64],
            "has_commune": int(has_commune), "commune": str(commune)[:200] if has_commune else "",
        })
        return status.state == "online"

    def record_status(self, gw: str, status: Status, now: int) -> bool:
        with self.session() as s, s.begin():
            online = self._status(s, gw, status, now)
            self._write_reports(s)
            return online

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
        """Register or refresh a speaker from its retained device state (queued for the batch's bulk
        statements: a fleet of 150,000 speakers is learned in a few seconds)."""
        batch = _batch_of(s)
        name = state.get("name")
        online = state.get("online")
        volume = state.get("volume")
        has_name = isinstance(name, str) and bool(name)
        has_online = isinstance(online, bool)
        has_volume = isinstance(volume, int) and not isinstance(volume, bool) and abs(volume) < 2**31
        batch.speakers.append({
            "gw": gw, "dev": dev, "now": now,
            "has_name": int(has_name), "name": str(name)[:200] if has_name else None,
            "has_online": int(has_online), "online": online if has_online else None,
            "has_volume": int(has_volume), "volume": volume if has_volume else None,
        })

    def record_speaker(self, gw: str, dev: str, state: dict[str, Any], now: int) -> None:
        with self.session() as s, s.begin():
            self._speaker(s, gw, dev, state, now)
            self._write_reports(s)

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
        given = [Target.parse(t) for t in targets]
        if not given:
            raise BadRequest("a broadcast needs at least one target (GATEWAY, GATEWAY/DEVICE or GATEWAY/@GROUP)")
        bid = broadcast_id or f"bc-{uuid.uuid4().hex[:20]}"
        with self.session() as s, s.begin():
            # groups become their members now, and the broadcast records what they were
            from scheduler.areas.resolve import expand_groups, resolve_groups

            groups = resolve_groups(s, given)
            parsed = expand_groups(given, groups)
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
                target_groups={str(t): devs for t, devs in groups.items()} or None,
                created_at=now,
                created_by=created_by,
                expires_at=expires_at,
                cancelled=False,
            )
            b.media = media
            s.add(b)
            s.flush()  # the broadcast row before its deliveries (foreign keys)
            # gateway -> None (all speakers) or the set of devices
            per_gw: dict[str, set[str] | None] = {}
            for t in parsed:
                if t.device is None:
                    per_gw[t.gateway] = None
                elif t.gateway not in per_gw or per_gw[t.gateway] is not None:
                    devs = per_gw.setdefault(t.gateway, set())
                    assert devs is not None
                    devs.add(t.device)
            self._ensure_gateways(s, list(per_gw))
            every = [gw for gw, devs in per_gw.items() if devs is None]
            known: dict[str, list[str]] = {gw: [] for gw in every}
            for chunk in chunks(every):
                for gw, dev in s.execute(
                    select(Speaker.gateway_id, Speaker.device_id).where(Speaker.gateway_id.in_(chunk))
                ):
                    known[gw].append(dev)
            out: list[Outgoing] = []
            plans: list[dict[str, Any]] = []
            speakers: list[dict[str, Any]] = []
            for gw, devs in per_gw.items():
                plan_targets: list[str] | str = "*" if devs is None else sorted(devs)
                speaker_ids = sorted(known[gw]) if devs is None else sorted(devs)
                speakers.extend(
                    {"broadcast_id": bid, "gateway_id": gw, "device_id": dev, "state": SPK_PENDING}
                    for dev in speaker_ids
                )
                env = make_envelope("broadcast.plan", make_plan(b, plan_targets, gw), expires_at - now, gw)
                raw = env.model_dump_json()
                plans.append(
                    {
                        "broadcast_id": bid,
                        "gateway_id": gw,
                        "kind": KIND_PLAN,
                        "command_id": env.id,
                        "envelope": raw,
                        "expires_at": env.expires_at,
                        "state": GW_PENDING,
                        "attempts": 0,
                    }
                )
                out.append(Outgoing(gw, env.id, raw, env.expires_at))
            named = [{"gateway_id": gw, "device_id": dev} for gw, devs in per_gw.items() for dev in sorted(devs or ())]
            for rows in chunks(named, 2000):  # a speaker named as a target is registered by it
                insert_ignore(s, Speaker.__table__, list(rows))
            # a few bulk statements, whatever the number of gateways and speakers
            # Core inserts of the tables (the ORM's bulk insert does per-row bookkeeping: 2-3x the time)
            for rows in chunks(plans, 2000):
                s.execute(insert(GATEWAY_DELIVERIES), rows)
            if s.get_bind().dialect.name == "postgresql":
                copy_speaker_rows(s, speakers)  # COPY: 150,000 rows in a fraction of a second
            else:
                for rows in chunks(speakers, 5000):
                    s.execute(insert(SPEAKER_DELIVERIES), rows)
            return bid, out

    def _ensure_gateways(self, s: Session, ids: list[str]) -> None:
        """Rows for these gateways (normally all exist: they are registered from the config)."""
        have: set[str] = set()
        for chunk in chunks(ids):
            have.update(s.scalars(select(Gateway.id).where(Gateway.id.in_(chunk))))
        missing = [{"id": gw} for gw in ids if gw not in have]
        if missing:
            s.execute(insert(Gateway), missing)

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
                self._speakers_of(s, d.broadcast_id, d.gateway_id, (SPK_PENDING,), SPK_FAILED, now,
                                  "not delivered in time")

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
            for chunk in chunks(list(command_ids)):
                s.execute(
                    update(GatewayDelivery)
                    .where(GatewayDelivery.command_id.in_(chunk))
                    .values(attempts=GatewayDelivery.attempts + 1, last_sent_at=now)
                    .execution_options(synchronize_session=False)
                )

    def _speakers_of(
        self,
        s: Session,
        bid: str,
        gw: str,
        from_states: tuple[str, ...],
        to: str,
        now: int,
        reason: str | None,
    ) -> None:
        """Move every speaker row of (broadcast, gateway) that is in ``from_states`` to ``to``, in one
        statement (``to`` ranks above every state of ``from_states``: never backwards)."""
        assert all(SPEAKER_RANK[f] < SPEAKER_RANK[to] for f in from_states)
        values: dict[str, Any] = {"state": to, "updated_at": now}
        if to == SPK_DELIVERED:
            values["delivered_at"] = func.coalesce(SpeakerDelivery.delivered_at, now)
        elif to in TERMINAL_SPEAKER_STATES:
            values["ended_at"] = now
        if reason is not None:
            values["reason"] = reason[:500]
        s.execute(
            update(SpeakerDelivery)
            .where(
                SpeakerDelivery.broadcast_id == bid,
                SpeakerDelivery.gateway_id == gw,
                SpeakerDelivery.state.in_(from_states),
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )

    def _seen(self, s: Session, gw: str) -> None:
        """Remember that ``gw`` was heard from; written once per transaction (:meth:`_write_seen`)."""
        seen: set[str] = s.info.setdefault("seen", set())
        seen.add(gw)

    def _write_seen(self, s: Session, now: int) -> None:
        seen: set[str] = s.info.pop("seen", set())
        if seen:
            executemany(s, "UPDATE gateways SET last_seen = :now WHERE id = :gw",
                        [{"gw": gw, "now": now} for gw in sorted(seen)])

    def _prefetch_commands(self, s: Session, ids: Iterable[str]) -> None:
        """Load, in one query per 900 ids, the commands the acks of a batch answer."""
        batch = _batch_of(s)
        wanted = sorted({i for i in ids if i not in batch.commands})
        gd = GatewayDelivery
        for chunk in chunks(wanted):
            for row in s.execute(
                select(gd.id, gd.broadcast_id, gd.gateway_id, gd.kind, gd.state, gd.expires_at, gd.command_id).where(
                    gd.command_id.in_(chunk)
                )
            ):
                batch.commands[row.command_id] = (row.id, row.broadcast_id, row.gateway_id, row.kind, row.state,
                                                  row.expires_at)
        for i in wanted:
            batch.commands.setdefault(i, None)

    def _ack(self, s: Session, gw: str, ack: Ack, now: int) -> str | None:
        """Apply a gateway's ack (queued for the batch's bulk statements); returns the new delivery
        state, or None for an unknown command id.

        Every change is conditional (an open command is answered once; its speakers follow only the
        state the command is in now), so the same ack applied twice, or by two scheduler workers at
        once, changes the rows once."""
        batch = _batch_of(s)
        if ack.id not in batch.commands:
            self._prefetch_commands(s, [ack.id])
        d = batch.commands[ack.id]
        if d is None:
            return None
        pid, bid, owner, kind, state, expires_at = d
        if owner != gw:
            log.warning("ack for command %s came from gateway %s, not %s; ignored", ack.id, gw, owner)
            return None
        self._seen(s, gw)
        if state in (GW_DELIVERED, GW_REFUSED):
            return state  # the first answer counts
        reason = (ack.reason or "").lower()
        if not ack.ok and reason in RETRY_REASONS and expires_at > now:
            note = f"not yet: {ack.reason}: {ack.error or ''}".strip().rstrip(":")[:500]
            batch.retries.append({"id": pid, "error": note})
            return state  # still pending: the resend loop sends it again
        error: str | None
        if ack.ok or reason in ALREADY_SEEN_REASONS:
            new, error = GW_DELIVERED, (None if ack.ok else f"gateway had already seen it ({ack.reason})")
        else:
            new, error = GW_REFUSED, f"{ack.reason or 'refused'}: {ack.error or ''}".strip().rstrip(":")[:500]
        batch.answers.append({"id": pid, "state": new, "now": now, "has_error": int(error is not None),
                              "error": error or ""})
        if kind == KIND_PLAN:
            failed = new == GW_REFUSED
            batch.plan_speakers.append({
                "bid": bid, "gw": gw, "pid": pid, "plan_state": new, "now": now,
                "to": SPK_FAILED if failed else SPK_DELIVERED, "has_reason": int(failed),
                "reason": f"gateway refused the plan: {error}"[:500] if failed else "",
            })
        batch.commands[ack.id] = (pid, bid, owner, kind, new, expires_at)
        if kind == KIND_PLAN and batch.plans.get((bid, gw)) is not None:
            batch.plans[(bid, gw)] = (pid, new)
        return new

    def record_ack(self, gw: str, ack: Ack, now: int) -> str | None:
        with self.session() as s, s.begin():
            if self._ack(s, gw, ack, now) is None:
                return None
            self._write_reports(s)
            self._write_seen(s, now)
            return s.scalars(select(GatewayDelivery.state).where(GatewayDelivery.command_id == ack.id)).one()

    def _prefetch_reports(self, s: Session, items: Sequence[Incoming]) -> None:
        """Load, in two queries, the plans and speaker rows the playback reports of a batch are about."""
        pairs = {(i.message.broadcast_id, i.gateway) for i in items if isinstance(i.message, PlaybackEvent)}
        batch = _batch_of(s)
        pairs -= set(batch.plans)
        if not pairs:
            return
        bids = sorted({b for b, _ in pairs})
        gws = sorted({g for _, g in pairs})
        gd, sd = GatewayDelivery, SpeakerDelivery
        for b_chunk in chunks(bids, 200):
            for g_chunk in chunks(gws):
                for bid, gw, pid, state in s.execute(
                    select(gd.broadcast_id, gd.gateway_id, gd.id, gd.state).where(
                        gd.kind == KIND_PLAN, gd.broadcast_id.in_(b_chunk), gd.gateway_id.in_(g_chunk)
                    )
                ):
                    if (bid, gw) in pairs:
                        batch.plans[(bid, gw)] = (pid, state)
                for bid, gw, dev in s.execute(
                    select(sd.broadcast_id, sd.gateway_id, sd.device_id).where(
                        sd.broadcast_id.in_(b_chunk), sd.gateway_id.in_(g_chunk)
                    )
                ):
                    batch.devices.setdefault((bid, gw), set()).add(dev)
        for pair in pairs:
            batch.plans.setdefault(pair, None)

    def _playback(self, s: Session, gw: str, ev: PlaybackEvent, now: int) -> str | None:
        """Queue a playback report for the batch's one bulk statement (:meth:`_write_reports`);
        returns the reported state, or None for a broadcast unknown here.

        The statement moves a speaker only forwards (by rank), so a report applied twice, out of
        order, or by two scheduler workers at once leaves the row as if applied once in order."""
        batch = _batch_of(s)
        key = (ev.broadcast_id, gw)
        if key not in batch.plans:
            self._prefetch_reports(s, [Incoming(gw, ev)])
        plan = batch.plans[key]
        if plan is None:
            return None
        self._seen(s, gw)
        pid, state = plan
        if state in (GW_PENDING, GW_EXPIRED):
            # a report proves the plan arrived even if its ack was lost
            gd = GatewayDelivery
            s.execute(
                update(gd).where(gd.id == pid, gd.state.in_((GW_PENDING, GW_EXPIRED)))
                .values(state=GW_DELIVERED, acked_at=func.coalesce(gd.acked_at, now))
                .execution_options(synchronize_session=False)
            )
            self._speakers_of(s, ev.broadcast_id, gw, (SPK_PENDING,), SPK_DELIVERED, now, None)
            batch.plans[key] = (pid, GW_DELIVERED)
        devices = batch.devices.setdefault(key, set())
        if ev.device not in devices:  # a speaker we did not know of (targets "*"): learn it
            self._write_reports(s)
            s.flush()
            insert_ignore(s, SpeakerDelivery.__table__, [{
                "broadcast_id": ev.broadcast_id, "gateway_id": gw, "device_id": ev.device,
                "state": SPK_DELIVERED, "delivered_at": now}])
            insert_ignore(s, Speaker.__table__, [{"gateway_id": gw, "device_id": ev.device, "last_seen": now}])
            devices.add(ev.device)
        batch.updates.append({
            "bid": ev.broadcast_id,
            "gw": gw,
            "dev": ev.device,
            "state": ev.state,
            "rank": SPEAKER_RANK[ev.state],
            "is_delivered": int(ev.state == SPK_DELIVERED),
            "is_started": int(ev.state == SPK_STARTED),
            "is_terminal": int(ev.state in TERMINAL_SPEAKER_STATES),
            "has_reason": int(ev.reason is not None),
            "reason": (ev.reason or "")[:500],
            "at": ev.at,
            "now": now,
        })
        return ev.state

    def _write_reports(self, s: Session) -> None:
        """Write the queued acks and reports of a batch: one statement each (executemany)."""
        batch: _ReportBatch | None = s.info.get("reports")
        if batch is None:
            return
        s.flush()  # ORM changes of earlier messages first
        executemany(s, NOTE_RETRY_SQL, batch.retries)
        executemany(s, ANSWER_COMMAND_SQL, batch.answers)
        executemany(s, PLAN_SPEAKERS_SQL, batch.plan_speakers)
        executemany(s, ADVANCE_SPEAKER_SQL, batch.updates)
        if batch.statuses:
            self._ensure_gateways(s, sorted({p["gw"] for p in batch.statuses}))
            executemany(s, GATEWAY_STATUS_SQL, batch.statuses)
        if batch.speakers:
            fresh = {(p["gw"], p["dev"]): None for p in batch.speakers}
            self._ensure_gateways(s, sorted({g for g, _ in fresh}))
            for rows in chunks([{"gateway_id": g, "device_id": d} for g, d in fresh], 2000):
                insert_ignore(s, Speaker.__table__, list(rows))
            executemany(s, SPEAKER_STATE_SQL, batch.speakers)
        batch.retries, batch.answers, batch.plan_speakers, batch.updates, batch.speakers = [], [], [], [], []
        batch.statuses = []

    def record_playback(self, gw: str, ev: PlaybackEvent, now: int) -> str | None:
        with self.session() as s, s.begin():
            if self._playback(s, gw, ev, now) is None:
                return None
            self._write_reports(s)
            self._write_seen(s, now)
            return s.scalars(
                select(SpeakerDelivery.state).where(
                    SpeakerDelivery.broadcast_id == ev.broadcast_id,
                    SpeakerDelivery.gateway_id == gw,
                    SpeakerDelivery.device_id == ev.device,
                )
            ).one()

    def _apply_one(self, s: Session, item: Incoming, now: int) -> Any:
        gw, what = item.gateway, item.message
        if isinstance(what, PlaybackEvent):
            return self._playback(s, gw, what, now)
        if isinstance(what, Ack):
            return self._ack(s, gw, what, now)
        if isinstance(what, dict):
            assert item.device is not None
            return self._speaker(s, gw, item.device, what, now)
        # A status is queued for one bulk statement too; it writes only its gateway's row, which none
        # of the other queued statements writes, so nothing needs flushing first. (Flushing here, and
        # a query + an UPDATE per status, cost several round trips per gateway while a fleet's retained
        # statuses and speaker states were learned: 10,000 gateways took half an hour on PostgreSQL.)
        return self._status(s, gw, what, now)

    def apply(self, items: Sequence[Incoming], now: int) -> list[Any]:
        """Apply many incoming messages in arrival order, in one transaction (one disk sync).

        Playback reports go in one bulk statement per batch. Every change is idempotent (a state
        only moves forwards, an ack answers a pending command once), so a message applied twice,
        redelivered by the broker or taken by another scheduler worker, is harmless.

        Should the batch fail as a whole, each message is applied again in its own transaction so
        that one bad message costs only itself. Returns each message's result (None on failure).
        """
        try:
            with self.session() as s, s.begin():
                self._prefetch_reports(s, items)
                self._prefetch_commands(s, [i.message.id for i in items if isinstance(i.message, Ack)])
                results = [self._apply_one(s, item, now) for item in items]
                self._write_reports(s)
                self._write_seen(s, now)
                return results
        except Exception:
            if len(items) == 1:
                log.exception("could not apply %s from %s", type(items[0].message).__name__, items[0].gateway)
                return [None]
        results = []
        for item in items:
            results.extend(self.apply([item], now))
        return results

    # ------------------------------------------------------------ reads

    def broadcast_status(self, bid: str) -> dict[str, Any]:
        """The broadcast with every gateway and speaker row (read as plain rows: 150,000 speakers
        are read in well under a second)."""
        with self.session() as s:
            b = s.get(Broadcast, bid, options=[selectinload(Broadcast.media)])
            if b is None:
                raise NotFound(f"no broadcast {bid}")
            gd, sd = GatewayDelivery, SpeakerDelivery
            deliveries = s.execute(
                select(gd.gateway_id, gd.kind, gd.command_id, gd.state, gd.attempts, gd.last_sent_at, gd.acked_at,
                       gd.error).where(gd.broadcast_id == bid).order_by(gd.id)
            ).all()
            speakers = s.execute(
                select(sd.gateway_id, sd.device_id, sd.state, sd.delivered_at, sd.started_at, sd.ended_at,
                       sd.reason).where(sd.broadcast_id == bid).order_by(sd.gateway_id, sd.device_id)
            ).all()
            return broadcast_dict(b, deliveries, speakers)

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


def broadcast_dict(b: Broadcast, deliveries: Sequence[Any] | None = None,
                   speakers: Sequence[Any] | None = None) -> dict[str, Any]:
    """A broadcast as the API shows it; ``deliveries``/``speakers`` are rows (or ORM objects) with the
    fields shown, by default the broadcast's own relationships."""
    dl = list(b.deliveries) if deliveries is None else deliveries
    sp_rows = sorted(b.speakers, key=lambda x: (x.gateway_id, x.device_id)) if speakers is None else speakers
    counts: dict[str, int] = {}
    for sp in sp_rows:
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
        "groups": b.target_groups or {},
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
            for d in dl
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
            for sp in sp_rows
        ],
        "summary": counts,
    }


#: the PostgreSQL advisory lock key of the dispatch leader (any constant; "loaxa" in ASCII)
DISPATCH_LOCK_KEY = 0x6C6F617861


class DispatchLock:
    """Held by at most one of several scheduler workers sharing a database: the worker that sends
    pending commands again (resend loop, gateways coming online). Every worker ingests, and the worker
    that creates a broadcast publishes it once itself.

    PostgreSQL: a session advisory lock on a connection of its own, released by the server when the
    holder dies or its connection drops. SQLite: an exclusive ``flock`` on ``<database>.dispatch.lock``
    (workers on one machine), released by the kernel when the holder dies.
    """

    def __init__(self, store: Store):
        self.store = store
        self._conn: Any = None
        self._fd: int | None = None
        self.held = False

    def try_acquire(self) -> bool:
        """Take the lock if free, or check it is still ours. Blocking: run it on the DB thread."""
        engine = self.store.engine
        if engine.dialect.name == "postgresql":
            try:
                if self._conn is None:
                    self._conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                if self.held:
                    self._conn.execute(text("SELECT 1"))
                else:
                    self.held = bool(self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                                        {"k": DISPATCH_LOCK_KEY}).scalar())
            except Exception as exc:  # the connection is gone, and the lock with it
                log.warning("dispatch lock: lost its database connection (%s)", exc)
                self.release()
            return self.held
        database = engine.url.database
        if not database or database == ":memory:":
            self.held = True
            return True
        if self._fd is None:
            import fcntl
            import os

            fd = os.open(f"{database}.dispatch.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            self._fd = fd
            self.held = True
        return self.held

    def release(self) -> None:
        self.held = False
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                log.debug("dispatch lock: closing its connection failed", exc_info=True)
            self._conn = None
        if self._fd is not None:
            import os

            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


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
