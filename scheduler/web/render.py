"""Rendering a page: one Jinja environment per locale, the common context, and the security headers.

Every page gets ``locale``, ``dir``, ``nav`` (what the person may open), ``principal``, ``csrf_token``,
``path`` and the language links; templates translate with ``_()``/``ngettext()`` (newstyle gettext,
so a ``%(name)s`` placeholder is filled and escaped by Jinja itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from scheduler.web import filters
from scheduler.web.i18n import COOKIE, LOCALES, QUERY, choose_locale, translations
from scheduler.web.nav import visible_nav

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"

#: Pages load nothing but our own files: no inline script, no other origin, no framing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
#: The language cookie lives a year; it holds a preference, nothing secret.
COOKIE_MAX_AGE = 365 * 24 * 3600


def make_environment(locale: str, tz: str) -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_translations(translations(locale), newstyle=True)  # type: ignore[attr-defined]
    filters.register(env, locale, tz)
    return env


def safe_next(target: str | None, default: str = "/") -> str:
    """A local path to go back to; anything else (another site, ``//host``, a scheme) becomes ``default``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    if any(ord(c) < 32 for c in target) or len(target) > 2000:
        return default
    return target


class Renderer:
    def __init__(self, timezone: str):
        self.timezone = timezone
        self.envs = {loc: make_environment(loc, timezone) for loc in LOCALES}

    def locale_of(self, request: Request) -> str:
        return choose_locale(
            request.query_params.get(QUERY),
            request.cookies.get(COOKIE),
            request.headers.get("accept-language"),
        ).locale

    def gettext(self, request: Request, message: str) -> str:
        """Translate a text outside a template (flash messages, errors)."""
        return translations(self.locale_of(request)).gettext(message)

    def page(
        self,
        request: Request,
        template: str,
        context: dict[str, Any] | None = None,
        *,
        status_code: int = 200,
        principal: Any = None,
        csrf_token: str | None = None,
    ) -> HTMLResponse:
        choice = choose_locale(
            request.query_params.get(QUERY),
            request.cookies.get(COOKIE),
            request.headers.get("accept-language"),
        )
        env = self.envs[choice.locale]
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        ctx: dict[str, Any] = {
            "locale": choice.locale,
            "dir": "ltr",
            "locales": LOCALES,
            "path": request.url.path,
            "here_quoted": quote(safe_next(here), safe=""),
            "principal": principal,
            "nav": visible_nav(principal),
            "csrf_token": csrf_token,
            "timezone": self.timezone,
        }
        ctx.update(context or {})
        html = env.get_template(template).render(ctx)
        resp = HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
        if choice.source == "query":  # an explicit choice is remembered
            resp.set_cookie(COOKIE, choice.locale, max_age=COOKIE_MAX_AGE, httponly=True, samesite="lax", path="/")
        return resp
