"""Reads the pages need that the JSON API has no call for (lists for the library and the log).

Only reads, on the scheduler's database thread; every write goes through the dispatcher or the
media library exactly as the API's do.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from scheduler.db import Store
from scheduler.models import Media

#: A page shows at most this many rows (the log has filters for the rest).
PAGE_ROWS = 200


def list_media(store: Store, limit: int = PAGE_ROWS) -> list[dict[str, Any]]:
    with store.session() as s:
        rows = s.scalars(select(Media).order_by(Media.created_at.desc()).limit(limit)).all()
        return [
            {
                "sha256": m.sha256,
                "bytes": m.size,
                "duration_ms": m.duration_ms,
                "content_type": m.content_type,
                "original_name": m.original_name,
                "created_at": m.created_at,
            }
            for m in rows
        ]


def target_gateways(targets: list[str] | str | None) -> set[str]:
    """The gateways of a broadcast's targets (``GW`` or ``GW/DEVICE``)."""
    if not targets:
        return set()
    items = [targets] if isinstance(targets, str) else targets
    return {t.split("/", 1)[0] for t in items}
