"""Persistent plan store of the gateway (SQLite in ``{data_dir}/broadcast.sqlite``).

Three tables:

- ``plans``: every accepted plan item, keyed by ``broadcast_id`` (receiving the same id again is a
  no-op), with the wall-clock ``start_at`` the gateway fixed for it (for a ``now`` broadcast: the
  moment it was accepted plus the lead time) and whether it is still ``pending``, ``done`` or
  ``cancelled``;
- ``outcomes``: per broadcast and device, how far it got (``pending`` → ``sent`` → ``started`` →
  ``finished``, or ``failed`` / ``preempted`` / ``skipped``) with the device's timestamp;
- ``outbox``: events for the centre not yet handed to the uplink, so reports survive a restart.

A plan is written (and fsynced, ``synchronous=FULL``) before the command that carried it is acked.
All calls run on one writer thread, off the event loop, batched into shared transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from protocol.models import PlanItem, refined_reason

T = TypeVar("T")

#: (broadcast_id, device, state, at, reason, event JSON) for :meth:`PlanStore.advance_many`
Advance = tuple[str, str, str, int | None, str | None, str | None]

TERMINAL = frozenset({"finished", "failed", "preempted", "skipped"})
#: how far an outcome has got; a report never moves an outcome backwards
RANK = {"pending": 0, "sent": 1, "started": 2, "finished": 3, "failed": 3, "preempted": 3, "skipped": 3}

SCHEMA = """
CREATE TABLE IF NOT EXISTS plans (
    broadcast_id TEXT PRIMARY KEY,
    item TEXT NOT NULL,
    start_at INTEGER NOT NULL,
    end_at INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    now_plan INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending',
    received_at INTEGER NOT NULL,
    cmd_id TEXT
);
CREATE INDEX IF NOT EXISTS plans_state ON plans(state, start_at);
CREATE TABLE IF NOT EXISTS outcomes (
    broadcast_id TEXT NOT NULL,
    device TEXT NOT NULL,
    state TEXT NOT NULL,
    at INTEGER,
    reason TEXT,
    PRIMARY KEY (broadcast_id, device)
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    payload TEXT NOT NULL
);
"""


@dataclass
class StoredPlan:
    item: PlanItem
    start_at: int
    end_at: int
    now_plan: bool
    state: str
    received_at: int

    @property
    def broadcast_id(self) -> str:
        return self.item.broadcast_id

    @property
    def priority(self) -> int:
        return self.item.priority


@dataclass
class Outcome:
    device: str
    state: str
    at: int | None
    reason: str | None


class PlanStore:
    """All access goes through one writer thread that runs whatever is queued in ONE transaction
    (group commit): forty speakers reporting at the same moment cost one fsync, not forty, and the
    event loop never waits for the disk. Operations run in the order they were submitted."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._q: queue.SimpleQueue[list[_Op] | None] = queue.SimpleQueue()
        #: operations submitted during the current turn of the event loop, handed to the writer
        #: thread together at the end of it (one queue put and one thread wake-up for 50 reports)
        self._pending: list[_Op] = []
        #: how long operations are gathered before they go to the writer thread: the acks and reports
        #: of a commune's speakers arrive over a few ms, one MQTT packet per turn of the loop
        self.gather_s = 0.002
        self._thread = threading.Thread(target=self._worker, name="planstore", daemon=True)
        self._thread.start()
        self.commits = 0

    def _submit(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        """Queue an operation now (it runs after everything submitted before it); its future."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_later(self.gather_s, self._hand_over)
        self._pending.append(_Op(fn, args, fut, loop))
        return fut

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await self._submit(fn, *args)

    def _hand_over(self) -> None:
        ops, self._pending = self._pending, []
        if ops:
            self._q.put(ops)

    def _worker(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            batch = list(first)
            stop = False
            while True:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.extend(nxt)
            results: list[tuple[_Op, Any, BaseException | None]] = []
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for op in batch:
                    self._db.execute("SAVEPOINT op")
                    try:
                        results.append((op, op.fn(*op.args), None))
                        self._db.execute("RELEASE op")
                    except Exception as exc:  # one bad operation does not undo the others
                        self._db.execute("ROLLBACK TO op")
                        self._db.execute("RELEASE op")
                        results.append((op, None, exc))
                self._db.execute("COMMIT")
                self.commits += 1
            except Exception as exc:  # the commit itself failed (disk full, I/O error)
                with contextlib.suppress(Exception):
                    self._db.execute("ROLLBACK")
                results = [(op, None, exc) for op in batch]
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Op, Any, BaseException | None]]] = {}
            for r in results:
                by_loop.setdefault(r[0].loop, []).append(r)
            for loop, rs in by_loop.items():
                with contextlib.suppress(RuntimeError):  # loop already closed
                    loop.call_soon_threadsafe(_resolve, rs)
            if stop:
                return

    def close(self) -> None:
        self._hand_over()
        self._q.put(None)
        self._thread.join(10)
        self._db.close()

    # ---------------------------------------------------------------- plans

    def add_sync(self, item: PlanItem, start_at: int, end_at: int, now_plan: bool, received_at: int,
                 devices: Iterable[str], cmd_id: str | None, skipped: dict[str, str]) -> bool:
        """Insert a plan and its outcomes; False (and nothing changed) if the broadcast id is known."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO plans(broadcast_id,item,start_at,end_at,priority,sha256,now_plan,"
            "received_at,cmd_id) VALUES (?,?,?,?,?,?,?,?,?)",
            (item.broadcast_id, item.model_dump_json(), start_at, end_at, item.priority, item.media.sha256,
             int(now_plan), received_at, cmd_id),
        )
        if cur.rowcount == 0:
            return False
        self._db.executemany(
            "INSERT OR IGNORE INTO outcomes(broadcast_id,device,state) VALUES (?,?,'pending')",
            [(item.broadcast_id, d) for d in devices],
        )
        self._db.executemany(
            "INSERT OR IGNORE INTO outcomes(broadcast_id,device,state,at,reason) VALUES (?,?,'skipped',?,?)",
            [(item.broadcast_id, d, received_at, why) for d, why in skipped.items()],
        )
        return True

    async def add(self, item: PlanItem, start_at: int, end_at: int, now_plan: bool, received_at: int,
                  devices: Iterable[str], cmd_id: str | None = None,
                  skipped: dict[str, str] | None = None) -> bool:
        return bool(await self._run(self.add_sync, item, start_at, end_at, now_plan, received_at,
                                    list(devices), cmd_id, skipped or {}))

    def _pending_sync(self) -> list[StoredPlan]:
        rows = self._db.execute(
            "SELECT item,start_at,end_at,now_plan,state,received_at FROM plans WHERE state='pending' "
            "ORDER BY start_at"
        ).fetchall()
        return [StoredPlan(PlanItem.model_validate_json(r[0]), r[1], r[2], bool(r[3]), r[4], r[5]) for r in rows]

    async def pending(self) -> list[StoredPlan]:
        result: list[StoredPlan] = await self._run(self._pending_sync)
        return result

    def _get_sync(self, broadcast_id: str) -> StoredPlan | None:
        r = self._db.execute(
            "SELECT item,start_at,end_at,now_plan,state,received_at FROM plans WHERE broadcast_id=?",
            (broadcast_id,),
        ).fetchone()
        if r is None:
            return None
        return StoredPlan(PlanItem.model_validate_json(r[0]), r[1], r[2], bool(r[3]), r[4], r[5])

    async def get(self, broadcast_id: str) -> StoredPlan | None:
        result: StoredPlan | None = await self._run(self._get_sync, broadcast_id)
        return result

    async def set_plan_state(self, broadcast_id: str, state: str) -> None:
        await self._run(self._set_plan_state_sync, broadcast_id, state)

    def _set_plan_state_sync(self, broadcast_id: str, state: str) -> None:
        self._db.execute("UPDATE plans SET state=? WHERE broadcast_id=?", (state, broadcast_id))

    async def reschedule(self, broadcast_id: str, start_at: int, end_at: int) -> None:
        await self._run(self._reschedule_sync, broadcast_id, start_at, end_at)

    def _reschedule_sync(self, broadcast_id: str, start_at: int, end_at: int) -> None:
        self._db.execute("UPDATE plans SET start_at=?, end_at=? WHERE broadcast_id=?",
                         (start_at, end_at, broadcast_id))

    def _purge_sync(self, before_ms: int) -> int:
        old = [r[0] for r in self._db.execute(
            "SELECT broadcast_id FROM plans WHERE state!='pending' AND end_at<?", (before_ms,))]
        for bid in old:
            self._db.execute("DELETE FROM outcomes WHERE broadcast_id=?", (bid,))
            self._db.execute("DELETE FROM plans WHERE broadcast_id=?", (bid,))
        return len(old)

    async def purge(self, before_ms: int) -> int:
        """Forget finished and cancelled plans that ended before ``before_ms``."""
        return int(await self._run(self._purge_sync, before_ms))

    # ---------------------------------------------------------------- outcomes

    def _outcomes_sync(self, broadcast_id: str) -> dict[str, Outcome]:
        rows = self._db.execute("SELECT device,state,at,reason FROM outcomes WHERE broadcast_id=?", (broadcast_id,))
        return {r[0]: Outcome(r[0], r[1], r[2], r[3]) for r in rows}

    async def outcomes(self, broadcast_id: str) -> dict[str, Outcome]:
        result: dict[str, Outcome] = await self._run(self._outcomes_sync, broadcast_id)
        return result

    def _advance_sync(self, broadcast_id: str, device: str, state: str, at: int | None, reason: str | None,
                      event: str | None) -> bool:
        row = self._db.execute("SELECT state, reason FROM outcomes WHERE broadcast_id=? AND device=?",
                               (broadcast_id, device)).fetchone()
        if row is not None and row[0] == "failed" and state == "failed":
            # the speaker's own, later reason beats the gateway's guess (no_start_report): keep both
            better = refined_reason(row[1], reason)
            if better is None:
                return False
            self._db.execute("UPDATE outcomes SET reason=? WHERE broadcast_id=? AND device=?",
                             (better, broadcast_id, device))
            if event is not None:
                ev = json.loads(event)
                ev["reason"] = better
                self._db.execute("INSERT INTO outbox(payload) VALUES (?)", (json.dumps(ev, separators=(",", ":")),))
            return True
        if row is None or row[0] in TERMINAL or RANK[state] <= RANK[row[0]]:
            return False
        self._db.execute("UPDATE outcomes SET state=?, at=?, reason=? WHERE broadcast_id=? AND device=?",
                         (state, at, reason, broadcast_id, device))
        if event is not None:
            self._db.execute("INSERT INTO outbox(payload) VALUES (?)", (event,))
        return True

    async def advance(self, broadcast_id: str, device: str, state: str, at: int | None, reason: str | None,
                      event: str | None = None) -> bool:
        """Move an outcome forward (never backwards) and queue ``event`` in the same transaction."""
        return bool(await self._run(self._advance_sync, broadcast_id, device, state, at, reason, event))

    def _advance_many_sync(self, rows: list[Advance]) -> list[bool]:
        return [self._advance_sync(*row) for row in rows]

    async def advance_many(self, rows: Iterable[Advance]) -> list[bool]:
        """:meth:`advance` for several outcomes as one operation (in order): what each returned."""
        result: list[bool] = await self._run(self._advance_many_sync, list(rows))
        return result

    # ---------------------------------------------------------------- outbox

    async def outbox_put(self, payload: str) -> None:
        await self._run(self._outbox_put_sync, payload)

    def _outbox_put_sync(self, payload: str) -> None:
        self._db.execute("INSERT INTO outbox(payload) VALUES (?)", (payload,))

    async def outbox_peek(self, limit: int = 100) -> list[tuple[int, str]]:
        result: list[tuple[int, str]] = await self._run(self._outbox_peek_sync, limit)
        return result

    def _outbox_peek_sync(self, limit: int) -> list[tuple[int, str]]:
        return [(r[0], r[1]) for r in
                self._db.execute("SELECT seq,payload FROM outbox ORDER BY seq LIMIT ?", (limit,))]

    async def outbox_delete(self, upto_seq: int) -> None:
        await self._run(self._outbox_delete_sync, upto_seq)

    def outbox_delete_soon(self, upto_seq: int) -> asyncio.Future[Any]:
        """:meth:`outbox_delete` queued without waiting: whatever is submitted after it (the next
        ``outbox_peek``) sees it done, and both share one transaction."""
        return self._submit(self._outbox_delete_sync, upto_seq)

    def _outbox_delete_sync(self, upto_seq: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE seq<=?", (upto_seq,))


@dataclass
class _Op:
    fn: Any
    args: tuple[Any, ...]
    fut: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _resolve(results: list[tuple[_Op, Any, BaseException | None]]) -> None:
    for op, value, exc in results:
        if op.fut.done():
            continue
        if exc is not None:
            op.fut.set_exception(exc)
        else:
            op.fut.set_result(value)


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
