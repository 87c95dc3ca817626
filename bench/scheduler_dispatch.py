"""Benchmark: one broadcast to a province's (or a nation's) worth of gateways, through a real
Mosquitto and a real database (SQLite, or a throwaway PostgreSQL with ``--db postgresql``).

The broker runs WITHOUT accounts (``anonymous=True``), stated here on purpose: one simulated fleet
process plays every gateway, and the production ACL would need one connection per gateway account
(10,000 for the national case), which would measure the simulator rather than the scheduler. The
scheduler itself is the production one (``Scheduler.build``), configured with every gateway.

The simulated fleet (``--fleet-procs`` processes, paho's network thread each) publishes the
retained online status and speaker states, acks every plan, and reports ``started`` + ``finished``
for every speaker as soon as its gateway's plan arrives. Measured (seconds from the request):

* ``create_s``: the HTTP answer of POST /api/broadcasts;
* ``publish_all_s``: every gateway has received its plan (clocked in the fleet);
* ``all_delivered_s``: every gateway's ack is recorded in the database;
* ``all_finished_s``: every speaker's ``finished`` is recorded;
* ``reports_per_s``: playback reports recorded per second, from the fleet's first report to the last
  one recorded (``ingest_s``);
* ``status_read_s``: GET /api/broadcasts/{id} with every speaker row;
* ``max_rss_mb``: peak memory of this process (the scheduler; the fleet runs in its own processes).

``--baseline REF`` runs the same measurement, in a subprocess, with the scheduler code of git commit
REF (checked out in a temporary worktree) and prints both rows. Usage::

    python bench/scheduler_dispatch.py --gateways 1000 --speakers 15 --baseline 9f23817
    python bench/scheduler_dispatch.py --gateways 10000 --speakers 15 --db postgresql --fleet-procs 2

Prints figures and, last, one JSON line (with ``baseline`` when asked for).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _code_root() -> Path:
    """``--code-root`` (the scheduler code under test) must be first on sys.path before any import."""
    if "--code-root" in sys.argv:
        return Path(sys.argv[sys.argv.index("--code-root") + 1]).resolve()
    return ROOT


CODE = _code_root()
sys.path.insert(0, str(CODE))

import httpx  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from loaxa.servers import Mosquitto, PostgreSQL  # noqa: E402
from protocol.models import Ack, PlaybackEvent, Status  # noqa: E402
from protocol.signing import now_ms  # noqa: E402
from protocol.topics import ack_topic, device_topic, event_topic, parse_topic, status_topic  # noqa: E402
from scheduler.config import SchedulerConfig  # noqa: E402
from scheduler.service import Scheduler  # noqa: E402
from tests.sched_support import Keys, add_token, bearer, make_tone, scheduler_config_dict  # noqa: E402


def fleet(port: int, gateways: list[str], speakers: int, ready: Any, stats: Any, lock: Any) -> None:
    """One fleet process: these gateways, publishing without waiting. ``stats``: [last plan received
    (wall clock), first report published, last report published, gateways answered]."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    answered: set[str] = set()

    def on_message(c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        gw = parse_topic(msg.topic).gateway
        env = json.loads(msg.payload)
        c.publish(ack_topic(gw), Ack(id=env["id"], ok=True, ts=now_ms()).model_dump_json(), qos=1)
        if env["kind"] != "broadcast.plan" or gw in answered:
            return
        answered.add(gw)
        with lock:
            stats[0] = max(stats[0], time.time())
            if not stats[1]:
                stats[1] = time.time()
        bid = env["body"]["items"][0]["broadcast_id"]
        for state in ("started", "finished"):
            for i in range(speakers):
                ev = PlaybackEvent(broadcast_id=bid, device=f"loa-{i}", state=state, at=now_ms())
                c.publish(event_topic(gw), ev.model_dump_json(), qos=1)
        with lock:
            stats[2] = time.time()
            stats[3] += 1

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-fleet-{os.getpid()}", protocol=paho.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    for gw in gateways:
        c.subscribe(f"loaxa/v1/{gw}/cmd", qos=1)
    c.loop_start()
    for gw in gateways:
        c.publish(status_topic(gw), Status(state="online", ts=now_ms()).model_dump_json(), qos=1, retain=True)
        for i in range(speakers):
            c.publish(
                device_topic(gw, f"loa-{i}", "state"), json.dumps({"online": True, "volume": 70}), qos=1, retain=True
            )
    ready.release()
    while True:
        time.sleep(1)


def counts(engine: Any, bid: str) -> tuple[int, int]:
    """(gateways delivered, speakers finished), read straight from the database."""
    with engine.connect() as conn:
        gw = conn.execute(
            text("SELECT count(*) FROM gateway_deliveries WHERE broadcast_id = :b AND state = 'delivered'"), {"b": bid}
        ).scalar_one()
        spk = conn.execute(
            text("SELECT count(*) FROM speaker_deliveries WHERE broadcast_id = :b AND state = 'finished'"), {"b": bid}
        ).scalar_one()
    return int(gw), int(spk)


async def main(n_gw: int, n_spk: int, db: str, procs: int) -> dict[str, Any]:
    if os.environ.get("BENCH_SWITCH"):
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH"]))
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        broker = Mosquitto(tmp / "mosquitto", anonymous=True).start()  # see the module docstring
        pg: PostgreSQL | None = None
        try:
            gateways = [f"xa-{i:05d}" for i in range(n_gw)]
            extra: dict[str, Any] = {}
            if db == "postgresql":
                pg = PostgreSQL(tmp / "pg").start()
                extra["scheduler"] = {"data_dir": str(tmp / "sched-data"), "database_url": pg.url}
            cfg = SchedulerConfig.model_validate(
                scheduler_config_dict(tmp, broker.url, Keys(), gateways=gateways, **extra)
            )
            sched = Scheduler.build(cfg)
            applied = {"batches": 0, "messages": 0, "seconds": 0.0}
            real_apply = sched.dispatcher.db.apply

            def timed_apply(items: Any, now: int) -> Any:  # how busy the database thread is
                t = time.perf_counter()
                try:
                    return real_apply(items, now)
                finally:
                    applied["seconds"] += time.perf_counter() - t
                    applied["batches"] += 1
                    applied["messages"] += len(items)

            sched.dispatcher.db.apply = timed_apply  # type: ignore[method-assign]
            peek = create_engine(cfg.scheduler.database_url or f"sqlite:///{cfg.scheduler.data_dir}/scheduler.db")
            stop = asyncio.Event()
            task = asyncio.create_task(sched.run(stop))
            ctx = multiprocessing.get_context("spawn")
            ready = ctx.Semaphore(0)
            lock = ctx.Lock()
            stats = ctx.Array("d", 4, lock=False)
            headers = bearer(add_token(sched.store.store))
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{cfg.http.port}", timeout=300, headers=headers
            ) as http:
                while True:
                    try:
                        if (await http.get("/api/health")).json()["mqtt_connected"]:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.1)
                fleets = []
                for k in range(procs):
                    p = ctx.Process(target=fleet, args=(broker.port, gateways[k::procs], n_spk, ready, stats, lock),
                                    daemon=True)
                    p.start()
                    fleets.append(p)
                for _ in fleets:
                    await asyncio.to_thread(ready.acquire, True, 300)
                t_learn = time.perf_counter()
                while True:  # every speaker learned
                    with peek.connect() as conn:
                        n = conn.execute(text("SELECT count(*) FROM speakers")).scalar_one()
                    if n >= n_gw * n_spk:
                        break
                    await asyncio.sleep(0.2)
                learn_s = time.perf_counter() - t_learn
                audio = make_tone(tmp / "t.wav", 2.0)
                media = (await http.post("/api/media", content=audio.read_bytes())).json()
                load_before = os.getloadavg()
                w0 = time.time()
                applied.update(batches=0, messages=0, seconds=0.0)
                t0 = time.perf_counter()
                r = await http.post("/api/broadcasts", json={"media_sha256": media["sha256"], "targets": gateways})
                t_created = time.perf_counter() - t0
                if r.status_code >= 300:
                    raise RuntimeError(f"POST /api/broadcasts: {r.status_code} {r.text[:500]}")
                bid = r.json()["id"]
                t_delivered = t_finished = 0.0
                while True:
                    gw_ok, spk_done = await asyncio.to_thread(counts, peek, bid)
                    now = time.perf_counter() - t0
                    if not t_delivered and gw_ok >= n_gw:
                        t_delivered = now
                    if spk_done >= n_gw * n_spk:
                        t_finished = now
                        break
                    await asyncio.sleep(0.05)
                load_after = os.getloadavg()
                with peek.connect() as conn:
                    gw_states: dict[str, int] = dict(conn.execute(text(
                        "SELECT state, count(*) FROM gateway_deliveries WHERE broadcast_id = :b GROUP BY state"),
                        {"b": bid}).all())
                db_busy = dict(applied)
                publish_all = stats[0] - w0
                first_report = stats[1] - w0
                fleet_done = stats[2] - w0
                t1 = time.perf_counter()
                for _ in range(3):
                    s = await http.get(f"/api/broadcasts/{bid}")
                    s.raise_for_status()
                t_status = (time.perf_counter() - t1) / 3
                for p in fleets:
                    p.terminate()
                    p.join(10)
            stop.set()
            await asyncio.wait_for(task, 60)
            peek.dispose()
        finally:
            broker.stop()
            if pg is not None:
                pg.stop()
    reports = n_gw * n_spk * 2
    ingest_s = t_finished - first_report
    return {
        "code": str(CODE),
        "db": db,
        "gateways": n_gw,
        "speakers": n_gw * n_spk,
        "learn_speakers_s": round(learn_s, 3),
        "create_s": round(t_created, 3),
        "publish_all_s": round(publish_all, 3),
        "all_delivered_s": round(t_delivered, 3),
        "all_finished_s": round(t_finished, 3),
        "ingest_s": round(ingest_s, 3),
        "reports_per_s": round(reports / ingest_s, 1),
        "fleet_done_s": round(fleet_done, 3),
        "status_read_s": round(t_status, 4),
        "gateway_states": gw_states,
        "db_apply_s": round(db_busy["seconds"], 3),
        "db_batches": db_busy["batches"],
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
    }


def run_baseline(ref: str, argv: list[str]) -> dict[str, Any]:
    """The same bench, in a subprocess, against the scheduler code of commit ``ref``."""
    with tempfile.TemporaryDirectory(prefix="loaxa-bench-base-") as wt_s:
        wt = Path(wt_s) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(wt), ref], check=True,
                       capture_output=True)
        try:
            out = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv, "--code-root", str(wt)],
                                 check=True, capture_output=True, text=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], capture_output=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    row: dict[str, Any] = json.loads(lines[-1])
    row["code"] = ref
    return row


COLUMNS = ("create_s", "publish_all_s", "all_delivered_s", "all_finished_s", "reports_per_s", "status_read_s",
           "max_rss_mb")


def show(label: str, r: dict[str, Any]) -> None:
    print(f"{label:>9}: " + "  ".join(f"{c}={r.get(c)}" for c in COLUMNS) + f"  load={r.get('loadavg_after')}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", type=int, default=150)
    ap.add_argument("--speakers", type=int, default=10, help="speakers per gateway")
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--fleet-procs", type=int, default=1, help="processes playing the fleet")
    ap.add_argument("--baseline", metavar="REF", help="also measure the scheduler code of this git commit")
    ap.add_argument("--code-root", help=argparse.SUPPRESS)
    a = ap.parse_args()
    own = ["--gateways", str(a.gateways), "--speakers", str(a.speakers), "--db", a.db,
           "--fleet-procs", str(a.fleet_procs)]
    base = run_baseline(a.baseline, own) if a.baseline else None
    if os.environ.get("BENCH_PROFILE"):  # where the event loop's time goes (the DB thread is not shown)
        import cProfile
        import pstats

        prof = cProfile.Profile()
        r = prof.runcall(asyncio.run, main(a.gateways, a.speakers, a.db, a.fleet_procs))
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    else:
        r = asyncio.run(main(a.gateways, a.speakers, a.db, a.fleet_procs))
    print(f"{r['gateways']} gateways, {r['speakers']} speakers, {r['db']}")
    if base is not None:
        show("before", base)
    show("after" if base is not None else "this", r)
    print(json.dumps({"bench": "scheduler_dispatch", **r, **({"baseline": base} if base else {})}))
