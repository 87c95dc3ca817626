"""Builds the warnings part of the scheduler: the CAP intake, its routes and its feed pollers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from scheduler.config import SchedulerConfig

from .intake import CapIntake, communes_from_config
from .routes import warnings_router


def build_warnings(cfg: SchedulerConfig, dispatcher: Any, library: Any, access: Any) -> APIRouter:
    async def audit(action: str, target: str, detail: dict[str, Any]) -> None:
        await access.audit("cap-feed", action, target=target, detail=detail)

    intake = CapIntake(dispatcher, library, communes_from_config(cfg.gateways), cfg.cap, audit,
                       timezone=cfg.scheduler.timezone)
    router = warnings_router(intake)
    router.intake = intake  # type: ignore[attr-defined]  # the service starts the feed pollers from it
    return router
