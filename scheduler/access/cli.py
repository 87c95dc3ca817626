"""``loaxa users``, ``loaxa tokens`` and ``loaxa audit``: run on the scheduler's machine, against its
database (found through the scheduler's config), so the first admin can be made before anyone can
sign in. Every change is written to the audit log as ``cli:<unix user>``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

ROLE_HELP = "ROLE or ROLE:GATEWAY,GATEWAY (roles: admin, approver, operator, technician, viewer, ioc)"

USERS_HELP = """\
Accounts of people who sign in to the centre. Each has one or more roles, each for some communes
(gateway ids) or for all of them. Examples:
  loaxa users add --config /etc/loaxa/scheduler.yaml --role admin quantri
  loaxa users add --config … --role operator:xa-an-binh --name "Nguyễn Văn A" canbo-anbinh
  loaxa users roles --config … canbo-anbinh --set operator:xa-an-binh,xa-phu-my
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="the scheduler's YAML config (for its database)")


def _pw_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    g.add_argument("--generate-password", action="store_true", help="make a random password and print it once")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    u = sub.add_parser("users", help="accounts, passwords and roles of the centre", description=USERS_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    us = u.add_subparsers(title="users commands", metavar="ACTION")
    p = us.add_parser("add", help="create an account")
    _common(p)
    p.add_argument("login")
    p.add_argument("--role", action="append", required=True, metavar="ROLE[:AREAS]", help=ROLE_HELP)
    p.add_argument("--name", help="display name, e.g. Nguyễn Văn A")
    _pw_options(p)
    p.set_defaults(func=users_add)
    p = us.add_parser("list", help="accounts and their roles")
    _common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=users_list)
    p = us.add_parser("passwd", help="set an account's password (its sessions end)")
    _common(p)
    p.add_argument("login")
    _pw_options(p)
    p.set_defaults(func=users_passwd)
    p = us.add_parser("disable", help="disable an account (its sessions end); --enable undoes it")
    _common(p)
    p.add_argument("login")
    p.add_argument("--enable", action="store_true", help="enable the account again")
    p.set_defaults(func=users_disable)
    p = us.add_parser("roles", help="show an account's roles, or replace them with --set")
    _common(p)
    p.add_argument("login")
    p.add_argument("--set", nargs="+", metavar="ROLE[:AREAS]", help=ROLE_HELP)
    p.set_defaults(func=users_roles)
    u.set_defaults(func=lambda _a: (u.print_help(), 2)[1])

    t = sub.add_parser("tokens", help="API tokens for machines (IOC, automation, scripts)",
                       description="API tokens: one role and its areas each; the token is shown once, when created.")
    ts = t.add_subparsers(title="tokens commands", metavar="ACTION")
    p = ts.add_parser("create", help="create a token and print it (once)")
    _common(p)
    p.add_argument("name")
    p.add_argument("--role", required=True, metavar="ROLE[:AREAS]", help=ROLE_HELP)
    p.add_argument("--expires-days", type=int, metavar="N", help="valid for N days (default: until revoked)")
    p.set_defaults(func=tokens_create)
    p = ts.add_parser("list", help="tokens (never the secrets)")
    _common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=tokens_list)
    p = ts.add_parser("revoke", help="revoke a token at once")
    _common(p)
    p.add_argument("name")
    p.set_defaults(func=tokens_revoke)
    t.set_defaults(func=lambda _a: (t.print_help(), 2)[1])

    a = sub.add_parser("audit", help="the audit log: show, verify the hash chain, export CSV",
                       description="Who did what, when, from where. Each entry is chained to the one before "
                                   "by SHA-256; `verify` finds an entry that was edited or deleted.")
    asub = a.add_subparsers(title="audit commands", metavar="ACTION")
    p = asub.add_parser("show", help="recent entries, newest first")
    _common(p)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--action", help="only actions starting with this, e.g. login or broadcast")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=audit_show)
    p = asub.add_parser("verify", help="check the whole chain (exit 1 naming the first bad entry)")
    _common(p)
    p.set_defaults(func=audit_verify)
    p = asub.add_parser("export", help="the whole log as CSV")
    _common(p)
    p.add_argument("--output", "-o", type=Path, help="file to write (default: stdout)")
    p.set_defaults(func=audit_export)
    a.set_defaults(func=lambda _a: (a.print_help(), 2)[1])


# ---------------------------------------------------------------- helpers


class CliError(Exception):
    pass


def _handle(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def wrapper(args: argparse.Namespace) -> int:
        from scheduler.access.passwords import PasswordPolicyError
        from scheduler.access.permissions import GrantError
        from scheduler.access.store import AccessError

        try:
            return int(fn(args))
        except (CliError, AccessError, GrantError, PasswordPolicyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return wrapper


def open_store(config: Path) -> Any:
    """The access store of the scheduler configured in ``config`` (tables created when missing)."""
    from sqlalchemy.exc import SQLAlchemyError

    from loaxa.yamlconf import ConfigError
    from scheduler.access.store import AccessStore
    from scheduler.config import load_scheduler_config
    from scheduler.db import Store, default_url

    try:
        cfg = load_scheduler_config(config)
    except ConfigError as exc:
        raise CliError(str(exc)) from exc
    url = cfg.scheduler.database_url or default_url(cfg.scheduler.data_dir)
    try:
        store = Store(url)
        # the schema as the scheduler itself makes it: Alembic migrations where scheduler/store has
        # them (then the scheduler accepts a database that this command created), else the models
        prepare = getattr(store, "upgrade", None) or store.create_all
        prepare()
    except (SQLAlchemyError, ImportError, OSError, RuntimeError) as exc:  # RuntimeError: MigrationError
        raise CliError(f"{config}: cannot open the database: {exc}") from exc
    return AccessStore(store.session)


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def _now() -> int:
    from protocol.signing import now_ms

    return now_ms()


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    """(password, generated)."""
    from scheduler.access.passwords import check_policy, generate_password

    if args.generate_password:
        return generate_password(), True
    if args.password_stdin:
        pw = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        pw = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != pw:
            raise CliError("the two passwords differ")
    else:
        raise CliError("give --password-stdin or --generate-password (stdin is not a terminal)")
    check_policy(pw)
    return pw, False


def _fmt(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _roles_text(roles: list[dict[str, Any]]) -> str:
    return " ".join(f"{r['role']}:{r['areas'] if r['areas'] == '*' else ','.join(r['areas'])}" for r in roles)


def _table(rows: list[list[str]], header: list[str]) -> str:
    from scheduler.cli import _table as table

    return table(rows, header)


# ---------------------------------------------------------------- users


@_handle
def users_add(args: argparse.Namespace) -> int:
    from scheduler.access.passwords import hash_password
    from scheduler.access.permissions import Grant
    from scheduler.access.store import check_login

    grants = [Grant.parse(r) for r in args.role]
    check_login(args.login)
    store = open_store(args.config)
    pw, generated = _password(args)
    store.add_account(args.login, hash_password(pw), grants, display_name=args.name, actor=actor(),
                      address="local", now=_now())
    print(f"account {args.login} created with roles {' '.join(g.role + ':' + g.areas_text() for g in grants)}")
    if generated:
        print(f"password (shown once): {pw}")
    return 0


@_handle
def users_list(args: argparse.Namespace) -> int:
    rows = open_store(args.config).list_accounts()
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    print(_table([[r["login"], r["display_name"] or "", "disabled" if r["disabled"] else "active",
                   _roles_text(r["roles"]), _fmt(r["last_login_at"])] for r in rows],
                 ["LOGIN", "NAME", "STATE", "ROLES", "LAST LOGIN"]))
    return 0


@_handle
def users_passwd(args: argparse.Namespace) -> int:
    from scheduler.access.passwords import hash_password

    store = open_store(args.config)
    pw, generated = _password(args)
    n = store.set_password(args.login, hash_password(pw), actor=actor(), address="local", now=_now())
    print(f"password of {args.login} changed; {n} session(s) ended")
    if generated:
        print(f"password (shown once): {pw}")
    return 0


@_handle
def users_disable(args: argparse.Namespace) -> int:
    open_store(args.config).set_disabled(args.login, not args.enable, actor=actor(), address="local", now=_now())
    print(f"account {args.login} {'enabled' if args.enable else 'disabled; its sessions ended'}")
    return 0


@_handle
def users_roles(args: argparse.Namespace) -> int:
    from scheduler.access.permissions import Grant
    from scheduler.access.store import UnknownName

    store = open_store(args.config)
    if args.set:
        grants = [Grant.parse(r) for r in args.set]
        store.set_roles(args.login, grants, actor=actor(), address="local", now=_now())
    found = [r for r in store.list_accounts() if r["login"] == args.login]
    if not found:
        raise UnknownName(f"no account {args.login}")
    print(f"{args.login}: {_roles_text(found[0]['roles'])}")
    return 0


# ---------------------------------------------------------------- tokens


@_handle
def tokens_create(args: argparse.Namespace) -> int:
    from scheduler.access.permissions import Grant

    grant = Grant.parse(args.role)
    if args.expires_days is not None and not 1 <= args.expires_days <= 3650:
        raise CliError("--expires-days must be 1-3650")
    store = open_store(args.config)
    now = _now()
    expires = now + args.expires_days * 86_400_000 if args.expires_days else None
    token = store.create_token(args.name, grant, expires_at=expires, actor=actor(), address="local", now=now)
    print(f"token {args.name} ({grant.role}:{grant.areas_text()}, "
          f"{'expires ' + _fmt(expires) if expires else 'until revoked'}); shown this once, keep it secret:",
          file=sys.stderr)
    print(token)
    return 0


@_handle
def tokens_list(args: argparse.Namespace) -> int:
    rows = open_store(args.config).list_tokens()
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    now = _now()

    def state(r: dict[str, Any]) -> str:
        if r["revoked_at"]:
            return "revoked"
        if r["expires_at"] and r["expires_at"] <= now:
            return "expired"
        return "active"

    print(_table([[r["name"], r["prefix"] + "…", state(r), _roles_text([r]), _fmt(r["expires_at"]),
                   _fmt(r["last_used_at"]), r["created_by"]] for r in rows],
                 ["NAME", "TOKEN", "STATE", "ROLE", "EXPIRES", "LAST USED", "CREATED BY"]))
    return 0


@_handle
def tokens_revoke(args: argparse.Namespace) -> int:
    open_store(args.config).revoke_token(args.name, actor=actor(), address="local", now=_now())
    print(f"token {args.name} revoked")
    return 0


# ---------------------------------------------------------------- audit


@_handle
def audit_show(args: argparse.Namespace) -> int:
    rows = open_store(args.config).audit_entries(limit=max(1, min(args.limit, 100_000)), action=args.action)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    print(_table([[str(r["id"]), _fmt(r["at"]), r["actor"], r["address"] or "", r["action"], r["target"] or "",
                   json.dumps(r["detail"], ensure_ascii=False)[:80] if r["detail"] else ""] for r in rows],
                 ["#", "WHEN", "WHO", "FROM", "ACTION", "TARGET", "DETAIL"]))
    return 0


@_handle
def audit_verify(args: argparse.Namespace) -> int:
    r = open_store(args.config).verify_audit()
    if r.ok:
        print(f"audit log intact: {r.count} entries; head hash {r.head}")
        print("write the head hash down (or send it elsewhere): a later verify that does not reach it means "
              "the end of the log was cut off or rewritten")
        return 0
    print(f"AUDIT LOG BROKEN at entry {r.bad_id}: {r.problem}", file=sys.stderr)
    print(f"{r.count} entries before it are intact (last good hash {r.head})", file=sys.stderr)
    return 1


@_handle
def audit_export(args: argparse.Namespace) -> int:
    lines = open_store(args.config).export_audit()
    if args.output is None:
        for line in lines:
            sys.stdout.write(line)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8", newline="") as f:
            n = -1
            for line in lines:
                f.write(line)
                n += 1
    except OSError as exc:
        raise CliError(f"{args.output}: {exc.strerror}") from exc
    print(f"{n} entries written to {args.output}")
    return 0
