"""The scheduler's HTTP side (FastAPI): media for gateways and the JSON API.

* ``GET|HEAD /media/{sha256}?gw=…&exp=…&sig=…``: the stored audio for ONE gateway, with the URL the
  dispatcher signed into that gateway's plan (scheduler/access/media_urls.py); byte ranges
  (206 / 416), ``ETag`` = the SHA-256 and ``If-None-Match`` (304). Nothing else can read it here.
* ``/api/...``: upload media, text-to-speech, create / cancel / inspect broadcasts, list gateways.
  Every route declares its permission (scheduler/access/permissions.py) and checks the areas of what
  it touches: an operator of one commune cannot target another. ``created_by`` is the caller.
  OpenAPI at ``/docs`` and ``/openapi.json`` lists the security schemes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field

from protocol.ids import ID_PATTERN, MESSAGE_ID_PATTERN
from protocol.models import PRIORITY_HIGH, PRIORITY_NAMES
from protocol.signing import now_ms
from scheduler.access import permissions as perms
from scheduler.access.deps import Access, Principal, client_address, forbid, get_access, require
from scheduler.access.routes import router as access_router
from scheduler.db import BadRequest, NotFound
from scheduler.dispatcher import Dispatcher
from scheduler.media import MAX_TTS_CHARS, MediaError, MediaLibrary, transfer_seconds
from scheduler.media.tts import build_script
from scheduler.models import Media
from scheduler.web import mount_web

log = logging.getLogger(__name__)

SHA256_PATTERN = r"^[0-9a-f]{64}$"
CHUNK = 256 * 1024
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
#: A start time this far in the past is refused (it would never play).
PAST_TOLERANCE_MS = 60_000
#: Priorities above "ưu tiên" pre-empt what is playing: they need ``broadcast:emergency``.
EMERGENCY_FROM = PRIORITY_HIGH + 1


class MediaOut(BaseModel):
    sha256: str
    bytes: int
    duration_ms: int
    content_type: str
    original_name: str | None
    url: str
    kind: str | None = Field(default=None, description="speech | music")
    bitrate_kbps: int | None = None
    loudness_lufs: float | None = Field(default=None, description="measured integrated loudness (EBU R128)")
    true_peak_dbtp: float | None = None
    transfer_s_1mbit: float = Field(description="seconds to send the file over a 1 Mbit/s link")


class TtsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=MAX_TTS_CHARS, description="Vietnamese text to read aloud")
    normalize: bool = Field(default=True, description="write numbers, dates, units, abbreviations as words")
    slow: bool = Field(default=False, description="slower speech and longer pauses (emergencies)")
    repeat_key: bool = Field(default=False, description='end with "Xin nhắc lại: " and the first sentence')


class GatewayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    commune: str | None = Field(default=None, max_length=200, description="e.g. Xã An Bình")


#: targets of one broadcast at most: a national emergency names every commune's gateway (~10,000)
MAX_TARGETS = 20_000


class BroadcastIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    media_sha256: str = Field(pattern=SHA256_PATTERN, description="from POST /api/media or /api/tts")
    targets: list[str] = Field(min_length=1, max_length=MAX_TARGETS,
                               description='"GATEWAY", "GATEWAY/DEVICE" or "GATEWAY/@GROUP" (a speaker group)')
    start_at: int | datetime | None = Field(
        default=None, description="null: now; epoch ms, or ISO 8601 (no zone: the scheduler's time zone)"
    )
    priority: int | Literal["normal", "priority", "emergency"] = "normal"
    volume: int = Field(default=70, ge=0, le=100)
    repeat: int = Field(default=1, ge=1, le=100)
    title: str | None = Field(default=None, max_length=200)
    id: str | None = Field(default=None, pattern=MESSAGE_ID_PATTERN, description="choose the id (optional)")


def parse_range(header: str, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """One ``bytes=a-b`` range as (first, last) inclusive; None to ignore the header (serve it all)."""
    m = _RANGE_RE.match(header.strip())
    if m is None:
        return None  # multi-range or unknown unit: a server may answer with the whole file
    a, b = m.group(1), m.group(2)
    if not a and not b:
        return None
    if not a:  # suffix: the last N bytes
        n = int(b)
        if n == 0:
            return "unsatisfiable"
        return (max(0, size - n), size - 1)
    first = int(a)
    last = min(int(b), size - 1) if b else size - 1
    if b and int(b) < first:
        return None  # syntactically invalid: ignore
    if first >= size:
        return "unsatisfiable"
    return (first, last)


def _file_chunks(path: Path, first: int, last: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(first)
        left = last - first + 1
        while left > 0:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


def _targets_gateways(targets: list[str]) -> set[str]:
    return {t.split("/", 1)[0].strip() for t in targets}


async def require_areas(request: Request, p: Principal, perm: str, gateways: set[str]) -> None:
    """403 naming the first gateway of ``gateways`` on which ``p`` lacks ``perm`` (and an audit entry)."""
    for gw in sorted(gateways):
        if not p.can(perm, gw):
            await get_access(request).audit(p, "access.denied", address=client_address(request),
                                            target=f"{request.method} {request.url.path}",
                                            detail={"needs": perm, "gateway": gw})
            raise forbid(p, perm, gw)


def in_areas(p: Principal, perm: str, gateways: list[str] | set[str]) -> bool:
    """Whether any of ``gateways`` is in the caller's areas for ``perm``."""
    allowed = p.gateways(perm)
    return allowed is None or any(gw in allowed for gw in gateways)


def create_app(
    dispatcher: Dispatcher,
    library: MediaLibrary,
    *,
    access: Access,
    timezone: str = "Asia/Ho_Chi_Minh",
) -> FastAPI:
    app = FastAPIOffline(  # /docs and /redoc from the package's own files, no CDN
        title="Loa Xã scheduler",
        version="1",
        description="Broadcast scheduling and delivery tracking for commune public-address systems. "
        "Authenticate with an API token (Authorization: Bearer) or a session from POST /api/auth/login "
        "(then send X-CSRF-Token on every state-changing request).",
    )
    app.state.access = access
    app.include_router(access_router)
    store = dispatcher.store
    db = dispatcher.db
    tz = ZoneInfo(timezone)

    def media_out(m: Media) -> MediaOut:
        return MediaOut(
            sha256=m.sha256,
            bytes=m.size,
            duration_ms=m.duration_ms,
            content_type=m.content_type,
            original_name=m.original_name,
            url=f"/api/media/{m.sha256}/audio",
            kind=m.kind,
            bitrate_kbps=m.bitrate_kbps,
            loudness_lufs=m.loudness_lufs,
            true_peak_dbtp=m.true_peak_dbtp,
            transfer_s_1mbit=round(transfer_seconds(m.size), 2),
        )

    async def audit(p: Principal, request: Request, action: str, target: str | None, **detail: Any) -> None:
        await access.audit(p, action, address=client_address(request), target=target, detail=detail)

    @app.exception_handler(BadRequest)
    async def _bad(_req: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(NotFound)
    async def _nf(_req: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(MediaError)
    async def _media(_req: Request, exc: MediaError) -> JSONResponse:
        code = 413 if "larger than the limit" in str(exc) else 400
        return JSONResponse({"detail": str(exc), "field": exc.field}, status_code=code)

    # ------------------------------------------------------------ media for gateways

    # HEAD answers like GET without a body; listed once in OpenAPI (two methods would share one operation id)
    @app.head("/media/{sha256}", include_in_schema=False)
    @app.get(
        "/media/{sha256}",
        summary="Stored audio for a gateway (the signed URL from its plan; byte ranges)",
        responses={403: {"description": "not a valid signed URL for a gateway"}},
    )
    async def get_media(
        request: Request,
        sha256: Annotated[str, PathParam(pattern=SHA256_PATTERN, description="SHA-256 of the file, lowercase hex")],
        gw: Annotated[str | None, Query(max_length=64, description="the gateway the URL was signed for")] = None,
        exp: Annotated[str | None, Query(max_length=12, description="expiry, epoch seconds")] = None,
        sig: Annotated[str | None, Query(max_length=64, description="HMAC-SHA256, base64url")] = None,
    ) -> Response:
        refused = access.media_urls.check(sha256, gw, exp, sig, now_ms() // 1000)
        if refused is not None:
            raise HTTPException(403, refused)
        return await serve_media(request, sha256)

    @app.get(
        "/api/media/{sha256}/audio",
        summary="Listen to stored audio (staff; byte ranges)",
        dependencies=[Depends(require(perms.MEDIA_READ))],
    )
    async def get_media_audio(
        request: Request, sha256: Annotated[str, PathParam(pattern=SHA256_PATTERN)]
    ) -> Response:
        return await serve_media(request, sha256)

    async def serve_media(request: Request, sha256: str) -> Response:
        m = await store.call(db.get_media, sha256)
        path = library.path_of(m) if m is not None else None
        if m is None or path is None or not path.is_file():
            raise HTTPException(404, f"no media {sha256}")
        size = path.stat().st_size
        etag = f'"{m.sha256}"'
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Cache-Control": "public, max-age=31536000, immutable",
        }
        inm = request.headers.get("if-none-match")
        if inm and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
            return Response(status_code=304, headers=headers)
        first, last, status = 0, size - 1, 200
        rng = request.headers.get("range")
        if_range = request.headers.get("if-range")
        if rng and (if_range is None or if_range.strip() == etag):
            parsed = parse_range(rng, size)
            if parsed == "unsatisfiable":
                return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
            if parsed is not None:
                first, last = parsed
                status = 206
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        headers["Content-Length"] = str(last - first + 1)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers, media_type=m.content_type)
        return StreamingResponse(
            _file_chunks(path, first, last), status_code=status, headers=headers, media_type=m.content_type
        )

    # ------------------------------------------------------------ API

    @app.get("/api/health", summary="Is the scheduler up and connected to the broker?")
    async def health() -> dict[str, Any]:
        return {
            "ok": True,
            "mqtt_connected": dispatcher.link.connected.is_set(),
            "commands_sent": dispatcher.sent,
            "timezone": timezone,
        }

    @app.post(
        "/api/media",
        status_code=201,
        response_model=MediaOut,
        summary="Upload audio (raw request body; name in ?name=)",
    )
    async def upload_media(
        request: Request,
        p: Annotated[Principal, Depends(require(perms.MEDIA_WRITE))],
        name: Annotated[str | None, Query(max_length=300)] = None,
        kind: Literal["speech", "music"] = "speech",
    ) -> MediaOut:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > library.max_bytes:
            raise MediaError(
                f"the file is larger than the limit of {library.max_bytes} bytes "
                f"({int(declared)} bytes sent); nothing was stored",
                field="body",
            )
        fd, tmp = tempfile.mkstemp(dir=library.tmp, prefix="upload-")
        path = Path(tmp)
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > library.max_bytes:
                        raise MediaError(
                            f"the file is larger than the limit of {library.max_bytes} bytes; nothing was stored",
                            field="body",
                        )
                    await asyncio.to_thread(f.write, chunk)
            if size == 0:
                raise MediaError("the upload is empty; send the audio file as the request body", field="body")
            media = await library.run_job(library.ingest, path, name, kind)
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        stored = await store.call(db.add_media, media)
        await audit(p, request, "media.upload", stored.sha256, name=name, bytes=stored.size)
        return media_out(stored)

    @app.post(
        "/api/tts",
        status_code=201,
        response_model=MediaOut,
        summary="Read Vietnamese text aloud (espeak-ng) and store the audio",
    )
    async def tts(
        request: Request, body: TtsIn, p: Annotated[Principal, Depends(require(perms.MEDIA_WRITE))]
    ) -> MediaOut:
        media = await library.run_job(
            library.tts, body.text, slow=body.slow, repeat_key=body.repeat_key, normalize=body.normalize
        )
        stored = await store.call(db.add_media, media)
        await audit(p, request, "media.tts", stored.sha256, text=body.text[:200])
        return media_out(stored)

    @app.post("/api/tts/preview", dependencies=[Depends(require(perms.MEDIA_WRITE))],
              summary="The text as it will be read aloud (nothing stored)")
    async def tts_preview(body: TtsIn) -> dict[str, Any]:
        script = await asyncio.to_thread(
            build_script, body.text, normalize=body.normalize, slow=body.slow, repeat_key=body.repeat_key
        )
        return {
            "text": script.text,
            "changes": [{"original": c.original, "spoken": c.spoken} for c in script.changes],
            "warnings": script.warnings,
            "rate_wpm": script.pace.rate_wpm,
        }

    @app.get("/api/media", dependencies=[Depends(require(perms.MEDIA_READ))], response_model=list[MediaOut],
             summary="The audio library")
    async def list_media(limit: int = 100) -> list[MediaOut]:
        return [media_out(m) for m in await store.call(db.list_media, max(1, min(limit, 1000)))]

    @app.get("/api/media/{sha256}", dependencies=[Depends(require(perms.MEDIA_READ))], response_model=MediaOut)
    async def media_info(sha256: Annotated[str, PathParam(pattern=SHA256_PATTERN)]) -> MediaOut:
        m = await store.call(db.get_media, sha256)
        if m is None:
            raise HTTPException(404, f"no media {sha256}")
        return media_out(m)

    @app.post("/api/broadcasts", status_code=201, summary="Create a broadcast and send it")
    async def create_broadcast(
        request: Request, body: BroadcastIn, p: Annotated[Principal, Depends(require(perms.BROADCAST_CREATE))]
    ) -> dict[str, Any]:
        now = now_ms()
        start_at: int | None
        if body.start_at is None:
            start_at = None
        elif isinstance(body.start_at, datetime):
            dt = body.start_at if body.start_at.tzinfo else body.start_at.replace(tzinfo=tz)
            start_at = int(dt.timestamp() * 1000)
        else:
            start_at = body.start_at
        if start_at is not None and start_at < now - PAST_TOLERANCE_MS:
            raise BadRequest("the start time is in the past; leave it out to broadcast now")
        priority = PRIORITY_NAMES[body.priority] if isinstance(body.priority, str) else body.priority
        if not 0 <= priority <= 9:
            raise BadRequest("priority must be 0-9 or one of normal, priority, emergency")
        gateways = _targets_gateways(body.targets)
        await require_areas(request, p, perms.BROADCAST_CREATE, gateways)
        if priority >= EMERGENCY_FROM:
            await require_areas(request, p, perms.BROADCAST_EMERGENCY, gateways)
        bid = await dispatcher.create_broadcast(
            media_sha256=body.media_sha256,
            targets=body.targets,
            start_at=start_at,
            priority=priority,
            volume=body.volume,
            repeat=body.repeat,
            title=body.title,
            created_by=p.name,
            broadcast_id=body.id,
        )
        st = await store.call(db.broadcast_status, bid)
        states = await store.call(db.gateway_states, [d["gateway"] for d in st["gateways"]])
        st["warnings"] = [
            f"gateway {gw} has never connected to this scheduler (check the id); the plan waits for it"
            if state is None
            else f"gateway {gw} is offline; the plan is sent when it comes back"
            for gw, state in states.items()
            if state != "online"
        ]
        await audit(p, request, "broadcast.create", bid, targets=st["targets"], priority=priority,
                    volume=body.volume, start_at=start_at, media=body.media_sha256, title=body.title)
        return st

    @app.get("/api/broadcasts", summary="Recent broadcasts (those touching the caller's areas)")
    async def list_broadcasts(
        p: Annotated[Principal, Depends(require(perms.BROADCAST_READ))],
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> list[dict[str, Any]]:
        rows = await store.call(db.list_broadcasts, limit if p.gateways(perms.BROADCAST_READ) is None else 1000)
        mine = [r for r in rows if in_areas(p, perms.BROADCAST_READ, _targets_gateways(r["targets"]))]
        return mine[:limit]

    @app.get("/api/broadcasts/{bid}", summary="A broadcast with per-gateway and per-speaker state")
    async def broadcast_status(
        bid: Annotated[str, PathParam(pattern=MESSAGE_ID_PATTERN)],
        p: Annotated[Principal, Depends(require(perms.BROADCAST_READ))],
    ) -> dict[str, Any]:
        st = await store.call(db.broadcast_status, bid)
        if not in_areas(p, perms.BROADCAST_READ, _targets_gateways(st["targets"])):
            raise NotFound(f"no broadcast {bid}")  # as if it did not exist: other communes stay private
        return st

    @app.post("/api/broadcasts/{bid}/cancel", summary="Cancel a broadcast on every gateway")
    async def cancel(
        request: Request,
        bid: Annotated[str, PathParam(pattern=MESSAGE_ID_PATTERN)],
        p: Annotated[Principal, Depends(require(perms.BROADCAST_CANCEL))],
    ) -> dict[str, Any]:
        st = await store.call(db.broadcast_status, bid)
        await require_areas(request, p, perms.BROADCAST_CANCEL, _targets_gateways(st["targets"]))
        sent = await dispatcher.cancel_broadcast(bid)
        await audit(p, request, "broadcast.cancel", bid, cancel_commands=sent)
        return await store.call(db.broadcast_status, bid)

    @app.put("/api/gateways/{gw}", summary="Name a gateway's commune (registers the gateway)")
    async def put_gateway(
        request: Request,
        gw: Annotated[str, PathParam(pattern=ID_PATTERN)],
        body: GatewayIn,
        p: Annotated[Principal, Depends(require(perms.GATEWAY_ADMIN))],
    ) -> dict[str, Any]:
        await require_areas(request, p, perms.GATEWAY_ADMIN, {gw})
        await dispatcher.register_gateway(gw, body.commune)
        await audit(p, request, "gateway.update", gw, commune=body.commune)
        return {"id": gw, "commune": body.commune}

    @app.get("/api/gateways", summary="Gateways, their status and their speakers (in the caller's areas)")
    async def gateways(p: Annotated[Principal, Depends(require(perms.FLEET_READ))]) -> list[dict[str, Any]]:
        rows = await store.call(db.gateways)
        return [g for g in rows if p.can(perms.FLEET_READ, g["id"])]

    mount_web(app, dispatcher, library, timezone=timezone)
    return app
