"""An emergency broadcast survives a gateway whose clock is behind (issue 8, point 8), end to end:
the real scheduler, a real gateway process three hours behind under libfaketime (a Pi after a power
cut, before NTP), simulated speakers, real Mosquitto and SQLite.

On main the gateway refused the plan as ``future`` and the scheduler took that as final: every
speaker ``failed``, and the broadcast never played. Now the gateway defers it, the scheduler keeps it
pending, and once the gateway's clock is right (a restart without the fake clock) it plays.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from loaxa.brokers import CentralBroker, LanBroker
from loaxa.localsetup import gateway_config, make_signer, write_yaml
from scheduler.config import SchedulerConfig
from scheduler.service import Scheduler
from tests.conftest import ROOT, loaxa_env, spawn_loaxa
from tests.sched_support import Keys, add_token, bearer, make_tone, scheduler_config_dict, wait_for_async

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
GW = "xa-mat-dien"


def start_gateway(config: Path, log: Path, fake_offset: str | None = None) -> subprocess.Popen[bytes]:
    env = loaxa_env()
    if fake_offset is not None:
        if not LIBFAKETIME.exists():
            pytest.fail("libfaketime is missing: apt-get install faketime", pytrace=False)
        env.update(LD_PRELOAD=str(LIBFAKETIME), FAKETIME=fake_offset, FAKETIME_DONT_FAKE_MONOTONIC="1")
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "loaxa", "gateway", "run", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)


async def test_plan_for_a_gateway_behind_in_time_plays_once_its_clock_is_right(
        tmp_path: Path, central_broker_factory: Any, lan_broker_factory: Any) -> None:
    speakers = ["loa-01", "loa-02"]
    central: CentralBroker = central_broker_factory(gateways=[GW])
    lan: LanBroker = lan_broker_factory(GW, devices=speakers)
    signer = make_signer()
    cfg = SchedulerConfig.model_validate(scheduler_config_dict(tmp_path, central, Keys(signer.private_key),
                                                               gateways=[GW], dispatch={"resend_interval_s": 2}))
    sched = Scheduler.build(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    gw_conf = write_yaml(tmp_path / "gw.yaml", gateway_config(
        GW, data_dir=tmp_path / "gw", uplink_url=central.url, lan_url=lan.url, signer=signer,
        devices=[{"id": d, "type": "ip_speaker"} for d in speakers],
        uplink_auth=central.gateway_auth(GW), lan_auth=lan.gateway_auth()))
    log = tmp_path / "gw.log"
    gw = start_gateway(gw_conf, log, fake_offset="-3h")
    sim = spawn_loaxa("sim", "speakers", "--broker", lan.device_url, "--gateway", GW, "--count", "2",
                      "--credentials", str(lan.write_credentials(tmp_path / "speakers.json")),
                      log=tmp_path / "speakers.log")
    procs = [gw, sim]
    try:
        headers = bearer(add_token(sched.store.store))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cfg.http.port}", timeout=30, headers=headers) as http:

            async def online() -> bool:
                try:
                    r = await http.get("/api/gateways")
                except httpx.HTTPError:
                    return False
                return any(g["id"] == GW and g["status"] == "online" for g in r.json())

            await wait_for_async(online, within=40, what="gateway online at the scheduler")
            audio = make_tone(tmp_path / "t.wav", 1.0)
            r = await http.post("/api/media", content=audio.read_bytes())
            assert r.status_code == 201, r.text
            r = await http.post("/api/broadcasts", json={"media_sha256": r.json()["sha256"], "targets": [GW],
                                                         "priority": 9})
            assert r.status_code == 201, r.text
            bid = r.json()["id"]

            async def status() -> dict[str, Any]:
                return dict((await http.get(f"/api/broadcasts/{bid}")).json())

            async def deferred() -> dict[str, Any] | None:
                st = await status()
                return st if "deferred" in (st["gateways"][0]["error"] or "") else None

            st = await wait_for_async(deferred, within=30, what="the gateway defers the plan")
            assert st["gateways"][0]["state"] == "pending", st
            assert {sp["state"] for sp in st["speakers"]} <= {"pending"}, st
            # it stays so while the clock is wrong: resent, deferred again, never failed
            await wait_for_async(lambda: _attempts_at_least(status, 2), within=30, what="a resend")
            st = await status()
            assert st["gateways"][0]["state"] == "pending" and all(sp["state"] == "pending" for sp in st["speakers"])

            gw.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(gw.wait, 20) == 0
            gw = start_gateway(gw_conf, log)  # NTP answered: the clock is right again
            procs.append(gw)

            async def played() -> dict[str, Any] | None:
                st = await status()
                return st if {sp["device"]: sp["state"] for sp in st["speakers"]} == dict.fromkeys(
                    speakers, "finished") else None

            try:
                st = await wait_for_async(played, within=60, what="both speakers finished")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nstatus: {await status()}\ngateway log: {log.read_text()[-3000:]}") \
                    from None
            assert st["gateways"][0]["state"] == "delivered"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(15)
        stop.set()
        await asyncio.wait_for(task, 15)


async def _attempts_at_least(status: Any, n: int) -> bool:
    st = await status()
    return bool(st["gateways"][0]["attempts"] >= n)
