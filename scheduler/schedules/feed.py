"""Signed, revocable ICS feed URLs: a commune's approved schedules for calendar programs.

Calendar programs (Google Calendar, Thunderbird, phones) subscribe to a URL and cannot send a
Bearer token, so the feed URL itself is the credential::

    {public_url}/feeds/{gw}/schedules.ics?exp={epoch s}&sig={base64url}
    sig = HMAC-SHA256(K, "loaxa-ics-v1\\n{gw}\\n{generation}\\n{exp}")

``K`` is derived from the scheduler's URL secret (``media-url.key`` or ``http.media_url_secret``):
nothing secret is stored in the database. ``generation`` is the commune's row in ``ics_feeds``:
rotating raises it, and every URL given out before stops working at once (revocation). A URL
names one commune and reveals only that commune's approved schedules (and of a schedule that also
reaches other communes, only this commune's targets).

Refusals: an unknown commune, a URL never issued, a wrong or revoked signature are all 404 (the
same answer, so nobody learns which communes have feeds); a correctly signed URL past ``exp`` is
403. Neither the URL nor the signature goes into a log line or an audit entry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from protocol.ids import ID_PATTERN
from protocol.signing import now_ms
from scheduler.access import permissions as perms
from scheduler.access.deps import Principal, client_address, forbid, get_access, require
from scheduler.db import BadRequest, Store
from scheduler.models import Gateway
from scheduler.schedules.models import IcsFeed
from scheduler.schedules.store import ScheduleStore

DEFAULT_DAYS = 365
MAX_DAYS = 5 * 365
FEED_PATH = "/feeds/{gw}/schedules.ics"


class FeedUrlIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    days: int = Field(default=DEFAULT_DAYS, ge=1, le=MAX_DAYS, description="how long the URL works")
    rotate: bool = Field(default=False, description="revoke every URL given out before for this commune first")


class FeedSigner:
    def __init__(self, secret: bytes, base_url: str):
        self._key = hmac.new(secret, b"loaxa-ics-feed-key-v1", hashlib.sha256).digest()
        self.base_url = base_url.rstrip("/")

    def sig(self, gw: str, generation: int, exp: int) -> str:
        mac = hmac.new(self._key, f"loaxa-ics-v1\n{gw}\n{generation}\n{exp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def url(self, gw: str, generation: int, exp: int) -> str:
        query = urlencode({"exp": exp, "sig": self.sig(gw, generation, exp)})
        return f"{self.base_url}{FEED_PATH.format(gw=gw)}?{query}"

    def check(self, gw: str, generation: int | None, exp: str | None, sig: str | None, now_s: int) -> int | None:
        """None when good; else the HTTP status to refuse with (404 wrong/revoked, 403 expired)."""
        if not exp or not sig or not exp.isdigit() or len(exp) > 12 or len(sig) > 64:
            return 404
        # computed even for a commune without a feed, so the answer's timing does not tell them apart
        good = hmac.compare_digest(self.sig(gw, generation or 0, int(exp)), sig)
        if generation is None or not good:
            return 404
        if int(exp) < now_s:
            return 403
        return None


def generation(store: Store, gw: str) -> int | None:
    """The commune's current feed generation; None when no URL was ever issued."""
    with store.session() as s:
        return s.scalar(select(IcsFeed.generation).where(IcsFeed.gateway_id == gw))


def issue(store: Store, gw: str, rotate: bool, by: str | None, now: int) -> int:
    """The generation to sign a new URL with (raised first when ``rotate``)."""
    with store.session() as s, s.begin():
        if s.get(Gateway, gw) is None:
            raise BadRequest(f"commune: no gateway {gw!r}")
        row = s.get(IcsFeed, gw)
        if row is None:
            row = IcsFeed(gateway_id=gw, generation=1, rotated_at=now, rotated_by=by)
            s.add(row)
        elif rotate:
            row.generation += 1
            row.rotated_at = now
            row.rotated_by = by
        return row.generation


def revoke(store: Store, gw: str, by: str | None, now: int) -> bool:
    """Raise the generation: every URL given out so far is refused. False when none was ever issued."""
    with store.session() as s, s.begin():
        row = s.get(IcsFeed, gw)
        if row is None:
            return False
        row.generation += 1
        row.rotated_at = now
        row.rotated_by = by
        return True


def feed_router(signer: FeedSigner, schedules: ScheduleStore, astore: Any) -> APIRouter:
    """``POST /api/communes/{gw}/feed-url`` (and ``…/revoke``) for people with ``feed:admin`` on the
    commune; ``GET /feeds/{gw}/schedules.ics`` for anyone holding a valid signed URL."""
    router = APIRouter(tags=["schedules"])
    store: Store = astore.store

    async def need(request: Request, p: Principal, gw: str) -> None:
        if not p.can(perms.FEED_ADMIN, gw):
            await get_access(request).audit(p, "access.denied", address=client_address(request),
                                            target=f"{request.method} {request.url.path}",
                                            detail={"needs": perms.FEED_ADMIN, "gateway": gw})
            raise forbid(p, perms.FEED_ADMIN, gw)

    @router.post("/api/communes/{gw}/feed-url", summary="A signed ICS feed URL of the commune's approved "
                                                        "schedules, for calendar programs (no token needed)")
    async def make_feed_url(request: Request, gw: Annotated[str, PathParam(pattern=ID_PATTERN)],
                            p: Annotated[Principal, Depends(require(perms.FEED_ADMIN))],
                            body: FeedUrlIn | None = None) -> dict[str, Any]:
        body = body or FeedUrlIn()
        await need(request, p, gw)
        now = now_ms()
        gen = await astore.call(issue, store, gw, body.rotate, p.name, now)
        exp = now // 1000 + body.days * 86400
        # the URL is a credential: it goes to the caller only, never into the audit detail
        await get_access(request).audit(p, "schedule.feed_url", address=client_address(request), target=gw,
                                        detail={"expires_at": exp * 1000, "rotated": body.rotate})
        return {"commune": gw, "url": signer.url(gw, gen, exp), "expires_at": exp * 1000, "rotated": body.rotate}

    @router.post("/api/communes/{gw}/feed-url/revoke", summary="Revoke every feed URL of the commune")
    async def revoke_feed_urls(request: Request, gw: Annotated[str, PathParam(pattern=ID_PATTERN)],
                               p: Annotated[Principal, Depends(require(perms.FEED_ADMIN))]) -> dict[str, Any]:
        await need(request, p, gw)
        done = await astore.call(revoke, store, gw, p.name, now_ms())
        await get_access(request).audit(p, "schedule.feed_revoke", address=client_address(request), target=gw,
                                        detail={"had_feed": done})
        return {"commune": gw, "revoked": done}

    @router.get(FEED_PATH, summary="A commune's approved schedules (iCalendar), with a signed URL from "
                                   "POST /api/communes/{gw}/feed-url")
    async def feed(gw: Annotated[str, PathParam(pattern=ID_PATTERN)],
                   exp: Annotated[str | None, Query(max_length=12)] = None,
                   sig: Annotated[str | None, Query(max_length=64)] = None) -> Response:
        gen = await astore.call(generation, store, gw)
        refused = signer.check(gw, gen, exp, sig, now_ms() // 1000)
        if refused == 404:
            raise HTTPException(404, "no such feed (the URL is wrong, or it was revoked: ask for a new one)")
        if refused == 403:
            raise HTTPException(403, "this feed URL has expired: ask for a new one")
        data = await astore.call(schedules.export_ics, gw)
        return Response(data, media_type="text/calendar; charset=utf-8",
                        headers={"Content-Disposition": f'inline; filename="{gw}.ics"',
                                 "Cache-Control": "private, max-age=300"})

    return router
