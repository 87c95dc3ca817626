"""Local warning rules from the centre to the village: ``loaxa warnings rules set`` on a running
scheduler, a REAL gateway process that fetches the rule's audio from the scheduler, simulated
speakers, and ``loaxa sim water-level`` raising the river: the warning plays on every speaker and the
``warning`` events reach the centre."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from loaxa.brokers import VIEWER_USER, CentralBroker, LanBroker
from loaxa.localsetup import gateway_config, make_signer, write_yaml
from scheduler.config import SchedulerConfig
from scheduler.service import Scheduler
from tests.broadcast_env import Recorder
from tests.conftest import run_loaxa, spawn_loaxa, stop_process
from tests.sched_support import Keys, add_token, bearer, make_tone, scheduler_config_dict, wait_for_async

GW = "xa-song-cai"
SPEAKERS = ["loa-01", "loa-02"]
GAUGE = "mucnuoc-song"


async def test_rules_sent_by_the_cli_make_the_gateway_warn(tmp_path: Path, central_broker_factory: Any,
                                                          lan_broker_factory: Any) -> None:
    central: CentralBroker = central_broker_factory(gateways=[GW])
    lan: LanBroker = lan_broker_factory(GW, devices=[*SPEAKERS, GAUGE])
    signer = make_signer()
    keys = Keys(signer.private_key)
    cfg = SchedulerConfig.model_validate(scheduler_config_dict(tmp_path, central, keys, gateways=[GW]))
    sched = Scheduler.build(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    devices: list[dict[str, Any]] = [{"id": d, "type": "ip_speaker"} for d in SPEAKERS]
    devices.append({"id": GAUGE, "type": "mqtt_sensor", "measurement": "water_level"})
    gw_cfg = gateway_config(GW, data_dir=tmp_path / "gw", uplink_url=central.url, lan_url=lan.url, signer=signer,
                            devices=devices, uplink_auth=central.gateway_auth(GW), lan_auth=lan.gateway_auth())
    gw = spawn_loaxa("gateway", "run", "--config", str(write_yaml(tmp_path / "gw.yaml", gw_cfg)),
                     log=tmp_path / "gw.log")
    creds = lan.write_credentials(tmp_path / "devices.json")
    sim = spawn_loaxa("sim", "speakers", "--broker", lan.device_url, "--gateway", GW, "--count", "2",
                      "--credentials", str(creds), log=tmp_path / "speakers.log")
    up = Recorder(central.port, central.user(VIEWER_USER))  # the scheduler holds its own account
    base = f"http://127.0.0.1:{cfg.http.port}"
    try:
        token = add_token(sched.store.store, "technician", [GW], name="ky-thuat")
        admin = bearer(add_token(sched.store.store))
        async with httpx.AsyncClient(base_url=base, timeout=60, headers=admin) as http:

            async def online() -> bool:
                try:
                    r = await http.get("/api/gateways")
                except httpx.HTTPError:
                    return False
                return any(g["id"] == GW and g["status"] == "online" for g in r.json())

            await wait_for_async(online, within=45, what="gateway online at the scheduler")
            r = await http.post("/api/media", content=make_tone(tmp_path / "canh-bao.wav", 1.0).read_bytes())
            assert r.status_code == 201, r.text
            sha = r.json()["sha256"]
        rules = tmp_path / "rules.yaml"
        rules.write_text(f"rules:\n  - id: lu-song-cai\n    device: {GAUGE}\n    field: water_level_cm\n"
                         f"    above: 150\n    for_s: 2\n    hysteresis: 10\n    media: {sha}\n"
                         "    level: emergency\n    title: Cảnh báo lũ\n")
        env = {"LOAXA_URL": base, "LOAXA_TOKEN": token}
        out = await asyncio.to_thread(run_loaxa, "warnings", "rules", "set", GW, str(rules), timeout=120,
                                      env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "accepted 1 rule(s): lu-song-cai" in out.stdout
        # a technician of another commune may not
        other = add_token(sched.store.store, "technician", ["xa-khac"], name="ky-thuat-khac")
        denied = await asyncio.to_thread(run_loaxa, "warnings", "rules", "set", GW, str(rules), timeout=120,
                                         env={"LOAXA_URL": base, "LOAXA_TOKEN": other})
        assert denied.returncode == 2 and "HTTP 403" in denied.stderr
        raise_level = await asyncio.to_thread(
            run_loaxa, "sim", "water-level", GW, GAUGE, "--cm", "180", "--broker", lan.device_url,
            "--credentials", str(creds), "--interval", "0.5", "--for", "4", timeout=60)
        assert raw_ok(raise_level), raise_level.stdout + raise_level.stderr

        def warned() -> list[Any]:
            return up.on(f"{GW}/event", lambda p: p.get("kind") == "warning" and p.get("state") == "started")

        await wait_for_async(_sync(warned), within=30, what="'started' warning event at the centre")
        [ev] = warned()
        bid = ev["broadcast_id"]
        await wait_for_async(_sync(lambda: set(up.playback(bid, "finished")) == set(SPEAKERS)), within=30,
                             what="warning finished on both speakers")
    finally:
        up.close()
        stop_process(sim, log=tmp_path / "speakers.log")
        stop_process(gw, log=tmp_path / "gw.log")
        stop.set()
        await asyncio.wait_for(task, 15)


def raw_ok(proc: Any) -> bool:
    return proc.returncode == 0 and "water_level_cm = 180 cm" in proc.stdout


def _sync(fn: Any) -> Any:
    async def pred() -> Any:
        return fn()

    return pred


