"""Reads and writes of speaker groups, on the scheduler's :class:`~scheduler.db.Store`.

No permission checks here (the routes decide who may); what this layer guarantees is that a group
holds at least one and at most :data:`MAX_MEMBERS` speakers, all known speakers of the group's own
commune, and that a group a schedule still targets is not removed from under it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from protocol.ids import is_valid_id
from scheduler.areas.models import SpeakerGroup, SpeakerGroupMember
from scheduler.areas.schemas import MAX_GROUPS_PER_COMMUNE, MAX_MEMBERS, GroupCreate, GroupIn
from scheduler.db import BadRequest, NotFound, Store
from scheduler.models import Gateway, Speaker


def group_dict(g: SpeakerGroup) -> dict[str, Any]:
    return {
        "gateway": g.gateway_id,
        "id": g.slug,
        "target": f"{g.gateway_id}/@{g.slug}",
        "name": g.name,
        "speakers": [m.device_id for m in g.members],
        "created_at": g.created_at,
        "created_by": g.created_by,
        "updated_at": g.updated_at,
        "updated_by": g.updated_by,
    }


class GroupStore:
    def __init__(self, store: Store):
        self.store = store

    # ------------------------------------------------------------ reads

    def list_groups(self, gateways: frozenset[str] | None = None) -> list[dict[str, Any]]:
        """Every group (of ``gateways`` when given), by commune and id."""
        with self.store.session() as s:
            q = select(SpeakerGroup).options(selectinload(SpeakerGroup.members)).order_by(
                SpeakerGroup.gateway_id, SpeakerGroup.slug)
            if gateways is not None:
                if not gateways:
                    return []
                q = q.where(SpeakerGroup.gateway_id.in_(sorted(gateways)))
            return [group_dict(g) for g in s.scalars(q).all()]

    def group(self, gateway: str, gid: str) -> dict[str, Any]:
        with self.store.session() as s:
            return group_dict(self._get(s, gateway, gid))

    @staticmethod
    def _get(s: Session, gateway: str, gid: str) -> SpeakerGroup:
        g = s.scalars(select(SpeakerGroup).where(SpeakerGroup.gateway_id == gateway, SpeakerGroup.slug == gid)
                      .options(selectinload(SpeakerGroup.members))).first()
        if g is None:
            raise NotFound(f"no speaker group {gateway}/@{gid}")
        return g

    # ------------------------------------------------------------ writes

    def create(self, spec: GroupCreate, by: str | None, now: int) -> dict[str, Any]:
        with self.store.session() as s, s.begin():
            if s.get(Gateway, spec.gateway) is None:
                raise BadRequest(f"gateway: no commune gateway {spec.gateway!r}")
            if s.scalars(select(SpeakerGroup.id).where(SpeakerGroup.gateway_id == spec.gateway,
                                                       SpeakerGroup.slug == spec.id)).first() is not None:
                raise BadRequest(f"id: {spec.gateway} already has a speaker group {spec.id!r}")
            count = s.scalar(select(func.count()).select_from(SpeakerGroup)
                             .where(SpeakerGroup.gateway_id == spec.gateway)) or 0
            if count >= MAX_GROUPS_PER_COMMUNE:
                raise BadRequest(f"gateway: {spec.gateway} already has {count} speaker groups, the most a commune "
                                 "may have; remove one first")
            g = SpeakerGroup(gateway_id=spec.gateway, slug=spec.id, name=spec.name.strip(), created_at=now,
                             created_by=by, updated_at=now, updated_by=by)
            g.members = [SpeakerGroupMember(device_id=d) for d in self._members(s, spec.gateway, spec.speakers)]
            s.add(g)
            s.flush()
            return group_dict(g)

    def update(self, gateway: str, gid: str, spec: GroupIn, by: str | None, now: int) -> dict[str, Any]:
        """Replace a group's name and speakers. Broadcasts already made keep the speakers they were made
        for; schedules use the new members from their next occurrence sent."""
        with self.store.session() as s, s.begin():
            g = self._get(s, gateway, gid)
            devs = self._members(s, gateway, spec.speakers)
            g.members.clear()
            s.flush()
            g.members.extend(SpeakerGroupMember(device_id=d) for d in devs)
            g.name = spec.name.strip()
            g.updated_at = now
            g.updated_by = by
            s.flush()
            return group_dict(g)

    def remove(self, gateway: str, gid: str) -> None:
        from scheduler.schedules.models import Schedule

        target = f"{gateway}/@{gid}"
        with self.store.session() as s, s.begin():
            g = self._get(s, gateway, gid)
            users = [sid for sid, targets in s.execute(select(Schedule.id, Schedule.targets)).all()
                     if target in targets]
            if users:
                shown = ", ".join(sorted(users)[:10]) + (" …" if len(users) > 10 else "")
                raise BadRequest(f"speaker group {target} is a target of schedule(s) {shown}: change or remove "
                                 "them first")
            s.delete(g)

    @staticmethod
    def _members(s: Session, gateway: str, speakers: list[str]) -> list[str]:
        """The device ids of ``speakers`` (``DEV`` or ``GW/DEV``), checked; errors name ``speakers[N]``."""
        if not speakers:
            raise BadRequest("speakers: a group needs at least one speaker")
        if len(speakers) > MAX_MEMBERS:
            raise BadRequest(f"speakers: a group holds at most {MAX_MEMBERS} speakers ({len(speakers)} given)")
        known = set(s.scalars(select(Speaker.device_id).where(Speaker.gateway_id == gateway)).all())
        out: list[str] = []
        for n, text in enumerate(speakers):
            owner, _, dev = text.strip().rpartition("/")
            if not is_valid_id(dev) or (owner and not is_valid_id(owner)):
                raise BadRequest(f"speakers[{n}]: {text!r} is not a speaker id (DEVICE or GATEWAY/DEVICE, "
                                 "a-z 0-9 -)")
            if owner and owner != gateway:
                raise BadRequest(f"speakers[{n}]: {text} is a speaker of {owner}, not of {gateway}; a group holds "
                                 "speakers of its own commune only")
            if dev not in known:
                raise BadRequest(f"speakers[{n}]: {gateway} has no speaker {dev!r} (its speakers are listed by "
                                 "GET /api/gateways or `loaxa devices list`)")
            if dev not in out:
                out.append(dev)
        return sorted(out)

