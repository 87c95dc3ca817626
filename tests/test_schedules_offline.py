"""Offline autonomy, for real: the scheduler sends an approved daily schedule's horizon, the central
broker is stopped, and the REAL gateway (with simulated speakers, in one process) plays it on every
speaker on each of 7 days, with a power cut (SIGKILL) and restart on day 3; when the broker returns,
the centre's as-run log holds every day for every speaker, each started at its planned instant.

Time: the gateway process runs under libfaketime with its wall clock read from a file
(``FAKETIME_TIMESTAMP_FILE`` holding an offset, re-read on every call) and its monotonic clock left
alone. The test steps the wall clock from just after one day's broadcast to just before the next
one, as NTP stepping a Pi's clock would; the gateway follows such steps (``loaxa.clock.sleep_until``
re-reads the wall clock at least every 5 s). Every timeout (MQTT connect and keepalive, speaker
acks, report grace) therefore runs in real seconds, with the production settings: nothing is
accelerated, the nights are skipped. (Accelerating the whole clock 720x made aiomqtt's 10-s CONNACK
timeout 14 real ms, and on a loaded machine the gateway could no longer connect to its brokers.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from loaxa.brokers import CentralBroker, LanBroker
from loaxa.localsetup import gateway_config, make_signer, write_yaml
from scheduler.config import SchedulerConfig
from scheduler.service import Scheduler
from tests.conftest import ROOT, loaxa_env
from tests.sched_support import Keys, add_token, bearer, make_tone, scheduler_config_dict, wait_for_async

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
GW = "xa-mat-mang"
SPEAKERS = ["loa-01", "loa-02"]
DAYS = 7
RESTART_DAY = 3  # 1-based: the gateway loses power on the morning of the third day
#: the wall clock lands this long before a broadcast: the gateway notices a step within 5 s and asks
#: its speakers to start ``dispatch_ahead_ms`` (3 s) before the instant
LEAD_S = 9.5
#: a speaker's reported start may differ from the planned instant by at most this much
START_TOLERANCE_S = 1.0
LIBFAKETIME = next((p for p in ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                                "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1") if Path(p).exists()), None)


async def _cached(media_dir: Path, sha: str) -> bool:
    return any(p.name.startswith(sha) for p in media_dir.rglob("*") if p.is_file())  # noqa: ASYNC240 - a tiny dir


class SteppedClockGateway:
    """The runner process under libfaketime, its wall clock ``offset`` ahead of the real one."""

    def __init__(self, argv: list[str], workdir: Path):
        self.argv, self.log = argv, workdir / "gw.log"
        self.clock_file = workdir / "faketime.rc"
        self.offset = timedelta(0)
        self._write_offset()
        self.notify_path = workdir / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.setblocking(False)
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_offset(self) -> None:
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(f"{self.offset.total_seconds():+.3f}\n")
        os.replace(tmp, self.clock_file)  # libfaketime reads the old file or the new one, never half

    def fake_now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def step_to(self, t: datetime) -> None:
        """Set the gateway's wall clock to ``t`` (it then runs on at real speed)."""
        self.offset = t - datetime.now(UTC)
        self._write_offset()

    def start(self) -> None:
        while True:  # what an earlier process said is not this one's READY
            try:
                self.notify.recv(4096)
            except BlockingIOError:
                break
        env = loaxa_env(LD_PRELOAD=str(LIBFAKETIME), FAKETIME_TIMESTAMP_FILE=str(self.clock_file),
                        FAKETIME_NO_CACHE="1", FAKETIME_DONT_FAKE_MONOTONIC="1",
                        NOTIFY_SOCKET=str(self.notify_path))
        env.pop("FAKETIME", None)  # it would take precedence over the file
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.offline_runner", *self.argv], stdout=out,
                                         stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)

    async def ready(self, within: float = 60) -> str:
        """Wait for this process's READY=1 to systemd (the notify socket); returns the message."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            while True:
                note = (await loop.sock_recv(self.notify, 4096)).decode()
                if note.startswith("READY=1"):
                    return note

    def power_cut(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, "the gateway died before its power cut"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        self.notify.close()


def _outcomes(db: Path, broadcast_id: str) -> dict[str, str] | None:
    """What the gateway has on its disk for ``broadcast_id`` once the plan is done: {device: state}."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
        done = con.execute("SELECT 1 FROM plans WHERE broadcast_id=? AND state='done'", (broadcast_id,)).fetchone()
        rows = con.execute("SELECT device, state FROM outcomes WHERE broadcast_id=?", (broadcast_id,)).fetchall()
    return dict(rows) if done else None


async def test_a_daily_schedule_plays_every_day_with_the_wan_cut(tmp_path: Path, central_broker_factory: Any,
                                                                 lan_broker_factory: Any) -> None:
    began = time.monotonic()
    if LIBFAKETIME is None:  # CI installs it (scripts/install.sh, dev role): never skip the week silently
        pytest.fail("libfaketime is missing: apt-get install faketime", pytrace=False)
    central: CentralBroker = central_broker_factory(gateways=[GW])
    lan: LanBroker = lan_broker_factory(GW, devices=SPEAKERS)
    signer = make_signer()
    cfg = SchedulerConfig.model_validate(scheduler_config_dict(
        tmp_path, central, Keys(signer.private_key), gateways=[GW],
        dispatch={"resend_interval_s": 5, "schedule_top_up_s": 86400}))
    sched = Scheduler.build(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    # the gateway's production settings (timeouts, retries, lateness): only the clock is stepped
    gw_cfg = gateway_config(GW, data_dir=tmp_path / "gw", uplink_url=central.url, lan_url=lan.url, signer=signer,
                            devices=[{"id": d, "type": "ip_speaker"} for d in SPEAKERS],
                            uplink_auth=central.gateway_auth(GW), lan_auth=lan.gateway_auth())
    runner = SteppedClockGateway([str(write_yaml(tmp_path / "gw.yaml", gw_cfg)), lan.device_url,
                                  str(lan.write_credentials(tmp_path / "speakers.json")), ",".join(SPEAKERS)],
                                 tmp_path)

    def gw_log() -> str:
        return runner.log.read_text(errors="replace")[-5000:] if runner.log.exists() else ""

    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cfg.http.port}", timeout=60,
                                     headers=bearer(add_token(sched.store.store))) as http:
            async def up() -> bool:
                try:
                    return (await http.get("/api/health")).status_code == 200
                except httpx.HTTPError:
                    return False

            await wait_for_async(up, within=60, what="scheduler HTTP up")
            # the daily programme: a minute-aligned time of day an hour from now
            first = (datetime.now(HCM) + timedelta(hours=1)).replace(second=0, microsecond=0)
            r = await http.post("/api/media", content=make_tone(tmp_path / "t.wav", 1.0).read_bytes())
            assert r.status_code == 201, r.text
            sha = r.json()["sha256"]
            r = await http.post("/api/programmes", json={"title": "Bản tin", "items": [{"media_sha256": sha}]})
            pid = r.json()["id"]
            r = await http.post("/api/schedules", json={
                "title": "Bản tin hằng ngày", "programme_id": pid, "targets": [GW], "dtstart": first.isoformat(),
                "rrule": f"FREQ=DAILY;BYHOUR={first.hour};BYMINUTE={first.minute}"})
            assert r.status_code == 201, r.text
            sid = r.json()["id"]
            assert (await http.post(f"/api/schedules/{sid}/approve")).status_code == 200
            await sched.planner.top_up()
            days = [first + timedelta(days=n) for n in range(DAYS)]

            # with the link up, the gateway receives the 8-day horizon and caches its audio
            runner.start()
            await runner.ready()

            async def horizon() -> dict[int, str]:
                rows = (await http.get("/api/broadcasts", params={"limit": 100})).json()
                mine = {b["id"]: b for b in rows if b["id"].startswith(sid)}
                states = [(await http.get(f"/api/broadcasts/{i}")).json()["gateways"][0]["state"] for i in mine]
                if len(mine) != 8 or any(s != "delivered" for s in states):
                    return {}
                return {b["start_at"]: i for i, b in mine.items()}  # epoch ms -> broadcast id

            try:
                by_start = await wait_for_async(horizon, within=90, what="the 8-day horizon delivered to the gateway")
                await wait_for_async(lambda: _cached(tmp_path / "gw" / "media", sha), within=60, what="audio cached")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{gw_log()}") from None
            day_ids = [by_start.get(int(d.timestamp() * 1000), "") for d in days]
            assert all(day_ids), (days, sorted(by_start))

            central.stop()  # the WAN is cut, for the whole week
            week_began = time.monotonic()
            plans_db = tmp_path / "gw" / "broadcast.sqlite"
            for n, (day, bid) in enumerate(zip(days, day_ids, strict=True), start=1):
                if n == RESTART_DAY:  # a power cut in the small hours, and the gateway boots without the centre
                    runner.step_to(day - timedelta(hours=3))
                    runner.power_cut()
                    runner.start()
                    note = await runner.ready()
                    assert "without the centre" in note, note
                runner.step_to(day - timedelta(seconds=LEAD_S))
                # the next step only once the gateway has written the day's outcome to its disk
                try:
                    played = await wait_for_async(lambda b=bid: asyncio.to_thread(_outcomes, plans_db, b), within=60,
                                                  what=f"day {n} ({day:%Y-%m-%d %H:%M}) done on the gateway")
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n{gw_log()}") from None
                assert played == dict.fromkeys(SPEAKERS, "finished"), (n, played)
            week_s = time.monotonic() - week_began
            runner.step_to(days[-1] + timedelta(hours=1))
            back = time.monotonic()
            central.start()  # the link returns: the gateway's outbox reports the whole week

            async def as_run() -> list[dict[str, Any]] | None:
                rows = (await http.get("/api/reports/as-run", params={
                    "from": (first - timedelta(hours=1)).isoformat(),
                    "to": (days[-1] + timedelta(hours=1)).isoformat(), "schedule_id": sid})).json()
                done = {(x["start_at"][:10], x["device"]) for x in rows if x["state"] == "finished"}
                want = {(d.date().isoformat(), s) for d in days for s in SPEAKERS}
                return rows if want <= done else None

            try:
                rows = await wait_for_async(as_run, within=120, what=f"{DAYS} days x {len(SPEAKERS)} speakers finished")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\ngateway log:\n{gw_log()}") from None
            report_s = time.monotonic() - back
            assert len(rows) == DAYS * len(SPEAKERS)
            off = {(r["start_at"], r["device"]): (datetime.fromisoformat(r["started_at"])
                                                  - datetime.fromisoformat(r["start_at"])).total_seconds()
                   for r in rows}
            late = {k: v for k, v in off.items() if abs(v) > START_TOLERANCE_S}
            assert not late, f"started away from the planned instant (s): {late}"
            print(f"offline week: set-up {week_began - began:.0f} s, {DAYS} days {week_s:.0f} s, as-run at the "
                  f"centre {report_s:.0f} s after the link returned; starts {min(off.values()):+.3f} to "
                  f"{max(off.values()):+.3f} s from the planned instant")
    finally:
        runner.close()
        stop.set()
        await asyncio.wait_for(task, 30)
