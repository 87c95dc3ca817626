"""The audit log: append-only, each entry chained to the one before it by SHA-256.

``hash(n) = SHA-256(canonical JSON of {id, at, actor, address, action, target, detail, prev})`` where
``prev`` is ``hash(n-1)`` (64 zeros for the first entry) and ids run 1, 2, 3 … without gaps. Editing
an entry breaks its own hash; deleting one leaves a gap or a broken ``prev``; re-writing the whole
tail needs every later hash recomputed, which :func:`verify` cannot tell from the truth by itself,
so ``loaxa audit verify`` prints the head hash for people to write down or ship elsewhere
(docs/security.md). ``prev_hash`` is UNIQUE: two writers can never both append after one entry.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.access.models import AuditEntry

GENESIS = "0" * 64
MAX_DETAIL_CHARS = 4000
CSV_FIELDS = ("id", "at", "actor", "address", "action", "target", "detail", "prev_hash", "hash")


def canonical(entry_id: int, at: int, actor: str, address: str | None, action: str, target: str | None,
              detail: dict[str, Any], prev: str) -> bytes:
    doc = {"id": entry_id, "at": at, "actor": actor, "address": address, "action": action, "target": target,
           "detail": detail, "prev": prev}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(e: AuditEntry) -> str:
    return hashlib.sha256(canonical(e.id, e.at, e.actor, e.address, e.action, e.target, e.detail,
                                    e.prev_hash)).hexdigest()


def _clean_detail(detail: dict[str, Any] | None) -> dict[str, Any]:
    """JSON-native and bounded: what is stored must hash the same after a round trip through the database."""
    text = json.dumps(detail or {}, sort_keys=True, ensure_ascii=False, default=str)
    if len(text) > MAX_DETAIL_CHARS:
        return {"truncated": text[:MAX_DETAIL_CHARS]}
    clean: dict[str, Any] = json.loads(text)
    return clean


# Any constant: the advisory lock that serialises appends to the chain on PostgreSQL.
_PG_CHAIN_LOCK = 0x4C4F4158  # "LOAX"


def lock_chain(s: Session) -> None:
    """Serialise writers of the chain; call first thing in the transaction, before reading its head.

    Without it two writers read the same head and one of them loses its insert. SQLite: the
    transaction starts as ``BEGIN IMMEDIATE`` (pysqlite would otherwise open it lazily at the
    insert, after the head was read); the 30 s busy timeout makes other writers wait. PostgreSQL:
    a transaction-scoped advisory lock.
    """
    conn = s.connection()
    if conn.dialect.name == "sqlite":
        if not conn.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_CHAIN_LOCK})")


def append(s: Session, *, at: int, actor: str, action: str, address: str | None = None,
           target: str | None = None, detail: dict[str, Any] | None = None) -> AuditEntry:
    """Add an entry after the last one, inside the caller's transaction."""
    last = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1)).first()
    entry = AuditEntry(
        id=(last.id + 1) if last else 1,
        at=at,
        actor=actor[:200],
        address=address[:64] if address else None,
        action=action[:64],
        target=target[:300] if target else None,
        detail=_clean_detail(detail),
        prev_hash=last.hash if last else GENESIS,
    )
    entry.hash = entry_hash(entry)
    s.add(entry)
    s.flush()
    return entry


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    count: int
    head: str
    bad_id: int | None = None
    problem: str | None = None


def iter_entries(s: Session, batch: int = 1000) -> Iterator[AuditEntry]:
    after = 0
    while True:
        rows = s.scalars(select(AuditEntry).where(AuditEntry.id > after).order_by(AuditEntry.id).limit(batch)).all()
        if not rows:
            return
        yield from rows
        after = rows[-1].id


def verify(entries: Iterable[AuditEntry]) -> VerifyResult:
    """Walk the chain from the first entry; stop at the first entry that does not fit."""
    prev, expected_id, count = GENESIS, 1, 0
    for e in entries:
        where = f"entry {e.id} ({e.action} by {e.actor})"
        if e.id != expected_id:
            missing = f"entry {expected_id} is" if e.id == expected_id + 1 else f"entries {expected_id}-{e.id - 1} are"
            return VerifyResult(False, count, prev, e.id, f"{missing} missing before {where} (deleted)")
        if e.prev_hash != prev:
            return VerifyResult(False, count, prev, e.id,
                                f"{where} does not follow the entry before it (that entry was changed or removed)")
        if entry_hash(e) != e.hash:
            return VerifyResult(False, count, prev, e.id, f"{where} was altered: its content does not match its hash")
        prev, expected_id, count = e.hash, e.id + 1, count + 1
    return VerifyResult(True, count, prev)


def to_csv(entries: Iterable[AuditEntry]) -> Iterator[str]:
    """CSV lines (header first), ready to stream or write to a file."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_FIELDS)
    yield buf.getvalue()
    for e in entries:
        buf.seek(0)
        buf.truncate()
        w.writerow([e.id, e.at, e.actor, e.address or "", e.action, e.target or "",
                    json.dumps(e.detail, ensure_ascii=False, sort_keys=True), e.prev_hash, e.hash])
        yield buf.getvalue()


def entry_dict(e: AuditEntry) -> dict[str, Any]:
    return {"id": e.id, "at": e.at, "actor": e.actor, "address": e.address, "action": e.action,
            "target": e.target, "detail": e.detail, "hash": e.hash}
