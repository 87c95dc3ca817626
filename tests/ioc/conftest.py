"""One real InfluxDB 1.6.7, one real Mosquitto and one real scheduler (uvicorn) per test module.

Known points are written through the v1 line protocol; the tests then ask ``/ioc/v1`` over HTTP.

About the caller check: the real one (per-account ``ioc`` tokens scoped to areas) comes from
scheduler/access/. Here the router gets a tiny dependency that maps a fixed test bearer token to a
fixed set of gateways. That is test scaffolding to exercise the routes' AREA FILTER, not a claim
about authentication security; the token tests belong with scheduler/access/.
"""

from __future__ import annotations

import asyncio
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
import pytest_asyncio
from fastapi import Header, HTTPException

from loaxa.brokers import CentralBroker
from loaxa.servers import InfluxDB1, ServerUnavailable
from scheduler.config import IocInfluxSection, SchedulerConfig
from scheduler.ioc import IocApi, IocSettings
from scheduler.service import Scheduler
from tests.sched_support import Keys, scheduler_config_dict, wait_for_async

#: Test tokens → the gateways they may read (None: all). Scaffolding for the area filter only.
TEST_TOKENS: dict[str, frozenset[str] | None] = {
    "tok-all": None,
    "tok-binh": frozenset({"xa-an-binh"}),
    "tok-none": frozenset(),
    # Many areas: the statement outgrows a GET and goes as a POST body.
    "tok-many": frozenset({"xa-an-binh", *(f"xa-khac-{i:04d}" for i in range(400))}),
}


class AreaSet:
    def __init__(self, gws: frozenset[str] | None):
        self._gws = gws

    def gateways(self, perm: str) -> frozenset[str] | None:
        assert perm == "ioc:read"
        return self._gws


def area_principal(authorization: Annotated[str | None, Header()] = None) -> AreaSet:
    token = (authorization or "").removeprefix("Bearer ").strip()
    if token not in TEST_TOKENS:
        raise HTTPException(401, "unknown test token")
    return AreaSet(TEST_TOKENS[token])


def _start(server: Any) -> Any:
    try:
        return server.start()
    except ServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


def write_lines(influx: InfluxDB1, lines: list[str]) -> None:
    """Write line protocol (ms precision) with the plain v1 /write endpoint."""
    url = f"{influx.url}/write?" + urllib.parse.urlencode({"db": influx.database, "precision": "ms"})
    for i in range(0, len(lines), 5000):
        body = "\n".join(lines[i : i + 5000]).encode()
        req = urllib.request.Request(url, data=body, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 204, resp.read()


@dataclass
class IocEnv:
    influx: InfluxDB1
    sched: Scheduler
    http: httpx.AsyncClient
    api: IocApi
    data: dict[str, Any] = field(default_factory=dict)

    async def get(self, path: str, token: str = "tok-all", **params: Any) -> httpx.Response:
        return await self.http.get(
            f"/ioc/v1{path}", params=params, headers={"Authorization": f"Bearer {token}"}
        )


@pytest.fixture(scope="module")
def influx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1]:
    server = _start(InfluxDB1(tmp_path_factory.mktemp("influxdb")))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralBroker]:
    from tests.ioc import dataset

    server = _start(CentralBroker(tmp_path_factory.mktemp("mosquitto"), gateways=[dataset.G1, dataset.G2]))
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ioc_app(
    tmp_path_factory: pytest.TempPathFactory, influx_server: InfluxDB1, broker: CentralBroker
) -> AsyncIterator[IocEnv]:
    from tests.ioc import dataset

    tmp: Path = tmp_path_factory.mktemp("sched")
    keys = Keys()
    cfg = SchedulerConfig.model_validate(scheduler_config_dict(tmp, broker, keys, gateways=[dataset.G1, dataset.G2]))
    sched = Scheduler.build(cfg)
    settings = IocSettings.from_section(IocInfluxSection(url=influx_server.url, database=influx_server.database))
    api = IocApi(settings, area_principal, known_gateways=lambda: sched.store.call(sched.store.store.gateways))
    sched.app.include_router(api.router)
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    base = f"http://127.0.0.1:{cfg.http.port}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:

        async def up() -> bool:
            try:
                r = await http.get("/api/health")
            except httpx.HTTPError:
                return False
            return r.status_code == 200

        await wait_for_async(up, within=30, what="scheduler HTTP up")
        yield IocEnv(influx_server, sched, http, api)
    await api.aclose()
    stop.set()
    await asyncio.wait_for(task, 30)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(ioc_app: IocEnv) -> IocEnv:
    """The app with the known dataset written and two gateways registered in the scheduler."""
    from tests.ioc import dataset

    if "ds" not in ioc_app.data:
        ds = dataset.build()
        await asyncio.to_thread(write_lines, ioc_app.influx, ds.lines)
        db = ioc_app.sched.store
        await db.call(db.store.set_commune, dataset.G1, dataset.COMMUNES[dataset.G1])
        await db.call(db.store.set_commune, dataset.G2, dataset.COMMUNES[dataset.G2])
        await db.call(db.store.record_speaker, dataset.G1, "loa-1", {"online": True, "volume": 70}, ds.t0)
        ioc_app.data["ds"] = ds
    return ioc_app
