"""Fixtures: reference nodes on a real pseudo-terminal, and the gateway's bus master on the other end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from firmware_bridge.link import BusMaster
from firmware_bridge.refnode import RefNode
from firmware_bridge.simbus import PtyDevice


@pytest.fixture
def pty_factory(tmp_path: Path) -> Iterator[Callable[..., PtyDevice]]:
    made: list[PtyDevice] = []

    def make(nodes: list[RefNode], *, baud: int = 115200, seed: int = 1) -> PtyDevice:
        dev = PtyDevice(nodes, baud=baud, link=tmp_path / f"ttyLOAXA{len(made)}", seed=seed).start()
        made.append(dev)
        return dev

    yield make
    for d in made:
        d.stop()


@contextlib.asynccontextmanager
async def running_bus(path: str, baud: int = 115200, **kw: object) -> AsyncIterator[BusMaster]:
    kw.setdefault("timeout_s", 0.25)  # generous: the build machines are shared and often loaded
    bus = BusMaster(path, baud, reopen_interval_s=0.1, **kw)  # type: ignore[arg-type]
    task = asyncio.create_task(bus.run())
    try:
        await asyncio.wait_for(bus._connected.wait(), 5)
        yield bus
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
