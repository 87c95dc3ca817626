"""``loaxa users|tokens|audit`` against a real SQLite database, and the scheduler's refusal to listen
on the network before anyone can sign in."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import yaml

from tests.conftest import run_loaxa
from tests.sched_support import Keys, scheduler_config_dict

PASSWORD = "mot-mat-khau-dai"


def _config(tmp_path: Path, host: str = "127.0.0.1") -> Path:
    conf = tmp_path / "scheduler.yaml"
    conf.write_text(yaml.safe_dump(scheduler_config_dict(tmp_path, "mqtt://127.0.0.1:1", Keys(), http={"host": host})))
    return conf


def test_users_tokens_and_a_tampered_audit_log(tmp_path: Path) -> None:
    conf = str(_config(tmp_path))
    db = tmp_path / "sched-data" / "scheduler.db"
    r = run_loaxa("users", "add", "--config", conf, "quantri", "--role", "admin", "--name", "Quản trị",
                  "--password-stdin", input=PASSWORD + "\n")
    assert r.returncode == 0 and "account quantri created with roles admin:*" in r.stdout, r.stderr
    r = run_loaxa("users", "add", "--config", conf, "canbo", "--role", "operator:xa-an-binh", "--generate-password")
    assert r.returncode == 0 and "password (shown once): " in r.stdout
    r = run_loaxa("users", "add", "--config", conf, "canbo", "--role", "viewer", "--generate-password")
    assert r.returncode == 2 and "account canbo already exists" in r.stderr
    r = run_loaxa("users", "add", "--config", conf, "ngan", "--role", "viewer", "--password-stdin", input="ngan\n")
    assert r.returncode == 2 and "at least 10 characters" in r.stderr
    r = run_loaxa("users", "add", "--config", conf, "x", "--role", "thu-ky", "--generate-password")
    assert r.returncode == 2 and "unknown role 'thu-ky'" in r.stderr
    r = run_loaxa("users", "add", "--config", conf, "x", "--role", "operator:Xa An Binh", "--generate-password")
    assert r.returncode == 2 and "invalid area (gateway id)" in r.stderr
    r = run_loaxa("users", "roles", "--config", conf, "canbo", "--set", "operator:xa-an-binh,xa-phu-my", "viewer")
    assert r.returncode == 0 and r.stdout.strip() == "canbo: operator:xa-an-binh,xa-phu-my viewer:*"
    r = run_loaxa("users", "disable", "--config", conf, "canbo")
    assert r.returncode == 0
    r = run_loaxa("users", "passwd", "--config", conf, "canbo", "--password-stdin", input="mat-khau-moi-day\n")
    assert r.returncode == 0 and "password of canbo changed" in r.stdout
    listed = json.loads(run_loaxa("users", "list", "--config", conf, "--json").stdout)
    assert {a["login"]: a["disabled"] for a in listed} == {"canbo": True, "quantri": False}
    with sqlite3.connect(db) as con:
        [(hashed,)] = con.execute("SELECT password_hash FROM accounts WHERE login='quantri'").fetchall()
    assert hashed.startswith("$argon2id$") and PASSWORD not in hashed

    r = run_loaxa("tokens", "create", "--config", conf, "ioc", "--role", "ioc", "--expires-days", "30")
    token = r.stdout.strip()
    assert r.returncode == 0 and token.startswith("lxa_") and len(token) > 40
    with sqlite3.connect(db) as con:
        assert token not in json.dumps(con.execute("SELECT * FROM api_tokens").fetchall())
    r = run_loaxa("tokens", "list", "--config", conf)
    assert "ioc" in r.stdout and "active" in r.stdout and token not in r.stdout and token[:10] in r.stdout
    assert run_loaxa("tokens", "revoke", "--config", conf, "ioc").returncode == 0
    assert "revoked" in run_loaxa("tokens", "list", "--config", conf).stdout
    r = run_loaxa("tokens", "revoke", "--config", conf, "khong-co")
    assert r.returncode == 2 and "no token khong-co" in r.stderr

    shown = run_loaxa("audit", "show", "--config", conf, "--json")
    actions = [e["action"] for e in json.loads(shown.stdout)]
    assert actions == ["token.revoke", "token.create", "account.password", "account.disable", "account.roles",
                       "account.create", "account.create"]
    r = run_loaxa("audit", "verify", "--config", conf)
    assert r.returncode == 0 and "audit log intact: 7 entries" in r.stdout
    out = tmp_path / "audit.csv"
    r = run_loaxa("audit", "export", "--config", conf, "--output", str(out))
    assert r.returncode == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 7 and rows[0]["action"] == "account.create" and rows[0]["actor"].startswith("cli:")

    # someone with the database edits who disabled the account: verify names the entry
    with sqlite3.connect(db) as con:
        con.execute("UPDATE audit_log SET actor='nguoi-khac' WHERE action='account.disable'")
    r = run_loaxa("audit", "verify", "--config", conf)
    assert r.returncode == 1
    assert "AUDIT LOG BROKEN at entry 4" in r.stderr and "account.disable by nguoi-khac" in r.stderr
    assert "was altered" in r.stderr
    with sqlite3.connect(db) as con:
        con.execute("UPDATE audit_log SET actor=? WHERE action='account.disable'", (rows[3]["actor"],))
    assert run_loaxa("audit", "verify", "--config", conf).returncode == 0
    # ... or deletes an entry
    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM audit_log WHERE id = 5")
    r = run_loaxa("audit", "verify", "--config", conf)
    assert r.returncode == 1 and "entry 5 is missing before entry 6" in r.stderr


def test_scheduler_refuses_a_network_bind_without_accounts(tmp_path: Path) -> None:
    conf = str(_config(tmp_path, host="0.0.0.0"))
    r = run_loaxa("scheduler", "run", "--config", conf)
    assert r.returncode == 2
    assert "no accounts yet" in r.stderr and "loaxa users add --config <this config> --role admin" in r.stderr
