"""The scheduler registers only the gateways it is configured with, never a gateway id that merely
appears in a topic; and on the production central ACL the read-only account cannot publish at all.

Real Mosquitto (central ACL generated from configs/mosquitto/acl.example), real scheduler, real
MQTT clients: before the fix the viewer published ``loaxa/v1/viewer/status`` and the scheduler listed
a gateway ``viewer``; a gateway with a broker account but unknown to the scheduler was registered too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx

from loaxa.brokers import VIEWER_USER, CentralBroker
from protocol.models import Status
from protocol.signing import now_ms
from scheduler.config import SchedulerConfig
from scheduler.service import Scheduler
from tests.sched_support import Keys, TestGateway, add_token, bearer, make_tone, scheduler_config_dict, wait_for_async
from tests.test_security_acl import NOT_AUTHORIZED, Client


async def test_only_configured_gateways_appear(tmp_path: Path,
                                               central_broker_factory: Callable[..., CentralBroker]) -> None:
    central = central_broker_factory(gateways=["xa-that", "xa-rogue"])
    keys = Keys()
    cfg = SchedulerConfig.model_validate(
        scheduler_config_dict(tmp_path, central, keys, gateways=["xa-that"]))
    sched = Scheduler.build(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    real = TestGateway(central, "xa-that", keys)
    rogue = TestGateway(central, "xa-rogue", keys)  # a broker account, but not this scheduler's gateway
    viewer = await asyncio.to_thread(Client, central.port, central.user(VIEWER_USER))
    try:
        headers = bearer(add_token(sched.store.store))  # an admin token: sees every gateway there is
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cfg.http.port}", timeout=30,
                                     headers=headers) as http:
            await asyncio.wait_for(sched.dispatcher.link.connected.wait(), 30)
            online = Status(state="online", ts=now_ms(), version="fake").model_dump_json().encode()
            codes = [await asyncio.to_thread(viewer.pub, f"loaxa/v1/viewer/{kind}", online)
                     for kind in ("status", "event", "dev/x/state")]
            assert codes == [NOT_AUTHORIZED] * 3
            await rogue.connect()
            await rogue.speaker_state("loa-01", online=True, volume=50, kind="ip_speaker")
            # the real gateway comes online after all of that: once the scheduler shows it, it has
            # handled everything published before it
            await real.connect()

            async def listed() -> list[str] | None:
                rows = (await http.get("/api/gateways")).json()
                return [g["id"] for g in rows] if any(g["status"] == "online" for g in rows) else None

            ids = await wait_for_async(listed, within=30, what="the real gateway online at the scheduler")
            assert ids == ["xa-that"]

            media = make_tone(tmp_path / "t.wav", 0.5)
            r = await http.post("/api/media", content=media.read_bytes())
            assert r.status_code == 201, r.text
            sha = r.json()["sha256"]
            r = await http.post("/api/broadcasts", json={"media_sha256": sha, "targets": ["xa-rogue"]})
            assert r.status_code == 400 and "unknown gateway" in r.text, r.text
            r = await http.post("/api/broadcasts", json={"media_sha256": sha, "targets": ["viewer"]})
            assert r.status_code == 400, r.text
            r = await http.post("/api/broadcasts", json={"media_sha256": sha, "targets": ["xa-that"]})
            assert r.status_code == 201, r.text
            assert [g["id"] for g in (await http.get("/api/gateways")).json()] == ["xa-that"]
    finally:
        await asyncio.to_thread(viewer.close)
        await rogue.disconnect()
        await real.disconnect()
        stop.set()
        await asyncio.wait_for(task, 15)
