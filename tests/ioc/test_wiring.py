"""The scheduler mounts /ioc/v1 when its config has an ``influx:`` section (real app, real servers).

The router is guarded by ``require("ioc:read")`` (scheduler/access/): an API token of the ``ioc``
role (or any role holding ``ioc:read``), scoped to its areas.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from loaxa.servers import InfluxDB1, Mosquitto
from scheduler.config import SchedulerConfig
from scheduler.service import Scheduler, SetupError
from tests.sched_support import Keys, add_token, bearer, scheduler_config_dict, wait_for_async


@asynccontextmanager
async def running(
    tmp: Path, broker: Mosquitto, **sections: dict[str, Any]
) -> AsyncIterator[tuple[httpx.AsyncClient, Scheduler]]:
    cfg = SchedulerConfig.model_validate(scheduler_config_dict(tmp, broker.url, Keys(), **sections))
    sched = Scheduler.build(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cfg.http.port}", timeout=60) as http:

            async def up() -> bool:
                try:
                    return (await http.get("/api/health")).status_code == 200
                except httpx.HTTPError:
                    return False

            await wait_for_async(up, within=30, what="scheduler HTTP up")
            yield http, sched
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.mark.asyncio(loop_scope="module")
async def test_ioc_router_is_mounted_and_needs_the_token(
    tmp_path_factory: pytest.TempPathFactory, influx_server: InfluxDB1, broker: Mosquitto
) -> None:
    influx = {"url": influx_server.url, "database": influx_server.database}
    async with running(tmp_path_factory.mktemp("w1"), broker, influx=influx) as (http, sched):
        ioc = add_token(sched.store.store, "ioc", name="ioc")
        operator = add_token(sched.store.store, "operator", ["xa-a"], name="canbo")
        assert (await http.get("/ioc/v1/measurements")).status_code == 401
        r = await http.get("/ioc/v1/measurements", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = await http.get("/ioc/v1/measurements", headers=bearer(operator))
        assert r.status_code == 403 and "ioc:read" in r.json()["detail"]
        r = await http.get("/ioc/v1/measurements", headers=bearer(ioc))
        assert r.status_code == 200 and "measurements" in r.json()
        paths = (await http.get("/openapi.json")).json()["paths"]
        assert {"/ioc/v1/readings", "/ioc/v1/latest", "/ioc/v1/communes", "/ioc/v1/health"} <= set(paths)
    async with running(tmp_path_factory.mktemp("w3"), broker) as (http, _sched):
        assert (await http.get("/ioc/v1/measurements")).status_code == 404  # no influx: section, no IOC API


def test_token_and_password_together_are_refused(tmp_path: Path) -> None:
    raw = scheduler_config_dict(tmp_path, "mqtt://127.0.0.1:1", Keys(), influx={
        "url": "http://127.0.0.1:8086", "database": "loaxa", "username": "u",
        "password": {"value": "p"}, "token": {"value": "t"},
    })
    with pytest.raises(SetupError, match="influx: give either token or username/password"):
        Scheduler.build(SchedulerConfig.model_validate(raw))
