"""Administration pages: accounts (enable/disable), API tokens (create — shown once — and revoke), and
the audit log with its hash-chain check and CSV export. Every change goes through the access store,
which writes the audit entry itself; the pages only collect the form and show the result.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from protocol.signing import now_ms
from scheduler.access.deps import client_address, get_access
from scheduler.access.permissions import ROLES, Grant, GrantError
from scheduler.access.store import AccessError, UnknownName
from scheduler.web.labels import ROLE_NAMES
from scheduler.web.session import Principal, page
from scheduler.web.staff import render, tr

router = APIRouter(include_in_schema=False)

Admin = Annotated[Principal, Depends(page("accounts:admin"))]
AuditReader = Annotated[Principal, Depends(page("audit:read"))]
Name = Annotated[str, PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")]
AUDIT_ROWS = 200
MAX_TOKEN_DAYS = 3650


async def _admin_page(request: Request, principal: Principal, *, error: str | None = None,
                      notice: str | None = None, new_token: dict[str, Any] | None = None,
                      status_code: int = 200) -> HTMLResponse:
    access = get_access(request)
    accounts = await access.astore.call(access.store.list_accounts)
    tokens = await access.astore.call(access.store.list_tokens)
    return render(request, principal, "admin.html", {
        "accounts": accounts, "tokens": tokens, "roles": ROLE_NAMES, "error": error, "notice": notice,
        "new_token": new_token, "now": now_ms(), "can_audit": principal.can("audit:read"),
    }, status_code=status_code)


@router.get("/admin", response_class=HTMLResponse)
async def admin(request: Request, principal: Admin) -> HTMLResponse:
    return await _admin_page(request, principal)


@router.post("/admin/accounts/{login}/{what}", response_class=HTMLResponse)
async def set_account(request: Request, principal: Admin, login: Name,
                      what: Annotated[str, PathParam(pattern="^(disable|enable)$")]) -> Response:
    access = get_access(request)
    if what == "disable" and login == principal.name:
        return await _admin_page(request, principal, status_code=400,
                                 error=tr(request, "You cannot disable your own account."))
    try:
        await access.astore.call(access.store.set_disabled, login, what == "disable", actor=principal.name,
                                 address=client_address(request), now=now_ms())
    except UnknownName:
        return await _admin_page(request, principal, status_code=404, error=tr(request, "No such account."))
    return RedirectResponse("/admin", status_code=303)


@router.post("/admin/tokens/{name}/revoke", response_class=HTMLResponse)
async def revoke_token(request: Request, principal: Admin, name: Name) -> Response:
    access = get_access(request)
    try:
        await access.astore.call(access.store.revoke_token, name, actor=principal.name,
                                 address=client_address(request), now=now_ms())
    except UnknownName:
        return await _admin_page(request, principal, status_code=404, error=tr(request, "No such token."))
    return RedirectResponse("/admin", status_code=303)


@router.post("/admin/tokens", response_class=HTMLResponse)
async def create_token(request: Request, principal: Admin) -> Response:
    """Create an API token; the page that answers is the only place it is ever shown."""
    form = await request.form(max_files=0, max_fields=10)

    def field(key: str, limit: int) -> str:
        value = form.get(key)
        return value.strip()[:limit] if isinstance(value, str) else ""

    name, role, areas_text, days_text = field("name", 64), field("role", 32), field("areas", 2000), field("days", 5)
    if not name or role not in ROLES:
        return await _admin_page(request, principal, status_code=400,
                                 error=tr(request, "Give the token a name and a role."))
    areas: list[str] | str = "*" if areas_text in ("", "*") else [a.strip() for a in areas_text.split(",") if a.strip()]
    days = int(days_text) if days_text.isdigit() else 0
    if days > MAX_TOKEN_DAYS:
        return await _admin_page(request, principal, status_code=400,
                                 error=tr(request, "A token lives at most ten years."))
    try:
        grant = Grant.make(role, areas)
    except GrantError:
        return await _admin_page(request, principal, status_code=400,
                                 error=tr(request, "The areas are gateway ids separated by commas, or * for all."))
    access = get_access(request)
    now = now_ms()
    expires = now + days * 86_400_000 if days else None
    try:
        token = await access.astore.call(access.store.create_token, name, grant, expires_at=expires,
                                         actor=principal.name, address=client_address(request), now=now)
    except AccessError:
        return await _admin_page(request, principal, status_code=409,
                                 error=tr(request, "A token with this name exists already."))
    resp = await _admin_page(request, principal, new_token={"name": name, "token": token})
    return resp


@router.get("/admin/audit", response_class=HTMLResponse)
async def audit(request: Request, principal: AuditReader) -> HTMLResponse:
    access = get_access(request)
    entries = await access.astore.call(access.store.audit_entries, limit=AUDIT_ROWS)
    check = await access.astore.call(access.store.verify_audit)
    return render(request, principal, "audit.html", {"entries": entries, "check": check})
