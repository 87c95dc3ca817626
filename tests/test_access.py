"""Access control over real HTTP against a running scheduler with a real SQLite database.

The matrix: every state-changing endpoint, called without credentials, with a wrong / expired /
revoked token, with a valid token of the wrong role or the wrong commune, answers 401/403 and
changes nothing in the database; the right identity gets 2xx. Then CSRF, throttling, sessions,
signed media URLs, and a walk over every route so that a new one cannot forget its permission.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI

from loaxa.brokers import CentralBroker
from protocol.signing import now_ms
from scheduler.access.deps import api_routes, declared_permissions, require
from scheduler.access.media_urls import GRACE_S
from scheduler.access.passwords import hash_password
from scheduler.access.permissions import Grant
from scheduler.access.routes import PUBLIC_STATE_CHANGING
from scheduler.access.store import AccessStore
from scheduler.config import SchedulerConfig
from scheduler.service import Scheduler, SetupError
from tests.sched_support import Keys, add_token, bearer, make_tone, scheduler_config_dict, wait_for_async

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
#: Reads open to anyone, each for a reason: liveness, API docs, media (signed per gateway) and a
#: commune's ICS feed (signed per commune, revocable: calendar programs cannot send a token).
PUBLIC_READS = {"/api/health", "/media/{sha256}", "/feeds/{gw}/schedules.ics",
                "/docs", "/docs/oauth2-redirect", "/redoc"}  # docs: fastapi-offline
PASSWORD = "mat-khau-dai-du-10"
#: Tables that a refused request must leave exactly as they were (audit_log and login_attempts do
#: record the refusal; api_tokens.last_used_at moves when a token is used).
WATCHED = {
    "media": "*",
    "broadcasts": "*",
    "gateway_deliveries": "*",
    "speaker_deliveries": "*",
    "gateways": "id, commune",
    "accounts": "login, display_name, password_hash, disabled",
    "account_roles": "*",
    "api_tokens": "name, token_hash, role, areas, expires_at, revoked_at",
    "web_sessions": "id_hash, account_id, csrf_token, expires_at",
}


@dataclass
class Env:
    sched: Scheduler
    http: httpx.AsyncClient
    base: str
    tokens: dict[str, str]
    db: Path

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        with sqlite3.connect(self.db) as con:
            snap = {t: sorted(con.execute(f"SELECT {c} FROM {t}").fetchall(), key=repr) for t, c in WATCHED.items()}
        files = self.sched.library.root.rglob("*")
        snap["files"] = sorted((str(p), p.stat().st_size) for p in files if p.is_file())
        return snap

    def audit_actions(self) -> list[tuple[str, str, str | None]]:
        with sqlite3.connect(self.db) as con:
            return [tuple(r) for r in con.execute("SELECT action, actor, target FROM audit_log ORDER BY id")]


@pytest.fixture
async def env(tmp_path: Path, mosquitto: CentralBroker) -> AsyncIterator[Env]:
    cfg = SchedulerConfig.model_validate(
        scheduler_config_dict(tmp_path, mosquitto, Keys(), gateways=["xa-an-binh", "xa-phu-my"]))
    sched = Scheduler.build(cfg)
    store = sched.store.store
    access = AccessStore(store.session)
    now = now_ms()
    tokens = {
        "admin": add_token(store, "admin", name="admin"),
        "op-an-binh": add_token(store, "operator", ["xa-an-binh"], name="op-an-binh"),
        "ap-an-binh": add_token(store, "approver", ["xa-an-binh"], name="ap-an-binh"),
        "op-phu-my": add_token(store, "operator", ["xa-phu-my"], name="op-phu-my"),
        "viewer": add_token(store, "viewer", name="viewer"),
        "technician": add_token(store, "technician", name="kythuat"),
        "expired": add_token(store, "admin", name="expired", expires_at=now - 1000),
        "revoked": add_token(store, "admin", name="revoked"),
    }
    access.revoke_token("revoked", actor="test", address=None, now=now)
    pw = hash_password(PASSWORD)
    for login, grant in (("canbo-anbinh", Grant.make("operator", ["xa-an-binh"])),
                         ("quantri", Grant.make("admin", None))):
        access.add_account(login, pw, [grant], display_name=None, actor="test", address=None, now=now)
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    base = f"http://127.0.0.1:{cfg.http.port}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:

        async def up() -> bool:
            try:
                return (await http.get("/api/health")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for_async(up, what="scheduler HTTP up")
        yield Env(sched, http, base, tokens, cfg.scheduler.data_dir / "scheduler.db")
    stop.set()
    await asyncio.wait_for(task, 15)


async def _media(e: Env, tmp_path: Path) -> dict[str, Any]:
    r = await e.http.post("/api/media", content=make_tone(tmp_path / "t.wav", 0.5).read_bytes(),
                          headers=bearer(e.tokens["admin"]))
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_every_state_changing_endpoint_refuses_the_wrong_caller(env: Env, tmp_path: Path) -> None:
    e = env
    media = await _media(e, tmp_path)
    wav = (tmp_path / "t.wav").read_bytes()
    later = {"media_sha256": media["sha256"], "targets": ["xa-phu-my"], "start_at": now_ms() + 3_600_000}
    r = await e.http.post("/api/broadcasts", json=later, headers=bearer(e.tokens["admin"]))
    assert r.status_code == 201, r.text
    phu_my_bid = r.json()["id"]
    bc = {"media_sha256": media["sha256"], "targets": ["xa-phu-my/loa-01"]}

    # (method, path, request kwargs, permission-but-wrong-area token or None, right token, expected 2xx)
    endpoints: list[tuple[str, str, dict[str, Any], str | None, str, int]] = [
        ("POST", "/api/media", {"content": wav, "params": {"name": "x.wav"}}, None, "op-an-binh", 201),
        ("POST", "/api/tts", {"json": {"text": "Xin chào bà con"}}, None, "op-phu-my", 201),
        ("POST", "/api/broadcasts", {"json": bc}, "op-an-binh", "op-phu-my", 201),
        ("POST", "/api/broadcasts", {"json": {**bc, "targets": ["xa-an-binh"], "priority": "emergency"}},
         "op-an-binh", "ap-an-binh", 201),
        ("POST", "/api/broadcasts", {"json": {**bc, "targets": ["xa-an-binh", "xa-phu-my"]}}, "ap-an-binh",
         "admin", 201),
        ("POST", f"/api/broadcasts/{phu_my_bid}/cancel", {}, "op-an-binh", "op-phu-my", 200),
        ("PUT", "/api/gateways/xa-phu-my", {"json": {"commune": "Xã Phú Mỹ"}}, None, "admin", 200),
        ("POST", "/api/accounts", {"json": {"login": "moi", "password": PASSWORD, "roles": [{"role": "viewer"}]}},
         None, "admin", 201),
        ("PUT", "/api/accounts/canbo-anbinh/roles", {"json": {"roles": [{"role": "operator", "areas": ["xa-a"]}]}},
         None, "admin", 200),
        ("POST", "/api/accounts/canbo-anbinh/disable", {}, None, "admin", 200),
        ("POST", "/api/accounts/canbo-anbinh/enable", {}, None, "admin", 200),
        ("POST", "/api/tokens", {"json": {"name": "tu-dong", "role": "ioc"}}, None, "admin", 201),
        ("DELETE", "/api/tokens/viewer", {}, None, "admin", 200),
    ]
    wrong_tokens = {"no credentials": None, "wrong token": "lxa_" + "x" * 43, "expired token": e.tokens["expired"],
                    "revoked token": e.tokens["revoked"], "garbage header": "Basic YWRtaW46YWRtaW4="}
    for method, path, kw, wrong_area, right, ok in endpoints:
        await e.sched.dispatcher.drain()  # the plans of the previous, accepted request are published (and marked sent)
        before = e.snapshot()
        for what, token in wrong_tokens.items():
            headers = {} if token is None else (
                {"Authorization": token} if token.startswith("Basic") else bearer(token))
            r = await e.http.request(method, path, headers=headers, **kw)
            assert r.status_code == 401, (method, path, what, r.status_code, r.text)
            assert r.headers.get("www-authenticate") == "Bearer"
        # a valid token without the permission: viewer (reads only) and technician (fleet, devices)
        for who in ("viewer", "technician"):
            r = await e.http.request(method, path, headers=bearer(e.tokens[who]), **kw)
            assert r.status_code == 403, (method, path, who, r.text)
            assert "permission" in r.json()["detail"]
        if wrong_area is not None:
            r = await e.http.request(method, path, headers=bearer(e.tokens[wrong_area]), **kw)
            assert r.status_code == 403, (method, path, wrong_area, r.text)
        await e.sched.dispatcher.drain()
        assert e.snapshot() == before, f"{method} {path} changed the database although refused"
        r = await e.http.request(method, path, headers=bearer(e.tokens[right]), **kw)
        assert r.status_code == ok, (method, path, right, r.text)

    # created_by is the caller, and cannot be written by the caller
    with sqlite3.connect(e.db) as con:
        creators = {row[0] for row in con.execute("SELECT created_by FROM broadcasts")}
    assert creators == {"token:admin", "token:op-phu-my", "token:ap-an-binh"}
    r = await e.http.post("/api/broadcasts", json={**bc, "created_by": "chu-tich"}, headers=bearer(e.tokens["admin"]))
    assert r.status_code == 422 and "created_by" in r.text

    # the audit log has who did what from where, and the refusals of signed-in callers
    actions = e.audit_actions()
    assert any(a == "broadcast.create" and who == "token:ap-an-binh" for a, who, _ in actions)
    assert any(a == "broadcast.cancel" and who == "token:op-phu-my" and t == phu_my_bid for a, who, t in actions)
    assert any(a == "access.denied" and who == "token:viewer" for a, who, _ in actions)
    assert ("access.denied", "token:op-an-binh", "POST /api/broadcasts") in actions  # wrong commune
    assert any(a == "token.revoke" and t == "viewer" for a, _, t in actions)
    entries = (await e.http.get("/api/audit", headers=bearer(e.tokens["admin"]))).json()
    assert {x["address"] for x in entries if x["action"] == "broadcast.cancel"} == {"127.0.0.1"}
    assert (await e.http.get("/api/audit", headers=bearer(e.tokens["ap-an-binh"]))).status_code == 403
    csv_text = (await e.http.get("/api/audit.csv", headers=bearer(e.tokens["admin"]))).text
    assert csv_text.startswith("id,at,actor,address,action,target,detail,prev_hash,hash")
    assert "broadcast.cancel" in csv_text
    verdict = (await e.http.get("/api/audit/verify", headers=bearer(e.tokens["admin"]))).json()
    assert verdict["ok"] and verdict["entries"] == len(e.audit_actions())


async def test_reads_are_limited_to_the_callers_communes(env: Env, tmp_path: Path) -> None:
    e = env
    media = await _media(e, tmp_path)
    ids = {}
    for gw in ("xa-an-binh", "xa-phu-my"):
        r = await e.http.post("/api/broadcasts", json={"media_sha256": media["sha256"], "targets": [gw]},
                              headers=bearer(e.tokens["admin"]))
        ids[gw] = r.json()["id"]
    op = bearer(e.tokens["op-an-binh"])
    listed = (await e.http.get("/api/broadcasts", headers=op)).json()
    assert [b["id"] for b in listed] == [ids["xa-an-binh"]]
    assert (await e.http.get(f"/api/broadcasts/{ids['xa-an-binh']}", headers=op)).status_code == 200
    assert (await e.http.get(f"/api/broadcasts/{ids['xa-phu-my']}", headers=op)).status_code == 404
    assert [g["id"] for g in (await e.http.get("/api/gateways", headers=op)).json()] == ["xa-an-binh"]
    assert len((await e.http.get("/api/gateways", headers=bearer(e.tokens["viewer"]))).json()) == 2
    me = (await e.http.get("/api/auth/me", headers=op)).json()
    assert me["login"] == "token:op-an-binh" and me["permissions"]["broadcast:create"] == ["xa-an-binh"]
    assert "broadcast:emergency" not in me["permissions"]
    # reads need credentials too
    assert (await e.http.get("/api/broadcasts")).status_code == 401
    assert (await e.http.get("/api/audit", headers=op)).status_code == 403


async def test_browser_session_csrf_and_logout(env: Env) -> None:
    e = env
    async with httpx.AsyncClient(base_url=e.base, timeout=60) as browser:
        r = await browser.post("/api/auth/login", data={"login": "canbo-anbinh", "password": PASSWORD})
        assert r.status_code == 200, r.text
        cookies = r.headers.get_list("set-cookie")
        session_cookie = next(c for c in cookies if c.startswith("loaxa_session="))
        assert "HttpOnly" in session_cookie and "SameSite=lax" in session_cookie and "Secure" not in session_cookie
        csrf = r.json()["csrf_token"]
        assert browser.cookies["loaxa_csrf"] == csrf
        before = e.snapshot()
        # cookie alone: refused (a cross-site form would send exactly this)
        r = await browser.post("/api/tts", json={"text": "Thông báo"})
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
        r = await browser.post("/api/tts", json={"text": "Thông báo"}, headers={"X-CSRF-Token": "sai"})
        assert r.status_code == 403
        r = await browser.put("/api/gateways/xa-an-binh", json={"commune": "x"})
        assert r.status_code == 403
        assert e.snapshot() == before
        # reads need no CSRF token; state changes with it succeed
        assert (await browser.get("/api/broadcasts")).status_code == 200
        r = await browser.post("/api/tts", json={"text": "Thông báo"}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 201, r.text
        # the session's role and commune still apply
        r = await browser.post("/api/broadcasts", json={"media_sha256": r.json()["sha256"], "targets": ["xa-phu-my"]},
                               headers={"X-CSRF-Token": csrf})
        assert r.status_code == 403 and "xa-phu-my" in r.json()["detail"]
        # logout (form post with the token as a field, as a page without JavaScript would send it)
        stolen = browser.cookies["loaxa_session"]
        r = await browser.post("/api/auth/logout", data={"csrf_token": "wrong"})
        assert r.status_code == 403
        r = await browser.post("/api/auth/logout", data={"csrf_token": csrf})
        assert r.status_code == 204
    # the session is over on the server: the old cookie is worth nothing
    async with httpx.AsyncClient(base_url=e.base, timeout=60, cookies={"loaxa_session": stolen}) as thief:
        r = await thief.get("/api/broadcasts")
    assert r.status_code == 401 and "sign in again" in r.json()["detail"]
    with sqlite3.connect(e.db) as con:
        assert con.execute("SELECT count(*) FROM web_sessions").fetchone()[0] == 0
    actions = [a for a, _, _ in e.audit_actions()]
    assert "login" in actions and "logout" in actions and "access.csrf_refused" in actions


async def test_cookies_are_secure_behind_tls(env: Env) -> None:
    """Behind a TLS reverse proxy on the same host (uvicorn trusts its X-Forwarded-Proto)."""
    r = await env.http.post("/api/auth/login", json={"login": "quantri", "password": PASSWORD},
                            headers={"X-Forwarded-Proto": "https"})
    assert r.status_code == 200
    cookies = r.headers.get_list("set-cookie")
    assert len(cookies) == 2 and all("Secure" in c for c in cookies)
    assert any(c.startswith("loaxa_csrf=") and "SameSite=strict" in c and "HttpOnly" not in c for c in cookies)


async def test_a_disabled_account_loses_its_session(env: Env) -> None:
    e = env
    async with httpx.AsyncClient(base_url=e.base, timeout=60) as browser:
        r = await browser.post("/api/auth/login", json={"login": "canbo-anbinh", "password": PASSWORD})
        assert (await browser.get("/api/broadcasts")).status_code == 200
        r = await e.http.post("/api/accounts/canbo-anbinh/disable", headers=bearer(e.tokens["admin"]))
        assert r.status_code == 200
        assert (await browser.get("/api/broadcasts")).status_code == 401
    r = await e.http.post("/api/auth/login", json={"login": "canbo-anbinh", "password": PASSWORD})
    assert r.status_code == 401


async def test_login_throttling(env: Env) -> None:
    e = env
    for _ in range(5):
        r = await e.http.post("/api/auth/login", json={"login": "quantri", "password": "sai-mat-khau-roi"})
        assert r.status_code == 401 and r.json()["detail"] == "wrong login or password"
    # the 6th within the minute is refused unchecked: even the right password does not get in
    r = await e.http.post("/api/auth/login", json={"login": "quantri", "password": PASSWORD})
    assert r.status_code == 429, r.text
    assert "too many failed logins for account 'quantri'" in r.json()["detail"]
    assert "not checked" in r.json()["detail"] and 1 <= int(r.headers["retry-after"]) <= 60
    # a form login (as a page without JavaScript sends it) is throttled the same way
    r = await e.http.post("/api/auth/login", data={"login": "quantri", "password": PASSWORD})
    assert r.status_code == 429
    with sqlite3.connect(e.db) as con:
        outcomes = [o for (o,) in con.execute("SELECT outcome FROM login_attempts WHERE login='quantri' ORDER BY id")]
    assert outcomes == ["wrong"] * 5 + ["throttled"] * 2
    assert [a for a, _, t in e.audit_actions() if t == "quantri" and a.startswith("login")] == [
        "login.failed"] * 5 + ["login.throttled"]
    # oversized or malformed login requests are refused unread
    assert (await e.http.post("/api/auth/login", content=b"x" * 5000)).status_code == 413
    assert (await e.http.post("/api/auth/login", content=b"{")).status_code == 422
    # another account from the same address is not locked by that ...
    r = await e.http.post("/api/auth/login", json={"login": "canbo-anbinh", "password": PASSWORD})
    assert r.status_code == 200
    # ... until the address itself has failed too often (unknown logins count: they are checked too)
    for i in range(15):
        r = await e.http.post("/api/auth/login", json={"login": f"khong-co-{i}", "password": "x"})
        assert r.status_code == 401
    r = await e.http.post("/api/auth/login", json={"login": "canbo-anbinh", "password": PASSWORD})
    assert r.status_code == 429 and "address 127.0.0.1" in r.json()["detail"]


async def test_media_is_served_to_the_gateway_it_was_signed_for(env: Env, tmp_path: Path) -> None:
    e = env
    media = await _media(e, tmp_path)
    sha = media["sha256"]
    url = e.sched.dispatcher.media_url(sha, "xa-an-binh", now_ms() + 60_000)
    assert (await e.http.get(url)).status_code == 200
    r = await e.http.get(url, headers={"Range": "bytes=0-9"})
    assert r.status_code == 206 and len(r.content) == 10
    for bad, why in (
        (f"/media/{sha}", "gateways only"),
        (url.replace("gw=xa-an-binh", "gw=xa-phu-my"), "signature"),
        (url.replace(f"/media/{sha}", "/media/" + "0" * 64), "signature"),
        (e.sched.dispatcher.media_url(sha, "xa-an-binh", now_ms() - (GRACE_S + 10) * 1000), "expired"),
    ):
        r = await e.http.get(bad)
        assert r.status_code == 403 and why in r.json()["detail"], (bad, r.text)
    # staff listen through the API, with media:read
    assert (await e.http.get(f"/api/media/{sha}/audio")).status_code == 401
    assert (await e.http.get(f"/api/media/{sha}/audio", headers=bearer(e.tokens["viewer"]))).status_code == 200


async def test_openapi_lists_the_security_schemes(env: Env) -> None:
    spec = (await env.http.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["apiToken"]["scheme"] == "bearer"
    assert schemes["session"] == {"type": "apiKey", "in": "cookie", "name": "loaxa_session",
                                  "description": schemes["session"]["description"]}
    assert schemes["csrf"]["in"] == "header" and schemes["csrf"]["name"] == "X-CSRF-Token"
    assert spec["paths"]["/api/broadcasts"]["post"]["security"]


def routes_without_permission(app: Any) -> list[str]:
    missing = []
    for path, methods, dependant in api_routes(app):
        if declared_permissions(dependant):
            continue
        for method in sorted(methods):
            if method in STATE_CHANGING and (method, path) not in PUBLIC_STATE_CHANGING:
                missing.append(f"{method} {path}")
            if method not in STATE_CHANGING and path not in PUBLIC_READS:
                missing.append(f"{method} {path}")
    return missing


def test_every_route_declares_its_permission(tmp_path: Path) -> None:
    """A new state-changing route without ``require(...)`` fails here; so does a new anonymous read."""
    cfg = SchedulerConfig.model_validate(scheduler_config_dict(tmp_path, "mqtt://127.0.0.1:1", Keys()))
    app = Scheduler.build(cfg).app
    paths = {p for p, _, _ in api_routes(app)}
    assert {"/api/auth/login", "/api/broadcasts", "/api/tokens", "/media/{sha256}"} <= paths
    assert routes_without_permission(app) == []

    # the walk does see a forgotten one, whether in the app, in a router, or protected when included
    @app.post("/api/forgotten")
    async def forgotten() -> None: ...

    router = APIRouter()

    @router.delete("/api/also-forgotten")
    async def also() -> None: ...

    @router.get("/ioc/v1/readings")
    async def readings() -> None: ...

    app.include_router(router)
    assert routes_without_permission(app) == [
        "POST /api/forgotten", "DELETE /api/also-forgotten", "GET /ioc/v1/readings"]
    guarded = FastAPI()
    guarded.include_router(router, dependencies=[Depends(require("ioc:read"))])
    assert routes_without_permission(guarded) == []


def test_a_network_bind_needs_an_account(tmp_path: Path) -> None:
    raw = scheduler_config_dict(tmp_path, "mqtt://127.0.0.1:1", Keys(), http={"host": "0.0.0.0"})
    cfg = SchedulerConfig.model_validate(raw)
    with pytest.raises(SetupError, match=r"(?s)no accounts yet.*loaxa users add --config <this config> --role admin"):
        Scheduler.build(cfg)
    store = Scheduler.build(SchedulerConfig.model_validate(
        scheduler_config_dict(tmp_path, "mqtt://127.0.0.1:1", Keys()))).store.store  # loopback: fine
    AccessStore(store.session).add_account("quantri", hash_password(PASSWORD), [Grant.make("admin", None)],
                                           display_name=None, actor="test", address=None, now=now_ms())
    assert Scheduler.build(cfg).app is not None


async def test_changing_my_password_ends_my_other_sessions(env: Env) -> None:
    e = env
    clients = [httpx.AsyncClient(base_url=e.base, timeout=60) for _ in range(2)]
    try:
        csrf = []
        for c in clients:
            r = await c.post("/api/auth/login", json={"login": "canbo-anbinh", "password": PASSWORD})
            assert r.status_code == 200
            csrf.append(r.json()["csrf_token"])
        here, other = clients
        r = await here.post("/api/auth/password", json={"current_password": "sai-roi-nhe", "new_password": "x" * 12},
                            headers={"X-CSRF-Token": csrf[0]})
        assert r.status_code == 403
        r = await here.post("/api/auth/password", json={"current_password": PASSWORD, "new_password": "ngan"},
                            headers={"X-CSRF-Token": csrf[0]})
        assert r.status_code == 422
        r = await here.post("/api/auth/password", json={"current_password": PASSWORD, "new_password": "mat-khau-moi-1"},
                            headers={"X-CSRF-Token": csrf[0]})
        assert r.status_code == 204, r.text
        assert (await here.get("/api/auth/me")).status_code == 200
        assert (await other.get("/api/auth/me")).status_code == 401
    finally:
        for c in clients:
            await c.aclose()
    r = await e.http.post("/api/auth/login", json={"login": "canbo-anbinh", "password": "mat-khau-moi-1"})
    assert r.status_code == 200
    # tokens have no password
    r = await e.http.post("/api/auth/password", json={"current_password": "a", "new_password": "x" * 12},
                          headers=bearer(e.tokens["viewer"]))
    assert r.status_code == 403


async def test_an_old_hash_is_upgraded_at_login_and_unknown_logins_cost_the_same(env: Env) -> None:
    from argon2 import PasswordHasher

    e = env
    old = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    with sqlite3.connect(e.db) as con:
        con.execute("UPDATE accounts SET password_hash=? WHERE login='quantri'", (old,))
    r = await e.http.post("/api/auth/login", json={"login": "quantri", "password": PASSWORD})
    assert r.status_code == 200
    with sqlite3.connect(e.db) as con:
        [(new,)] = con.execute("SELECT password_hash FROM accounts WHERE login='quantri'").fetchall()
    assert new != old and new.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    # an unknown login is still verified (against a dummy hash): same answer, comparable time
    loop = asyncio.get_running_loop()
    times = {}
    for login in ("quantri", "khong-ton-tai"):
        t0 = loop.time()
        r = await e.http.post("/api/auth/login", json={"login": login, "password": "sai-mat-khau-x"})
        times[login] = loop.time() - t0
        assert r.status_code == 401 and r.json()["detail"] == "wrong login or password"
    assert times["khong-ton-tai"] > times["quantri"] / 5, times
