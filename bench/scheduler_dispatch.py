"""Benchmark: one broadcast to a province's worth of gateways, through a real Mosquitto and SQLite.

A single MQTT client plays all gateways: it publishes their retained online status and speaker
states, acks every plan, and reports started + finished for every speaker. Measured:
  * plan fan-out: from POST /api/broadcasts to every gateway's ack recorded (delivered);
  * report ingestion: playback reports per second until every speaker is "finished";
  * status read: time of GET /api/broadcasts/{id} with every speaker row.

Usage:  python bench/scheduler_dispatch.py [--gateways 150] [--speakers 10]
Prints figures and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from loaxa.servers import Mosquitto  # noqa: E402
from protocol.models import Ack, PlaybackEvent, Status  # noqa: E402
from protocol.signing import now_ms  # noqa: E402
from protocol.topics import ack_topic, device_topic, event_topic, parse_topic, status_topic  # noqa: E402
from scheduler.config import SchedulerConfig  # noqa: E402
from scheduler.service import Scheduler  # noqa: E402
from tests.sched_support import Keys, add_token, bearer, make_tone, scheduler_config_dict  # noqa: E402


def fleet(port: int, gateways: list[str], speakers: int, ready: Any, done: Any) -> None:
    """Runs in its own process (paho's network thread): all gateways at once, publishing without waiting."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    expected = len(gateways)
    answered: set[str] = set()

    def on_message(c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        gw = parse_topic(msg.topic).gateway
        env = json.loads(msg.payload)
        c.publish(ack_topic(gw), Ack(id=env["id"], ok=True, ts=now_ms()).model_dump_json(), qos=1)
        if env["kind"] != "broadcast.plan" or gw in answered:
            return
        answered.add(gw)
        bid = env["body"]["items"][0]["broadcast_id"]
        for state in ("started", "finished"):
            for i in range(speakers):
                ev = PlaybackEvent(broadcast_id=bid, device=f"loa-{i}", state=state, at=now_ms())
                c.publish(event_topic(gw), ev.model_dump_json(), qos=1)
        if len(answered) == expected:
            done.value = time.time()

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-fleet", protocol=paho.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.subscribe("loaxa/v1/+/cmd", qos=1)
    c.loop_start()
    for gw in gateways:
        c.publish(status_topic(gw), Status(state="online", ts=now_ms()).model_dump_json(), qos=1, retain=True)
        for i in range(speakers):
            c.publish(
                device_topic(gw, f"loa-{i}", "state"), json.dumps({"online": True, "volume": 70}), qos=1, retain=True
            )
    ready.set()
    while True:
        time.sleep(1)


async def main(n_gw: int, n_spk: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        broker = Mosquitto(tmp / "mosquitto", anonymous=True).start()
        try:
            cfg = SchedulerConfig.model_validate(scheduler_config_dict(tmp, broker.url, Keys()))
            sched = Scheduler.build(cfg)
            stop = asyncio.Event()
            task = asyncio.create_task(sched.run(stop))
            gateways = [f"xa-{i:04d}" for i in range(n_gw)]
            ctx = multiprocessing.get_context("spawn")
            ready = ctx.Event()
            done = ctx.Value("d", 0.0)
            headers = bearer(add_token(sched.store.store))
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{cfg.http.port}", timeout=120, headers=headers
            ) as http:
                while True:
                    try:
                        if (await http.get("/api/health")).json()["mqtt_connected"]:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.1)
                fl = ctx.Process(target=fleet, args=(broker.port, gateways, n_spk, ready, done), daemon=True)
                fl.start()
                await asyncio.to_thread(ready.wait, 60)
                while True:  # every speaker learned
                    gws = (await http.get("/api/gateways")).json()
                    if sum(len(g["speakers"]) for g in gws) >= n_gw * n_spk:
                        break
                    await asyncio.sleep(0.2)
                audio = make_tone(tmp / "t.wav", 2.0)
                media = (await http.post("/api/media", content=audio.read_bytes())).json()
                t0 = time.perf_counter()
                w0 = time.time()
                st = (
                    await http.post("/api/broadcasts", json={"media_sha256": media["sha256"], "targets": gateways})
                ).json()
                t_created = time.perf_counter() - t0
                bid = st["id"]
                t_delivered = t_finished = 0.0
                while True:
                    s = (await http.get(f"/api/broadcasts/{bid}")).json()
                    if not t_delivered and all(d["state"] == "delivered" for d in s["gateways"]):
                        t_delivered = time.perf_counter() - t0
                    if s["summary"].get("finished", 0) == n_gw * n_spk:
                        t_finished = time.perf_counter() - t0
                        break
                    await asyncio.sleep(0.5)  # a status read is itself work for the database
                t1 = time.perf_counter()
                fleet_done = done.value - w0
                print(f"(the simulated fleet published its last report {fleet_done:.3f} s after the request)")
                for _ in range(5):
                    await http.get(f"/api/broadcasts/{bid}")
                t_status = (time.perf_counter() - t1) / 5
                fl.terminate()
                fl.join(10)
            stop.set()
            await asyncio.wait_for(task, 30)
        finally:
            broker.stop()
    events = n_gw * n_spk * 2
    return {
        "gateways": n_gw,
        "speakers": n_gw * n_spk,
        "create_s": round(t_created, 3),
        "all_delivered_s": round(t_delivered, 3),
        "all_finished_s": round(t_finished, 3),
        "reports_per_s": round(events / t_finished, 1),  # acks + reports, from the request
        "status_read_s": round(t_status, 4),
        "fleet_done_s": round(fleet_done, 3),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", type=int, default=150)
    ap.add_argument("--speakers", type=int, default=10, help="speakers per gateway")
    a = ap.parse_args()
    r = asyncio.run(main(a.gateways, a.speakers))
    print(f"{r['gateways']} gateways, {r['speakers']} speakers")
    print(f"create broadcast (sign + store + publish {r['gateways']} plans): {r['create_s']} s")
    print(f"every gateway's ack recorded:          {r['all_delivered_s']} s after the request")
    print(f"every speaker finished:                {r['all_finished_s']} s ({r['reports_per_s']} reports/s)")
    print(f"GET status with every speaker row:     {r['status_read_s']} s")
    print(json.dumps({"bench": "scheduler_dispatch", **r}))
