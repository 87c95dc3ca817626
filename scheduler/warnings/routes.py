"""HTTP routes of warnings: ``POST /api/cap`` (CAP 1.2 in), the CAP alerts and their approval, and
``PUT /api/gateways/{gw}/warning-rules`` (local rules out). Mounted by scheduler/service.py."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol.ids import ID_PATTERN
from protocol.models import PRIORITY_HIGH, MediaRef
from protocol.signing import now_ms
from scheduler.access import permissions as perms
from scheduler.access.deps import client_address, get_access, require
from scheduler.access.principal import Principal

from .cap import MAX_BYTES
from .intake import CapIntake, CapRefused
from .rules import RulesIn, to_wire

#: how long a gateway has to fetch a rule's media and answer
RULES_ACK_TIMEOUT_S = 60.0
RULES_TTL_MS = 3600 * 1000
#: a rule's media URL stays valid this long (the gateway fetches it at once)
RULES_MEDIA_URL_MS = 7 * 24 * 3600 * 1000


async def _read_limited(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise CapRefused(413, "alert", f"the message is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _refused(exc: CapRefused) -> JSONResponse:
    return JSONResponse({"detail": exc.message, "element": exc.element}, status_code=exc.status)


class CapRejection(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    reason: str = Field(min_length=1, max_length=500, description="why it is not broadcast (kept in the audit log)")


def warnings_router(intake: CapIntake) -> APIRouter:
    r = APIRouter(tags=["warnings"])
    dispatcher = intake.dispatcher

    def auditor(p: Principal, request: Request) -> Any:
        access = get_access(request)

        async def audit(action: str, target: str, detail: dict[str, Any]) -> None:
            await access.audit(p, action, address=client_address(request), target=target, detail=detail)

        return audit

    @r.post("/api/cap", status_code=202, summary="Receive a CAP 1.2 alert (XML body)",
            responses={400: {"description": "not a valid CAP 1.2 message; 'element' names the part at fault"},
                       413: {"description": "larger than 512 KiB"}})
    async def post_cap(request: Request, p: Annotated[Principal, Depends(require(perms.CAP_SUBMIT))]) -> Any:
        try:
            raw = await _read_limited(request, MAX_BYTES)
            outcome = await intake.submit(raw, p.name, auditor(p, request))
        except CapRefused as exc:
            return _refused(exc)
        return JSONResponse(outcome.answer(), status_code=202)

    @r.get("/api/cap", summary="CAP alerts received (those touching the caller's areas, and unmatched ones)")
    async def list_cap(p: Annotated[Principal, Depends(require(perms.BROADCAST_READ))],
                       limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
        rows = await intake.recent(limit)
        allowed = p.gateways(perms.BROADCAST_READ)
        return [row for row in rows if allowed is None or not row["gateways"]
                or any(g in allowed for g in row["gateways"])]

    @r.get("/api/cap/{alert_id}", summary="One CAP alert: decision, matched communes, pending broadcast, raw XML")
    async def get_cap(alert_id: int, p: Annotated[Principal, Depends(require(perms.BROADCAST_READ))]) -> Any:
        row = await intake.get(alert_id)
        allowed = p.gateways(perms.BROADCAST_READ)
        if row is None or (allowed is not None and row.gateways and not set(row.gateways) & allowed):
            raise HTTPException(404, f"no CAP alert {alert_id}")
        return {**row.public(), "raw": row.raw}

    @r.post("/api/cap/{alert_id}/approve", summary="Send the broadcast of a CAP alert that waits for approval")
    async def approve_cap(request: Request, alert_id: int,
                          p: Annotated[Principal, Depends(require(perms.BROADCAST_APPROVE))]) -> Any:
        row = await intake.get(alert_id)
        if row is None:
            raise HTTPException(404, f"no CAP alert {alert_id}")
        from scheduler.http import require_areas

        await require_areas(request, p, perms.BROADCAST_APPROVE, set(row.gateways or []))
        if (row.priority or 0) > PRIORITY_HIGH:
            await require_areas(request, p, perms.BROADCAST_EMERGENCY, set(row.gateways or []))
        try:
            done = await intake.approve(alert_id, p.name)
        except CapRefused as exc:
            return _refused(exc)
        await get_access(request).audit(p, "cap.approve", address=client_address(request), target=str(alert_id),
                                        detail={"broadcast_id": done.broadcast_id, "gateways": done.gateways})
        return done.public()

    @r.post("/api/cap/{alert_id}/reject", summary="Refuse a CAP alert that waits for approval (with a reason)")
    async def reject_cap(request: Request, alert_id: int, body: CapRejection,
                         p: Annotated[Principal, Depends(require(perms.BROADCAST_APPROVE))]) -> Any:
        row = await intake.get(alert_id)
        if row is None:
            raise HTTPException(404, f"no CAP alert {alert_id}")
        from scheduler.http import require_areas

        await require_areas(request, p, perms.BROADCAST_APPROVE, set(row.gateways or []))
        try:
            done = await intake.reject(alert_id)
        except CapRefused as exc:
            return _refused(exc)
        await get_access(request).audit(p, "cap.reject", address=client_address(request), target=str(alert_id),
                                        detail={"reason": body.reason, "gateways": done.gateways})
        return done.public()

    @r.put("/api/gateways/{gw}/warning-rules", summary="Send a gateway its local warning rules (replaces them)")
    async def put_rules(request: Request, gw: Annotated[str, PathParam(pattern=ID_PATTERN)],
                        p: Annotated[Principal, Depends(require(perms.WARNING_RULES))]) -> Any:
        from scheduler.http import require_areas

        await require_areas(request, p, perms.WARNING_RULES, {gw})
        if gw not in dispatcher.known_gateways:
            raise HTTPException(404, f"unknown gateway {gw}: it is not among the scheduler's 'gateways'")
        body = await request.body()
        if len(body) > 1024 * 1024:
            raise HTTPException(413, "rules larger than 1 MiB")
        try:
            rules = RulesIn.model_validate_json(body)
        except ValidationError as exc:
            raise HTTPException(422, [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]) from None
        media: dict[str, MediaRef] = {}
        for rule in rules.rules:
            m = await dispatcher.store.call(dispatcher.db.get_media, rule.media)
            if m is None:
                raise HTTPException(422, f"rules.{rule.id}.media: no item {rule.media} in the audio library")
            media[rule.media] = MediaRef(sha256=m.sha256, url=dispatcher.media_url(m.sha256, gw, now_ms()
                                                                                    + RULES_MEDIA_URL_MS),
                                         bytes=m.size, duration_ms=m.duration_ms, content_type=m.content_type)
        wire = to_wire(rules, media.__getitem__)
        env = dispatcher.make_envelope("warning.rules", wire, RULES_TTL_MS, gw)
        ack = await dispatcher.send_and_wait(env, gw, RULES_ACK_TIMEOUT_S)
        await get_access(request).audit(p, "warning.rules", address=client_address(request), target=gw,
                                        detail={"command_id": env.id, "rules": [r.id for r in rules.rules],
                                                "ok": ack.ok if ack else None})
        if ack is None:
            raise HTTPException(504, f"gateway {gw} did not answer within {RULES_ACK_TIMEOUT_S:g} s (offline?); "
                                "its rules are unchanged until it does: send them again")
        if not ack.ok:
            raise HTTPException(502, f"gateway {gw} refused the rules: {ack.reason}: {ack.error}")
        return {"gateway": gw, "command_id": env.id, "rules": [r.id for r in rules.rules], "ack": ack.model_dump()}

    return r
