"""A scheduler asked to stop stops, even while a browser holds a live page open (the broadcast board's
Server-Sent Events stream lasts until the broadcast is done, which with no gateway answering is never).
uvicorn waits for open requests on a graceful shutdown; without a bound, the scheduler hung in its stop
with its HTTP port already closed, and systemd (or the demo) had to kill it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from loaxa.brokers import CentralBroker
from protocol.signing import now_ms
from scheduler.access.passwords import hash_password
from scheduler.access.permissions import Grant
from scheduler.access.store import AccessStore
from scheduler.config import SchedulerConfig
from scheduler.service import STOP_TIMEOUT_S, Scheduler
from tests.sched_support import Keys, make_tone, scheduler_config_dict, wait_for_async

GW = "xa-an-binh"
PASSWORD = "mat-khau-du-dai-1"


async def test_stop_is_bounded_while_a_live_board_is_open(tmp_path: Path, central_broker_factory: Any) -> None:
    central: CentralBroker = central_broker_factory(gateways=[GW])
    cfg = SchedulerConfig.model_validate(scheduler_config_dict(tmp_path, central, Keys(), gateways=[GW]))
    sched = Scheduler.build(cfg)
    AccessStore(sched.store.store.session).add_account("quantri", hash_password(PASSWORD),
                                                       [Grant.make("admin", None)], display_name=None,
                                                       actor="test", address=None, now=now_ms())
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    base = f"http://127.0.0.1:{cfg.http.port}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        async def up() -> bool:
            try:
                return (await http.get("/api/health")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for_async(up, within=30, what="scheduler HTTP")
        r = await http.post("/api/auth/login", json={"login": "quantri", "password": PASSWORD})
        assert r.status_code == 200, r.text
        http.headers["X-CSRF-Token"] = r.json()["csrf_token"]
        r = await http.post("/api/media", content=make_tone(tmp_path / "tone.wav", 1.0).read_bytes())
        assert r.status_code == 201, r.text
        r = await http.post("/api/broadcasts", json={"media_sha256": r.json()["sha256"], "targets": [GW]})
        assert r.status_code in (200, 201), r.text
        bid = r.json()["id"]
        opened = asyncio.Event()

        async def watch_board() -> None:
            async with http.stream("GET", f"/broadcasts/{bid}/events") as resp:
                assert resp.status_code == 200
                async for _chunk in resp.aiter_bytes():
                    opened.set()

        board = asyncio.create_task(watch_board())
        await asyncio.wait_for(opened.wait(), 30)  # the first status event arrived: the stream is live
        began = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, STOP_TIMEOUT_S + 10)
        took = time.monotonic() - began
        board.cancel()
        await asyncio.gather(board, return_exceptions=True)
    assert took < STOP_TIMEOUT_S, f"the scheduler took {took:.1f} s to stop"
