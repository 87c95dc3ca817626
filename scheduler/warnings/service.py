"""Builds the warnings part of the scheduler: the CAP intake, its routes and its feed pollers."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from scheduler.config import SchedulerConfig

from .feed import FeedPoller
from .intake import CapIntake, communes_from_config
from .routes import warnings_router


class Warnings:
    """The CAP intake, its HTTP routes and its feed pollers."""

    def __init__(self, intake: CapIntake, router: APIRouter, feeds: list[FeedPoller]) -> None:
        self.intake = intake
        self.router = router
        self.feeds = feeds

    async def run(self) -> None:
        """Poll every configured feed until cancelled (returns at once when there is none)."""
        if self.feeds:
            await asyncio.gather(*(f.run() for f in self.feeds))


def build_warnings(cfg: SchedulerConfig, dispatcher: Any, library: Any, access: Any) -> Warnings:
    async def audit(action: str, target: str, detail: dict[str, Any]) -> None:
        await access.audit("cap-feed", action, target=target, detail=detail)

    intake = CapIntake(dispatcher, library, communes_from_config(cfg.gateways), cfg.cap, audit,
                       timezone=cfg.scheduler.timezone)
    return Warnings(intake, warnings_router(intake), [FeedPoller(f, intake) for f in cfg.cap.feeds])
