"""Engines and sessions for the scheduler's database: SQLite (the default, one file) or PostgreSQL.

SQLite runs in WAL mode with ``synchronous=FULL``. The dispatcher publishes a signed command right
after the transaction that records it commits; with ``synchronous=NORMAL`` a power cut after the
commit can roll the WAL back, so a gateway could be playing a command that the centre no longer
knows of (and would never cancel, resend or report). FULL syncs the WAL on every commit, so what
has been published is on disk. The cost is one fsync per transaction, which the batched writers
(:meth:`scheduler.db.Store.apply`) already keep rare.

PostgreSQL URLs (``postgresql://``, ``postgresql+psycopg://``) use psycopg 3; its default
``synchronous_commit=on`` gives the same guarantee.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

#: PRAGMAs set on every new SQLite connection, in order.
SQLITE_PRAGMAS: tuple[tuple[str, str], ...] = (
    ("journal_mode", "WAL"),
    ("synchronous", "FULL"),
    ("foreign_keys", "ON"),
    ("busy_timeout", "30000"),
)


def default_url(data_dir: Path) -> str:
    """The SQLite file ``<data_dir>/scheduler.db``."""
    return f"sqlite:///{(data_dir / 'scheduler.db').resolve()}"


def normalise_url(url: str | URL) -> URL:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 (the driver Loa Xã installs), not psycopg2."""
    u = make_url(url) if isinstance(url, str) else url
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def is_sqlite(url: str | URL) -> bool:
    return normalise_url(url).get_backend_name() == "sqlite"


def make_engine(url: str | URL) -> Engine:
    """An engine for ``url``.

    SQLite: WAL, ``synchronous=FULL``, foreign keys on, 30 s busy timeout; the file's directory is
    created. PostgreSQL: psycopg 3 with a pre-ping, so a restarted server costs one retry, not an error.
    """
    u = normalise_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(u, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            for name, value in SQLITE_PRAGMAS:
                cur.execute(f"PRAGMA {name}={value}")
            cur.close()

        return engine
    return create_engine(u, pool_pre_ping=True)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (the Store returns rows to other threads)."""
    return sessionmaker(engine, expire_on_commit=False)
