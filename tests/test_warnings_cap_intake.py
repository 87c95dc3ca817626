"""CAP 1.2 intake against a running scheduler: real Mosquitto, real SQLite, real HTTP, real TTS
(espeak-ng + ffmpeg); two small MQTT clients play the gateways of the two demo communes and record
every signed command they get (a plan = something would play)."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from loaxa.brokers import CentralBroker
from protocol.models import BroadcastCancelBody, BroadcastPlanBody
from protocol.signing import parse_body_as
from scheduler.config import SchedulerConfig
from scheduler.service import Scheduler
from tests.conftest import run_loaxa
from tests.sched_support import Keys, TestGateway, add_token, bearer, scheduler_config_dict, wait_for_async
from tests.warnings_cap_support import COMMUNES, SHARED_CAP, XML_BOMB, XXE, cap_time, flood_alert, ref

GWS = [c["id"] for c in COMMUNES]
XML = {"Content-Type": "application/cap+xml"}


class FeedServer:
    """A CAP publisher's web server: an Atom feed at /feed.atom, messages at /cap/NAME.xml."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {"/feed.atom": atom_feed([])}
        files = self.files

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_a: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def publish(self, entries: list[tuple[str, bytes]]) -> None:
        for name, raw in entries:
            self.files[f"/cap/{name}.xml"] = raw
        self.files["/feed.atom"] = atom_feed([name for name, _ in entries])

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def atom_feed(names: list[str]) -> bytes:
    entries = "".join(f"<entry><id>urn:cap:{n}</id><title>{n}</title><updated>2026-12-02T10:00:00Z</updated>"
                      f'<link rel="alternate" type="application/cap+xml" href="/cap/{n}.xml"/></entry>'
                      for n in reversed(names))  # newest first, as feeds do
    return (f'<?xml version="1.0" encoding="UTF-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
            f"<id>urn:kttv</id><title>KTTV</title><updated>2026-12-02T10:00:00Z</updated>{entries}</feed>").encode()


@dataclass
class Centre:
    sched: Scheduler
    http: httpx.AsyncClient
    trusted: dict[str, str]
    untrusted: dict[str, str]
    gateways: dict[str, TestGateway]
    feed: FeedServer

    async def post(self, raw: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.http.post("/api/cap", content=raw, headers={**XML, **(headers or self.trusted)})

    def _commands(self, gw: str, kind: str) -> list[Any]:
        """Each command once: the scheduler may send a command again until its ack is applied."""
        seen: dict[str, Any] = {}
        for r in self.gateways[gw].received:
            if r.envelope.kind == kind:
                seen.setdefault(r.envelope.id, r.envelope)
        return list(seen.values())

    def plans(self, gw: str) -> list[Any]:
        return [parse_body_as(e, BroadcastPlanBody) for e in self._commands(gw, "broadcast.plan")]

    def cancels(self, gw: str) -> list[str]:
        return [bid for e in self._commands(gw, "broadcast.cancel")
                for bid in parse_body_as(e, BroadcastCancelBody).broadcast_ids]


@pytest.fixture
async def centre(tmp_path: Path, central_broker_factory: Callable[..., CentralBroker]) -> AsyncIterator[Centre]:
    broker = central_broker_factory(gateways=GWS)
    keys = Keys()
    cfg_dict = scheduler_config_dict(tmp_path, broker, keys, gateways=GWS)
    cfg_dict["gateways"] = COMMUNES
    feed = FeedServer()
    cfg_dict["cap"] = {"trusted_sources": ["kttv-tinh"],
                       "feeds": [{"url": f"{feed.url}/feed.atom", "source": "kttv-tinh", "interval_s": 5}]}
    sched = Scheduler.build(SchedulerConfig.model_validate(cfg_dict))
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    store = sched.store.store
    admin = bearer(add_token(store))
    trusted = bearer(add_token(store, "alert-source", name="kttv-tinh"))
    untrusted = bearer(add_token(store, "alert-source", name="tram-thuy-van"))
    gateways = {gw: TestGateway(broker, gw, keys) for gw in GWS}
    for g in gateways.values():
        await g.connect()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sched.config.http.port}", timeout=60,
                                 headers=admin) as http:

        async def up() -> bool:
            try:
                r = await http.get("/api/gateways")
            except httpx.HTTPError:
                return False
            return r.status_code == 200 and all(g["status"] == "online" for g in r.json() if g["id"] in GWS)

        await wait_for_async(up, within=30, what="scheduler up, both gateways online")
        yield Centre(sched, http, trusted, untrusted, gateways, feed)
    feed.close()
    for g in gateways.values():
        await g.disconnect()
    stop.set()
    await asyncio.wait_for(task, 15)


async def test_oasis_example_matches_no_commune_and_nothing_plays(centre: Centre) -> None:
    r = await centre.post((SHARED_CAP / "oasis-amber-alert-example.xml").read_bytes())
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["identifier"] == "KAR0-0306112239-SW"
    assert body["decision"] == "no_match" and body["gateways"] == [] and body["broadcast_id"] is None
    # posted again: a duplicate, answered the same way, still nothing sent
    again = (await centre.post((SHARED_CAP / "oasis-amber-alert-example.xml").read_bytes())).json()
    assert again["decision"] == "duplicate" and again["gateways"] == []
    await asyncio.sleep(1.0)  # nothing is expected; give a stray plan the time to arrive
    assert all(not g.received for g in centre.gateways.values())
    # the same from the command line: `loaxa warnings cap send` then `cap list`
    env = {"LOAXA_URL": str(centre.http.base_url), "LOAXA_TOKEN": centre.trusted["Authorization"].split()[1]}
    sent = await asyncio.to_thread(run_loaxa, "warnings", "cap", "send",
                                   str(SHARED_CAP / "oasis-amber-alert-example.xml"), env=env)
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["decision"] == "duplicate"
    env["LOAXA_TOKEN"] = centre.http.headers["Authorization"].split()[1]
    listed = await asyncio.to_thread(run_loaxa, "warnings", "cap", "list", env=env)
    assert listed.returncode == 0 and "no_match" in listed.stdout and "KAR0-0306112239-SW" in listed.stdout
    # the raw message is in the audit log, anchored by its hash
    audit = (await centre.http.get("/api/audit", params={"action": "cap.receive"})).json()
    entry = audit[-1] if isinstance(audit, list) else audit["entries"][-1]
    assert "KAR0-0306112239-SW" in entry["detail"]["raw"] and len(entry["detail"]["raw_sha256"]) == 64


async def test_alert_update_cancel_on_one_of_two_communes(centre: Centre) -> None:
    sent1 = datetime.now(UTC) - timedelta(minutes=2)
    r = await centre.post(flood_alert("lu-2026-001", sent=sent1))
    assert r.status_code == 202, r.text
    first = r.json()
    assert first["decision"] == "sent" and first["gateways"] == ["xa-an-binh"] and first["priority"] == 9
    [received] = await centre.gateways["xa-an-binh"].wait_for(1, "broadcast.plan", within=30)
    plan = parse_body_as(received.envelope, BroadcastPlanBody).items[0]
    assert plan.broadcast_id == first["broadcast_id"] and plan.priority == 9 and plan.media.duration_ms > 2000

    sent2 = datetime.now(UTC) - timedelta(minutes=1)
    upd = flood_alert("lu-2026-002", msg_type="Update", references=ref("lu-2026-001", cap_time(sent1)),
                      headline="Lũ sông Cái tiếp tục lên", sent=sent2)
    second = (await centre.post(upd)).json()
    assert second["decision"] == "sent" and second["cancelled_broadcasts"] == [first["broadcast_id"]]
    await centre.gateways["xa-an-binh"].wait_for(2, "broadcast.plan", within=30)
    await centre.gateways["xa-an-binh"].wait_for(1, "broadcast.cancel", within=30)
    assert centre.cancels("xa-an-binh") == [first["broadcast_id"]]
    assert centre.plans("xa-an-binh")[1].items[0].broadcast_id == second["broadcast_id"]

    cancel = flood_alert("lu-2026-003", msg_type="Cancel", references=ref("lu-2026-002", cap_time(sent2)),
                         headline="Hủy cảnh báo lũ")
    third = (await centre.post(cancel)).json()
    assert third["decision"] == "cancelled" and third["cancelled_broadcasts"] == [second["broadcast_id"]]
    await centre.gateways["xa-an-binh"].wait_for(2, "broadcast.cancel", within=30)
    alerts = {a["identifier"]: a for a in (await centre.http.get("/api/cap")).json()}
    assert alerts["lu-2026-001"]["state"] == "superseded" and alerts["lu-2026-002"]["state"] == "cancelled"
    assert len(centre.plans("xa-an-binh")) == 2  # the Cancel itself plays nothing
    assert not centre.gateways["xa-phu-my"].received  # the other commune heard nothing


async def test_test_and_expired_alerts_play_nothing(centre: Centre) -> None:
    test = (await centre.post(flood_alert("thu-001", status="Test"))).json()
    assert test["decision"] == "logged" and test["gateways"] == ["xa-an-binh"] and test["broadcast_id"] is None
    exercise = (await centre.post(flood_alert("dien-tap-001", status="Exercise"))).json()
    assert exercise["decision"] == "logged"
    restricted = flood_alert("han-che-001").replace(b"<scope>Public</scope>",
                                                    b"<scope>Restricted</scope><restriction>ban chi huy</restriction>")
    assert (await centre.post(restricted)).json()["decision"] == "logged"
    expired = (await centre.post(flood_alert("cu-001", expires_in=-timedelta(minutes=5)))).json()
    assert expired["decision"] == "expired" and expired["broadcast_id"] is None
    await asyncio.sleep(1.0)
    assert all(not g.received for g in centre.gateways.values())


async def test_untrusted_source_waits_for_an_approver(centre: Centre) -> None:
    later = datetime.now(UTC) + timedelta(minutes=30)
    body = (await centre.post(flood_alert("tv-001", polygon=None, circle="10.41,105.91 3", effective=later),
                              centre.untrusted)).json()
    assert body["decision"] == "pending_approval" and body["gateways"] == ["xa-phu-my"]
    assert body["start_at"] == int(later.replace(microsecond=0).timestamp() * 1000)
    await asyncio.sleep(1.0)
    assert not centre.gateways["xa-phu-my"].received
    # an alert source cannot approve its own alert
    r = await centre.http.post(f"/api/cap/{body['id']}/approve", headers=centre.untrusted)
    assert r.status_code == 403
    r = await centre.http.post(f"/api/cap/{body['id']}/approve")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "active" and r.json()["approved_by"]
    [plan] = await centre.gateways["xa-phu-my"].wait_for(1, "broadcast.plan", within=30)
    item = parse_body_as(plan.envelope, BroadcastPlanBody).items[0]
    assert item.start_at == body["start_at"] and item.priority == 9
    r = await centre.http.post(f"/api/cap/{body['id']}/approve")
    assert r.status_code == 409 and r.json()["element"] == "state"

    # an approver may refuse one instead, with a reason (kept in the audit log); nothing plays
    other = (await centre.post(flood_alert("tv-002", polygon=None, circle="10.41,105.91 3", effective=later),
                               centre.untrusted)).json()
    assert other["decision"] == "pending_approval"
    r = await centre.http.post(f"/api/cap/{other['id']}/reject", json={"reason": " "})
    assert r.status_code == 422
    r = await centre.http.post(f"/api/cap/{other['id']}/reject", json={"reason": "tin chưa được xác minh"},
                               headers=centre.untrusted)
    assert r.status_code == 403
    # the approver refuses it from the command line: `loaxa warnings cap reject ID --reason …`
    env = {"LOAXA_URL": str(centre.http.base_url), "LOAXA_TOKEN": centre.http.headers["Authorization"].split()[1]}
    out = await asyncio.to_thread(run_loaxa, "warnings", "cap", "reject", str(other["id"]),
                                  "--reason", "tin chưa được xác minh", env=env)
    assert out.returncode == 0 and "rejected" in out.stdout, out.stdout + out.stderr
    alerts = {a["id"]: a for a in (await centre.http.get("/api/cap")).json()}
    assert (alerts[other["id"]]["state"], alerts[other["id"]]["decision"]) == ("done", "rejected")
    denied = await asyncio.to_thread(run_loaxa, "warnings", "cap", "reject", str(other["id"]), env=env)
    assert denied.returncode == 2 and "--reason" in denied.stderr  # a reason is required
    r = await centre.http.post(f"/api/cap/{other['id']}/approve")
    assert r.status_code == 409 and r.json()["element"] == "state"
    await asyncio.sleep(1.0)
    plans = [r for r in centre.gateways["xa-phu-my"].received if r.envelope.kind == "broadcast.plan"]
    assert len(plans) == 1  # only the approved one's plan


async def test_malformed_and_hostile_messages_are_refused(centre: Centre) -> None:
    for raw, element in ((XML_BOMB, "alert"), (XXE, "alert"),
                         (flood_alert("x", severity="Catastrophic"), "alert/info[1]/severity"),
                         (flood_alert("y").replace(b"<status>Actual</status>", b""), "alert/status")):
        r = await centre.post(raw)
        assert r.status_code == 400, r.text
        assert r.json()["element"] == element
    r = await centre.post(b"<" * (600 * 1024))
    assert r.status_code == 413
    # only a caller with cap:submit may post
    viewer = bearer(add_token(centre.sched.store.store, "viewer", name="nguoi-xem"))
    r = await centre.post(flood_alert("z"), viewer)
    assert r.status_code == 403
    audit = (await centre.http.get("/api/audit", params={"action": "cap.refused"})).json()
    entries = audit if isinstance(audit, list) else audit["entries"]
    assert len(entries) >= 4 and any("lol9" in e["detail"]["raw"] for e in entries)
    assert all(not g.received for g in centre.gateways.values())


async def test_alerts_from_a_polled_atom_feed(centre: Centre) -> None:
    sent = datetime.now(UTC) - timedelta(minutes=1)
    alert = flood_alert("feed-001", polygon=None, geocode="29884", sent=sent)
    cancel = flood_alert("feed-002", msg_type="Cancel", references=ref("feed-001", cap_time(sent)))
    centre.feed.publish([("feed-001", alert)])
    [plan] = await centre.gateways["xa-phu-my"].wait_for(1, "broadcast.plan", within=40)
    bid = parse_body_as(plan.envelope, BroadcastPlanBody).items[0].broadcast_id
    centre.feed.publish([("feed-001", alert), ("feed-002", cancel)])
    await centre.gateways["xa-phu-my"].wait_for(1, "broadcast.cancel", within=40)
    assert centre.cancels("xa-phu-my") == [bid]

    async def cancelled() -> bool:  # the cancel goes out to the gateways, then the alert's state is stored
        alerts = {a["identifier"]: a for a in (await centre.http.get("/api/cap")).json()}
        return bool(alerts.get("feed-001", {}).get("state") == "cancelled")

    await wait_for_async(cancelled, within=20, what="feed-001 recorded as cancelled")
    alerts = {a["identifier"]: a for a in (await centre.http.get("/api/cap")).json()}
    assert alerts["feed-001"]["source"] == "feed:kttv-tinh" and alerts["feed-001"]["state"] == "cancelled"
    assert len(centre.plans("xa-phu-my")) == 1  # polled again and again, sent once
    assert not centre.gateways["xa-an-binh"].received
