"""Interim caller check for ``/ioc/v1`` until per-account ``ioc`` tokens exist (scheduler/access/).

The scheduler's one shared API token (``http.api_token``) reads every area. Without that token
configured, the IOC API refuses everyone: it never serves readings anonymously. At merge the
router is built with ``require("ioc:read")`` from scheduler/access/deps.py instead.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Header, HTTPException


class AllAreas:
    """A caller allowed to read every gateway."""

    name = "api-token"

    def gateways(self, perm: str) -> frozenset[str] | None:
        return None


def shared_token_principal(api_token: str | None) -> Callable[..., AllAreas]:
    def dep(authorization: Annotated[str | None, Header()] = None) -> AllAreas:
        if api_token is None:
            raise HTTPException(401, "the IOC API needs a token; none is configured on this scheduler (http.api_token)")
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), api_token.encode()):
            raise HTTPException(
                401, "missing or wrong token (Authorization: Bearer ...)", headers={"WWW-Authenticate": "Bearer"}
            )
        return AllAreas()

    return dep
