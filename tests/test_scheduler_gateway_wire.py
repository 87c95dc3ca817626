"""The scheduler against the REAL gateway (``loaxa gateway run``) and simulated IP speakers
(``loaxa sim speakers``): the gateway accepts the signed plan, fetches the audio from the
scheduler's HTTP server, plays it on its speakers, and the scheduler's per-speaker status follows
the gateway's own reports to ``finished``; a broadcast to a speaker group plays on that group only.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from loaxa.brokers import CentralBroker, LanBroker
from loaxa.localsetup import gateway_config, make_signer, write_yaml
from scheduler.config import SchedulerConfig
from scheduler.service import Scheduler
from tests.conftest import spawn_loaxa
from tests.sched_support import Keys, add_token, bearer, make_tone, scheduler_config_dict, wait_for_async


async def test_real_gateway_plays_and_reports(tmp_path: Path, central_broker_factory: Any,
                                             lan_broker_factory: Any) -> None:
    speakers = ["loa-01", "loa-02"]
    central: CentralBroker = central_broker_factory(gateways=["xa-that"])
    lan: LanBroker = lan_broker_factory("xa-that", devices=speakers)
    signer = make_signer()
    keys = Keys(signer.private_key)
    cfg = SchedulerConfig.model_validate(scheduler_config_dict(tmp_path, central, keys, gateways=["xa-that"]))
    sched = Scheduler.build(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    gw_cfg = gateway_config(
        "xa-that",
        data_dir=tmp_path / "gw",
        uplink_url=central.url,
        lan_url=lan.url,
        signer=signer,
        devices=[{"id": d, "type": "ip_speaker"} for d in speakers],
        uplink_auth=central.gateway_auth("xa-that"),
        lan_auth=lan.gateway_auth(),
    )
    gw_conf = write_yaml(tmp_path / "gw.yaml", gw_cfg)
    gw = spawn_loaxa("gateway", "run", "--config", str(gw_conf), log=tmp_path / "gw.log")
    sim = spawn_loaxa(
        "sim", "speakers", "--broker", lan.device_url, "--gateway", "xa-that", "--count", "2",
        "--credentials", str(lan.write_credentials(tmp_path / "speakers.json")), log=tmp_path / "speakers.log"
    )
    try:
        headers = bearer(add_token(sched.store.store))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cfg.http.port}", timeout=30, headers=headers) as http:

            async def online() -> bool:
                try:
                    r = await http.get("/api/gateways")
                except httpx.HTTPError:
                    return False
                return any(g["id"] == "xa-that" and g["status"] == "online" for g in r.json())

            await wait_for_async(online, within=30, what="real gateway online at the scheduler")
            audio = make_tone(tmp_path / "t.wav", 1.0)
            r = await http.post("/api/media", content=audio.read_bytes())
            assert r.status_code == 201, r.text
            r = await http.post("/api/broadcasts", json={"media_sha256": r.json()["sha256"], "targets": ["xa-that"]})
            assert r.status_code == 201, r.text
            bid = r.json()["id"]

            async def played() -> dict[str, Any] | None:
                st = (await http.get(f"/api/broadcasts/{bid}")).json()
                got = {sp["device"]: sp["state"] for sp in st["speakers"]}
                return st if got == {d: "finished" for d in speakers} else None

            try:
                st = await wait_for_async(played, within=45, what="both speakers finished")
            except AssertionError as exc:
                st = (await http.get(f"/api/broadcasts/{bid}")).json()
                raise AssertionError(
                    f"{exc}\nstatus: {st}\ngateway log: {(tmp_path / 'gw.log').read_text()[-3000:]}"
                ) from None
            assert st["gateways"][0]["state"] == "delivered"
            starts = [sp["started_at"] for sp in st["speakers"]]
            assert all(isinstance(t, int) for t in starts)
            assert max(starts) - min(starts) < 500  # the speakers of one commune start together

            # a speaker group ("cụm loa") of one of them: the broadcast plays on exactly that speaker.
            # Playback reports of one gateway come in order on its event topic, so had loa-01 played
            # too, its "started" would be here before loa-02's "finished".
            r = await http.post("/api/groups", json={"gateway": "xa-that", "id": "thon-1", "name": "Thôn 1",
                                                     "speakers": ["loa-02"]})
            assert r.status_code == 201, r.text
            r = await http.post("/api/broadcasts", json={"media_sha256": st["media"]["sha256"],
                                                         "targets": ["xa-that/@thon-1"]})
            assert r.status_code == 201, r.text
            gid = r.json()["id"]

            async def group_played() -> dict[str, Any] | None:
                st = (await http.get(f"/api/broadcasts/{gid}")).json()
                return st if any(sp["device"] == "loa-02" and sp["state"] == "finished" for sp in st["speakers"]) \
                    else None

            st = await wait_for_async(group_played, within=45, what="the group's speaker finished")
            assert [(sp["device"], sp["state"]) for sp in st["speakers"]] == [("loa-02", "finished")]
            assert st["targets"] == ["xa-that/loa-02"] and st["groups"] == {"xa-that/@thon-1": ["loa-02"]}
    finally:
        for proc in (sim, gw):
            proc.terminate()
            proc.wait(15)
        stop.set()
        await asyncio.wait_for(task, 15)
