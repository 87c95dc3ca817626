"""The pages of signed-in staff: sign in/out, home, *Phát ngay* with its live board, the audio library,
the broadcast log and the fleet.

Every page checks its permission with :func:`scheduler.web.session.page` and then the *area* of what
it shows or touches with ``Principal.can(perm, gateway)``: an operator of one commune never sees or
targets another commune's gateways (a broadcast of another commune answers 404, as if it did not
exist). Writes go through the dispatcher and the media library, exactly as the JSON API's do;
``created_by`` is always the signed-in login.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.datastructures import FormData, UploadFile

from protocol.ids import MESSAGE_ID_PATTERN
from scheduler.access.deps import CSRF_COOKIE, SESSION_COOKIE, client_address, get_access
from scheduler.access.service import LoginRefused
from scheduler.db import BadRequest, NotFound
from scheduler.media import MediaError
from scheduler.web import queries
from scheduler.web.app import WebContext
from scheduler.web.filters import format_datetime_ms
from scheduler.web.i18n import translations
from scheduler.web.labels import PRIORITIES, REASONS, SPEAKER_STATES, TERMINAL, priority_key, reason_words
from scheduler.web.nav import visible_nav
from scheduler.web.render import safe_next
from scheduler.web.session import (
    AUTHENTICATED,
    FormTooLarge,
    LoginRequired,
    PageForbidden,
    Principal,
    Public,
    page,
    signed_in,
)

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

SHA256_PATTERN = r"^[0-9a-f]{64}$"
#: Limits of the broadcast form (the JSON API has its own, larger ones).
MAX_TEXT = 5000
MAX_TITLE = 200
MAX_LOGIN_BYTES = 8 * 1024
#: An open live board streams for at most this long, then the page falls back to its refresh link.
SSE_MAX_S = 30 * 60
SSE_HEARTBEAT_S = 15.0
SSE_POLL_S = 0.25
#: Live boards open at once in this process (each holds a connection and polls the database).
SSE_MAX_STREAMS = 200

Signed = Annotated[Principal, Depends(page(AUTHENTICATED))]
CanBroadcast = Annotated[Principal, Depends(page("broadcast:create"))]
CanReadBroadcasts = Annotated[Principal, Depends(page("broadcast:read"))]
CanReadMedia = Annotated[Principal, Depends(page("media:read"))]
CanWriteMedia = Annotated[Principal, Depends(page("media:write"))]
BroadcastId = Annotated[str, PathParam(pattern=MESSAGE_ID_PATTERN)]


def web(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.web
    return ctx


def render(request: Request, principal: Principal | None, template: str, context: dict[str, Any],
           status_code: int = 200) -> HTMLResponse:
    return web(request).renderer.page(request, template, context, status_code=status_code, principal=principal,
                                      csrf_token=principal.csrf_token if principal else None)


def tr(request: Request, message: str) -> str:
    """Translate ``message`` into the page's language (``tr`` is a keyword of the catalogue extractor)."""
    return web(request).renderer.gettext(request, message)


def allowed(principal: Principal, perm: str, gateway_ids: list[str]) -> list[str]:
    """The gateways among ``gateway_ids`` on which ``principal`` holds ``perm``."""
    areas = principal.gateways(perm)
    return [g for g in gateway_ids if areas is None or g in areas]


async def _gateways(request: Request, principal: Principal, perm: str) -> list[dict[str, Any]]:
    ctx = web(request)
    rows = await ctx.dispatcher.store.call(ctx.dispatcher.db.gateways)
    ok = set(allowed(principal, perm, [g["id"] for g in rows]))
    return [g for g in rows if g["id"] in ok]


# ------------------------------------------------------------------ errors of pages


async def _login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    return RedirectResponse(f"/login?next={quote(safe_next(exc.next_path), safe='')}", status_code=303)


async def _forbidden(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageForbidden)
    principal = await signed_in(request)
    message = (tr(request, "The form had expired or did not come from this site. Open the page again and retry.")
               if exc.reason == "csrf" else tr(request, "Your account may not open this page."))
    return render(request, principal, "message.html", {"heading": tr(request, "Not allowed"), "message": message},
                  status_code=403)


async def _too_large(request: Request, exc: Exception) -> Response:
    principal = await signed_in(request)
    return render(request, principal, "message.html", {
        "heading": tr(request, "Not allowed"), "message": tr(request, "The form is too large."),
    }, status_code=413)


EXCEPTION_HANDLERS = {LoginRequired: _login_required, PageForbidden: _forbidden, FormTooLarge: _too_large}


# ------------------------------------------------------------------ sign in / out, home


def _login_form(request: Request, *, login: str = "", error: str | None = None, status_code: int = 200,
                next_path: str = "/") -> HTMLResponse:
    return render(request, None, "login.html", {"login": login, "error": error, "next_path": next_path},
                  status_code=status_code)


@router.get("/login", response_class=HTMLResponse, dependencies=[Public])
async def login_page(request: Request, next: str | None = None) -> Response:
    if await signed_in(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return _login_form(request, next_path=safe_next(next))


@router.post("/login", response_class=HTMLResponse, dependencies=[Public])
async def login(request: Request) -> Response:
    """The sign-in form (anonymous by nature; throttled by the access service per login and address)."""
    declared = request.headers.get("content-length")
    if not declared or not declared.isdigit() or int(declared) > MAX_LOGIN_BYTES:
        return _login_form(request, error=tr(request, "The form is too large."), status_code=413)
    form = await request.form(max_files=0, max_fields=10)
    login_name = str(form.get("login") or "")[:64]
    password = str(form.get("password") or "")[:1024]
    next_path = safe_next(str(form.get("next") or "/"))
    if not login_name or not password:
        return _login_form(request, login=login_name, next_path=next_path, status_code=400,
                           error=tr(request, "Type your login name and your password."))
    access = get_access(request)
    result = await access.login(login_name, password, client_address(request), request.headers.get("user-agent"))
    if isinstance(result, LoginRefused):
        if result.reason == "throttled":
            msg = tr(request, "Too many wrong passwords. This sign-in was not checked; "
                              "try again in %(seconds)s seconds.") % {"seconds": result.retry_after_s}
            refused = _login_form(request, login=login_name, next_path=next_path, error=msg, status_code=429)
            refused.headers["Retry-After"] = str(result.retry_after_s)
            return refused
        return _login_form(request, login=login_name, next_path=next_path, status_code=401,
                           error=tr(request, "Wrong login name or password."))
    secure = access.secure_cookies or request.url.scheme == "https"
    max_age = access.store.session_ttl_ms // 1000
    resp = RedirectResponse(next_path, status_code=303)
    resp.set_cookie(SESSION_COOKIE, result.secret, max_age=max_age, httponly=True, secure=secure,
                    samesite="lax", path="/")
    resp.set_cookie(CSRF_COOKIE, result.csrf_token, max_age=max_age, httponly=False, secure=secure,
                    samesite="strict", path="/")
    return resp


@router.post("/logout")
async def logout(request: Request, principal: Signed) -> Response:
    await get_access(request).logout(principal, client_address(request))
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    resp.delete_cookie(CSRF_COOKIE, path="/")
    return resp


@router.get("/", response_class=HTMLResponse, dependencies=[Public])
async def home(request: Request) -> Response:
    principal = await signed_in(request)
    if principal is None:
        return _login_form(request)
    recent: list[dict[str, Any]] = []
    if principal.can("broadcast:read"):
        recent = (await _visible_broadcasts(request, principal, None))[:5]
    return render(request, principal, "home.html", {"items": visible_nav(principal), "recent": recent})


# ------------------------------------------------------------------ Phát ngay


async def _now_form(request: Request, principal: Principal, *, values: dict[str, Any] | None = None,
                    error: str | None = None, preview: dict[str, Any] | None = None,
                    status_code: int = 200) -> HTMLResponse:
    ctx = web(request)
    gateways = await _gateways(request, principal, "broadcast:create")
    media = await ctx.dispatcher.store.call(queries.list_media, ctx.dispatcher.db, 50) \
        if principal.can("media:read") else []
    can_emergency = bool(allowed(principal, "broadcast:emergency", [g["id"] for g in gateways]))
    v = {"title": "", "text": "", "media_sha256": "", "gateways": [], "speakers": [], "priority": "normal",
         "volume": 70, "source": "text"}
    v.update(values or {})
    return render(request, principal, "now.html", {
        "gateways": gateways, "media": media, "v": v, "error": error, "preview": preview,
        "priorities": PRIORITIES, "can_emergency": can_emergency, "max_text": MAX_TEXT,
    }, status_code=status_code)


@router.get("/now", response_class=HTMLResponse)
async def now_page(request: Request, principal: CanBroadcast) -> HTMLResponse:
    return await _now_form(request, principal)


class FormError(ValueError):
    """A field of the broadcast form is wrong (the message is already translated)."""


def _form_values(form: FormData) -> dict[str, Any]:
    def one(name: str, limit: int) -> str:
        value = form.get(name)
        return value.strip()[:limit] if isinstance(value, str) else ""

    volume_text = one("volume", 4)
    return {
        "title": one("title", MAX_TITLE),
        "text": one("text", MAX_TEXT + 1),
        "media_sha256": one("media_sha256", 64),
        "gateways": [g for g in form.getlist("gateways") if isinstance(g, str)][:1000],
        "speakers": [s for s in form.getlist("speakers") if isinstance(s, str)][:1000],
        "priority": one("priority", 16) or "normal",
        "volume": int(volume_text) if volume_text.isdigit() else volume_text,
        "source": one("source", 8) or "text",
        "confirm": one("confirm_emergency", 8) == "yes",
        "action": one("action", 16),
    }


def _targets(request: Request, principal: Principal, v: dict[str, Any], known: dict[str, dict[str, Any]]
             ) -> tuple[list[str], list[str]]:
    """(targets, gateways) from the ticked communes and speakers, each checked against the areas."""
    gateways = [g for g in v["gateways"] if g in known]
    speakers = [s for s in v["speakers"] if "/" in s and s.split("/", 1)[0] in known]
    if not gateways and not speakers:
        raise FormError(tr(request, "Choose at least one commune or speaker."))
    with_speakers = {s.split("/", 1)[0] for s in speakers}
    targets = [g for g in gateways if g not in with_speakers] + speakers
    involved = sorted({t.split("/", 1)[0] for t in targets})
    refused = [g for g in involved if not principal.can("broadcast:create", g)]
    if refused:
        raise FormError(tr(request, "You may not broadcast to: %(names)s.") % {"names": ", ".join(refused)})
    return targets, involved


async def _media_for(request: Request, v: dict[str, Any]) -> str:
    """The SHA-256 of the audio to play: the text read aloud, or the chosen file of the library."""
    ctx = web(request)
    if v["source"] == "file":
        sha = v["media_sha256"]
        if not re.fullmatch(SHA256_PATTERN, sha):
            raise FormError(tr(request, "Choose an audio file from the library."))
        if await ctx.dispatcher.store.call(ctx.dispatcher.db.get_media, sha) is None:
            raise FormError(tr(request, "That audio file is no longer in the library."))
        return str(sha)
    text = v["text"]
    if not text:
        raise FormError(tr(request, "Type the text to read aloud."))
    if len(text) > MAX_TEXT:
        raise FormError(tr(request, "The text is too long (at most %(n)s characters).") % {"n": MAX_TEXT})
    try:
        media = await asyncio.to_thread(ctx.library.tts, text)
    except MediaError as exc:
        log.warning("text-to-speech failed: %s", exc)
        raise FormError(tr(request, "The text could not be read aloud; try again or use an audio file.")) from exc
    stored = await ctx.dispatcher.store.call(ctx.dispatcher.db.add_media, media)
    return stored.sha256


@router.post("/now", response_class=HTMLResponse)
async def now_send(request: Request, principal: CanBroadcast) -> Response:
    """Preview the text read aloud, or send the broadcast now and open its live board."""
    ctx = web(request)
    form = await request.form(max_files=0, max_fields=3000)
    v = _form_values(form)
    gateways = await _gateways(request, principal, "broadcast:create")
    known = {g["id"]: g for g in gateways}
    try:
        if v["action"] == "preview":
            v["source"] = "text"
            sha = await _media_for(request, v)
            return await _now_form(request, principal, values=v, preview={"sha256": sha})
        if v["priority"] not in PRIORITIES:
            raise FormError(tr(request, "Choose a priority level."))
        if not isinstance(v["volume"], int) or not 0 <= v["volume"] <= 100:
            raise FormError(tr(request, "The volume is a number from 0 to 100."))
        targets, involved = _targets(request, principal, v, known)
        if v["priority"] == "emergency":
            refused = [g for g in involved if not principal.can("broadcast:emergency", g)]
            if refused:
                raise FormError(tr(request, "Your account may not order an emergency broadcast."))
            if not v["confirm"]:
                where = ", ".join(f"{known[g]['commune'] or g}" for g in involved)
                raise FormError(tr(request, "An emergency broadcast interrupts whatever plays on every speaker of: "
                                            "%(where)s. Tick the confirmation to send it.") % {"where": where})
        sha = await _media_for(request, v)
        bid = await ctx.dispatcher.create_broadcast(
            media_sha256=sha,
            targets=targets,
            start_at=None,
            priority=PRIORITIES[v["priority"]][0],
            volume=v["volume"],
            title=v["title"] or None,
            created_by=principal.name,
        )
    except FormError as exc:
        return await _now_form(request, principal, values=v, error=str(exc), status_code=400)
    except BadRequest as exc:
        log.info("broadcast refused: %s", exc)
        return await _now_form(request, principal, values=v, status_code=400,
                               error=tr(request, "The scheduler refused this broadcast; check the choices."))
    await get_access(request).audit(principal, "broadcast.created", address=client_address(request), target=bid,
                                    detail={"targets": targets, "priority": v["priority"], "via": "web"})
    return RedirectResponse(f"/broadcasts/{bid}", status_code=303)


# ------------------------------------------------------------------ the live board


async def _board_status(request: Request, principal: Principal, bid: str) -> dict[str, Any]:
    """The broadcast as this person may see it (404 when none of its gateways is in their areas)."""
    ctx = web(request)
    st = await ctx.dispatcher.store.call(ctx.dispatcher.db.broadcast_status, bid)
    gws = queries.target_gateways(st["targets"]) | {d["gateway"] for d in st["gateways"]}
    readable = set(allowed(principal, "broadcast:read", sorted(gws)))
    if not readable:
        raise NotFound(bid)
    st["gateways"] = [d for d in st["gateways"] if d["gateway"] in readable]
    st["speakers"] = [s for s in st["speakers"] if s["gateway"] in readable]
    counts: dict[str, int] = {}
    words = translations(web(request).renderer.locale_of(request)).gettext
    for sp in st["speakers"]:
        counts[sp["state"]] = counts.get(sp["state"], 0) + 1
        sp["reason_text"] = reason_words(sp.get("reason"), words)  # the live board shows words, not codes
    st["summary"] = counts
    st["done"] = bool(st["cancelled"]) or (bool(st["speakers"]) and all(s["state"] in TERMINAL
                                                                          for s in st["speakers"]))
    return st


def _not_found(request: Request, principal: Principal) -> HTMLResponse:
    return render(request, principal, "message.html", {
        "heading": tr(request, "Not found"),
        "message": tr(request, "There is no such broadcast, or it is not in your communes."),
    }, status_code=404)


@router.get("/broadcasts/{bid}", response_class=HTMLResponse)
async def board(request: Request, bid: BroadcastId, principal: CanReadBroadcasts) -> HTMLResponse:
    try:
        st = await _board_status(request, principal, bid)
    except NotFound:
        return _not_found(request, principal)
    ctx = web(request)
    communes = {g["id"]: g["commune"] for g in await ctx.dispatcher.store.call(ctx.dispatcher.db.gateways)}
    can_cancel = not st["cancelled"] and not st["done"] and all(
        principal.can("broadcast:cancel", g) for g in queries.target_gateways(st["targets"]))
    return render(request, principal, "board.html", {
        "b": st, "communes": communes, "states": SPEAKER_STATES, "reasons": REASONS,
        "level": priority_key(st["priority"]), "priorities": PRIORITIES, "can_cancel": can_cancel,
    })


@router.post("/broadcasts/{bid}/cancel", response_class=HTMLResponse)
async def cancel_broadcast(request: Request, bid: BroadcastId,
                           principal: Annotated[Principal, Depends(page("broadcast:cancel"))]) -> Response:
    """Cancel on every gateway; allowed only to whom may cancel in every commune the broadcast reaches."""
    ctx = web(request)
    try:
        st = await _board_status(request, principal, bid)
    except NotFound:
        return _not_found(request, principal)
    gws = queries.target_gateways(st["targets"])
    if not all(principal.can("broadcast:cancel", g) for g in gws):
        raise PageForbidden("broadcast:cancel")
    sent = await ctx.dispatcher.cancel_broadcast(bid)
    await get_access(request).audit(principal, "broadcast.cancel", address=client_address(request), target=bid,
                                    detail={"cancel_commands": sent, "via": "web"})
    return RedirectResponse(f"/broadcasts/{bid}", status_code=303)


@router.get("/broadcasts/{bid}/events")
async def board_events(request: Request, bid: BroadcastId, principal: CanReadBroadcasts) -> Response:
    """Server-Sent Events: the board's status each time something arrives from the gateways."""
    try:
        first = await _board_status(request, principal, bid)
    except NotFound:
        return Response(status_code=404)
    ctx = web(request)
    streams = request.app.state.web_streams if hasattr(request.app.state, "web_streams") else 0
    if streams >= SSE_MAX_STREAMS:
        return Response(status_code=503, headers={"Retry-After": "10"})

    async def events() -> AsyncIterator[bytes]:
        request.app.state.web_streams = getattr(request.app.state, "web_streams", 0) + 1
        try:
            loop = asyncio.get_running_loop()
            started = last_beat = loop.time()
            st, seen = first, ctx.dispatcher.received
            last_sent = ""
            while True:
                payload = json.dumps(st, ensure_ascii=False, separators=(",", ":"))
                if payload != last_sent:
                    yield f"event: status\ndata: {payload}\n\n".encode()
                    last_sent = payload
                    last_beat = loop.time()
                if st["done"] or loop.time() - started > SSE_MAX_S:
                    return
                while ctx.dispatcher.received == seen:
                    if await request.is_disconnected():
                        return
                    if loop.time() - last_beat > SSE_HEARTBEAT_S:
                        yield b": keep-alive\n\n"
                        last_beat = loop.time()
                    await asyncio.sleep(SSE_POLL_S)
                seen = ctx.dispatcher.received
                st = await _board_status(request, principal, bid)
        finally:
            request.app.state.web_streams -= 1

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# ------------------------------------------------------------------ broadcast log


async def _visible_broadcasts(request: Request, principal: Principal, gateway: str | None) -> list[dict[str, Any]]:
    ctx = web(request)
    rows = await ctx.dispatcher.store.call(ctx.dispatcher.db.list_broadcasts, queries.PAGE_ROWS)
    areas = principal.gateways("broadcast:read")
    out = []
    for b in rows:
        gws = queries.target_gateways(b["targets"])
        if areas is not None:
            gws &= areas
        if not gws or (gateway and gateway not in gws):
            continue
        b["gateway_ids"] = sorted(gws)
        b["level"] = priority_key(b["priority"])
        out.append(b)
    return out


@router.get("/log", response_class=HTMLResponse)
async def broadcast_log(request: Request, principal: CanReadBroadcasts, gateway: str | None = None) -> HTMLResponse:
    gateways = await _gateways(request, principal, "broadcast:read")
    if gateway not in {g["id"] for g in gateways}:
        gateway = None
    rows = await _visible_broadcasts(request, principal, gateway)
    return render(request, principal, "log.html", {"rows": rows, "gateways": gateways, "gateway": gateway,
                                                    "priorities": PRIORITIES})


@router.get("/log.csv")
async def broadcast_log_csv(request: Request, principal: CanReadBroadcasts, gateway: str | None = None) -> Response:
    """The log as CSV (UTF-8 with a BOM so that Excel shows Vietnamese correctly), times in the scheduler's zone."""
    gateways = await _gateways(request, principal, "broadcast:read")
    if gateway not in {g["id"] for g in gateways}:
        gateway = None
    rows = await _visible_broadcasts(request, principal, gateway)
    zone = web(request).renderer.timezone
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["created", "id", "title", "gateways", "priority", "start_at", "cancelled"])
    for b in rows:
        w.writerow([format_datetime_ms(b["created_at"], zone), b["id"], _cell(b["title"] or ""),
                    " ".join(b["gateway_ids"]), b["priority"],
                    format_datetime_ms(b["start_at"], zone) if b["start_at"] else "", int(bool(b["cancelled"]))])
    return Response("\ufeff" + out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="nhat-ky-phat.csv"'})


def _cell(text: str) -> str:
    """A spreadsheet never runs a cell as a formula (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


# ------------------------------------------------------------------ audio library


async def _library_page(request: Request, principal: Principal, *, error: str | None = None,
                        notice: str | None = None, status_code: int = 200) -> HTMLResponse:
    ctx = web(request)
    media = await ctx.dispatcher.store.call(queries.list_media, ctx.dispatcher.db)
    return render(request, principal, "library.html", {
        "media": media, "error": error, "notice": notice, "can_upload": principal.can("media:write"),
        "max_bytes": ctx.library.max_bytes,
    }, status_code=status_code)


@router.get("/library", response_class=HTMLResponse)
async def library(request: Request, principal: CanReadMedia, added: str | None = None) -> HTMLResponse:
    notice = tr(request, "The audio file was added to the library.") if added else None
    return await _library_page(request, principal, notice=notice)


@router.post("/library", response_class=HTMLResponse)
async def library_upload(request: Request, principal: CanWriteMedia) -> Response:
    ctx = web(request)
    form = await request.form(max_files=1, max_fields=5)
    upload = form.get("audio")
    if not isinstance(upload, UploadFile) or not upload.filename:
        return await _library_page(request, principal, status_code=400,
                                   error=tr(request, "Choose an audio file to upload."))
    fd, tmp = tempfile.mkstemp(dir=ctx.library.tmp, prefix="web-upload-")
    path = Path(tmp)
    try:
        size = 0
        with os.fdopen(fd, "wb") as f:
            while chunk := await upload.read(256 * 1024):
                size += len(chunk)
                if size > ctx.library.max_bytes:
                    raise MediaError("larger than the limit")
                await asyncio.to_thread(f.write, chunk)
        if size == 0:
            raise MediaError("empty upload")
        media = await asyncio.to_thread(ctx.library.ingest, path, Path(upload.filename).name[:300])
        stored = await ctx.dispatcher.store.call(ctx.dispatcher.db.add_media, media)
    except MediaError as exc:
        log.info("upload from %s refused: %s", principal.name, exc)
        message = (tr(request, "The file is larger than the limit.") if "larger than the limit" in str(exc)
                   else tr(request, "This file could not be read as audio (unknown format, too long, or damaged)."))
        return await _library_page(request, principal, error=message, status_code=400)
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)
    await get_access(request).audit(principal, "media.uploaded", address=client_address(request),
                                    target=stored.sha256, detail={"name": stored.original_name, "via": "web"})
    return RedirectResponse(f"/library?added={stored.sha256}", status_code=303)


@router.get("/library/{sha256}/audio")
async def library_audio(request: Request, principal: CanReadMedia,
                        sha256: Annotated[str, PathParam(pattern=SHA256_PATTERN)]) -> Response:
    """The audio for the page's player (staff listen here; gateways use /media with their own credential)."""
    ctx = web(request)
    m = await ctx.dispatcher.store.call(ctx.dispatcher.db.get_media, sha256)
    path = ctx.library.path_of(m) if m is not None else None
    if m is None or path is None or not path.is_file():
        return Response(status_code=404)
    return FileResponse(path, media_type=m.content_type, headers={"Cache-Control": "private, max-age=3600"})


# The fleet, commune pages, device actions and alarms: scheduler/web/technician.py.
