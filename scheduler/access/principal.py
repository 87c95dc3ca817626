"""Who is calling: an account (browser session or password login) or an API token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from scheduler.access.permissions import Grant, allows, gateways_for


@dataclass(frozen=True)
class Principal:
    name: str  # the account's login, or "token:<name>": the only source of created_by
    kind: Literal["account", "token"]
    grants: tuple[Grant, ...]
    via: Literal["session", "token", "local"] = "token"
    csrf_token: str | None = None  # set for a browser session
    session_hash: str | None = None
    display_name: str | None = None

    def can(self, perm: str, gateway: str | None = None) -> bool:
        """Whether this caller holds ``perm`` on ``gateway`` (or on some area when gateway is None)."""
        return allows(self.grants, perm, gateway)

    def gateways(self, perm: str) -> frozenset[str] | None:
        """The gateways on which this caller holds ``perm``; None means every gateway."""
        return gateways_for(self.grants, perm)

    def permissions(self) -> dict[str, list[str] | str]:
        """Each permission held, with its areas (``*``: all)."""
        perms = sorted({p for g in self.grants for p in g.permissions})
        out: dict[str, list[str] | str] = {}
        for p in perms:
            gws = self.gateways(p)
            out[p] = "*" if gws is None else sorted(gws)
        return out
