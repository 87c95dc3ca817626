"""Wiring of the web UI into the scheduler's app."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from scheduler.dispatcher import Dispatcher
from scheduler.media import MediaLibrary
from scheduler.web.i18n import check_catalogues
from scheduler.web.render import Renderer

STATIC_DIR = Path(__file__).resolve().parent / "static"


@dataclass
class WebContext:
    """What the pages need, kept on ``app.state.web``."""

    dispatcher: Dispatcher
    library: MediaLibrary
    renderer: Renderer


def mount_web(app: FastAPI, dispatcher: Dispatcher, library: MediaLibrary, *, timezone: str) -> None:
    from scheduler.web import admin, calendar, pages, staff, technician

    check_catalogues()
    app.state.web = WebContext(dispatcher, library, Renderer(timezone))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(pages.router)
    app.include_router(staff.router)
    app.include_router(admin.router)
    app.include_router(calendar.router)
    app.include_router(technician.router)
    for exc, handler in staff.EXCEPTION_HANDLERS.items():
        app.add_exception_handler(exc, handler)
