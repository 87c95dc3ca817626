"""FastAPI dependencies: who is calling (:class:`Principal`), and :func:`require` for permissions.

Credentials, in this order:

* ``Authorization: Bearer <API token>`` — machines (IOC, automation, the CLI). A wrong, expired or
  revoked token is 401 at once; it never falls back to a cookie.
* the ``loaxa_session`` cookie — people in a browser. A state-changing request (anything but
  GET/HEAD/OPTIONS) must also carry the session's CSRF token, in the ``X-CSRF-Token`` header or the
  ``csrf_token`` form field (synchroniser token; the cookie alone is never enough).

``require(perm)`` answers 401 without valid credentials and 403 without the permission (in at least
one area; routes check the area of what they touch with :meth:`Principal.can`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyCookie, APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from scheduler.access.principal import Principal
from scheduler.access.service import Access
from scheduler.access.tokens import same

__all__ = ["Access", "CurrentPrincipal", "Principal", "client_address", "forbid", "get_access", "require"]

SESSION_COOKIE = "loaxa_session"
CSRF_COOKIE = "loaxa_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The attribute by which a dependency declares the permission it checks (tests walk the routes for it).
PERMISSION_ATTR = "__loaxa_permission__"
#: Declared by routes that need a signed-in caller but no particular permission (logout, "who am I").
AUTHENTICATED = "authenticated"

bearer_scheme = HTTPBearer(auto_error=False, scheme_name="apiToken",
                           description="API token (`loaxa tokens create`), sent as `Authorization: Bearer lxa_…`")
session_scheme = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, scheme_name="session",
                              description="browser session from POST /api/auth/login (HttpOnly cookie)")
csrf_scheme = APIKeyHeader(name=CSRF_HEADER, auto_error=False, scheme_name="csrf",
                           description="with the session cookie, state-changing requests need the session's CSRF "
                                       "token (from the login answer or the loaxa_csrf cookie)")


def get_access(request: Request) -> Access:
    access: Access = request.app.state.access
    return access


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def current_principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    session: Annotated[str | None, Security(session_scheme)],
) -> Principal | None:
    """The authenticated caller, or None when no credentials came at all (cached for the request)."""
    if hasattr(request.state, "principal"):
        cached: Principal | None = request.state.principal
        return cached
    access = get_access(request)
    principal: Principal | None = None
    if request.headers.get("authorization") is not None:
        if bearer is None:
            raise _unauthorized("the Authorization header must be 'Bearer <API token>'")
        principal = await access.by_token(bearer.credentials.strip())
        if principal is None:
            raise _unauthorized("invalid, expired or revoked API token")
    elif session:
        principal = await access.by_session(session)
        if principal is None:
            raise _unauthorized("your session has ended; sign in again")
    request.state.principal = principal
    return principal


async def _check_csrf(request: Request, principal: Principal, header: str | None) -> None:
    if principal.via != "session" or request.method in SAFE_METHODS:
        return
    given = header
    if given is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()  # cached by Starlette: the route can still read its fields
        value = form.get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if not given or principal.csrf_token is None or not same(given, principal.csrf_token):
        await get_access(request).audit(principal, "access.csrf_refused", address=client_address(request),
                                        target=f"{request.method} {request.url.path}")
        raise HTTPException(403, f"missing or wrong CSRF token: send the session's token in the {CSRF_HEADER} "
                                 f"header or the {CSRF_FIELD} form field")


def forbid(principal: Principal, perm: str, gateway: str | None = None) -> HTTPException:
    where = f" on {gateway}" if gateway else ""
    return HTTPException(403, f"{principal.name} may not do this: permission {perm}{where} is missing")


def require(perm: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that returns the caller when it holds ``perm`` (401 / 403 otherwise)."""

    async def dependency(
        request: Request,
        principal: Annotated[Principal | None, Depends(current_principal)],
        csrf: Annotated[str | None, Security(csrf_scheme)],
    ) -> Principal:
        if principal is None:
            raise _unauthorized("sign in, or send an API token (Authorization: Bearer …)")
        await _check_csrf(request, principal, csrf)
        if perm != AUTHENTICATED and not principal.can(perm):
            await get_access(request).audit(principal, "access.denied", address=client_address(request),
                                            target=f"{request.method} {request.url.path}", detail={"needs": perm})
            raise forbid(principal, perm)
        return principal

    setattr(dependency, PERMISSION_ATTR, perm)
    dependency.__name__ = f"require_{perm.replace(':', '_')}"
    return dependency


def declared_permissions(dependant: Any) -> list[str]:
    """Every permission declared along a route's dependency tree (for the route-walking test)."""
    found: list[str] = []
    stack = [dependant]
    while stack:
        d = stack.pop()
        perm = getattr(d.call, PERMISSION_ATTR, None) if d.call is not None else None
        if perm is not None:
            found.append(perm)
        stack.extend(d.dependencies)
    return found


#: A route parameter for any signed-in caller.
CurrentPrincipal = Annotated[Principal, Depends(require(AUTHENTICATED))]


def api_routes(app: Any) -> list[tuple[str, frozenset[str], Any]]:
    """(path, methods, dependant) of every API route of ``app``, routers included (with the
    dependencies given when they were included). Newer FastAPI keeps included routers as one
    entry of ``app.routes``; older versions copy their routes in."""
    from fastapi import routing

    out: list[tuple[str, frozenset[str], Any]] = []
    iterate = getattr(routing, "iter_route_contexts", None)
    entries = list(iterate(app.routes)) if iterate is not None else list(app.routes)
    for r in entries:
        dependant = getattr(r, "dependant", None)
        methods = getattr(r, "methods", None)
        path = getattr(r, "path", None)
        if dependant is None or not methods or path is None:
            continue  # docs, static files, websockets
        out.append((str(path), frozenset(methods), dependant))
    return out
