"""Schedules over the HTTP API of a real scheduler (real broker, SQLite and PostgreSQL): approval
(only approved content is sent, every decision audited), conflicts, areas, and the as-run report."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select

from loaxa.brokers import CentralBroker
from protocol.models import BroadcastCancelBody, BroadcastPlanBody
from scheduler.access.models import AuditEntry
from scheduler.config import SchedulerConfig
from scheduler.schedules.models import ScheduleRun
from scheduler.service import Scheduler
from tests.sched_support import Keys, TestGateway, add_token, bearer, make_tone, scheduler_config_dict, wait_for_async

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
AN_BINH, PHU_MY = "xa-an-binh", "xa-phu-my"


@dataclass
class Env:
    sched: Scheduler
    http: httpx.AsyncClient
    tokens: dict[str, str]
    keys: Keys
    broker: CentralBroker

    def h(self, who: str) -> dict[str, str]:
        return bearer(self.tokens[who])

    async def sent(self, sid: str) -> list[str]:
        """Top up (the planner may already have, woken by the approval) and list the broadcasts of ``sid``."""
        await self.sched.planner.top_up()

        def runs() -> list[str]:
            with self.sched.store.store.session() as s:
                return sorted(s.scalars(select(ScheduleRun.broadcast_id).where(ScheduleRun.schedule_id == sid)))

        return await asyncio.to_thread(runs)

    def audit(self) -> list[tuple[str, str, str | None]]:
        with self.sched.store.store.session() as s:
            return [(e.action, e.actor, e.target) for e in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]


@pytest.fixture
async def env(tmp_path: Path, mosquitto: CentralBroker, db_url: str) -> AsyncIterator[Env]:
    keys = Keys()
    cfg = SchedulerConfig.model_validate(scheduler_config_dict(
        tmp_path, mosquitto, keys, gateways=[AN_BINH, PHU_MY], scheduler={"database_url": db_url},
        dispatch={"resend_interval_s": 3600, "schedule_top_up_s": 86400}))
    sched = Scheduler.build(cfg)
    store = sched.store.store
    tokens = {
        "admin": add_token(store, "admin", name="admin"),
        "op-an-binh": add_token(store, "operator", [AN_BINH], name="op-an-binh"),
        "ap-an-binh": add_token(store, "approver", [AN_BINH], name="ap-an-binh"),
        "op-phu-my": add_token(store, "operator", [PHU_MY], name="op-phu-my"),
        "ap-phu-my": add_token(store, "approver", [PHU_MY], name="ap-phu-my"),
        "viewer-phu-my": add_token(store, "viewer", [PHU_MY], name="viewer-phu-my"),
        "technician": add_token(store, "technician", name="kythuat"),
    }
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cfg.http.port}", timeout=60) as http:

        async def up() -> bool:
            try:
                return (await http.get("/api/health")).json()["mqtt_connected"] is True
            except httpx.HTTPError:
                return False

        await wait_for_async(up, within=60, what="scheduler HTTP up and connected")
        await wait_for_async(lambda: _idle(sched), within=30, what="first top-up")
        yield Env(sched, http, tokens, keys, mosquitto)
    stop.set()
    await asyncio.wait_for(task, 30)


async def _idle(sched: Scheduler) -> bool:
    return sched.planner.last_top_up is not None


async def programme(e: Env, tmp_path: Path, who: str = "op-an-binh", seconds: float = 1.0) -> str:
    r = await e.http.post("/api/media", content=make_tone(tmp_path / f"t{seconds}.wav", seconds).read_bytes(),
                          headers=e.h("admin"))
    assert r.status_code == 201, r.text
    r = await e.http.post("/api/programmes", json={"title": "Thời sự", "items": [{"media_sha256": r.json()["sha256"]}]},
                          headers=e.h(who))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def tomorrow(hour: int, minute: int = 0) -> str:
    day = datetime.now(HCM).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=HCM).isoformat()


def daily(pid: str, hour: int = 6, **kw: Any) -> dict[str, Any]:
    return {"title": f"Bản tin {hour}h", "programme_id": pid, "rrule": f"FREQ=DAILY;BYHOUR={hour};BYMINUTE=0",
            "dtstart": tomorrow(hour), "targets": [AN_BINH], **kw}


def plan_ids(gw: TestGateway) -> list[str]:
    return [BroadcastPlanBody.model_validate(r.envelope.body).items[0].broadcast_id
            for r in gw.received if r.envelope.kind == "broadcast.plan"]


async def test_only_approved_schedules_are_sent_and_every_decision_is_audited(env: Env, tmp_path: Path) -> None:
    gw = TestGateway(env.broker, AN_BINH, env.keys)
    await gw.connect()
    try:
        pid = await programme(env, tmp_path)
        r = await env.http.post("/api/schedules", json=daily(pid), headers=env.h("op-an-binh"))
        assert r.status_code == 201, r.text
        draft = r.json()
        assert draft["status"] == "draft" and draft["level_vi"] == "thông thường"
        sid = draft["id"]

        # a draft is not sent
        assert await env.sched.planner.top_up() == []

        # neither the operator nor another commune's approver may approve it
        assert (await env.http.post(f"/api/schedules/{sid}/approve", headers=env.h("op-an-binh"))).status_code == 403
        assert (await env.http.post(f"/api/schedules/{sid}/approve", headers=env.h("ap-phu-my"))).status_code == 404

        r = await env.http.post(f"/api/schedules/{sid}/approve", json={"version": 1}, headers=env.h("ap-an-binh"))
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "approved" and r.json()["status_by"] == "token:ap-an-binh"

        # an approved one is: every occurrence in the 8-day horizon, as a signed plan
        horizon_end = datetime.now(HCM) + timedelta(days=8)
        r = await env.http.get(f"/api/schedules/{sid}/occurrences", headers=env.h("op-an-binh"),
                               params={"from": datetime.now(HCM).isoformat(), "to": horizon_end.isoformat()})
        expected = r.json()
        assert len(expected) in (7, 8)
        made = await env.sent(sid)
        assert len(made) == len(expected) and all(b.startswith(f"{sid}.v1.") for b in made)
        await gw.wait_for(len(expected), "broadcast.plan", within=60)
        assert sorted(plan_ids(gw)) == sorted(made)
        items = [BroadcastPlanBody.model_validate(x.envelope.body).items[0] for x in gw.received
                 if x.envelope.kind == "broadcast.plan"]
        assert sorted(i.start_at or 0 for i in items) == [int(datetime.fromisoformat(t).timestamp() * 1000)
                                                     for t in expected]
        assert await env.sched.planner.top_up() == []  # topping up again sends nothing twice

        # editing the approved schedule sends it back to draft and withdraws what was sent
        r = await env.http.put(f"/api/schedules/{sid}", json=daily(pid, 7), headers=env.h("op-an-binh"))
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "draft" and r.json()["version"] == 2
        cancels = await gw.wait_for(len(expected), "broadcast.cancel", within=60)
        cancelled = {b for c in cancels for b in BroadcastCancelBody.model_validate(c.envelope.body).broadcast_ids}
        assert cancelled == set(made)
        assert await env.sched.planner.top_up() == []

        # a rejected one is not sent (and a rejection needs a reason)
        assert (await env.http.post(f"/api/schedules/{sid}/reject", json={}, headers=env.h("ap-an-binh"))
                ).status_code == 400
        r = await env.http.post(f"/api/schedules/{sid}/reject", json={"reason": "trùng giờ họp"},
                                headers=env.h("ap-an-binh"))
        assert r.status_code == 200 and r.json()["status"] == "rejected"
        assert await env.sched.planner.top_up() == []

        actions = [(a, actor) for a, actor, target in env.audit() if target == sid]
        assert ("schedule.create", "token:op-an-binh") in actions
        assert ("schedule.approve", "token:ap-an-binh") in actions
        assert ("schedule.update", "token:op-an-binh") in actions
        assert ("schedule.reject", "token:ap-an-binh") in actions
        assert any(a == "access.denied" for a, _, _ in env.audit())
    finally:
        await gw.disconnect()


async def test_equal_priority_conflict_is_refused_and_a_higher_level_is_accepted(env: Env, tmp_path: Path) -> None:
    pid = await programme(env, tmp_path, seconds=2.0)
    first = await env.http.post("/api/schedules", json=daily(pid), headers=env.h("op-an-binh"))
    assert first.status_code == 201, first.text
    clash = daily(pid, title="Nhạc sáng")
    preview = await env.http.post("/api/schedules/conflicts", json=clash, headers=env.h("op-an-binh"))
    assert preview.status_code == 200 and preview.json(), preview.text
    r = await env.http.post("/api/schedules", json=clash, headers=env.h("op-an-binh"))
    assert r.status_code == 409, r.text
    body = r.json()["detail"]
    assert "equal priority" in body["message"] and body["conflicts"][0]["winner"] is None
    pair = body["conflicts"][0]
    assert first.json()["id"] in {pair["first"]["schedule"], pair["second"]["schedule"]}

    # the same time at a higher level is no conflict: it wins (and pre-empts on the gateway)
    urgent = daily(pid, title="Cảnh báo bão", priority="khẩn cấp")
    r = await env.http.post("/api/schedules", json=urgent, headers=env.h("op-an-binh"))
    assert r.status_code == 201, r.text
    assert r.json()["priority"] == 9 and r.json()["status"] == "draft"
    for sid in (first.json()["id"], r.json()["id"]):
        assert (await env.http.post(f"/api/schedules/{sid}/approve", headers=env.h("ap-an-binh"))).status_code == 200
    gw = TestGateway(env.broker, AN_BINH, env.keys)
    await gw.connect()
    try:
        made = [*await env.sent(first.json()["id"]), *await env.sent(r.json()["id"])]
        got = await gw.wait_for(len(made), "broadcast.plan", within=60)
        prio = {BroadcastPlanBody.model_validate(x.envelope.body).items[0].priority for x in got}
        assert prio == {3, 9}
    finally:
        await gw.disconnect()


async def test_emergency_bypass_is_its_own_permission_and_audited(env: Env, tmp_path: Path) -> None:
    pid = await programme(env, tmp_path)
    urgent = daily(pid, title="Khẩn cấp: lũ", priority="emergency", approve_now=True)
    assert (await env.http.post("/api/schedules", json=urgent, headers=env.h("op-an-binh"))).status_code == 403
    normal = daily(pid, title="Thường", approve_now=True)
    assert (await env.http.post("/api/schedules", json=normal, headers=env.h("ap-an-binh"))).status_code == 400
    r = await env.http.post("/api/schedules", json=urgent, headers=env.h("ap-an-binh"))
    assert r.status_code == 201 and r.json()["status"] == "approved", r.text
    assert ("schedule.emergency_bypass", "token:ap-an-binh", r.json()["id"]) in env.audit()


async def test_the_api_refuses_the_wrong_role_or_commune(env: Env, tmp_path: Path) -> None:
    pid = await programme(env, tmp_path)
    r = await env.http.post("/api/schedules", json=daily(pid), headers=env.h("op-an-binh"))
    sid = r.json()["id"]
    # another commune's operator cannot target An Bình, nor see or change its schedule
    assert (await env.http.post("/api/schedules", json=daily(pid), headers=env.h("op-phu-my"))).status_code == 403
    assert (await env.http.get(f"/api/schedules/{sid}", headers=env.h("op-phu-my"))).status_code == 404
    assert (await env.http.put(f"/api/schedules/{sid}", json=daily(pid, 8), headers=env.h("op-phu-my"))
            ).status_code == 404
    assert (await env.http.delete(f"/api/schedules/{sid}", headers=env.h("op-phu-my"))).status_code == 404
    assert sid not in [s["id"] for s in (await env.http.get("/api/schedules", headers=env.h("op-phu-my"))).json()]
    assert sid in [s["id"] for s in (await env.http.get("/api/schedules", headers=env.h("op-an-binh"))).json()]
    # roles without the permission
    assert (await env.http.post("/api/schedules", json=daily(pid), headers=env.h("viewer-phu-my"))).status_code == 403
    assert (await env.http.get("/api/schedules", headers=env.h("technician"))).status_code == 403
    assert (await env.http.post("/api/programmes", json={"title": "x", "items": [{"text": "a", "duration_ms": 5}]},
                                headers=env.h("viewer-phu-my"))).status_code == 403
    # the commune's read-only calendar feed
    assert (await env.http.get(f"/api/communes/{AN_BINH}/schedules.ics", headers=env.h("viewer-phu-my"))
            ).status_code == 403
    await env.http.post(f"/api/schedules/{sid}/approve", headers=env.h("ap-an-binh"))
    feed = await env.http.get(f"/api/communes/{AN_BINH}/schedules.ics", headers=env.h("op-an-binh"))
    assert feed.status_code == 200 and feed.headers["content-type"].startswith("text/calendar")
    assert b"RRULE:FREQ=DAILY" in feed.content and f"{sid}@loaxa".encode() in feed.content
    # removing is audited; the schedule is gone
    assert (await env.http.delete(f"/api/schedules/{sid}", headers=env.h("op-an-binh"))).status_code == 204
    assert (await env.http.get(f"/api/schedules/{sid}", headers=env.h("op-an-binh"))).status_code == 404
    assert ("schedule.remove", "token:op-an-binh", sid) in env.audit()


async def test_as_run_report_csv_and_monthly_summary(env: Env, tmp_path: Path) -> None:
    gw = TestGateway(env.broker, AN_BINH, env.keys)
    await gw.connect()
    try:
        for dev in ("loa-1", "loa-2"):
            await gw.speaker_state(dev, volume=70, playing=False)
        pid = await programme(env, tmp_path)

        async def speakers_known() -> bool:
            rows = (await env.http.get("/api/gateways", headers=env.h("admin"))).json()
            return any(g["id"] == AN_BINH and len(g.get("speakers", [])) == 2 for g in rows)

        await wait_for_async(speakers_known, within=30, what="two speakers known")
        r = await env.http.post("/api/schedules", json=daily(pid), headers=env.h("op-an-binh"))
        sid = r.json()["id"]
        await env.http.post(f"/api/schedules/{sid}/approve", headers=env.h("ap-an-binh"))
        made = await env.sent(sid)
        await gw.wait_for(len(made), "broadcast.plan", within=60)
        first = made[0]
        await gw.playback(first, "loa-1", "started")
        await gw.playback(first, "loa-1", "finished")
        await gw.playback(first, "loa-2", "failed", reason="no audio output")
        window = {"from": datetime.now(HCM).isoformat(), "to": (datetime.now(HCM) + timedelta(days=9)).isoformat()}

        async def reported() -> list[dict[str, Any]]:
            rows = (await env.http.get("/api/reports/as-run", params={**window, "schedule_id": sid},
                                       headers=env.h("op-an-binh"))).json()
            mine = [x for x in rows if x["broadcast_id"] == first]
            return mine if {x["state"] for x in mine} == {"finished", "failed"} else []

        rows = await wait_for_async(reported, within=30, what="as-run rows of the first occurrence")
        assert {(x["device"], x["state"]) for x in rows} == {("loa-1", "finished"), ("loa-2", "failed")}
        assert all(x["schedule_id"] == sid for x in rows)
        failed = (await env.http.get("/api/reports/as-run", params={**window, "state": "failed"},
                                     headers=env.h("op-an-binh"))).json()
        assert [(x["device"], x["reason"]) for x in failed] == [("loa-2", "no audio output")]
        # another commune sees none of it
        assert (await env.http.get("/api/reports/as-run", params=window, headers=env.h("op-phu-my"))).json() == []
        r = await env.http.get("/api/reports/as-run", params={**window, "format": "csv"}, headers=env.h("op-an-binh"))
        table = list(csv.DictReader(io.StringIO(r.text)))
        assert len(table) == 2 * len(made) and {t["state"] for t in table} == {"finished", "failed", "delivered"}
        month = rows[0]["start_at"][:7]
        summary = (await env.http.get("/api/reports/monthly", params={"month": month},
                                      headers=env.h("ap-an-binh"))).json()
        mine = next(s for s in summary if s["gateway"] == AN_BINH)
        assert mine["broadcasts_played"] == 1 and mine["seconds_broadcast"] == pytest.approx(1.0, abs=0.2)
        assert 0 < mine["items"][0]["share_played"] < 1
    finally:
        await gw.disconnect()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_cli_drives_schedules_programmes_and_reports(env: Env, tmp_path: Path) -> None:
    import json

    from tests.conftest import run_loaxa

    url = str(env.http.base_url).rstrip("/")

    async def cli(who: str, *args: str) -> Any:
        res = await asyncio.to_thread(run_loaxa, *args, "--url", url, env={"LOAXA_TOKEN": env.tokens[who]})
        return res

    tone = make_tone(tmp_path / "ban-tin.wav", 1.0)
    res = await cli("op-an-binh", "programme", "add", "--title", "Bản tin sáng", "--item", f"file:{tone}", "--json")
    assert res.returncode == 0, res.stderr
    pid = json.loads(res.stdout)["id"]
    res = await cli("op-an-binh", "schedule", "add", "--title", "Bản tin 6h", "--programme", pid,
                    "--target", AN_BINH, "--rrule", "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA;BYHOUR=6;BYMINUTE=0",
                    "--dtstart", "ngày mai 06:00", "--exdate", "2027-01-01", "--level", "thông thường", "--json")
    assert res.returncode == 0, res.stderr
    sc = json.loads(res.stdout)
    assert sc["status"] == "draft" and sc["dtstart"].endswith("06:00:00+07:00") and sc["exdates"] == ["2027-01-01"]
    sid = sc["id"]
    res = await cli("op-an-binh", "schedule", "approve", sid)
    assert res.returncode == 2 and "403" in res.stderr and "schedule:approve" in res.stderr
    res = await cli("ap-an-binh", "schedule", "approve", sid, "--version", "1")
    assert res.returncode == 0 and "[approved, version 1]" in res.stdout, res.stderr
    res = await cli("op-an-binh", "schedule", "list")
    assert sid in res.stdout and "approved" in res.stdout
    start = datetime.now(HCM).replace(microsecond=0)
    res = await cli("op-an-binh", "schedule", "occurrences", sid, "--from", start.isoformat(),
                    "--to", (start + timedelta(days=14)).isoformat(), "--json")
    times = json.loads(res.stdout)
    assert len(times) == 12 and all(t.endswith("T06:00:00+07:00") for t in times)
    assert all(datetime.fromisoformat(t).weekday() != 6 for t in times)
    res = await cli("viewer-phu-my", "schedule", "export-ics", "--commune", AN_BINH)
    assert res.returncode == 2 and "403" in res.stderr
    res = await cli("op-an-binh", "schedule", "export-ics", "--commune", AN_BINH)
    assert "RRULE:FREQ=WEEKLY" in res.stdout and "MO,TU,WE,TH,FR,SA" in res.stdout and "EXDATE" in res.stdout
    await env.sent(sid)
    res = await cli("op-an-binh", "report", "as-run", "--from", start.date().isoformat(),
                    "--to", (start + timedelta(days=10)).date().isoformat(), "--csv")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].startswith("start_at,broadcast_id,schedule_id")
    res = await cli("ap-an-binh", "schedule", "reject", sid, "--reason", "đổi giờ")
    assert res.returncode == 0 and "rejected by token:ap-an-binh: đổi giờ" in res.stdout
    res = await cli("op-an-binh", "schedule", "remove", sid)
    assert res.returncode == 0 and (await cli("op-an-binh", "schedule", "show", sid)).returncode == 2
    res = await cli("op-an-binh", "programme", "remove", pid)
    assert res.returncode == 0, res.stderr


async def test_editing_a_programme_sends_its_approved_schedules_back_to_draft(env: Env, tmp_path: Path) -> None:
    pid = await programme(env, tmp_path)
    sid = (await env.http.post("/api/schedules", json=daily(pid), headers=env.h("op-an-binh"))).json()["id"]
    assert (await env.http.post(f"/api/schedules/{sid}/approve", headers=env.h("ap-an-binh"))).status_code == 200
    sent = await env.sent(sid)
    assert sent
    old = (await env.http.get(f"/api/programmes/{pid}", headers=env.h("op-an-binh"))).json()
    item = {"media_sha256": old["items"][0]["media_sha256"]}
    r = await env.http.put(f"/api/programmes/{pid}", json={"title": "Thời sự (mới)", "items": [item, item]},
                           headers=env.h("op-an-binh"))
    assert r.status_code == 200, r.text
    assert r.json()["schedules_back_to_draft"] == [sid] and len(r.json()["items"]) == 2
    sc = (await env.http.get(f"/api/schedules/{sid}", headers=env.h("op-an-binh"))).json()
    assert sc["status"] == "draft" and sc["version"] == 2
    for bid in sent:  # what was sent for the old content is cancelled
        assert (await env.http.get(f"/api/broadcasts/{bid}", headers=env.h("admin"))).json()["cancelled"] is True
    # a programme in use cannot be removed; the audit names the edit
    assert (await env.http.delete(f"/api/programmes/{pid}", headers=env.h("op-an-binh"))).status_code == 400
    assert ("programme.update", "token:op-an-binh", pid) in env.audit()
