"""The pages anyone may open: the landing page with the sign-in form, and the language switch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from scheduler.web.app import WebContext
from scheduler.web.i18n import COOKIE, LOCALES
from scheduler.web.render import COOKIE_MAX_AGE, safe_next

router = APIRouter(include_in_schema=False)


def web(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.web
    return ctx


@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> HTMLResponse:
    return web(request).renderer.page(request, "login.html", {"error": None, "login": ""})


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> HTMLResponse:
    return web(request).renderer.page(request, "login.html", {"error": None, "login": ""})


@router.get("/lang/{locale}")
async def set_language(
    request: Request, locale: str, next: Annotated[str | None, Query(max_length=2000)] = None
) -> RedirectResponse:
    """Remember the chosen language (a preference cookie) and go back to the page."""
    resp = RedirectResponse(safe_next(next), status_code=303)
    if locale in LOCALES:
        resp.set_cookie(COOKIE, locale, max_age=COOKIE_MAX_AGE, httponly=True, samesite="lax", path="/")
    return resp
