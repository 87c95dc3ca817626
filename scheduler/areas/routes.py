"""HTTP API of speaker groups: ``/api/groups`` (mounted by scheduler.service).

A group belongs to one commune, so every check is on that commune's gateway: reading needs
``broadcast:read`` there (who may see a commune's broadcasts may see its groups), changing needs
``group:write`` there. A group of another commune answers 404, as if it did not exist. Every change
is written to the audit log with the speakers it holds.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam

from protocol.ids import ID_PATTERN
from protocol.signing import now_ms
from scheduler.access import permissions as perms
from scheduler.access.deps import Principal, client_address, forbid, get_access, require
from scheduler.areas.schemas import GroupCreate, GroupIn
from scheduler.areas.store import GroupStore
from scheduler.db import BadRequest, NotFound
from scheduler.dispatcher import Dispatcher

#: how many speakers an audit entry lists (the count is always there)
AUDIT_MEMBERS = 50


def groups_router(dispatcher: Dispatcher) -> APIRouter:
    router = APIRouter(prefix="/api/groups", tags=["groups"])
    astore = dispatcher.store
    groups = GroupStore(astore.store)

    async def audit(p: Principal, request: Request, action: str, target: str, **detail: Any) -> None:
        await get_access(request).audit(p, action, address=client_address(request), target=target, detail=detail)

    async def need(request: Request, p: Principal, perm: str, gw: str) -> None:
        if not p.can(perm, gw):
            await audit(p, request, "access.denied", f"{request.method} {request.url.path}", needs=perm, gateway=gw)
            raise forbid(p, perm, gw)

    def visible(p: Principal, gw: str, gid: str) -> None:
        if not p.can(perms.BROADCAST_READ, gw):
            raise NotFound(f"no speaker group {gw}/@{gid}")  # other communes' groups stay private

    def members(g: dict[str, Any]) -> dict[str, Any]:
        return {"name": g["name"], "speakers": g["speakers"][:AUDIT_MEMBERS], "count": len(g["speakers"])}

    @router.get("", summary="Speaker groups of the caller's communes")
    async def list_groups(p: Annotated[Principal, Depends(require(perms.BROADCAST_READ))],
                          commune: Annotated[list[str] | None, Query(max_length=500)] = None
                          ) -> list[dict[str, Any]]:
        allowed = p.gateways(perms.BROADCAST_READ)
        gws: frozenset[str] | None = frozenset(commune) if commune else None
        if allowed is not None:
            gws = allowed if gws is None else gws & allowed
        return await astore.call(groups.list_groups, gws)

    @router.get("/{gw}/{gid}", summary="One speaker group")
    async def get_group(gw: Annotated[str, PathParam(pattern=ID_PATTERN)],
                        gid: Annotated[str, PathParam(pattern=ID_PATTERN)],
                        p: Annotated[Principal, Depends(require(perms.BROADCAST_READ))]) -> dict[str, Any]:
        visible(p, gw, gid)
        return await astore.call(groups.group, gw, gid)

    @router.post("", status_code=201, summary="Make a speaker group of one commune (target it as GATEWAY/@ID)")
    async def create_group(request: Request, body: GroupCreate,
                           p: Annotated[Principal, Depends(require(perms.GROUP_WRITE))]) -> dict[str, Any]:
        await need(request, p, perms.GROUP_WRITE, body.gateway)
        if body.gateway not in dispatcher.known_gateways:
            raise BadRequest(f"gateway: {body.gateway!r} is not one of the scheduler's gateways")
        g = await astore.call(groups.create, body, p.name, now_ms())
        await audit(p, request, "group.create", g["target"], **members(g))
        return g

    @router.put("/{gw}/{gid}", summary="Replace a group's name and speakers (broadcasts already made keep theirs)")
    async def update_group(request: Request, gw: Annotated[str, PathParam(pattern=ID_PATTERN)],
                           gid: Annotated[str, PathParam(pattern=ID_PATTERN)], body: GroupIn,
                           p: Annotated[Principal, Depends(require(perms.GROUP_WRITE))]) -> dict[str, Any]:
        visible(p, gw, gid)
        await need(request, p, perms.GROUP_WRITE, gw)
        g = await astore.call(groups.update, gw, gid, body, p.name, now_ms())
        await audit(p, request, "group.update", g["target"], **members(g))
        return g

    @router.delete("/{gw}/{gid}", status_code=204, summary="Remove a group no schedule targets")
    async def remove_group(request: Request, gw: Annotated[str, PathParam(pattern=ID_PATTERN)],
                           gid: Annotated[str, PathParam(pattern=ID_PATTERN)],
                           p: Annotated[Principal, Depends(require(perms.GROUP_WRITE))]) -> Response:
        visible(p, gw, gid)
        await need(request, p, perms.GROUP_WRITE, gw)
        await astore.call(groups.remove, gw, gid)
        await audit(p, request, "group.remove", f"{gw}/@{gid}")
        return Response(status_code=204)

    return router
