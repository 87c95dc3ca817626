"""Durable rule set and rule states (SQLite in the gateway's data dir, ``warnings.sqlite``).

The rule set is replaced as a whole by each ``warning.rules`` command. A rule's state (active, when it
started, how many times it played and when last) is written on every change, before the event is
reported, so that a gateway restarted while a warning is active keeps it active and does not play it
again before its repeat interval.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from protocol.models import WarningRule

from .rules import RuleState


class WarningStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS rules (id TEXT PRIMARY KEY, body TEXT NOT NULL,"
                         " cmd_id TEXT, updated_at INTEGER NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS state (rule_id TEXT PRIMARY KEY, active INTEGER NOT NULL,"
                         " started_at INTEGER, plays INTEGER NOT NULL, last_play_at INTEGER)")

    def rules(self) -> list[WarningRule]:
        with self._lock:
            rows = self._db.execute("SELECT body FROM rules ORDER BY id").fetchall()
        return [WarningRule.model_validate_json(r[0]) for r in rows]

    def states(self) -> dict[str, RuleState]:
        with self._lock:
            rows = self._db.execute("SELECT rule_id, active, started_at, plays, last_play_at FROM state").fetchall()
        return {r[0]: RuleState(active=bool(r[1]), started_at=r[2], plays=r[3], last_play_at=r[4]) for r in rows}

    def replace_rules(self, rules: Sequence[WarningRule], cmd_id: str | None, now_ms: int) -> None:
        """The new rule set, in one transaction; states of rules no longer in it are dropped."""
        ids = [r.id for r in rules]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM rules")
                self._db.executemany(
                    "INSERT INTO rules (id, body, cmd_id, updated_at) VALUES (?, ?, ?, ?)",
                    [(r.id, json.dumps(r.model_dump(mode="json")), cmd_id, now_ms) for r in rules])
                marks = ",".join("?" * len(ids))
                if ids:
                    self._db.execute(f"DELETE FROM state WHERE rule_id NOT IN ({marks})", ids)
                else:
                    self._db.execute("DELETE FROM state")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def save_state(self, rule_id: str, st: RuleState) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO state (rule_id, active, started_at, plays, last_play_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(rule_id) DO UPDATE SET active=excluded.active, started_at=excluded.started_at,"
                " plays=excluded.plays, last_play_at=excluded.last_play_at",
                (rule_id, int(st.active), st.started_at, st.plays, st.last_play_at))

    def close(self) -> None:
        with self._lock:
            self._db.close()
