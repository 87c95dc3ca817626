"""The durable spool: every accepted reading is in SQLite (WAL, ``synchronous=FULL``) before anyone
is told it was accepted, and leaves only after InfluxDB answered 2xx.

Group commit
    Callers :meth:`Spool.submit` rows with a callback (the MQTT ingest acks its PUBACKs there) or
    ``await`` :meth:`Spool.put` (the polled drivers' :data:`~devices.base.ReadingSink`). One committer
    task takes everything queued so far, writes it in ONE transaction on the spool's own thread,
    then runs the callbacks. Under load a commit carries thousands of readings, so durability costs
    one fsync per group rather than one per reading.

Delivery
    Rows are numbered by the spool, in arrival order. The writer reads them in that order after
    the ``delivered_upto`` mark; after a 2xx it moves the mark (one tiny update) and either deletes the
    delivered rows or, with ``retain_days > 0``, keeps them for export and deletes them once older
    than ``retain_days``.

Bound
    The spool is bounded by ``max_bytes`` of reading data (the sum of each row's stored size, not the
    file size: SQLite reuses freed pages). Over the bound it deletes the oldest rows down to 95 %:
    first already-delivered retained rows, then undelivered ones, which are counted as ``dropped``.

Only the spool thread touches the connection; the event loop only queues work for it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: A row to store: (ts_ms, device, measurement, fields as line protocol).
NewRow = tuple[int, str, str, str]
Done = Callable[[BaseException | None], None]

ROW_OVERHEAD = 28  # bytes counted per row on top of its fields text (id, ts, series, size, record header)

#: ``readings.id`` is assigned by the spool (always increasing, never reused, even after every row was
#: deleted: the next id starts above both the largest id and the delivered mark), which is cheaper
#: than AUTOINCREMENT. ``series`` names each (measurement, device) pair once instead of on every row.
SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    measurement TEXT NOT NULL,
    device TEXT NOT NULL,
    UNIQUE (measurement, device)
);
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    series INTEGER NOT NULL,
    fields TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    reading_id INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    device TEXT NOT NULL,
    measurement TEXT NOT NULL,
    fields TEXT NOT NULL,
    error TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta(key, value) VALUES ('delivered_upto', 0), ('dropped', 0), ('quarantined', 0);
"""

QUARANTINE_KEEP = 10_000  # quarantined rows kept for inspection; the counter keeps counting


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    ts: int
    device: str
    measurement: str
    fields: str


def row_size(fields: str) -> int:
    return len(fields) + ROW_OVERHEAD


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, not just a crash
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class Spool:
    """See the module docstring. ``await open()``, run :meth:`run` as a task, ``await close()``."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        retain_days: int = 0,
        max_group_rows: int = 20_000,
        evict_to: float = 0.95,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.retain_days = retain_days
        self.max_group_rows = max_group_rows
        self.evict_to = evict_to
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._conn: sqlite3.Connection | None = None
        self._queue: deque[tuple[list[NewRow], Done]] = deque()
        self._wakeup = asyncio.Event()
        #: set whenever rows were committed (the writer waits on it)
        self.data_event = asyncio.Event()
        # counters, owned by the spool thread, read anywhere
        self.delivered_upto = 0
        self.pending = 0
        self.bytes = 0
        self.dropped = 0
        self.quarantined = 0
        self.committed_rows = 0
        self.commits = 0
        self.delivered_rows = 0
        self.retained_evicted = 0
        #: undelivered readings dropped since the last :meth:`take_drops` (count, oldest ts, newest ts)
        self._drops: tuple[int, int, int] | None = None
        self._drops_lock = threading.Lock()
        self.last_commit_error: str | None = None
        self.moved_aside: Path | None = None  # set when an unreadable spool file was moved aside
        # spool thread only
        self._next_id = 1
        self._series_ids: dict[tuple[str, str], int] = {}  # (measurement, device) -> id
        self._series_names: dict[int, tuple[str, str]] = {}  # id -> (device, measurement)

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        await self._call(self._open_sync)

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = connect(self.path)
            conn.executescript(SCHEMA)
            conn.execute("SELECT value FROM meta WHERE key = 'delivered_upto'").fetchone()
            conn.execute("SELECT id, ts, series, fields, size FROM readings LIMIT 0").fetchall()
        except sqlite3.DatabaseError as exc:
            # an unreadable file (SD card fault, someone else's file): keep it for inspection and start
            # a new spool rather than keep the gateway from starting
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.critical("spool %s cannot be opened (%s); moved to %s, starting an empty spool", self.path, exc, aside)
            self.moved_aside = aside
            for suffix in ("", "-wal", "-shm"):
                src = self.path.with_name(self.path.name + suffix)
                if src.exists():
                    src.rename(aside.with_name(aside.name + suffix))
            conn = connect(self.path)
            conn.executescript(SCHEMA)
        self._conn = conn
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self.delivered_upto = int(meta["delivered_upto"])
        self.dropped = int(meta["dropped"])
        self.quarantined = int(meta["quarantined"])
        for sid, meas, dev in conn.execute("SELECT id, measurement, device FROM series"):
            self._series_ids[(meas, dev)] = sid
            self._series_names[sid] = (dev, meas)
        (max_id,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM readings").fetchone()
        self._next_id = max(int(max_id), self.delivered_upto) + 1
        (n,) = conn.execute("SELECT COUNT(*) FROM readings WHERE id > ?", (self.delivered_upto,)).fetchone()
        self.pending = int(n)
        (total,) = conn.execute("SELECT COALESCE(SUM(size), 0) FROM readings").fetchone()
        self.bytes = int(total)
        if not self.retain_days:  # retention switched off since last run: forget delivered rows
            self._delete_delivered_sync(self.delivered_upto)
        log.info("spool %s: %d readings pending, %d bytes", self.path, self.pending, self.bytes)

    async def close(self) -> None:
        if self._conn is not None:
            await self._call(self._conn.close)
            self._conn = None
        self._exec.shutdown(wait=True)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn, *args)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("spool is not open")
        return self._conn

    # ------------------------------------------------------------------ accepting readings

    def submit(self, rows: list[NewRow], done: Done) -> None:
        """Queue ``rows``; ``done(None)`` runs (on the event loop) once they are committed, or
        ``done(exc)`` if the commit failed. Must be called on the event loop."""
        self._queue.append((rows, done))
        self._wakeup.set()

    async def put(self, rows: list[NewRow]) -> None:
        """Store ``rows`` and return once they are committed to disk."""
        if not rows:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)

        self.submit(rows, done)
        await fut

    async def run(self) -> None:
        """The group committer. Runs until cancelled; fails pending callers on the way out."""
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue:
                    group: list[tuple[list[NewRow], Done]] = []
                    rows: list[NewRow] = []
                    while self._queue and len(rows) < self.max_group_rows:
                        item = self._queue.popleft()
                        group.append(item)
                        rows.extend(item[0])
                    try:
                        await self._call(self._commit_sync, rows)
                    except Exception as exc:
                        self.last_commit_error = f"{type(exc).__name__}: {exc}"
                        log.error("spool commit of %d readings failed: %s", len(rows), exc)
                        for _, done in group:
                            done(exc)
                        await asyncio.sleep(0.5)
                        continue
                    self.data_event.set()
                    for _, done in group:
                        done(None)
        finally:
            err = RuntimeError("spool closed")
            while self._queue:
                self._queue.popleft()[1](err)

    def _commit_sync(self, rows: Sequence[NewRow]) -> None:
        conn = self.conn
        known = self._series_ids
        new: dict[tuple[str, str], int] = {}
        next_series = max(self._series_names, default=0) + 1
        rid = self._next_id
        out = []
        added = 0
        for ts, dev, meas, f in rows:
            key = (meas, dev)
            sid = known.get(key) or new.get(key)
            if sid is None:
                sid = new[key] = next_series + len(new)
            size = len(f) + ROW_OVERHEAD
            added += size
            out.append((rid, ts, sid, f, size))
            rid += 1
        conn.execute("BEGIN IMMEDIATE")
        try:
            if new:
                conn.executemany(
                    "INSERT INTO series(id, measurement, device) VALUES (?,?,?)",
                    [(sid, meas, dev) for (meas, dev), sid in new.items()],
                )
            conn.executemany("INSERT INTO readings(id, ts, series, fields, size) VALUES (?,?,?,?,?)", out)
            evicted = self._evict_sync(self.bytes + added) if self.bytes + added > self.max_bytes else None
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._next_id = rid
        for (meas, dev), sid in new.items():
            known[(meas, dev)] = sid
            self._series_names[sid] = (dev, meas)
        self.bytes += added
        self.pending += len(rows)
        self.committed_rows += len(rows)
        self.commits += 1
        if evicted is not None:
            freed, dropped_pending, dropped_retained, span = evicted
            if dropped_pending and span is not None:
                with self._drops_lock:
                    old = self._drops
                    self._drops = (
                        (dropped_pending, *span) if old is None
                        else (old[0] + dropped_pending, min(old[1], span[0]), max(old[2], span[1]))
                    )
            self.bytes -= freed
            self.pending -= dropped_pending
            self.dropped += dropped_pending
            self.retained_evicted += dropped_retained

    def take_drops(self) -> tuple[int, int, int] | None:
        """(count, oldest ts, newest ts) of the undelivered readings dropped since the last call."""
        with self._drops_lock:
            drops, self._drops = self._drops, None
        return drops

    def _evict_sync(self, total: int) -> tuple[int, int, int, tuple[int, int] | None]:
        """Delete the oldest rows until the spool is back to ``evict_to`` of its bound (inside the
        caller's transaction). Returns (bytes freed, undelivered rows dropped, retained rows dropped,
        (oldest, newest) ts of the undelivered rows dropped)."""
        conn = self.conn
        target = total - int(self.max_bytes * self.evict_to)
        freed = 0
        cut = 0
        after = 0
        while freed < target:
            chunk = conn.execute(
                "SELECT id, size FROM readings WHERE id > ? ORDER BY id LIMIT 2000", (after,)
            ).fetchall()
            if not chunk:
                break
            for rid, size in chunk:
                freed += size
                cut = rid
                if freed >= target:
                    break
            after = chunk[-1][0]
        if not cut:
            return 0, 0, 0, None
        (retained,) = conn.execute(
            "SELECT COUNT(*) FROM readings WHERE id <= ? AND id <= ?", (cut, self.delivered_upto)
        ).fetchone()
        pending, oldest, newest = conn.execute(
            "SELECT COUNT(*), MIN(ts), MAX(ts) FROM readings WHERE id <= ? AND id > ?", (cut, self.delivered_upto)
        ).fetchone()
        conn.execute("DELETE FROM readings WHERE id <= ?", (cut,))
        if pending:
            conn.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (pending,))
            log.warning(
                "spool full (%d bytes > %d): dropped the %d oldest undelivered readings",
                total,
                self.max_bytes,
                pending,
            )
        span = (int(oldest), int(newest)) if pending else None
        return freed, int(pending), int(retained), span

    # ------------------------------------------------------------------ delivery

    async def next_batch(self, after_id: int, limit: int) -> list[Row]:
        return await self._call(self._next_batch_sync, after_id, limit)  # type: ignore[no-any-return]

    def _next_batch_sync(self, after_id: int, limit: int) -> list[Row]:
        cur = self.conn.execute(
            "SELECT id, ts, series, fields FROM readings WHERE id > ? ORDER BY id LIMIT ?",
            (max(after_id, self.delivered_upto), limit),
        )
        names = self._series_names
        return [Row(rid, ts, *names[sid], fields) for rid, ts, sid, fields in cur.fetchall()]

    async def mark_delivered(self, upto_id: int, quarantine: Sequence[tuple[Row, str]] = ()) -> None:
        """InfluxDB took everything up to ``upto_id`` except ``quarantine`` (rows it refused, with its
        message): move those to the quarantine table and the mark past the rest, in one transaction."""
        await self._call(self._mark_sync, upto_id, list(quarantine))

    def _mark_sync(self, upto_id: int, quarantine: list[tuple[Row, str]]) -> None:
        conn = self.conn
        if upto_id <= self.delivered_upto and not quarantine:
            return
        now = int(time.time() * 1000)
        conn.execute("BEGIN IMMEDIATE")
        try:
            q_bytes = 0
            q_n = 0
            for row, error in quarantine:
                got = conn.execute("SELECT size FROM readings WHERE id = ?", (row.id,)).fetchone()
                if got is None:  # evicted meanwhile
                    continue
                q_bytes += int(got[0])
                q_n += 1
                conn.execute(
                    "INSERT INTO quarantine(reading_id, ts, device, measurement, fields, error, at) "
                    "VALUES (?,?,?,?,?,?,?)",
                    (row.id, row.ts, row.device, row.measurement, row.fields, error[:2000], now),
                )
                conn.execute("DELETE FROM readings WHERE id = ?", (row.id,))
            if q_n:
                conn.execute("UPDATE meta SET value = value + ? WHERE key = 'quarantined'", (q_n,))
                conn.execute(
                    "DELETE FROM quarantine WHERE id <= (SELECT MAX(id) FROM quarantine) - ?",
                    (QUARANTINE_KEEP,),
                )
            n, size = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM readings WHERE id > ? AND id <= ?",
                (self.delivered_upto, upto_id),
            ).fetchone()
            new_mark = max(upto_id, self.delivered_upto)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'delivered_upto'", (new_mark,))
            if not self.retain_days:
                conn.execute("DELETE FROM readings WHERE id <= ?", (new_mark,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.delivered_upto = new_mark
        self.pending -= int(n) + q_n
        self.delivered_rows += int(n)
        self.quarantined += q_n
        self.bytes -= q_bytes
        if not self.retain_days:
            self.bytes -= int(size)

    def _delete_delivered_sync(self, upto: int) -> None:
        conn = self.conn
        (size,) = conn.execute("SELECT COALESCE(SUM(size), 0) FROM readings WHERE id <= ?", (upto,)).fetchone()
        conn.execute("DELETE FROM readings WHERE id <= ?", (upto,))
        self.bytes -= int(size)

    async def purge_retained(self, now_ms: int | None = None) -> int:
        """Delete delivered readings older than ``retain_days``; returns how many."""
        if not self.retain_days:
            return 0
        cutoff = (now_ms if now_ms is not None else int(time.time() * 1000)) - self.retain_days * 86_400_000
        return await self._call(self._purge_sync, cutoff)  # type: ignore[no-any-return]

    def _purge_sync(self, cutoff_ms: int) -> int:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            n, size = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM readings WHERE id <= ? AND ts < ?",
                (self.delivered_upto, cutoff_ms),
            ).fetchone()
            if n:
                conn.execute("DELETE FROM readings WHERE id <= ? AND ts < ?", (self.delivered_upto, cutoff_ms))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.bytes -= int(size)
        return int(n)

    # ------------------------------------------------------------------ reporting

    def stats(self) -> dict[str, int]:
        return {
            "spool_depth": self.pending,
            "spool_bytes": self.bytes,
            "spool_max_bytes": self.max_bytes,
            "spool_dropped": self.dropped,
            "spool_quarantined": self.quarantined,
        }


def iter_readings(
    path: Path, from_ms: int, to_ms: int, *, device: str | None = None, measurement: str | None = None
) -> Iterator[tuple[int, str, str, str, bool]]:
    """Readings in the spool file with ``from_ms <= ts < to_ms`` (delivered-and-retained and not yet
    delivered), ordered by time: ``(ts, device, measurement, fields, delivered)``. Read-only; safe
    while the gateway runs (WAL)."""
    conn = connect(path, readonly=True)
    try:
        (mark,) = conn.execute("SELECT value FROM meta WHERE key = 'delivered_upto'").fetchone()
        sql = (
            "SELECT r.id, r.ts, s.device, s.measurement, r.fields FROM readings r JOIN series s ON s.id = r.series "
            "WHERE r.ts >= ? AND r.ts < ?"
        )
        args: list[Any] = [from_ms, to_ms]
        if device:
            sql += " AND s.device = ?"
            args.append(device)
        if measurement:
            sql += " AND s.measurement = ?"
            args.append(measurement)
        sql += " ORDER BY r.ts, r.id"
        for rid, ts, dev, meas, fields in conn.execute(sql, args):
            yield ts, dev, meas, fields, rid <= mark
    finally:
        conn.close()
