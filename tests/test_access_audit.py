"""The audit chain under concurrent writers (separate engines on one database, SQLite and PostgreSQL)."""

from __future__ import annotations

import threading

from scheduler.access import audit
from scheduler.access.store import AccessStore
from scheduler.db import Store

WRITERS = 6  # separate engines, as separate processes would be


def test_concurrent_appends_keep_one_unbroken_chain(db_url: str) -> None:
    url = db_url
    first = Store(url)
    first.create_all()
    writers = [AccessStore(Store(url).session) for _ in range(WRITERS)]
    errors: list[BaseException] = []

    def write(n: int, store: AccessStore) -> None:
        try:
            for i in range(40):
                store.audit(at=i, actor=f"writer-{n}", action="test.append", target=str(i), detail={"i": i})
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n, s)) for n, s in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    result = AccessStore(first.session).verify_audit()
    assert result.ok and result.count == WRITERS * 40, result
    with first.session() as s:
        entries = list(audit.iter_entries(s))
    assert [e.id for e in entries] == list(range(1, WRITERS * 40 + 1))
    assert {e.actor for e in entries} == {f"writer-{n}" for n in range(WRITERS)}


def test_canonical_form_is_stable() -> None:
    a = audit.canonical(1, 5, "quantri", "127.0.0.1", "login", "quantri", {"b": 1, "a": "Xã"}, audit.GENESIS)
    assert a == ('{"action":"login","actor":"quantri","address":"127.0.0.1","at":5,"detail":{"a":"Xã","b":1},'
                 '"id":1,"prev":"' + "0" * 64 + '","target":"quantri"}').encode()
