"""The scheduler's HTTP side (FastAPI): media for gateways and a small JSON API.

* ``GET|HEAD /media/{sha256}``: the stored audio, with byte ranges (206 / 416), ``ETag`` = the
  SHA-256 and ``If-None-Match`` (304). Open to anyone who knows the hash (gateways fetch here).
* ``/api/...``: upload media, text-to-speech, create / cancel / inspect broadcasts, list gateways.
  Protected by a bearer token when ``http.api_token`` is set. OpenAPI at ``/docs`` and ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from protocol.ids import ID_PATTERN, MESSAGE_ID_PATTERN
from protocol.models import PRIORITY_NAMES
from protocol.signing import now_ms
from scheduler.db import BadRequest, NotFound
from scheduler.dispatcher import Dispatcher
from scheduler.media import MediaError, MediaLibrary
from scheduler.models import Media

log = logging.getLogger(__name__)

SHA256_PATTERN = r"^[0-9a-f]{64}$"
CHUNK = 256 * 1024
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
#: A start time this far in the past is refused (it would never play).
PAST_TOLERANCE_MS = 60_000


class MediaOut(BaseModel):
    sha256: str
    bytes: int
    duration_ms: int
    content_type: str
    original_name: str | None
    url: str


class TtsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=20_000, description="Vietnamese text to read aloud")


class GatewayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    commune: str | None = Field(default=None, max_length=200, description="e.g. Xã An Bình")


class BroadcastIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    media_sha256: str = Field(pattern=SHA256_PATTERN, description="from POST /api/media or /api/tts")
    targets: list[str] = Field(min_length=1, max_length=1000, description='"GATEWAY" or "GATEWAY/DEVICE"')
    start_at: int | datetime | None = Field(
        default=None, description="null: now; epoch ms, or ISO 8601 (no zone: the scheduler's time zone)"
    )
    priority: int | Literal["normal", "priority", "emergency"] = "normal"
    volume: int = Field(default=70, ge=0, le=100)
    repeat: int = Field(default=1, ge=1, le=100)
    title: str | None = Field(default=None, max_length=200)
    created_by: str | None = Field(default=None, max_length=200)
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


class _TokenCaller:
    """The caller of the shared API token: every permission, every gateway."""

    name = "api-token"

    def can(self, perm: str, gateway: str | None = None) -> bool:
        return True

    def gateways(self, perm: str) -> frozenset[str] | None:
        return None


def create_app(
    dispatcher: Dispatcher,
    library: MediaLibrary,
    *,
    media_url: Any,
    timezone: str = "Asia/Ho_Chi_Minh",
    api_token: str | None = None,
    fleet: Any = None,
) -> FastAPI:
    app = FastAPI(
        title="Loa Xã scheduler",
        version="1",
        description="Broadcast scheduling and delivery tracking for commune public-address systems.",
    )
    store = dispatcher.store
    db = dispatcher.db
    tz = ZoneInfo(timezone)

    def check_token(authorization: Annotated[str | None, Header()] = None) -> None:
        if api_token is None:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), api_token.encode()):
            raise HTTPException(401, "missing or wrong API token (Authorization: Bearer ...)")

    api = [Depends(check_token)]

    def media_out(m: Media) -> MediaOut:
        return MediaOut(
            sha256=m.sha256,
            bytes=m.size,
            duration_ms=m.duration_ms,
            content_type=m.content_type,
            original_name=m.original_name,
            url=media_url(m.sha256),
        )

    @app.exception_handler(BadRequest)
    async def _bad(_req: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(NotFound)
    async def _nf(_req: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(MediaError)
    async def _media(_req: Request, exc: MediaError) -> JSONResponse:
        code = 413 if "larger than the limit" in str(exc) else 400
        return JSONResponse({"detail": str(exc)}, status_code=code)

    # ------------------------------------------------------------ media for gateways

    @app.api_route("/media/{sha256}", methods=["GET", "HEAD"], summary="Fetch stored audio (byte ranges)")
    async def get_media(
        request: Request,
        sha256: Annotated[str, PathParam(pattern=SHA256_PATTERN, description="SHA-256 of the file, lowercase hex")],
    ) -> Response:
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
        }

    @app.post(
        "/api/media",
        dependencies=api,
        status_code=201,
        response_model=MediaOut,
        summary="Upload audio (raw request body; name in ?name=)",
    )
    async def upload_media(request: Request, name: str | None = None) -> MediaOut:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > library.max_bytes:
            raise MediaError(
                f"the file is larger than the limit of {library.max_bytes} bytes "
                f"({int(declared)} bytes sent); nothing was stored"
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
                            f"the file is larger than the limit of {library.max_bytes} bytes; nothing was stored"
                        )
                    await asyncio.to_thread(f.write, chunk)
            if size == 0:
                raise MediaError("the upload is empty; send the audio file as the request body")
            media = await asyncio.to_thread(library.ingest, path, name)
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        stored = await store.call(db.add_media, media)
        return media_out(stored)

    @app.post(
        "/api/tts",
        dependencies=api,
        status_code=201,
        response_model=MediaOut,
        summary="Read Vietnamese text aloud (espeak-ng) and store the audio",
    )
    async def tts(body: TtsIn) -> MediaOut:
        media = await asyncio.to_thread(library.tts, body.text)
        stored = await store.call(db.add_media, media)
        return media_out(stored)

    @app.get("/api/media/{sha256}", dependencies=api, response_model=MediaOut)
    async def media_info(sha256: Annotated[str, PathParam(pattern=SHA256_PATTERN)]) -> MediaOut:
        m = await store.call(db.get_media, sha256)
        if m is None:
            raise HTTPException(404, f"no media {sha256}")
        return media_out(m)

    @app.post("/api/broadcasts", dependencies=api, status_code=201, summary="Create a broadcast and send it")
    async def create_broadcast(body: BroadcastIn) -> dict[str, Any]:
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
        bid = await dispatcher.create_broadcast(
            media_sha256=body.media_sha256,
            targets=body.targets,
            start_at=start_at,
            priority=priority,
            volume=body.volume,
            repeat=body.repeat,
            title=body.title,
            created_by=body.created_by,
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
        return st

    @app.get("/api/broadcasts", dependencies=api, summary="Recent broadcasts")
    async def list_broadcasts(limit: int = 50) -> list[dict[str, Any]]:
        return await store.call(db.list_broadcasts, max(1, min(limit, 1000)))

    @app.get(
        "/api/broadcasts/{bid}",
        dependencies=api,
        summary="A broadcast with per-gateway and per-speaker state",
    )
    async def broadcast_status(bid: Annotated[str, PathParam(pattern=MESSAGE_ID_PATTERN)]) -> dict[str, Any]:
        return await store.call(db.broadcast_status, bid)

    @app.post("/api/broadcasts/{bid}/cancel", dependencies=api, summary="Cancel a broadcast on every gateway")
    async def cancel(bid: Annotated[str, PathParam(pattern=MESSAGE_ID_PATTERN)]) -> dict[str, Any]:
        await dispatcher.cancel_broadcast(bid)
        return await store.call(db.broadcast_status, bid)

    @app.put("/api/gateways/{gw}", dependencies=api, summary="Name a gateway's commune (registers the gateway)")
    async def put_gateway(gw: Annotated[str, PathParam(pattern=ID_PATTERN)], body: GatewayIn) -> dict[str, Any]:
        await store.call(db.set_commune, gw, body.commune)
        return {"id": gw, "commune": body.commune}

    @app.get("/api/gateways", dependencies=api, summary="Gateways, their status and their speakers")
    async def gateways() -> list[dict[str, Any]]:
        return await store.call(db.gateways)

    if fleet is not None:
        from scheduler.fleet.routes import make_router

        def token_require(perm: str) -> Any:
            """Until accounts and roles exist: the API token holds every permission in every area."""

            def dependency(authorization: Annotated[str | None, Header()] = None) -> _TokenCaller:
                check_token(authorization)
                return _TokenCaller()

            return dependency

        async def log_audit(p: Any, request: Request, action: str, target: str | None, detail: dict[str, Any]) -> None:
            client = request.client.host if request.client else "unknown"
            log.info("audit: %s from %s: %s %s %s", p.name, client, action, target, detail)

        app.include_router(make_router(fleet, token_require, log_audit))

    return app
