"""Alembic migrations of the scheduler's database, on a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from protocol.models import Ack
from scheduler.db import Store
from scheduler.store import migrate
from scheduler.store.metadata import metadata
from tests.conftest import run_loaxa

DATA = Path(__file__).parent / "data"
T0 = 1_800_000_000_000
SHA = "cd" * 32


def _schema_of_main(url: str) -> str:
    kind = "sqlite" if url.startswith("sqlite") else "postgresql"
    return (DATA / f"scheduler-schema-5af3c77.{kind}.sql").read_text()


def _run_script(store: Store, script: str) -> None:
    body = "\n".join(line for line in script.splitlines() if not line.startswith("--"))
    with store.engine.begin() as conn:
        for stmt in body.split(";"):
            if stmt.strip():
                conn.exec_driver_sql(stmt)


def _diff(store: Store) -> list[object]:
    with store.engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata))


def test_empty_database_upgrades_to_head_and_matches_the_models(db_url: str) -> None:
    store = Store(db_url)
    try:
        assert migrate.current(store.engine) is None
        assert store.upgrade() == migrate.head()
        assert _diff(store) == []  # the migrations build exactly what the models describe
        assert store.upgrade() == migrate.head()  # again: nothing to do
        # every revision can be taken back to the baseline and brought forward again
        assert migrate.downgrade(store.engine, migrate.BASELINE) == migrate.BASELINE
        assert store.upgrade() == migrate.head()
        assert _diff(store) == []
    finally:
        store.close()


def test_database_made_by_main_upgrades_in_place_and_keeps_its_broadcasts(db_url: str) -> None:
    store = Store(db_url)
    try:
        _run_script(store, _schema_of_main(db_url))  # the tables exactly as main's create_all made them
        with store.engine.begin() as conn:
            conn.execute(text("INSERT INTO gateways (id, commune, status) VALUES ('xa-cu', 'Xã Cũ', 'online')"))
            conn.execute(text(
                "INSERT INTO media (sha256, size, duration_ms, content_type, path, created_at) "
                "VALUES (:sha, 1000, 2000, 'audio/mpeg', 'x.mp3', :t)"), {"sha": SHA, "t": T0})
            conn.execute(text(
                "INSERT INTO broadcasts (id, title, media_sha256, start_at, priority, volume, repeat, targets, "
                "created_at, expires_at, cancelled) VALUES ('bc-cu', 'Tin sáng', :sha, :t, 3, 70, 1, :targets, :t, "
                ":exp, false)"), {"sha": SHA, "t": T0, "targets": json.dumps(["xa-cu"]), "exp": T0 + 3_600_000})
            conn.execute(text(
                "INSERT INTO gateway_deliveries (broadcast_id, gateway_id, kind, command_id, envelope, expires_at, "
                "state, attempts) VALUES ('bc-cu', 'xa-cu', 'plan', 'cmd-cu', '{}', :exp, 'pending', 1)"),
                {"exp": T0 + 3_600_000})
            conn.execute(text(
                "INSERT INTO speaker_deliveries (broadcast_id, gateway_id, device_id, state) "
                "VALUES ('bc-cu', 'xa-cu', 'loa-1', 'pending')"))
        assert migrate.current(store.engine) is None  # no alembic_version: made before migrations

        assert store.upgrade() == migrate.head()
        assert _diff(store) == []
        st = store.broadcast_status("bc-cu")
        assert (st["title"], st["targets"], st["start_at"]) == ("Tin sáng", ["xa-cu"], T0)
        assert [(s["device"], s["state"]) for s in st["speakers"]] == [("loa-1", "pending")]
        # and the old broadcast still works: it is resent, and its ack is applied
        assert [o.command_id for o in store.pending_commands(["xa-cu"], T0 + 1000)] == ["cmd-cu"]
        assert store.record_ack("xa-cu", Ack(id="cmd-cu", ok=True, ts=T0), T0 + 2000) == "delivered"
    finally:
        store.close()


def test_a_database_the_scheduler_did_not_make_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE broadcasts (id TEXT PRIMARY KEY, body TEXT)")
    store = Store(f"sqlite:///{path}")
    try:
        with pytest.raises(migrate.MigrationError, match="'gateways' is missing"):
            store.upgrade()
        with sqlite3.connect(path) as conn:  # nothing was changed
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert names == {"broadcasts"}
    finally:
        store.close()


def test_loaxa_db_current_and_upgrade(tmp_path: Path, postgres_url: str) -> None:
    url = f"sqlite:///{tmp_path / 'scheduler.db'}"
    missing = run_loaxa("db", "current", "--database-url", url)
    assert missing.returncode == 3 and "no database file yet" in missing.stdout
    assert not (tmp_path / "scheduler.db").exists()  # looking does not create it
    for target in (url, postgres_url):
        if target == url:
            empty = Store(url)  # an empty file, as a scheduler that failed to start would leave
            empty.ping()
            empty.close()
        before = run_loaxa("db", "current", "--database-url", target)
        assert before.returncode == 3, before.stderr
        assert "no revision" in before.stdout and "needs `loaxa db upgrade`" in before.stdout
        up = run_loaxa("db", "upgrade", "--database-url", target)
        assert up.returncode == 0, up.stderr
        assert f"no revision -> {migrate.head()}" in up.stdout
        assert "loaxa-test-pw" not in up.stdout + up.stderr  # the password is never printed
        after = run_loaxa("db", "current", "--database-url", target)
        assert after.returncode == 0 and "up to date" in after.stdout


def test_the_scheduler_upgrades_on_start_and_refuses_a_foreign_database(tmp_path: Path) -> None:
    from scheduler.config import SchedulerConfig
    from scheduler.service import Scheduler, SetupError
    from tests.sched_support import Keys, scheduler_config_dict

    raw = scheduler_config_dict(tmp_path, "mqtt://127.0.0.1:1", Keys())
    data_dir = Path(raw["scheduler"]["data_dir"])
    data_dir.mkdir(parents=True)
    db = data_dir / "scheduler.db"
    store = Store(f"sqlite:///{db}")
    _run_script(store, _schema_of_main("sqlite"))  # what main left behind
    store.close()
    sched = Scheduler.build(SchedulerConfig.model_validate(raw))
    try:
        assert migrate.current(sched.store.store.engine) == migrate.head()
    finally:
        sched.store.close()

    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE alembic_version")
        conn.execute("ALTER TABLE speakers DROP COLUMN volume")  # no longer the schema main made
    with pytest.raises(SetupError, match=r"scheduler\.db.*'speakers' lacks column\(s\) volume"):
        Scheduler.build(SchedulerConfig.model_validate(raw))
