"""Schema migrations of the scheduler's database (Alembic, ``migrations/``), run in-process.

The scheduler upgrades its database to the newest revision when it starts (:func:`upgrade`);
``loaxa db upgrade|current|revision`` do the same by hand. A database made before migrations existed
(by ``create_all`` on main up to 5af3c77) has the baseline's tables but no ``alembic_version``: it
is checked column by column against the baseline and stamped, then upgraded like any other, so its
broadcasts are kept.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect
from sqlalchemy.engine import Connection

from scheduler.store.engine import make_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

#: The first revision: the schema as ``create_all`` made it before migrations existed.
BASELINE = "0001"

#: Tables and columns of the baseline, to recognise (and check) a database that predates migrations.
BASELINE_TABLES: dict[str, frozenset[str]] = {
    "gateways": frozenset({"id", "commune", "status", "status_ts", "last_seen", "version"}),
    "speakers": frozenset({"id", "gateway_id", "device_id", "name", "online", "volume", "last_seen"}),
    "media": frozenset({"sha256", "size", "duration_ms", "content_type", "path", "original_name", "created_at"}),
    "broadcasts": frozenset({
        "id", "title", "media_sha256", "start_at", "priority", "volume", "repeat", "targets", "created_at",
        "created_by", "expires_at", "cancelled", "cancelled_at",
    }),
    "gateway_deliveries": frozenset({
        "id", "broadcast_id", "gateway_id", "kind", "command_id", "envelope", "expires_at", "state", "attempts",
        "last_sent_at", "acked_at", "error",
    }),
    "speaker_deliveries": frozenset({
        "id", "broadcast_id", "gateway_id", "device_id", "state", "delivered_at", "started_at", "ended_at",
        "updated_at", "reason",
    }),
}


class MigrationError(RuntimeError):
    """The database cannot be brought to the current schema (the message says which table/column)."""


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for ``migrations/`` (no ini file needed); ``connection`` is used as is."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision in ``migrations/versions``."""
    rev = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if rev is None:
        raise MigrationError(f"no migration scripts in {MIGRATIONS / 'versions'}")
    return rev


def current(engine: Engine) -> str | None:
    """The revision the database is at (None: empty, or made before migrations existed)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _adopt_unversioned(conn: Connection) -> bool:
    """Stamp a pre-migration database with the baseline after checking it has the baseline's columns.

    Returns True when it did. An empty database is left alone (the baseline will create it).
    """
    insp = inspect(conn)
    tables = set(insp.get_table_names())
    if "alembic_version" in tables or not tables & BASELINE_TABLES.keys():
        return False
    for table, columns in BASELINE_TABLES.items():
        if table not in tables:
            raise MigrationError(f"table {table!r} is missing: this database is not one the scheduler made")
        have = {c["name"] for c in insp.get_columns(table)}
        missing = sorted(columns - have)
        if missing:
            raise MigrationError(f"table {table!r} lacks column(s) {', '.join(missing)}: "
                                 "this database is not one the scheduler made")
    command.stamp(alembic_config(conn), BASELINE)
    return True


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring the database to ``revision`` (default: newest) in one transaction; returns the revision."""
    with engine.begin() as conn:
        _adopt_unversioned(conn)
        command.upgrade(alembic_config(conn), revision)
    return current(engine)


def downgrade(engine: Engine, revision: str) -> str | None:
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), revision)
    return current(engine)


def next_rev_id() -> str:
    """Revisions are numbered 0001, 0002, …: the order is visible in the file names."""
    numbers = [int(m.group(1)) for p in (MIGRATIONS / "versions").glob("*.py")
               if (m := re.match(r"(\d{4})_", p.name))]
    return f"{max(numbers, default=0) + 1:04d}"


def autogenerate(message: str) -> Path:
    """Write a new revision with the difference between the models and the newest revision.

    Compares against a scratch SQLite database upgraded to head, so no server is needed. Review the
    file (renames show as drop + add; server defaults and constraint names need care) before committing.
    """
    with tempfile.TemporaryDirectory(prefix="loaxa-alembic-") as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'scratch.db'}")
        try:
            upgrade(engine)
            with engine.begin() as conn:
                script = command.revision(alembic_config(conn), message=message, autogenerate=True,
                                          rev_id=next_rev_id())
        finally:
            engine.dispose()
    if script is None or isinstance(script, list):
        raise MigrationError("alembic wrote no single revision")
    return Path(script.path)
