"""Roles, the permissions each role gives, and areas (the gateways a role is granted for).

A permission is a ``resource:action`` string. A role is granted to an account or a token for an
*area*: a set of gateway ids (communes), or every gateway (``None``, written ``*``). An action on a
gateway is allowed when some grant gives the permission and covers that gateway.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from protocol.ids import validate_id

BROADCAST_READ = "broadcast:read"
BROADCAST_CREATE = "broadcast:create"
BROADCAST_EMERGENCY = "broadcast:emergency"
BROADCAST_APPROVE = "broadcast:approve"
BROADCAST_CANCEL = "broadcast:cancel"
SCHEDULE_READ = "schedule:read"
SCHEDULE_WRITE = "schedule:write"
SCHEDULE_APPROVE = "schedule:approve"
#: approve one's own emergency schedule at once (bypassing a second person); always audited
SCHEDULE_EMERGENCY = "schedule:emergency"
#: make, change and remove speaker groups ("cụm loa") of one's communes
GROUP_WRITE = "group:write"
#: give out (and revoke by rotating) a commune's signed ICS feed URL
FEED_ADMIN = "feed:admin"
REPORT_READ = "report:read"
MEDIA_READ = "media:read"
MEDIA_WRITE = "media:write"
DEVICE_CONTROL = "device:control"
FIRMWARE_WRITE = "firmware:write"
FLEET_READ = "fleet:read"
GATEWAY_ADMIN = "gateway:admin"
ACCOUNTS_ADMIN = "accounts:admin"
AUDIT_READ = "audit:read"
IOC_READ = "ioc:read"
CONFIG_RELOAD = "config:reload"
#: post CAP 1.2 alerts to /api/cap (the province's warning centre, a hydrology station)
CAP_SUBMIT = "cap:submit"
#: send local warning rules (water level → warning) to gateways
WARNING_RULES = "warning:rules"

ALL_PERMISSIONS: frozenset[str] = frozenset(
    {
        BROADCAST_READ,
        BROADCAST_CREATE,
        BROADCAST_EMERGENCY,
        BROADCAST_APPROVE,
        BROADCAST_CANCEL,
        SCHEDULE_READ,
        SCHEDULE_WRITE,
        SCHEDULE_APPROVE,
        SCHEDULE_EMERGENCY,
        GROUP_WRITE,
        FEED_ADMIN,
        REPORT_READ,
        MEDIA_READ,
        MEDIA_WRITE,
        DEVICE_CONTROL,
        FIRMWARE_WRITE,
        FLEET_READ,
        GATEWAY_ADMIN,
        ACCOUNTS_ADMIN,
        AUDIT_READ,
        IOC_READ,
        CONFIG_RELOAD,
        CAP_SUBMIT,
        WARNING_RULES,
    }
)

#: What each role may do. docs/security.md has the same table for people.
ROLES: dict[str, frozenset[str]] = {
    "admin": ALL_PERMISSIONS,
    # the commune chairman: approves, orders emergency broadcasts, cancels
    "approver": frozenset(
        {
            BROADCAST_READ,
            BROADCAST_CREATE,
            BROADCAST_EMERGENCY,
            BROADCAST_APPROVE,
            BROADCAST_CANCEL,
            SCHEDULE_READ,
            SCHEDULE_WRITE,
            SCHEDULE_APPROVE,
            SCHEDULE_EMERGENCY,
            GROUP_WRITE,
            FEED_ADMIN,
            REPORT_READ,
            MEDIA_READ,
            MEDIA_WRITE,
            FLEET_READ,
        }
    ),
    # commune culture/information staff: media, drafts, schedules, "now" (not emergency)
    "operator": frozenset(
        {BROADCAST_READ, BROADCAST_CREATE, BROADCAST_CANCEL, SCHEDULE_READ, SCHEDULE_WRITE, GROUP_WRITE, REPORT_READ,
         MEDIA_READ, MEDIA_WRITE, FLEET_READ}
    ),
    "technician": frozenset({FLEET_READ, DEVICE_CONTROL, FIRMWARE_WRITE, BROADCAST_READ, MEDIA_READ, WARNING_RULES}),
    "viewer": frozenset({BROADCAST_READ, FLEET_READ, MEDIA_READ, SCHEDULE_READ, REPORT_READ}),
    "ioc": frozenset({IOC_READ, FLEET_READ}),
    # a machine that sends CAP alerts (docs/warnings.md); nothing else
    "alert-source": frozenset({CAP_SUBMIT}),
}

#: Roles that only an area-wide grant makes sense for are not restricted: any role may be scoped.
ALL_AREAS = "*"
MAX_AREAS = 1000


class GrantError(ValueError):
    """A role or area written wrongly (the message names it)."""


@dataclass(frozen=True)
class Grant:
    role: str
    areas: frozenset[str] | None  # None: every gateway

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise GrantError(f"unknown role {self.role!r}; roles are {', '.join(ROLES)}")

    @property
    def permissions(self) -> frozenset[str]:
        return ROLES[self.role]

    def covers(self, gateway: str) -> bool:
        return self.areas is None or gateway in self.areas

    def areas_text(self) -> str:
        return ALL_AREAS if self.areas is None else ",".join(sorted(self.areas))

    def to_json(self) -> dict[str, object]:
        return {"role": self.role, "areas": ALL_AREAS if self.areas is None else sorted(self.areas)}

    @classmethod
    def make(cls, role: str, areas: Iterable[str] | str | None) -> Grant:
        """Validate a role and its areas (``None``/``"*"``: all; else gateway ids)."""
        if areas is None or areas == ALL_AREAS:
            return cls(role, None)
        if isinstance(areas, str):
            areas = [a for a in areas.split(",") if a.strip()]
        ids: set[str] = set()
        for a in areas:
            a = a.strip()
            if a == ALL_AREAS:
                return cls(role, None)
            try:
                ids.add(validate_id(a, "area (gateway id)"))
            except ValueError as exc:
                raise GrantError(f"role {role}: {exc}") from exc
        if not ids:
            raise GrantError(f"role {role}: no areas given; write gateway ids or {ALL_AREAS} for every gateway")
        if len(ids) > MAX_AREAS:
            raise GrantError(f"role {role}: at most {MAX_AREAS} areas")
        return cls(role, frozenset(ids))

    @classmethod
    def parse(cls, text: str) -> Grant:
        """``ROLE`` (every area) or ``ROLE:GW,GW`` as typed on the command line."""
        role, _, areas = text.partition(":")
        return cls.make(role.strip(), areas if areas.strip() else None)


def gateways_for(grants: Iterable[Grant], perm: str) -> frozenset[str] | None:
    """The gateways on which ``grants`` give ``perm``: None for all, an empty set for none."""
    found: set[str] = set()
    for g in grants:
        if perm in g.permissions:
            if g.areas is None:
                return None
            found |= g.areas
    return frozenset(found)


def allows(grants: Iterable[Grant], perm: str, gateway: str | None = None) -> bool:
    """Whether ``grants`` give ``perm`` (on ``gateway``, or on at least one area when it is None)."""
    for g in grants:
        if perm in g.permissions and (gateway is None or g.covers(gateway)):
            return True
    return False
