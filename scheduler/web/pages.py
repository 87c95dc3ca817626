"""The language switch (the sign-in page and the others are in :mod:`scheduler.web.staff`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse

from scheduler.web.i18n import COOKIE, LOCALES
from scheduler.web.render import COOKIE_MAX_AGE, safe_next
from scheduler.web.session import Public

router = APIRouter(include_in_schema=False)


@router.get("/lang/{locale}", dependencies=[Public])
async def set_language(
    request: Request, locale: str, next: Annotated[str | None, Query(max_length=2000)] = None
) -> RedirectResponse:
    """Remember the chosen language (a preference cookie) and go back to the page."""
    resp = RedirectResponse(safe_next(next), status_code=303)
    if locale in LOCALES:
        resp.set_cookie(COOKIE, locale, max_age=COOKIE_MAX_AGE, httponly=True, samesite="lax", path="/")
    return resp
