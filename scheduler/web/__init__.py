"""The web UI: pages rendered on the server, in Vietnamese by default (no business rules here).

:func:`mount_web` adds the pages and ``/static`` to the scheduler's FastAPI app; everything the pages
do goes through the same store, dispatcher and media library as the JSON API.
"""

from __future__ import annotations

from scheduler.web.app import WebContext, mount_web

__all__ = ["WebContext", "mount_web"]
