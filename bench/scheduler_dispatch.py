"""Benchmark: one broadcast to a province's (or a nation's) worth of gateways, through a real
Mosquitto and a real database (SQLite, or a throwaway PostgreSQL with ``--db postgresql``).

The broker runs with accounts and the production ACL: the scheduler logs in as ``scheduler`` with the
``acl.example`` block, every gateway's block is in the ACL (``central_acl``), client ids are bound
to user names, and the broker has the queue settings of ``configs/mosquitto/central.conf.example``
(autosave as Debian's default). The simulated fleet is the one exception, said here on purpose: each
fleet process (``--fleet-procs``) plays thousands of gateways over ONE connection, so it logs in
with a bench account ``bench-fleet-N`` whose block is the production gateway block with ``+`` in place
of the gateway id. The production rule "a gateway writes only its own topics" cannot be kept by one
connection playing many gateways, and a connection per gateway (10,000 for the national case, each
with paho's thread) would measure the simulator rather than the scheduler. Everything the scheduler
does (its account, its ACL, its subscriptions) is as in production.

The simulated fleet (paho's network thread in each process) publishes the retained online status and
speaker states, acks every plan, and reports ``started`` + ``finished`` for every speaker. By default
it reports as soon as its gateway's plan arrives; with ``--hold-reports`` it holds them, the bench
stops reading the scheduler's socket, the fleet publishes the whole burst (the broker keeps it in the
scheduler's persistent session), and the bench starts reading again: the ingest is then measured
without the simulator in the way. Measured (seconds from the request):

* ``create_s``: the HTTP answer of POST /api/broadcasts;
* ``publish_all_s``: every gateway has received its plan (clocked in the fleet);
* ``all_delivered_s``: every gateway's ack is recorded (committed) in the database;
* ``all_finished_s``: every speaker's ``finished`` is recorded;
* ``reports_per_s``: playback reports recorded per second, from the fleet's first report (with
  ``--hold-reports``: from the moment the scheduler reads again, every report queued) to the last
  one recorded (``ingest_s``);
* ``status_read_s``: GET /api/broadcasts/{id} with every speaker row;
* ``max_rss_mb``: peak memory of this process (the scheduler; the fleet runs in its own processes).

What is recorded is counted on the scheduler's database thread as each batch commits (no polling
queries competing with the scheduler), and checked against the database at the end.
``BENCH_PYSPY=OUT.txt`` samples the scheduler with py-spy (``BENCH_PYSPY_AT=resume``: only the held
burst's ingest).

``--baseline REF`` runs the same measurement, in a subprocess, with the scheduler code of git commit
REF (checked out in a temporary worktree) and prints both rows. Usage::

    python bench/scheduler_dispatch.py --gateways 1000 --speakers 15 --baseline fd33d2e
    python bench/scheduler_dispatch.py --gateways 1000 --speakers 15 --hold-reports
    python bench/scheduler_dispatch.py --gateways 10000 --speakers 15 --db postgresql --fleet-procs 2 --hold-reports

Prints figures and, last, one JSON line (with ``baseline`` when asked for).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
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

from loaxa.brokers import CENTRAL_ACL_EXAMPLE, EXAMPLE_GATEWAY, SCHEDULER_USER, central_acl, new_password  # noqa: E402
from loaxa.brokers import _blocks as _acl_blocks  # noqa: E402
from loaxa.servers import Mosquitto, MosquittoUser, PostgreSQL  # noqa: E402
from protocol.models import Ack, PlaybackEvent, Status  # noqa: E402
from protocol.signing import now_ms  # noqa: E402
from protocol.topics import ack_topic, device_topic, event_topic, parse_topic, status_topic  # noqa: E402
from scheduler.config import SchedulerConfig  # noqa: E402
from scheduler.service import Scheduler  # noqa: E402
from tests.sched_support import Keys, add_token, bearer, make_tone, scheduler_config_dict  # noqa: E402

FLEET_PREFIX = "bench-fleet-"
#: publishes one fleet process leaves unacknowledged at most (paho's message ids are 16-bit)
OUTSTANDING_MAX = 20_000


def fleet_acl_block(name: str) -> str:
    """The ACL block of one simulated-fleet account: the production gateway block of
    ``configs/mosquitto/acl.example`` with ``+`` in place of the gateway id (see the module docstring)."""
    _pre, blocks = _acl_blocks(CENTRAL_ACL_EXAMPLE.read_text())
    block = re.sub(r"^user\s+\S+", f"user {name}", blocks[EXAMPLE_GATEWAY], count=1)
    return block.replace(f"/{EXAMPLE_GATEWAY}/", "/+/")


def bench_broker(workdir: Path, gateways: list[str], procs: int) -> Mosquitto:
    """Mosquitto with accounts: ``scheduler`` with the production ACL (every gateway's block included),
    and one fleet account per fleet process; client ids bound to user names, as in production."""
    users = [MosquittoUser(SCHEDULER_USER, new_password())]
    users += [MosquittoUser(f"{FLEET_PREFIX}{k}", new_password()) for k in range(procs)]
    acl = central_acl(gateways) + "\n" + "\n".join(fleet_acl_block(u.username) for u in users[1:])
    return Mosquitto(workdir, users=users, acl_text=acl, bind_clientid=True, conf_overrides=dict(BROKER_CONF))


#: the broker's settings for the bench: those of configs/mosquitto/central.conf.example for a national
#: centre (a queue that holds a national burst), and the autosave interval of Debian's default
#: (persistence on, saved every 30 min and at exit), not the test brokers' 1 s
BROKER_CONF = {"max_queued_messages": "1000000", "max_inflight_messages": "1000", "autosave_interval": "1800"}


def fleet(port: int, account: tuple[str, str], gateways: list[str], speakers: int, ready: Any, stats: Any,
          lock: Any, release: Any) -> None:
    """One fleet process: these gateways, publishing without waiting. ``stats``: [last plan received
    (wall clock), first report published, last report published, gateways answered, reports PUBACKed].
    With ``release`` (an Event), the reports are held until it is set, then published at once."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    answered: set[str] = set()
    held: list[tuple[str, str]] = []
    report_mids: set[int] = set()
    # paho numbers messages with 16-bit ids and REFUSES a publish whose id is still queued: more than
    # ~65,000 outstanding publishes in one client lose messages silently. From the main thread the
    # fleet therefore waits while OUTSTANDING_MAX are unacknowledged.
    outstanding = threading.Condition()
    unacked = 0

    def send(c: paho.Client, topic: str, payload: str, *, retain: bool = False, wait: bool = True) -> int:
        nonlocal unacked
        with outstanding:
            while wait and unacked >= OUTSTANDING_MAX:
                outstanding.wait(1.0)
            unacked += 1
        info = c.publish(topic, payload, qos=1, retain=retain)
        if info.rc != 0:
            raise RuntimeError(f"fleet: publish to {topic} refused by paho (code {info.rc})")
        return int(info.mid)

    def publish_reports(c: paho.Client, items: list[tuple[str, str]], wait: bool) -> None:
        with lock:
            if not stats[1]:
                stats[1] = time.time()
        for topic, payload in items:
            report_mids.add(send(c, topic, payload, wait=wait))
        with lock:
            stats[2] = time.time()

    def on_publish(_c: paho.Client, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        nonlocal unacked
        with outstanding:
            unacked -= 1
            outstanding.notify_all()
        if mid in report_mids:
            report_mids.discard(mid)
            with lock:
                stats[4] += 1

    def on_message(c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        gw = parse_topic(msg.topic).gateway
        env = json.loads(msg.payload)
        send(c, ack_topic(gw), Ack(id=env["id"], ok=True, ts=now_ms()).model_dump_json(), wait=False)
        if env["kind"] != "broadcast.plan" or gw in answered:
            return
        answered.add(gw)
        with lock:
            stats[0] = max(stats[0], time.time())
            stats[3] += 1
        bid = env["body"]["items"][0]["broadcast_id"]
        items = [
            (event_topic(gw), PlaybackEvent(broadcast_id=bid, device=f"loa-{i}", state=state, at=now_ms())
             .model_dump_json())
            for state in ("started", "finished") for i in range(speakers)
        ]
        if release is None:  # from paho's own thread: it cannot wait for acknowledgements here
            publish_reports(c, items, wait=False)
        else:
            held.extend(items)

    user, password = account
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=paho.MQTTv5)
    c.username_pw_set(user, password)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.on_message = on_message
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    for gw in gateways:
        c.subscribe(f"loaxa/v1/{gw}/cmd", qos=1)
    c.loop_start()
    for gw in gateways:
        send(c, status_topic(gw), Status(state="online", ts=now_ms()).model_dump_json(), retain=True)
        for i in range(speakers):
            send(c, device_topic(gw, f"loa-{i}", "state"), json.dumps({"online": True, "volume": 70}), retain=True)
    ready.release()
    if release is not None:
        release.wait()
        while len(answered) < len(gateways):
            time.sleep(0.05)
        publish_reports(c, held, wait=True)
    while True:
        time.sleep(1)


def _start_pyspy() -> subprocess.Popen[bytes] | None:
    """``BENCH_PYSPY=OUT.txt``: sample this process (every thread) from the request until every report
    is recorded, as collapsed stacks (``py-spy record --format raw``): where the scheduler's time goes."""
    out = os.environ.get("BENCH_PYSPY")
    if not out:
        return None
    exe = Path(sys.executable).with_name("py-spy")
    spy = subprocess.Popen([str(exe), "record", "--pid", str(os.getpid()), "--format", "raw", "--threads",
                            "--rate", "200", "--nonblocking", "-o", out], stdout=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    return spy


def _stop_pyspy(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(2)
        spy.wait(60)


class Clock:
    """Counts, on the database thread, what each committed batch recorded (no polling queries that
    would compete with the scheduler): every ack ``delivered``, every speaker ``finished``."""

    def __init__(self) -> None:
        self.reset(0, 0)

    def reset(self, n_gw: int, n_spk: int) -> None:
        self.want_gw, self.want_spk = n_gw, n_spk
        self.acked = self.finished = self.batches = self.messages = 0
        self.seconds = 0.0
        self.t_acked = self.t_finished = 0.0

    def wrap(self, real_apply: Any) -> Any:
        def timed_apply(items: Any, now: int) -> Any:
            t = time.perf_counter()
            results = real_apply(items, now)
            self.seconds += time.perf_counter() - t
            self.batches += 1
            self.messages += len(items)
            for item, result in zip(items, results, strict=True):
                if isinstance(item.message, Ack) and result == "delivered":
                    self.acked += 1
                elif isinstance(item.message, PlaybackEvent) and result == "finished":
                    self.finished += 1
            done = time.perf_counter()  # the batch is committed when apply returns
            if self.want_gw and not self.t_acked and self.acked >= self.want_gw:
                self.t_acked = done
            if self.want_spk and not self.t_finished and self.finished >= self.want_spk:
                self.t_finished = done
            return results

        return timed_apply


class PausedReads:
    """Stop reading the scheduler's MQTT socket (the broker then keeps what is sent to the scheduler in
    its persistent session), and start again: a burst pre-published to the session."""

    def __init__(self, sched: Scheduler) -> None:
        self.loop = asyncio.get_running_loop()
        client = sched.dispatcher.link._client
        assert client is not None, "the scheduler is not connected"
        self.sock = client._client.socket()
        handle = self.loop._selector.get_key(self.sock).data[0]  # type: ignore[attr-defined]
        self.callback, self.args = handle._callback, handle._args
        self.loop.remove_reader(self.sock)

    def resume(self) -> None:
        self.loop.add_reader(self.sock, self.callback, *self.args)


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


async def wait_for(cond: Any, limit_s: float, what: str) -> None:
    t = time.perf_counter()
    while not cond():
        if time.perf_counter() - t > limit_s:
            raise TimeoutError(f"bench: {what} not reached within {limit_s} s")
        await asyncio.sleep(0.01)


async def main(n_gw: int, n_spk: int, db: str, procs: int, hold: bool) -> dict[str, Any]:
    if os.environ.get("BENCH_SWITCH"):
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH"]))
    reports = n_gw * n_spk * 2
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        gateways = [f"xa-{i:05d}" for i in range(n_gw)]
        broker = bench_broker(tmp / "mosquitto", gateways, procs).start()
        pg: PostgreSQL | None = None
        try:
            extra: dict[str, Any] = {}
            if db == "postgresql":
                pg = PostgreSQL(tmp / "pg").start()
                extra["scheduler"] = {"data_dir": str(tmp / "sched-data"), "database_url": pg.url}
            cfg_dict = scheduler_config_dict(tmp, broker.url, Keys(), gateways=gateways, **extra)
            account = broker.user(SCHEDULER_USER)
            # keep-alive: reads are paused while a held burst is pre-published
            cfg_dict["broker"].update(username=account.username, password={"value": account.password},
                                      keepalive_s=300)
            cfg = SchedulerConfig.model_validate(cfg_dict)
            sched = Scheduler.build(cfg)
            clock = Clock()
            sched.dispatcher.db.apply = clock.wrap(sched.dispatcher.db.apply)  # type: ignore[method-assign]
            peek = create_engine(cfg.scheduler.database_url or f"sqlite:///{cfg.scheduler.data_dir}/scheduler.db")
            stop = asyncio.Event()
            task = asyncio.create_task(sched.run(stop))
            ctx = multiprocessing.get_context("spawn")
            ready = ctx.Semaphore(0)
            lock = ctx.Lock()
            stats = ctx.Array("d", 5, lock=False)
            release = ctx.Event() if hold else None
            headers = bearer(add_token(sched.store.store))
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{cfg.http.port}", timeout=600, headers=headers
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
                    u = broker.user(f"{FLEET_PREFIX}{k}")
                    p = ctx.Process(target=fleet, args=(broker.port, (u.username, u.password), gateways[k::procs],
                                                        n_spk, ready, stats, lock, release), daemon=True)
                    p.start()
                    fleets.append(p)
                for _ in fleets:
                    await asyncio.to_thread(ready.acquire, True, 600)
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
                spy = None if os.environ.get("BENCH_PYSPY_AT") == "resume" else _start_pyspy()
                w0 = time.time()
                clock.reset(n_gw, n_gw * n_spk)
                t0 = time.perf_counter()
                r = await http.post("/api/broadcasts", json={"media_sha256": media["sha256"], "targets": gateways})
                t_created = time.perf_counter() - t0
                if r.status_code >= 300:
                    raise RuntimeError(f"POST /api/broadcasts: {r.status_code} {r.text[:500]}")
                bid = r.json()["id"]
                await wait_for(lambda: clock.t_acked, 1800, "every ack recorded")
                t_delivered = clock.t_acked - t0
                await wait_for(lambda: stats[3] >= n_gw, 600, "every plan received")
                t_release = 0.0
                burst: dict[str, float] = {}
                if release is not None:  # the burst of reports, pre-published to the scheduler's session
                    paused = PausedReads(sched)
                    tp = time.perf_counter()
                    release.set()
                    await wait_for(lambda: stats[4] >= reports, 1800, "every report queued by the broker")
                    burst["prepublish_s"] = round(time.perf_counter() - tp, 3)
                    burst["load_at_resume"] = round(os.getloadavg()[0], 2)
                    if os.environ.get("BENCH_PYSPY_AT") == "resume":
                        spy = _start_pyspy()
                    t_release = time.perf_counter()
                    paused.resume()
                await wait_for(lambda: clock.t_finished, 1800, "every speaker finished")
                t_finished = clock.t_finished - t0
                load_after = os.getloadavg()
                _stop_pyspy(spy)
                gw_ok, spk_done = await asyncio.to_thread(counts, peek, bid)
                if (gw_ok, spk_done) != (n_gw, n_gw * n_spk):
                    raise RuntimeError(f"bench: the database has {gw_ok} gateways delivered and {spk_done} "
                                       "speakers finished: the scheduler's own count was wrong")
                with peek.connect() as conn:
                    gw_states: dict[str, int] = dict(conn.execute(text(
                        "SELECT state, count(*) FROM gateway_deliveries WHERE broadcast_id = :b GROUP BY state"),
                        {"b": bid}).all())
                db_busy = {"seconds": clock.seconds, "batches": clock.batches}
                publish_all = stats[0] - w0
                first_report = stats[1] - w0
                fleet_done = stats[2] - w0
                t1 = time.perf_counter()
                for _ in range(3):
                    st = await http.get(f"/api/broadcasts/{bid}")
                    st.raise_for_status()
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
    # reports per second: from the first report published (or, for a held burst, from the moment the
    # scheduler reads again with every report queued at the broker) to the last one recorded
    ingest_s = (clock.t_finished - t_release) if t_release else (t_finished - first_report)
    return {
        "code": str(CODE),
        "db": db,
        "gateways": n_gw,
        "speakers": n_gw * n_spk,
        "held_burst": hold,
        "learn_speakers_s": round(learn_s, 3),
        "create_s": round(t_created, 3),
        "publish_all_s": round(publish_all, 3),
        "all_delivered_s": round(t_delivered, 3),
        "all_finished_s": round(t_finished, 3),
        "ingest_s": round(ingest_s, 3),
        "reports_per_s": round(reports / ingest_s, 1),
        "fleet_done_s": round(fleet_done, 3),
        **burst,
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
    ap.add_argument("--hold-reports", action="store_true",
                    help="pre-publish the reports to the scheduler's session, then measure their ingest alone")
    ap.add_argument("--baseline", metavar="REF", help="also measure the scheduler code of this git commit")
    ap.add_argument("--code-root", help=argparse.SUPPRESS)
    a = ap.parse_args()
    own = ["--gateways", str(a.gateways), "--speakers", str(a.speakers), "--db", a.db,
           "--fleet-procs", str(a.fleet_procs), *(["--hold-reports"] if a.hold_reports else [])]
    base = run_baseline(a.baseline, own) if a.baseline else None
    if os.environ.get("BENCH_PROFILE"):  # where the event loop's time goes (the DB thread is not shown)
        import cProfile
        import pstats

        prof = cProfile.Profile()
        r = prof.runcall(asyncio.run, main(a.gateways, a.speakers, a.db, a.fleet_procs, a.hold_reports))
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    else:
        r = asyncio.run(main(a.gateways, a.speakers, a.db, a.fleet_procs, a.hold_reports))
    print(f"{r['gateways']} gateways, {r['speakers']} speakers, {r['db']}")
    if base is not None:
        show("before", base)
    show("after" if base is not None else "this", r)
    print(json.dumps({"bench": "scheduler_dispatch", **r, **({"baseline": base} if base else {})}))
