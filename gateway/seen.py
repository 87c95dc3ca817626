"""Persistent store of command ids already acted on, so a replayed command is refused after a reboot too."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class SeenStore:
    """SQLite table of (command id, expires_at). Entries are forgotten once their command has expired,
    since an expired command is refused anyway."""

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
        with self._lock:
            return self._db.execute("DELETE FROM seen WHERE expires_at < ?", (before_ms,)).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
