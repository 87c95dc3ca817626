"""``loaxa db upgrade|current|revision``: the scheduler database's schema migrations, by hand.

The scheduler upgrades its database itself when it starts; these commands let a technician do it
(or check it) before, e.g. after installing a new version, or against a PostgreSQL server.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DB_HELP = """\
Schema migrations of the scheduler's database (SQLite file or PostgreSQL). The scheduler runs
`upgrade` itself on start; run it by hand to see what happens before starting a new version.

Examples:
  loaxa db current --config /etc/loaxa/scheduler.yaml
  loaxa db upgrade --config /etc/loaxa/scheduler.yaml
  loaxa db upgrade --database-url postgresql://loaxa:PASSWORD@db.example/loaxa
"""


def _add_target(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", type=Path, help="the scheduler's YAML config (its database_url or data_dir)")
    g.add_argument("--database-url", help="an SQLAlchemy URL: sqlite:////path/scheduler.db or postgresql://…")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d = sub.add_parser(
        "db", help="scheduler database migrations", description=DB_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dsub = d.add_subparsers(title="db commands", metavar="ACTION")
    up = dsub.add_parser("upgrade", help="bring the database to the newest schema (keeps all data)")
    _add_target(up)
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    up.set_defaults(func=run_upgrade)
    cur = dsub.add_parser("current", help="print the database's schema revision and the newest one")
    _add_target(cur)
    cur.set_defaults(func=run_current)
    rev = dsub.add_parser(
        "revision", help="(developers) write a new migration from the models' changes",
        description="Compare the models with the newest migration and write the difference as a new revision "
                    "under scheduler/store/migrations/versions/. Review it before committing.",
    )
    rev.add_argument("-m", "--message", required=True, help="what the revision changes, e.g. 'access tables'")
    rev.set_defaults(func=run_revision)
    d.set_defaults(func=lambda _a: (d.print_help(), 2)[1])


def _url(args: argparse.Namespace) -> str:
    if args.database_url:
        return str(args.database_url)
    from loaxa.yamlconf import ConfigError
    from scheduler.config import load_scheduler_config
    from scheduler.store.engine import default_url

    try:
        cfg = load_scheduler_config(args.config)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from exc
    return cfg.scheduler.database_url or default_url(cfg.scheduler.data_dir)


def _shown(url: str) -> str:
    from scheduler.store.engine import normalise_url

    return normalise_url(url).render_as_string(hide_password=True)


def run_upgrade(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from scheduler.store import migrate
    from scheduler.store.engine import make_engine

    url = _url(args)
    engine = make_engine(url)
    try:
        before = migrate.current(engine)
        after = migrate.upgrade(engine, args.revision)
    except (SQLAlchemyError, migrate.MigrationError, ImportError) as exc:
        print(f"error: database {_shown(url)}: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"{_shown(url)}: {before or 'no revision'} -> {after}")
    return 0


def run_current(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from scheduler.store import migrate
    from scheduler.store.engine import make_engine, normalise_url

    url = _url(args)
    u = normalise_url(url)
    if u.get_backend_name() == "sqlite" and u.database and not Path(u.database).exists():
        print(f"{_shown(url)}: no database file yet (the scheduler creates it on start, or `loaxa db upgrade`)")
        return 3
    engine = make_engine(url)
    try:
        rev = migrate.current(engine)
    except (SQLAlchemyError, ImportError) as exc:
        print(f"error: database {_shown(url)}: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    newest = migrate.head()
    state = "up to date" if rev == newest else "needs `loaxa db upgrade`"
    print(f"{_shown(url)}: at {rev or 'no revision'}, newest {newest} ({state})")
    return 0 if rev == newest else 3


def run_revision(args: argparse.Namespace) -> int:
    from scheduler.store import migrate

    path = migrate.autogenerate(args.message)
    print(f"wrote {path}; review it, then run the migration tests on SQLite and PostgreSQL")
    return 0
