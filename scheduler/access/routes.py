"""``/api/auth`` (login, logout, who am I) and the admin API for accounts, tokens and the audit log."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from protocol.signing import now_ms
from scheduler.access import permissions as perms
from scheduler.access.deps import (
    AUTHENTICATED,
    CSRF_COOKIE,
    SESSION_COOKIE,
    client_address,
    get_access,
    require,
)
from scheduler.access.passwords import PasswordPolicyError, hash_password, verify_password
from scheduler.access.permissions import Grant, GrantError
from scheduler.access.principal import Principal
from scheduler.access.schemas import AccountIn, LoginIn, PasswordIn, RoleIn, RolesIn, SessionOut, TokenIn
from scheduler.access.service import LoginRefused
from scheduler.access.store import AccessError, NewSession, UnknownName

#: Anonymous on purpose (the test that walks the routes knows this list): the door itself.
PUBLIC_STATE_CHANGING = frozenset({("POST", "/api/auth/login")})

router = APIRouter(tags=["access"])

Admin = Annotated[Principal, Depends(require(perms.ACCOUNTS_ADMIN))]
Signed = Annotated[Principal, Depends(require(AUTHENTICATED))]


def set_session_cookies(request: Request, response: Response, session: NewSession) -> None:
    """The session cookie (HttpOnly) and the CSRF cookie (readable by the page's own script); the web
    pages' login form uses this too."""
    access = get_access(request)
    secure = access.secure_cookies or request.url.scheme == "https"
    max_age = access.store.session_ttl_ms // 1000
    response.set_cookie(SESSION_COOKIE, session.secret, max_age=max_age, httponly=True, secure=secure,
                        samesite="lax", path="/")
    response.set_cookie(CSRF_COOKIE, session.csrf_token, max_age=max_age, httponly=False, secure=secure,
                        samesite="strict", path="/")


def clear_session_cookies(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")


def _grants(roles: list[RoleIn]) -> list[Grant]:
    try:
        return [Grant.make(r.role, r.areas) for r in roles]
    except GrantError as exc:
        raise HTTPException(422, str(exc)) from exc


def _session_out(p: Principal, expires_at: int | None) -> SessionOut:
    return SessionOut(login=p.name, display_name=p.display_name, csrf_token=p.csrf_token, expires_at=expires_at,
                      permissions=p.permissions())


#: A login request is a few hundred bytes; anything much larger is refused unread.
MAX_LOGIN_BODY = 4096


async def _login_body(request: Request) -> LoginIn:
    """``{"login", "password"}`` as JSON, or an HTML form (urlencoded), at most 4 KiB."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_LOGIN_BODY:
        raise HTTPException(413, "login request too large")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_LOGIN_BODY:
            raise HTTPException(413, "login request too large")
    try:
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            fields = parse_qs(raw.decode("utf-8", "replace"), max_num_fields=10)
            return LoginIn.model_validate({k: v[0] for k, v in fields.items() if k in ("login", "password")})
        return LoginIn.model_validate_json(raw)
    except (ValidationError, ValueError) as exc:
        errors = exc.errors() if isinstance(exc, ValidationError) else [{"loc": ("body",), "msg": str(exc)}]
        raise HTTPException(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)) from exc


@router.post("/api/auth/login", summary="Sign in (JSON or form: login, password); sets the session cookie",
             response_model=SessionOut, responses={401: {}, 429: {}})
async def login(request: Request, response: Response) -> Any:
    body = await _login_body(request)
    access = get_access(request)
    result = await access.login(body.login, body.password, client_address(request),
                                request.headers.get("user-agent"))
    if isinstance(result, LoginRefused):
        if result.reason == "throttled":
            return JSONResponse({"detail": result.message}, status_code=429,
                                headers={"Retry-After": str(result.retry_after_s)})
        return JSONResponse({"detail": result.message}, status_code=401)
    set_session_cookies(request, response, result)
    return _session_out(result.principal, result.expires_at)


@router.post("/api/auth/logout", summary="Sign out: the session ends on the server", status_code=204)
async def logout(request: Request, p: Signed) -> Response:
    await get_access(request).logout(p, client_address(request))
    resp = Response(status_code=204)
    clear_session_cookies(resp)
    return resp


@router.get("/api/auth/me", summary="Who am I, and what may I do where", response_model=SessionOut)
async def me(p: Signed) -> SessionOut:
    return _session_out(p, None)


@router.post("/api/auth/password", summary="Change my own password (ends my other sessions)", status_code=204)
async def change_password(request: Request, body: PasswordIn, p: Signed) -> Response:
    if p.kind != "account":
        raise HTTPException(403, "API tokens have no password")
    access = get_access(request)
    check = await access.astore.call(access.store.login_check, p.name, client_address(request), now_ms())
    if check.throttled is not None or not await asyncio.to_thread(verify_password, check.password_hash,
                                                                  body.current_password):
        if check.throttled is None:
            await access.astore.call(access.store.login_failed, check.attempt_id, p.name,
                                     client_address(request), now_ms())
        raise HTTPException(403, "the current password is wrong (or too many tries; wait a minute)")
    try:
        new_hash = await asyncio.to_thread(hash_password, body.new_password)
    except PasswordPolicyError as exc:
        raise HTTPException(422, str(exc)) from exc
    await access.astore.call(access.store.set_password, p.name, new_hash, actor=p.name,
                             address=client_address(request), now=now_ms(), keep_session=p.session_hash)
    return Response(status_code=204)


# ---------------------------------------------------------------- accounts (admin)


@router.get("/api/accounts", summary="Accounts and their roles")
async def list_accounts(request: Request, _p: Admin) -> list[dict[str, Any]]:
    access = get_access(request)
    return await access.astore.call(access.store.list_accounts)


@router.post("/api/accounts", status_code=201, summary="Create an account")
async def add_account(request: Request, body: AccountIn, p: Admin) -> dict[str, Any]:
    access = get_access(request)
    grants = _grants(body.roles)
    try:
        pw_hash = await asyncio.to_thread(hash_password, body.password)
        await access.astore.call(access.store.add_account, body.login, pw_hash, grants,
                                 display_name=body.display_name, actor=p.name, address=client_address(request),
                                 now=now_ms())
    except (AccessError, PasswordPolicyError) as exc:
        raise HTTPException(409 if "already exists" in str(exc) else 422, str(exc)) from exc
    return {"login": body.login, "roles": [g.to_json() for g in grants]}


@router.put("/api/accounts/{login}/roles", summary="Replace an account's roles")
async def set_roles(request: Request, login: str, body: RolesIn, p: Admin) -> dict[str, Any]:
    access = get_access(request)
    grants = _grants(body.roles)
    try:
        await access.astore.call(access.store.set_roles, login, grants, actor=p.name,
                                 address=client_address(request), now=now_ms())
    except UnknownName as exc:
        raise HTTPException(404, str(exc)) from exc
    return {"login": login, "roles": [g.to_json() for g in grants]}


@router.post("/api/accounts/{login}/disable", summary="Disable an account (its sessions end)")
async def disable_account(request: Request, login: str, p: Admin) -> dict[str, Any]:
    return await _set_disabled(request, login, True, p)


@router.post("/api/accounts/{login}/enable", summary="Enable an account again")
async def enable_account(request: Request, login: str, p: Admin) -> dict[str, Any]:
    return await _set_disabled(request, login, False, p)


async def _set_disabled(request: Request, login: str, disabled: bool, p: Principal) -> dict[str, Any]:
    access = get_access(request)
    try:
        await access.astore.call(access.store.set_disabled, login, disabled, actor=p.name,
                                 address=client_address(request), now=now_ms())
    except UnknownName as exc:
        raise HTTPException(404, str(exc)) from exc
    return {"login": login, "disabled": disabled}


# ---------------------------------------------------------------- API tokens (admin)


@router.get("/api/tokens", summary="API tokens (never the tokens themselves)")
async def list_tokens(request: Request, _p: Admin) -> list[dict[str, Any]]:
    access = get_access(request)
    return await access.astore.call(access.store.list_tokens)


@router.post("/api/tokens", status_code=201, summary="Create an API token (shown in this answer only)")
async def create_token(request: Request, body: TokenIn, p: Admin) -> dict[str, Any]:
    access = get_access(request)
    [grant] = _grants([RoleIn(role=body.role, areas=body.areas)])
    now = now_ms()
    expires = now + body.expires_days * 86_400_000 if body.expires_days else None
    try:
        token = await access.astore.call(access.store.create_token, body.name, grant, expires_at=expires,
                                         actor=p.name, address=client_address(request), now=now)
    except AccessError as exc:
        raise HTTPException(409, str(exc)) from exc
    return {"name": body.name, "token": token, **grant.to_json(), "expires_at": expires}


@router.delete("/api/tokens/{name}", summary="Revoke an API token")
async def revoke_token(request: Request, name: str, p: Admin) -> dict[str, Any]:
    access = get_access(request)
    try:
        await access.astore.call(access.store.revoke_token, name, actor=p.name, address=client_address(request),
                                 now=now_ms())
    except UnknownName as exc:
        raise HTTPException(404, str(exc)) from exc
    return {"name": name, "revoked": True}


# ---------------------------------------------------------------- audit log


AuditReader = Annotated[Principal, Depends(require(perms.AUDIT_READ))]


@router.get("/api/audit", summary="Audit log, newest first")
async def audit_log(
    request: Request,
    _p: AuditReader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
) -> list[dict[str, Any]]:
    access = get_access(request)
    return await access.astore.call(access.store.audit_entries, limit=limit, before=before, action=action)


@router.get("/api/audit/verify", summary="Check the hash chain of the whole audit log")
async def audit_verify(request: Request, _p: AuditReader) -> dict[str, Any]:
    access = get_access(request)
    r = await access.astore.call(access.store.verify_audit)
    return {"ok": r.ok, "entries": r.count, "head": r.head, "bad_entry": r.bad_id, "problem": r.problem}


@router.get("/api/audit.csv", summary="The whole audit log as CSV")
async def audit_csv(request: Request, p: AuditReader) -> StreamingResponse:
    access = get_access(request)
    lines = await access.astore.call(lambda: list(access.store.export_audit()))
    await access.audit(p, "audit.export", address=client_address(request), detail={"entries": len(lines) - 1})
    return StreamingResponse(iter(lines), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": 'attachment; filename="loaxa-audit.csv"'})


