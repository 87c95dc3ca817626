"""Who is looking at a page, from the access package's browser session.

Pages use :func:`page` instead of ``require``: the same session, the same permission strings and the
same CSRF token, but a missing session sends the browser to the sign-in page and a missing permission
renders a page in the reader's language instead of a JSON error. Each dependency declares its
permission the way ``require`` does, so the test that walks every route sees it.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import Depends, Request

from scheduler.access.deps import (
    AUTHENTICATED,
    CSRF_FIELD,
    CSRF_HEADER,
    PERMISSION_ATTR,
    SAFE_METHODS,
    SESSION_COOKIE,
    client_address,
    get_access,
)
from scheduler.access.principal import Principal

__all__ = ["AUTHENTICATED", "PUBLIC", "FormTooLarge", "LoginRequired", "PageForbidden", "Principal", "Public", "page",
           "signed_in"]

#: Declared by the few pages anyone may open: the sign-in page (and its form), the language switch.
PUBLIC = "public"


class LoginRequired(Exception):
    """No (valid) session: the browser goes to the sign-in page and comes back to ``next_path``."""

    def __init__(self, next_path: str):
        super().__init__(next_path)
        self.next_path = next_path


class FormTooLarge(Exception):
    """A form bigger than the page accepts (refused before it is read)."""


#: A form without a file is small (the longest is a broadcast text of 5000 characters, percent-encoded).
MAX_FORM_BYTES = 256 * 1024
#: A form with a file may carry the library's largest file plus this much for the other fields.
MULTIPART_SLACK = 1024 * 1024


def _check_size(request: Request) -> None:
    """Refuse a body larger than the form can be, before Starlette parses (and spools) it."""
    declared = request.headers.get("content-length")
    limit = MAX_FORM_BYTES
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        limit = request.app.state.web.library.max_bytes + MULTIPART_SLACK
    if declared is None or not declared.isdigit() or int(declared) > limit:
        raise FormTooLarge()


class PageForbidden(Exception):
    """Signed in, but without the permission (or the CSRF token) the page needs."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


async def signed_in(request: Request) -> Principal | None:
    """The person of this browser session, or None (never raises: an ended session is just None)."""
    if hasattr(request.state, "principal"):
        cached: Principal | None = request.state.principal
        return cached
    secret = request.cookies.get(SESSION_COOKIE)
    principal = await get_access(request).by_session(secret) if secret else None
    request.state.principal = principal
    return principal


async def _check_csrf(request: Request, principal: Principal) -> None:
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        form = await request.form()  # Starlette caches it: the page reads the same form afterwards
        value = form.get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    expected = principal.csrf_token
    if not given or expected is None or not hmac.compare_digest(given.encode(), expected.encode()):
        await get_access(request).audit(principal, "access.csrf_refused", address=client_address(request),
                                        target=f"{request.method} {request.url.path}")
        raise PageForbidden("csrf")


def page(perm: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency for a page that needs ``perm`` (in at least one area; the page checks the area)."""

    async def dependency(request: Request) -> Principal:
        principal = await signed_in(request)
        if principal is None:
            query = f"?{request.url.query}" if request.url.query else ""
            raise LoginRequired(request.url.path + query if request.method in SAFE_METHODS else "/")
        if request.method not in SAFE_METHODS:
            _check_size(request)
            await _check_csrf(request, principal)
        if perm != AUTHENTICATED and not principal.can(perm):
            await get_access(request).audit(principal, "access.denied", address=client_address(request),
                                            target=f"{request.method} {request.url.path}", detail={"needs": perm})
            raise PageForbidden(perm)
        return principal

    setattr(dependency, PERMISSION_ATTR, perm)
    dependency.__name__ = f"page_{perm.replace(':', '_')}"
    return dependency


async def _public() -> None:
    """Anyone may open this page, on purpose (the route walk of the access tests sees the declaration)."""


setattr(_public, PERMISSION_ATTR, PUBLIC)
#: ``dependencies=[Public]`` on a route that needs no sign-in.
Public = Depends(_public)
