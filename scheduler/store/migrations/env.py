"""Alembic environment of the scheduler's database.

Used two ways: by :mod:`scheduler.store.migrate` (the scheduler upgrades on start, ``loaxa db``),
which hands over an open connection in ``config.attributes["connection"]``; and by the ``alembic``
command itself (``alembic -c scheduler/store/alembic.ini …``), which takes the URL from
``-x url=…``, then ``LOAXA_DATABASE_URL``, then ``sqlalchemy.url``.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy.engine import Connection

from scheduler.store.engine import make_engine, normalise_url
from scheduler.store.metadata import metadata

config = context.config


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("LOAXA_DATABASE_URL")
    url = url or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database URL: pass -x url=URL or set LOAXA_DATABASE_URL")
    return url


def _configure(**kw: object) -> None:
    context.configure(
        target_metadata=metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: later revisions use batch mode (copy and move the table)
        render_as_batch=True,
        **kw,  # type: ignore[arg-type]
    )


def run_offline() -> None:
    """``alembic upgrade --sql``: print the DDL instead of running it."""
    _configure(url=normalise_url(_url()).render_as_string(hide_password=False), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
