"""The navigation: each page of the UI with the permission that shows it.

A link appears only when the signed-in person holds the page's permission in at least one area; the
page itself checks the permission again (hiding a link is a courtesy, not a control).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


def N_(message: str) -> str:
    """Mark a text for the catalogue without translating it here (it is translated when shown)."""
    return message


class CanCheck(Protocol):
    def can(self, perm: str, gateway: str | None = None) -> bool: ...


@dataclass(frozen=True)
class NavItem:
    path: str
    label: str  # a catalogue msgid
    permission: str


NAV: tuple[NavItem, ...] = (
    NavItem("/now", N_("Broadcast now"), "broadcast:create"),
    NavItem("/schedule", N_("Schedule"), "schedule:read"),
    NavItem("/library", N_("Audio library"), "media:read"),
    NavItem("/approvals", N_("Awaiting approval"), "broadcast:approve"),
    NavItem("/log", N_("Broadcast log"), "broadcast:read"),
    NavItem("/fleet", N_("Devices"), "fleet:read"),
    NavItem("/alarms", N_("Alarms"), "fleet:read"),
    NavItem("/admin", N_("Administration"), "accounts:admin"),
)


def visible_nav(principal: CanCheck | None) -> list[NavItem]:
    """The items this person may open (none before signing in)."""
    if principal is None:
        return []
    return [item for item in NAV if principal.can(item.permission)]
