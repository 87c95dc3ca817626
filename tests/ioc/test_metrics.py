"""``/metrics`` of the real scheduler: the database's state and the live counters, as Prometheus reads them.

A gateway played by a real MQTT client (tests/sched_support.TestGateway) comes online with a speaker
and refuses a plan; the scrape must then show exactly that, plus the IOC API's own requests.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loaxa.brokers import CentralBroker
from loaxa.servers import InfluxDB1
from scheduler.config import SchedulerConfig
from scheduler.metrics import reason_label
from scheduler.service import Scheduler
from tests.sched_support import (
    Keys,
    TestGateway,
    add_token,
    bearer,
    make_tone,
    scheduler_config_dict,
    wait_for_async,
)

#: Filled with an admin API token once the scheduler's database exists.
AUTH: dict[str, str] = {}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_reason_labels_stay_few_and_safe() -> None:
    assert reason_label("bad_signature: key unknown") == "bad_signature"
    assert reason_label("expired") == "expired"
    assert reason_label("Weird Reason: x") == "other"
    assert reason_label("a" * 40) == "other"
    assert reason_label('x"}\n# injected') == "other"
    assert reason_label(None) == "other"


@pytest.mark.asyncio(loop_scope="module")
async def test_metrics_show_state_and_counters(
    tmp_path_factory: pytest.TempPathFactory, influx_server: InfluxDB1, broker: CentralBroker
) -> None:
    tmp: Path = tmp_path_factory.mktemp("metrics")
    keys = Keys()
    cfg = SchedulerConfig.model_validate(scheduler_config_dict(
        tmp, broker, keys, gateways=["xa-metrics"],
        influx={"url": influx_server.url, "database": influx_server.database},
    ))
    sched = Scheduler.build(cfg)
    AUTH.update(bearer(add_token(sched.store.store, "admin")))
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    gw = TestGateway(broker, "xa-metrics", keys, auto_ack=False)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cfg.http.port}", timeout=60) as http:

            async def up() -> bool:
                try:
                    r = await http.get("/api/health")
                except httpx.HTTPError:
                    return False
                return r.status_code == 200 and bool(r.json()["mqtt_connected"])

            await wait_for_async(up, within=30, what="scheduler HTTP + MQTT up")
            assert (await http.get("/metrics")).status_code == 401

            await gw.connect()
            await gw.speaker_state("loa-1", online=True, volume=70, kind="speaker")

            async def speaker_known() -> bool:
                r = await http.get("/api/gateways", headers=AUTH)
                return any(g["id"] == "xa-metrics" and g["status"] == "online" and g["speakers"]
                           for g in r.json())

            await wait_for_async(speaker_known, within=30, what="gateway and speaker registered")
            tone = await asyncio.to_thread(make_tone, tmp / "tone.wav", 0.5)
            r = await http.post("/api/media", params={"name": "tone.wav"}, headers=AUTH,
                                content=await asyncio.to_thread(tone.read_bytes))
            assert r.status_code == 201, r.text
            r = await http.post("/api/broadcasts", headers=AUTH,
                                json={"media_sha256": r.json()["sha256"], "targets": ["xa-metrics"]})
            assert r.status_code == 201, r.text
            bid = r.json()["id"]
            [rec] = await gw.wait_for(1, "broadcast.plan", within=30)
            await gw.ack(rec.envelope.id, ok=False, reason="bad_signature", error="key unknown")

            async def refused() -> bool:
                r = await http.get(f"/api/broadcasts/{bid}", headers=AUTH)
                return bool(r.json()["gateways"][0]["state"] == "refused")

            await wait_for_async(refused, within=30, what="plan refused")

            # The IOC API's requests are counted too: two good ones and one refused parameter.
            for _ in range(2):
                assert (await http.get("/ioc/v1/measurements", headers=AUTH)).status_code == 200
            r = await http.get("/ioc/v1/readings", headers=AUTH, params={"measurement": "x", "limit": 0})
            assert r.status_code == 422

            r = await http.get("/metrics", headers=AUTH)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            m = samples(r.text)
            assert m[("loaxa_scheduler_mqtt_connected", ())] == 1.0
            assert m[("loaxa_scheduler_commands_published_total", ())] >= 1.0
            assert m[("loaxa_gateways", (("status", "online"),))] == 1.0
            assert m[("loaxa_speakers", (("state", "online"),))] == 1.0
            assert m[("loaxa_commands", (("kind", "plan"), ("state", "refused")))] == 1.0
            assert m[("loaxa_commands_refused", (("reason", "bad_signature"),))] == 1.0
            assert m[("loaxa_speaker_deliveries", (("state", "failed"),))] == 1.0
            assert m[("loaxa_broadcasts", (("state", "active"),))] == 1.0
            assert m[("loaxa_ioc_requests_total", (("code", "200"), ("endpoint", "/ioc/v1/measurements")))] == 2.0
            assert m[("loaxa_ioc_requests_total", (("code", "422"), ("endpoint", "/ioc/v1/readings")))] == 1.0
            assert m[("loaxa_ioc_request_duration_seconds_count", (("endpoint", "/ioc/v1/measurements"),))] == 2.0
            assert m[("loaxa_ioc_influx_queries_total", (("result", "ok"),))] >= 2.0
            assert m[("loaxa_ioc_influx_queries_total", (("result", "error"),))] == 0.0
    finally:
        await gw.disconnect()
        stop.set()
        await asyncio.wait_for(task, 30)
