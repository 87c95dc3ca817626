"""Speaker groups ("cụm loa") and signed ICS feed URLs over the HTTP API of a real scheduler (real
broker; SQLite and PostgreSQL): areas, validation naming the field, audit, a broadcast and a
schedule to a group recording the speakers they meant, and feed URLs that work without a token
until they expire or are revoked."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select

from loaxa.brokers import CentralBroker
from protocol.signing import now_ms
from scheduler.access.models import AuditEntry
from scheduler.config import SchedulerConfig
from scheduler.db import BadRequest, Target, insert_ignore
from scheduler.models import Broadcast, Speaker
from scheduler.schedules.feed import FeedSigner
from scheduler.schedules.models import ScheduleRun
from scheduler.service import Scheduler, media_url_signer
from tests.sched_support import Keys, add_token, bearer, make_tone, scheduler_config_dict, wait_for_async

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
AN_BINH, PHU_MY = "xa-an-binh", "xa-phu-my"


@dataclass
class Env:
    sched: Scheduler
    cfg: SchedulerConfig
    http: httpx.AsyncClient
    tokens: dict[str, str]

    def h(self, who: str) -> dict[str, str]:
        return bearer(self.tokens[who])

    def audit(self) -> list[AuditEntry]:
        with self.sched.store.store.session() as s:
            return list(s.scalars(select(AuditEntry).order_by(AuditEntry.id)))


@pytest.fixture
async def env(tmp_path: Path, mosquitto: CentralBroker, db_url: str) -> AsyncIterator[Env]:
    cfg = SchedulerConfig.model_validate(scheduler_config_dict(
        tmp_path, mosquitto, Keys(), gateways=[AN_BINH, PHU_MY], scheduler={"database_url": db_url},
        dispatch={"resend_interval_s": 3600, "schedule_top_up_s": 86400}))
    sched = Scheduler.build(cfg)
    store = sched.store.store
    with store.session() as s, s.begin():  # the speakers the gateways would have reported
        insert_ignore(s, Speaker.__table__, [{"gateway_id": AN_BINH, "device_id": f"loa-{n}"} for n in (1, 2, 3)]
                      + [{"gateway_id": PHU_MY, "device_id": "loa-9"}])
    tokens = {
        "admin": add_token(store, "admin", name="admin"),
        "op-an-binh": add_token(store, "operator", [AN_BINH], name="op-an-binh"),
        "ap-an-binh": add_token(store, "approver", [AN_BINH], name="ap-an-binh"),
        "op-phu-my": add_token(store, "operator", [PHU_MY], name="op-phu-my"),
        "ap-phu-my": add_token(store, "approver", [PHU_MY], name="ap-phu-my"),
        "technician": add_token(store, "technician", name="kythuat"),
    }
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cfg.http.port}", timeout=60) as http:

        async def up() -> bool:
            try:
                return (await http.get("/api/health")).status_code == 200 and sched.planner.last_top_up is not None
            except httpx.HTTPError:
                return False

        await wait_for_async(up, within=60, what="scheduler HTTP up, first top-up done")
        yield Env(sched, cfg, http, tokens)
    stop.set()
    await asyncio.wait_for(task, 30)


async def media(e: Env, tmp_path: Path, who: str = "op-an-binh") -> str:
    r = await e.http.post("/api/media", content=make_tone(tmp_path / "t.wav", 1.0).read_bytes(), headers=e.h(who))
    assert r.status_code == 201, r.text
    return str(r.json()["sha256"])


async def programme(e: Env, sha: str, who: str = "op-an-binh") -> str:
    r = await e.http.post("/api/programmes", json={"title": "Thời sự", "items": [{"media_sha256": sha}]},
                          headers=e.h(who))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def daily(pid: str, targets: list[str], hour: int = 6, title: str | None = None) -> dict[str, Any]:
    day = datetime.now(HCM).date() + timedelta(days=1)
    start = datetime(day.year, day.month, day.day, hour, 0, tzinfo=HCM).isoformat()
    return {"title": title or f"Bản tin {hour}h", "programme_id": pid, "rrule": f"FREQ=DAILY;BYHOUR={hour};BYMINUTE=0",
            "dtstart": start, "targets": targets}


def test_group_targets_parse_and_expand() -> None:
    from scheduler.areas.resolve import expand_groups

    t = Target.parse(f"{AN_BINH}/@thon-dong")
    assert (t.gateway, t.device, t.group, str(t)) == (AN_BINH, None, "thon-dong", f"{AN_BINH}/@thon-dong")
    for bad, why in ((f"{AN_BINH}/@", "group id"), (f"{AN_BINH}/@Thon", "group id"), (f"{AN_BINH}/@a/b", "write")):
        with pytest.raises(BadRequest, match=why):
            Target.parse(bad)
    loa1 = Target(AN_BINH, "loa-1")
    out = expand_groups([loa1, t, Target(PHU_MY, None)], {t: ["loa-1", "loa-2"]})
    assert [str(x) for x in out] == [f"{AN_BINH}/loa-1", f"{AN_BINH}/loa-2", PHU_MY]


async def test_groups_areas_validation_audit_and_targets(env: Env, tmp_path: Path) -> None:
    grp = {"gateway": AN_BINH, "id": "thon-dong", "name": "Thôn Đông"}

    async def bad(body: dict[str, Any], field: str, status: int = 400, who: str = "op-an-binh") -> None:
        r = await env.http.post("/api/groups", json={**grp, **body}, headers=env.h(who))
        assert r.status_code == status and field in r.text, (body, r.text)

    # validation names the field at fault
    await bad({"speakers": ["loa-1", "loa-7"]}, "speakers[1]")  # unknown speaker
    await bad({"speakers": [f"{PHU_MY}/loa-9"]}, "speakers[0]")  # speaker of another commune
    await bad({"speakers": []}, "speakers: a group needs at least one speaker")
    await bad({"speakers": [f"loa-{n}" for n in range(501)]}, "speakers", 422)
    await bad({"speakers": ["loa-1"], "gateway": "xa-khong-co"}, "group:write on xa-khong-co", 403)
    await bad({"speakers": ["loa-1"], "gateway": "xa-khong-co"}, "gateway: 'xa-khong-co' is not", who="admin")
    # another commune's operator cannot make a group of An Bình's speakers; a technician makes none
    await bad({"speakers": ["loa-1"]}, "group:write on xa-an-binh", 403, who="op-phu-my")
    await bad({"speakers": ["loa-1"]}, "group:write", 403, who="technician")

    r = await env.http.post("/api/groups", json={**grp, "speakers": [f"{AN_BINH}/loa-2", "loa-1", "loa-1"]},
                            headers=env.h("op-an-binh"))
    assert r.status_code == 201, r.text
    assert r.json()["speakers"] == ["loa-1", "loa-2"] and r.json()["target"] == f"{AN_BINH}/@thon-dong"
    await bad({"speakers": ["loa-1"]}, "id: xa-an-binh already has")
    # Phú Mỹ neither sees it nor may target it
    assert (await env.http.get(f"/api/groups/{AN_BINH}/thon-dong", headers=env.h("op-phu-my"))).status_code == 404
    assert (await env.http.get("/api/groups", headers=env.h("op-phu-my"))).json() == []
    assert [g["id"] for g in (await env.http.get("/api/groups", headers=env.h("op-an-binh"))).json()] == ["thon-dong"]
    sha = await media(env, tmp_path)
    to_group = {"media_sha256": sha, "targets": [f"{AN_BINH}/@thon-dong"]}
    assert (await env.http.post("/api/broadcasts", json=to_group, headers=env.h("op-phu-my"))).status_code == 403

    # a broadcast to the group records the speakers it meant, and keeps them when the group changes
    r = await env.http.post("/api/broadcasts", json=to_group, headers=env.h("op-an-binh"))
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["targets"] == [f"{AN_BINH}/loa-1", f"{AN_BINH}/loa-2"]
    assert first["groups"] == {f"{AN_BINH}/@thon-dong": ["loa-1", "loa-2"]}
    assert sorted(sp["device"] for sp in first["speakers"]) == ["loa-1", "loa-2"]
    r = await env.http.put(f"/api/groups/{AN_BINH}/thon-dong", json={"name": "Thôn Đông", "speakers": ["loa-3"]},
                           headers=env.h("op-an-binh"))
    assert r.status_code == 200 and r.json()["speakers"] == ["loa-3"], r.text
    again = (await env.http.get(f"/api/broadcasts/{first['id']}", headers=env.h("op-an-binh"))).json()
    assert again["targets"] == first["targets"] and again["groups"] == first["groups"]
    both = [f"{AN_BINH}/@thon-dong", f"{AN_BINH}/loa-3"]  # the same speaker twice: one row
    r = await env.http.post("/api/broadcasts", json={**to_group, "targets": both}, headers=env.h("op-an-binh"))
    assert r.status_code == 201 and [sp["device"] for sp in r.json()["speakers"]] == ["loa-3"], r.text
    r = await env.http.post("/api/broadcasts", json={**to_group, "targets": [PHU_MY, f"{PHU_MY}/@khong-co"]},
                            headers=env.h("op-phu-my"))
    assert r.status_code == 400 and "targets[1]" in r.text and "khong-co" in r.text, r.text

    # schedules: a group must exist; conflicts see its members; an occurrence records them
    pid = await programme(env, sha)
    r = await env.http.post("/api/schedules", json=daily(pid, [f"{AN_BINH}/@thon-tay"]), headers=env.h("op-an-binh"))
    assert r.status_code == 400 and "targets[0]" in r.text and "thon-tay" in r.text, r.text
    r = await env.http.post("/api/schedules", json=daily(pid, [f"{AN_BINH}/@thon-dong"]), headers=env.h("op-an-binh"))
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    ok = await env.http.post("/api/schedules", json=daily(pid, [f"{AN_BINH}/loa-1"]), headers=env.h("op-an-binh"))
    assert ok.status_code == 201, ok.text  # loa-1 left the group: no overlap
    clash = await env.http.post("/api/schedules", json=daily(pid, [f"{AN_BINH}/loa-3"]), headers=env.h("op-an-binh"))
    assert clash.status_code == 409 and f"{AN_BINH}/loa-3" in clash.json()["detail"]["conflicts"][0]["speakers"]
    r = await env.http.post(f"/api/schedules/{sid}/approve", json={"version": 1}, headers=env.h("ap-an-binh"))
    assert r.status_code == 200, r.text
    await env.sched.planner.top_up()

    def sent() -> list[tuple[list[str], dict[str, Any] | None]]:
        with env.sched.store.store.session() as s:
            return [(b.targets, b.target_groups) for b in s.scalars(
                select(Broadcast).join(ScheduleRun, ScheduleRun.broadcast_id == Broadcast.id)
                .where(ScheduleRun.schedule_id == sid))]

    runs = await asyncio.to_thread(sent)
    assert runs and all(r == ([f"{AN_BINH}/loa-3"], {f"{AN_BINH}/@thon-dong": ["loa-3"]}) for r in runs), runs

    # a group a schedule targets is not removed from under it
    r = await env.http.delete(f"/api/groups/{AN_BINH}/thon-dong", headers=env.h("op-an-binh"))
    assert r.status_code == 400 and sid in r.text, r.text
    assert (await env.http.delete(f"/api/schedules/{sid}", headers=env.h("op-an-binh"))).status_code == 204
    assert (await env.http.delete(f"/api/groups/{AN_BINH}/thon-dong", headers=env.h("op-phu-my"))).status_code == 404
    assert (await env.http.delete(f"/api/groups/{AN_BINH}/thon-dong", headers=env.h("op-an-binh"))).status_code == 204
    assert (await env.http.get("/api/groups", headers=env.h("op-an-binh"))).json() == []

    entries = await asyncio.to_thread(env.audit)
    mine = [(a.action, a.actor, a.target) for a in entries if a.action.startswith("group.")]
    target = f"{AN_BINH}/@thon-dong"
    assert mine == [("group.create", "token:op-an-binh", target), ("group.update", "token:op-an-binh", target),
                    ("group.remove", "token:op-an-binh", target)]
    created = next(a for a in entries if a.action == "group.create")
    assert created.detail["speakers"] == ["loa-1", "loa-2"] and created.detail["count"] == 2


async def test_signed_feed_url_without_token_tamper_expiry_rotation(env: Env, tmp_path: Path) -> None:
    sha = await media(env, tmp_path, "ap-an-binh")
    pid = await programme(env, sha, "ap-an-binh")
    for hour, (title, targets, who) in enumerate((("Bản tin An Bình", [AN_BINH], "ap-an-binh"),
                                                  ("Bản tin Phú Mỹ", [PHU_MY], "ap-phu-my"),
                                                  ("Bản tin chung", [f"{AN_BINH}/loa-1", f"{PHU_MY}/loa-9"], "admin"),
                                                  ("Bản nháp", [AN_BINH], "ap-an-binh")), start=6):
        r = await env.http.post("/api/schedules", json=daily(pid, targets, hour, title), headers=env.h(who))
        assert r.status_code == 201, r.text
        if title != "Bản nháp":
            sid = r.json()["id"]
            assert (await env.http.post(f"/api/schedules/{sid}/approve", headers=env.h(who))).status_code == 200

    # who may give out a feed URL
    path = f"/api/communes/{AN_BINH}/feed-url"
    assert (await env.http.post(path, headers=env.h("op-an-binh"))).status_code == 403
    assert (await env.http.post(path, headers=env.h("ap-phu-my"))).status_code == 403
    r = await env.http.post(path, json={"days": 30}, headers=env.h("ap-an-binh"))
    assert r.status_code == 200, r.text
    url = r.json()["url"]
    assert url.startswith(f"http://127.0.0.1:{env.cfg.http.port}/feeds/{AN_BINH}/schedules.ics?")

    async def get(u: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as anon:  # no token, no cookie: a calendar program
            return await anon.get(u)

    r = await get(url)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/calendar"), r.text
    # this commune's approved schedules; of a shared one only this commune's targets; no draft
    assert "Bản tin An Bình" in r.text and "Bản tin chung" in r.text and f"{AN_BINH}/loa-1" in r.text
    assert "Phú Mỹ" not in r.text and PHU_MY not in r.text and "loa-9" not in r.text
    assert "Bản nháp" not in r.text

    q = parse_qs(urlsplit(url).query)
    exp, sig = q["exp"][0], q["sig"][0]
    base = url.split("?")[0]
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    for bad in (f"{base}?exp={exp}&sig={flipped}", f"{base}?exp={int(exp) + 1}&sig={sig}", f"{base}?exp={exp}",
                url.replace(f"/feeds/{AN_BINH}/", f"/feeds/{PHU_MY}/"), f"{base}?exp=x&sig={sig}"):
        assert (await get(bad)).status_code == 404, bad
    # correctly signed but expired
    signer = FeedSigner(media_url_signer(env.cfg).secret, "http://x")
    old = now_ms() // 1000 - 60
    assert (await get(f"{base}?exp={old}&sig={signer.sig(AN_BINH, 1, old)}")).status_code == 403

    # rotation revokes every URL given before; --revoke gives none
    r = await env.http.post(path, json={"rotate": True}, headers=env.h("ap-an-binh"))
    assert r.status_code == 200
    new = r.json()["url"]
    assert (await get(url)).status_code == 404 and (await get(new)).status_code == 200
    r = await env.http.post(f"{path}/revoke", headers=env.h("ap-an-binh"))
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert (await get(new)).status_code == 404

    # the signatures never reach the audit log
    entries = await asyncio.to_thread(env.audit)
    assert [a.action for a in entries if a.action.startswith("schedule.feed")] == \
        ["schedule.feed_url", "schedule.feed_url", "schedule.feed_revoke"]
    dumped = json.dumps([(a.target, a.detail) for a in entries])
    for secret in (sig, parse_qs(urlsplit(new).query)["sig"][0]):
        assert secret not in dumped


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_cli_manages_groups_and_feed_urls(env: Env, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``loaxa groups …`` and ``loaxa schedule feed-url`` in this process (a thread: the commands are
    synchronous HTTP clients of the scheduler running on this event loop)."""
    from loaxa.cli import main

    url = str(env.http.base_url).rstrip("/")
    for who, token in env.tokens.items():
        (tmp_path / who).write_text(token)

    async def cli(who: str, *args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(main, [*args, "--url", url, "--token-file", str(tmp_path / who)])
        out = capsys.readouterr()
        return code, out.out, out.err

    with pytest.raises(SystemExit):
        main(["groups", "add", "--help"])
    groups_help = capsys.readouterr().out
    assert "GATEWAY/@GROUP" in groups_help and "cụm loa" in groups_help and "group:write" in groups_help
    code, out, err = await cli("op-an-binh", "groups", "add", AN_BINH, "thon-dong", "--name", "Thôn Đông",
                               "--speaker", "loa-1", "--speaker", "loa-2")
    assert code == 0 and f"{AN_BINH}/@thon-dong" in out, err
    code, out, err = await cli("op-an-binh", "groups", "add", AN_BINH, "thon-tay", "--name", "Thôn Tây",
                               "--speaker", "loa-8")
    assert code == 2 and "speakers[0]" in err and "loa-8" in err
    code, out, err = await cli("op-an-binh", "groups", "list", "--json")
    assert code == 0 and [g["speakers"] for g in json.loads(out)] == [["loa-1", "loa-2"]], err
    code, out, err = await cli("op-an-binh", "groups", "remove", AN_BINH, "thon-dong")
    assert code == 0 and "removed" in out, err
    code, out, err = await cli("ap-an-binh", "schedule", "feed-url", AN_BINH, "--days", "7")
    assert code == 0 and out.strip().startswith(f"{url}/feeds/{AN_BINH}/schedules.ics?exp="), err
    code, out, err = await cli("op-an-binh", "schedule", "feed-url", AN_BINH)
    assert code == 2 and "feed:admin" in err

def test_feed_signer_check() -> None:
    signer = FeedSigner(b"k" * 32, "https://loaxa.example/")
    now = 1_800_000_000
    sig = signer.sig(AN_BINH, 3, now + 60)
    assert signer.url(AN_BINH, 3, now + 60) == \
        f"https://loaxa.example/feeds/{AN_BINH}/schedules.ics?exp={now + 60}&sig={sig}"
    assert signer.check(AN_BINH, 3, str(now + 60), sig, now) is None
    assert signer.check(AN_BINH, 4, str(now + 60), sig, now) == 404  # rotated
    assert signer.check(PHU_MY, 3, str(now + 60), sig, now) == 404  # another commune
    assert signer.check(AN_BINH, None, str(now + 60), sig, now) == 404  # never issued
    assert signer.check(AN_BINH, 3, str(now + 61), sig, now) == 404  # exp changed
    assert signer.check(AN_BINH, 3, "-1", sig, now) == 404 and signer.check(AN_BINH, 3, None, sig, now) == 404
    assert signer.check(AN_BINH, 3, str(now + 60), sig, now + 61) == 403  # expired
    assert FeedSigner(b"j" * 32, "x").check(AN_BINH, 3, str(now + 60), sig, now) == 404  # another secret
