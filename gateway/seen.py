"""Persistent store of command ids already acted on, so a replayed command is refused after a reboot
too, and of commands deferred because they were issued ahead of this gateway's clock."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class SeenStore:
    """SQLite tables ``seen`` (command id, expires_at) and ``deferred`` (the whole payload).

    Seen ids are forgotten by :meth:`purge` once their command has expired, since an expired
    command is refused anyway. Every write is durable (``synchronous=FULL``) before it is acked."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen"
            " (id TEXT PRIMARY KEY, expires_at INTEGER NOT NULL, seen_at INTEGER NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS seen_expires ON seen (expires_at)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS deferred (id TEXT PRIMARY KEY, payload BLOB NOT NULL,"
            " issued_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, received_at INTEGER NOT NULL)"
        )

    def contains(self, cmd_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM seen WHERE id = ?", (cmd_id,)).fetchone() is not None

    def add(self, cmd_id: str, expires_at: int, now_ms: int) -> bool:
        """Record ``cmd_id``; False if it was already there."""
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO seen (id, expires_at, seen_at) VALUES (?, ?, ?)",
                                   (cmd_id, expires_at, now_ms))
            return cur.rowcount == 1

    def purge(self, before_ms: int) -> int:
        """Forget ids whose command expired before ``before_ms``; returns how many."""
        with self._lock:
            return self._db.execute("DELETE FROM seen WHERE expires_at < ?", (before_ms,)).rowcount

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM seen").fetchone()[0])

    # ------------------------------------------------------------ deferred commands

    def defer(self, cmd_id: str, payload: bytes, issued_at: int, expires_at: int, now_ms: int,
              limit: int) -> bool | None:
        """Keep a command for later: True if stored, False if it was already, None if the store is full."""
        with self._lock:
            if self._db.execute("SELECT 1 FROM deferred WHERE id = ?", (cmd_id,)).fetchone() is not None:
                return False
            if int(self._db.execute("SELECT count(*) FROM deferred").fetchone()[0]) >= limit:
                return None
            self._db.execute("INSERT INTO deferred (id, payload, issued_at, expires_at, received_at)"
                             " VALUES (?, ?, ?, ?, ?)", (cmd_id, payload, issued_at, expires_at, now_ms))
            return True

    def deferred_due(self, issued_before: int) -> list[tuple[str, bytes]]:
        """Deferred commands issued at or before ``issued_before``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, payload FROM deferred WHERE issued_at <= ? ORDER BY issued_at, id",
                (issued_before,)).fetchall()
        return [(str(r[0]), bytes(r[1])) for r in rows]

    def drop_deferred(self, cmd_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM deferred WHERE id = ?", (cmd_id,))

    def deferred_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM deferred").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
