"""Named demo accounts and an IOC token for ``loaxa demo`` (random passwords, printed by the demo).

An admin; an approver (the commune chairman, "chutich-…") and an operator (commune staff,
"canbo-…") per commune; a technician; and an API token for the IOC.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from protocol.signing import now_ms
from scheduler.access.passwords import generate_password, hash_password
from scheduler.access.permissions import Grant
from scheduler.access.tokens import new_token


def demo_people(gateways: Iterable[str]) -> list[tuple[str, str, list[Grant]]]:
    """(login, display name, roles) of the demo accounts."""
    people: list[tuple[str, str, list[Grant]]] = [("admin", "Quản trị hệ thống", [Grant.make("admin", None)])]
    for gw in gateways:
        short = gw.removeprefix("xa-")
        people.append((f"chutich-{short}", f"Chủ tịch UBND {gw}", [Grant.make("approver", [gw])]))
        people.append((f"canbo-{short}", f"Cán bộ VH-TT {gw}", [Grant.make("operator", [gw])]))
    people.append(("kythuat", "Kỹ thuật viên", [Grant.make("technician", None)]))
    return people


def create_demo_access(scheduler_config: Path, gateways: Iterable[str]) -> dict[str, Any]:
    """Create the accounts and the token in the scheduler's database; return them for the endpoints file:
    ``{"accounts": {login: {password, roles}}, "tokens": {name: {token, role, areas}}}``."""
    from scheduler.access.cli import open_store

    store = open_store(scheduler_config)
    now = now_ms()
    accounts: dict[str, Any] = {}
    for login, name, grants in demo_people(gateways):
        password = generate_password()
        store.add_account(login, hash_password(password), grants, display_name=name, actor="demo", address=None,
                          now=now)
        accounts[login] = {"password": password, "display_name": name, "roles": [g.to_json() for g in grants]}
    token = new_token()
    ioc = Grant.make("ioc", None)
    store.import_token("ioc", token, ioc, actor="demo", now=now)
    return {"accounts": accounts, "tokens": {"ioc": {"token": token, **ioc.to_json()}}}


def banner_lines(access: dict[str, Any], url: str) -> list[str]:
    lines = ["", f"Demo accounts (sign in at {url}/ in a browser, or `loaxa broadcast … --login NAME`):"]
    for login, info in access["accounts"].items():
        roles = " ".join(f"{r['role']}:{r['areas'] if r['areas'] == '*' else ','.join(r['areas'])}"
                         for r in info["roles"])
        lines.append(f"  {login:<18} password {info['password']:<18} {roles}")
    for name, info in access["tokens"].items():
        lines.append(f"  API token {name!r} ({info['role']}): {info['token']}")
    return lines
