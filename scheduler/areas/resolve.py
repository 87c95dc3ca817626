"""Group targets (``GW/@GROUP``) into speakers, inside the caller's transaction.

Used when a broadcast is made (:meth:`scheduler.db.Store.create_broadcast`, which every path to a
gateway goes through: the API, the CLI, the schedule planner, CAP warnings), when a schedule is
saved (its groups must exist) and when it is checked for conflicts. A group that no longer exists,
or has no speakers left, is refused with the target named: a broadcast never silently plays nowhere.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from scheduler.areas.models import SpeakerGroup
from scheduler.db import BadRequest, Target


def group_members(s: Session, targets: Sequence[Target]) -> dict[Target, list[str] | None]:
    """The members (device ids, sorted) of each group target among ``targets`` as they are now;
    None for a group that does not exist."""
    wanted = {t for t in targets if t.group is not None}
    if not wanted:
        return {}
    rows = s.scalars(select(SpeakerGroup).where(SpeakerGroup.gateway_id.in_(sorted({t.gateway for t in wanted})))
                     .options(selectinload(SpeakerGroup.members))).all()
    found = {Target(g.gateway_id, None, g.slug): sorted(m.device_id for m in g.members) for g in rows}
    return {t: found.get(t) for t in wanted}


def check_groups(s: Session, targets: Sequence[Target], *, need_members: bool = True) -> dict[Target, list[str]]:
    """:func:`group_members`, refusing (naming ``targets[N]``) a group that is missing or empty."""
    members = group_members(s, targets)
    out: dict[Target, list[str]] = {}
    for n, t in enumerate(targets):
        if t.group is None:
            continue
        devs = members[t]
        if devs is None:
            raise BadRequest(f"targets[{n}]: {t.gateway} has no speaker group {t.group!r} "
                             f"(see `loaxa groups list --commune {t.gateway}`)")
        if need_members and not devs:
            raise BadRequest(f"targets[{n}]: speaker group {t} has no speakers")
        out[t] = devs
    return out


def resolve_groups(s: Session, targets: Sequence[Target]) -> dict[Target, list[str]]:
    """The members of each group target, as they are now (for a broadcast being made)."""
    return check_groups(s, targets)


def expand_groups(targets: Sequence[Target], groups: dict[Target, list[str]]) -> list[Target]:
    """``targets`` with each group replaced by its members, in order, without repeats."""
    out: list[Target] = []
    seen: set[Target] = set()
    for t in targets:
        for one in ([Target(t.gateway, d) for d in groups[t]] if t.group is not None else [t]):
            if one not in seen:
                seen.add(one)
                out.append(one)
    return out
