"""The scheduler's dispatcher against a real Mosquitto, a real SQLite file or PostgreSQL database
(each test that uses ``running`` runs on both), a real HTTP server and real ffmpeg; a small MQTT
client plays the gateway (verifies signatures, acks, reports playback)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from loaxa.brokers import CentralBroker
from protocol.models import BroadcastCancelBody, BroadcastPlanBody
from protocol.signing import parse_body_as
from scheduler.config import SchedulerConfig
from scheduler.service import Scheduler
from tests.sched_support import (
    Keys,
    TestGateway,
    add_token,
    bearer,
    make_tone,
    scheduler_config_dict,
    wait_for_async,
)


class Running:
    def __init__(self, sched: Scheduler, keys: Keys, http: httpx.AsyncClient, broker: CentralBroker):
        self.sched = sched
        self.keys = keys
        self.http = http
        self.broker = broker

    async def upload(self, path: Path) -> dict[str, Any]:
        r = await self.http.post(
            "/api/media", params={"name": path.name}, content=await asyncio.to_thread(path.read_bytes)
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def broadcast(self, media: dict[str, Any], targets: list[str], **kw: Any) -> dict[str, Any]:
        r = await self.http.post("/api/broadcasts", json={"media_sha256": media["sha256"], "targets": targets, **kw})
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def status(self, bid: str) -> dict[str, Any]:
        r = await self.http.get(f"/api/broadcasts/{bid}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def gateway(self, gw: str, **kw: Any) -> TestGateway:
        return TestGateway(self.broker, gw, self.keys, **kw)


#: the gateways the tests' scheduler serves (it ignores any other gateway id)
GATEWAYS = ("xa-lech-gio", "xa-an-binh", "xa-tan-lap", "xa-resend", "xa-hoa-binh", "xa-tu-choi", "xa-huy",
            "xa-sau-restart")


@pytest.fixture
def mosquitto(central_broker_factory: Callable[..., CentralBroker]) -> CentralBroker:
    """The central broker as production runs it (ACL, accounts, client ids bound to user names)."""
    return central_broker_factory(gateways=GATEWAYS)


async def start_scheduler(tmp_path: Path, broker: CentralBroker, **sections: dict[str, Any]) -> tuple[Scheduler, Keys]:
    keys = Keys()
    cfg = SchedulerConfig.model_validate(
        scheduler_config_dict(tmp_path, broker, keys, port=None, gateways=GATEWAYS, **sections))
    return Scheduler.build(cfg), keys


@pytest.fixture
async def running(tmp_path: Path, mosquitto: CentralBroker, db_url: str) -> AsyncIterator[Running]:
    sched, keys = await start_scheduler(tmp_path, mosquitto, scheduler={"database_url": db_url})
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    base = f"http://127.0.0.1:{sched.config.http.port}"
    headers = bearer(add_token(sched.store.store))
    async with httpx.AsyncClient(base_url=base, timeout=30, headers=headers) as http:

        async def up() -> bool:
            try:
                r = await http.get("/api/health")
            except httpx.HTTPError:
                return False
            return r.status_code == 200 and bool(r.json()["mqtt_connected"])

        await wait_for_async(up, what="scheduler HTTP + MQTT up")
        yield Running(sched, keys, http, mosquitto)
    stop.set()
    await asyncio.wait_for(task, 15)


@pytest.fixture(scope="module")
def tone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tone(tmp_path_factory.mktemp("audio") / "tone.wav", 1.0)


async def test_signed_plan_arrives_verifies_and_expires(running: Running, tone: Path) -> None:
    gw = running.gateway("xa-an-binh")
    await gw.connect()
    try:
        media = await running.upload(tone)
        st = await running.broadcast(media, ["xa-an-binh"], priority="emergency", volume=90, title="Bão số 9")
        [rec] = await gw.wait_for(1, "broadcast.plan")
        assert rec.verified, rec.error
        assert rec.envelope.key == running.keys.key_id
        # MQTT 5 Message Expiry = remaining lifetime of the command (start now + 1 s audio + 1 h late)
        assert rec.expiry_s is not None and 3000 < rec.expiry_s <= 3602
        body = parse_body_as(rec.envelope, BroadcastPlanBody)
        [item] = body.items
        assert item.broadcast_id == st["id"] and item.targets == "*" and item.volume == 90 and item.priority == 9
        assert item.start_at is None and item.title == "Bão số 9"
        # the media URL in the plan serves exactly the bytes the hash names
        async with httpx.AsyncClient() as c:
            r = await c.get(item.media.url)
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == item.media.sha256
        assert len(r.content) == item.media.bytes and 900 <= item.media.duration_ms <= 1200

        async def delivered() -> bool:
            s = await running.status(st["id"])
            return bool(s["gateways"][0]["state"] == "delivered")

        await wait_for_async(delivered, what="plan acked")
    finally:
        await gw.disconnect()


async def test_offline_gateway_gets_plan_when_online_until_acked(running: Running, tone: Path) -> None:
    media = await running.upload(tone)
    st = await running.broadcast(media, ["xa-tan-lap/loa-cho"])
    bid = st["id"]
    assert (await running.status(bid))["gateways"][0]["state"] == "pending"

    # 1st appearance: the gateway connects and says online -> gets the plan; its ack is "lost"
    gw = running.gateway("xa-tan-lap", auto_ack=False)
    await gw.connect()
    [first] = await gw.wait_for(1, "broadcast.plan")
    assert first.verified and parse_body_as(first.envelope, BroadcastPlanBody).items[0].targets == ["loa-cho"]
    await gw.disconnect()

    # 2nd appearance: sent again, the same envelope; the gateway says it has seen it -> delivered
    gw2 = running.gateway("xa-tan-lap", auto_ack=False)
    await gw2.connect()
    [again] = await gw2.wait_for(1, "broadcast.plan")
    assert again.envelope == first.envelope
    await gw2.ack(again.envelope.id, ok=False, reason="replay", error="seen before")

    async def delivered() -> dict[str, Any] | None:
        s = await running.status(bid)
        return s if s["gateways"][0]["state"] == "delivered" else None

    s = await wait_for_async(delivered, what="replay ack counts as delivered")
    assert s["gateways"][0]["attempts"] >= 2
    assert [sp["state"] for sp in s["speakers"]] == ["delivered"]
    await gw2.disconnect()

    # 3rd appearance: nothing pending for it any more; a new broadcast arrives alone
    gw3 = running.gateway("xa-tan-lap")
    await gw3.connect()
    st2 = await running.broadcast(media, ["xa-tan-lap"])
    got = await gw3.wait_for(1, "broadcast.plan")
    assert [parse_body_as(r.envelope, BroadcastPlanBody).items[0].broadcast_id for r in got] == [st2["id"]]
    await gw3.disconnect()


async def test_resend_while_online_until_acked(tmp_path: Path, mosquitto: CentralBroker, tone: Path) -> None:
    sched, keys = await start_scheduler(tmp_path, mosquitto, dispatch={"resend_interval_s": 1})
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    gw = TestGateway(mosquitto, "xa-resend", keys, auto_ack=False)
    try:
        await wait_for_async(lambda: _true(sched.dispatcher.link.connected.is_set()), what="MQTT up")
        await gw.connect()
        media = await sched.store.call(sched.library.ingest, _copy(tone, tmp_path), "t.wav")
        await sched.store.call(sched.dispatcher.db.add_media, media)
        bid = await sched.dispatcher.create_broadcast(
            media_sha256=media.sha256, targets=["xa-resend"], start_at=None, priority=3, volume=50
        )
        got = await gw.wait_for(3, "broadcast.plan", copies=True)
        assert len({r.envelope.id for r in got}) == 1  # the same command each time
        await gw.ack(got[0].envelope.id)
        st = await wait_for_async(
            lambda: _status_if(sched, bid, lambda s: s["gateways"][0]["state"] == "delivered"), what="acked"
        )
        n = st["gateways"][0]["attempts"]
        assert n >= 3
    finally:
        await gw.disconnect()
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_refusals_that_can_heal_keep_the_plan_pending(
    tmp_path: Path, mosquitto: CentralBroker, tone: Path
) -> None:
    """A gateway whose clock is wrong answers ``deferred``/``future``/``expired``, or has a fault
    (``internal``): on main the first such answer was final and the speakers were marked failed, so
    an emergency broadcast was lost for good. Now the same envelope is sent again until acked; the
    envelope names its gateway."""
    sched, keys = await start_scheduler(tmp_path, mosquitto, dispatch={"resend_interval_s": 1})
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    gw = TestGateway(mosquitto, "xa-lech-gio", keys, auto_ack=False)
    try:
        await wait_for_async(lambda: _true(sched.dispatcher.link.connected.is_set()), what="MQTT up")
        await gw.connect()
        media = await sched.store.call(sched.library.ingest, _copy(tone, tmp_path), "t.wav")
        await sched.store.call(sched.dispatcher.db.add_media, media)
        bid = await sched.dispatcher.create_broadcast(
            media_sha256=media.sha256, targets=["xa-lech-gio/loa-1"], start_at=None, priority=9, volume=90
        )
        reasons = ["deferred", "future", "expired", "internal", "timeout"]
        for n, reason in enumerate(reasons, start=1):
            got = await gw.wait_for(n, "broadcast.plan", copies=True, within=20)
            env = got[-1].envelope
            assert got[-1].verified and env.gw == "xa-lech-gio"
            await gw.ack(env.id, ok=False, reason=reason, error=f"gateway says {reason}")

            async def noted(r: str = reason) -> dict[str, Any] | None:
                return await _status_if(sched, bid, lambda s: r in (s["gateways"][0]["error"] or ""))

            st = await wait_for_async(noted, what=f"{reason} noted")
            assert st["gateways"][0]["state"] == "pending" and st["speakers"][0]["state"] == "pending", st
        got = await gw.wait_for(len(reasons) + 1, "broadcast.plan", copies=True, within=20)
        assert len({r.envelope.id for r in got}) == 1  # the same command each time
        await gw.ack(got[0].envelope.id)
        st = await wait_for_async(
            lambda: _status_if(sched, bid, lambda s: s["gateways"][0]["state"] == "delivered"), what="acked"
        )
        assert st["speakers"][0]["state"] == "delivered"
    finally:
        await gw.disconnect()
        stop.set()
        await asyncio.wait_for(task, 15)


def _copy(src: Path, tmp: Path) -> Path:
    dst = tmp / "copy-of-tone.wav"
    dst.write_bytes(src.read_bytes())
    return dst


async def _true(v: bool) -> bool:
    return v


async def _status_if(sched: Scheduler, bid: str, pred: Any) -> dict[str, Any] | None:
    st = await sched.store.call(sched.dispatcher.db.broadcast_status, bid)
    return st if pred(st) else None


async def test_acks_and_playback_drive_speaker_states(running: Running, tone: Path) -> None:
    gw = running.gateway("xa-hoa-binh")
    await gw.connect()
    try:
        # speakers learned from retained device state (sensors, without volume/playing, are not speakers)
        await gw.speaker_state("loa-1", online=True, volume=70, name="Loa chợ")
        await gw.speaker_state("loa-2", online=True, volume=60, playing=None, kind="speaker")
        await gw.speaker_state("cam-bien-nuoc", online=True, rssi=-70)

        async def learned() -> bool:
            r = await running.http.get("/api/gateways")
            gws = {g["id"]: g for g in r.json()}
            return "xa-hoa-binh" in gws and len(gws["xa-hoa-binh"]["speakers"]) == 2

        await wait_for_async(learned, what="speakers learned")
        media = await running.upload(tone)
        st = await running.broadcast(media, ["xa-hoa-binh"])
        bid = st["id"]
        assert [(sp["device"], sp["state"]) for sp in st["speakers"]] == [
            ("loa-1", "pending"),
            ("loa-2", "pending"),
        ]
        await gw.wait_for(1, "broadcast.plan")

        async def states(expect: dict[str, str]) -> dict[str, Any] | None:
            s = await running.status(bid)
            got = {sp["device"]: sp["state"] for sp in s["speakers"]}
            return s if got == expect else None

        await wait_for_async(lambda: states({"loa-1": "delivered", "loa-2": "delivered"}), what="delivered")
        t0 = 1_900_000_000_000
        await gw.playback(bid, "loa-1", "started", at=t0)
        await wait_for_async(lambda: states({"loa-1": "started", "loa-2": "delivered"}), what="started")
        await gw.playback(bid, "loa-1", "finished", at=t0 + 1000)
        # out of order on loa-2: finished first, then started (which must not move it back)
        await gw.playback(bid, "loa-2", "finished", at=t0 + 1010)
        await gw.playback(bid, "loa-2", "started", at=t0 + 10)
        # a late, stray report after finishing must not regress loa-1 either
        await gw.playback(bid, "loa-1", "failed", at=t0 + 5000, reason="late report")
        # a speaker nobody told us about reports it was preempted
        await gw.playback(bid, "loa-3", "preempted", at=t0 + 500, reason="emergency broadcast")
        # garbage on the event topic is ignored without harm
        await gw.raw_event(b"{not json")
        await gw.raw_event(b'{"kind":"playback","broadcast_id":"x","device":"BAD ID","state":"started","at":1}')

        s = await wait_for_async(
            lambda: states({"loa-1": "finished", "loa-2": "finished", "loa-3": "preempted"}),
            what="final states",
        )
        sp = {x["device"]: x for x in s["speakers"]}
        assert sp["loa-1"]["started_at"] == t0 and sp["loa-1"]["ended_at"] == t0 + 1000
        assert sp["loa-1"]["reason"] is None
        assert sp["loa-2"]["started_at"] == t0 + 10 and sp["loa-2"]["ended_at"] == t0 + 1010
        assert sp["loa-3"]["reason"] == "emergency broadcast"
        assert s["summary"] == {"finished": 2, "preempted": 1}

        # a second broadcast to two named speakers: one fails, one is skipped; later reports do not undo it
        st2 = await running.broadcast(media, ["xa-hoa-binh/loa-1", "xa-hoa-binh/loa-2"], priority="priority")
        await gw.wait_for(2, "broadcast.plan")
        bid2 = st2["id"]
        await gw.playback(bid2, "loa-1", "failed", reason="amplifier off")
        await gw.playback(bid2, "loa-2", "skipped", reason="outside quiet hours")
        await gw.playback(bid2, "loa-1", "finished")

        async def final2() -> dict[str, Any] | None:
            s = await running.status(bid2)
            got = {x["device"]: (x["state"], x["reason"]) for x in s["speakers"]}
            ok = got == {"loa-1": ("failed", "amplifier off"), "loa-2": ("skipped", "outside quiet hours")}
            return s if ok else None

        await wait_for_async(final2, what="failed / skipped")
    finally:
        await gw.disconnect()


async def test_refusal_marks_speakers_failed(running: Running, tone: Path) -> None:
    gw = running.gateway("xa-tu-choi", auto_ack=False)
    await gw.connect()
    try:
        media = await running.upload(tone)
        st = await running.broadcast(media, ["xa-tu-choi/loa-1"])
        [rec] = await gw.wait_for(1, "broadcast.plan")
        await gw.ack(rec.envelope.id, ok=False, reason="media_unavailable", error="download failed: HTTP 404")

        async def refused() -> dict[str, Any] | None:
            s = await running.status(st["id"])
            return s if s["gateways"][0]["state"] == "refused" else None

        s = await wait_for_async(refused, what="refused")
        assert "media_unavailable" in s["gateways"][0]["error"]
        assert s["speakers"][0]["state"] == "failed" and "download failed" in s["speakers"][0]["reason"]
    finally:
        await gw.disconnect()


async def test_cancel_publishes_broadcast_cancel(running: Running, tone: Path) -> None:
    gw = running.gateway("xa-huy")
    await gw.connect()
    try:
        media = await running.upload(tone)
        st = await running.broadcast(media, ["xa-huy/loa-1", "xa-huy/loa-2"], start_at="2099-01-01T06:00:00")
        bid = st["id"]
        [plan] = await gw.wait_for(1, "broadcast.plan")
        # naive ISO time = Asia/Ho_Chi_Minh (UTC+7)
        assert parse_body_as(plan.envelope, BroadcastPlanBody).items[0].start_at == 4070905200000

        async def delivered() -> bool:
            return bool((await running.status(bid))["gateways"][0]["state"] == "delivered")

        await wait_for_async(delivered, what="plan acked")
        r = await running.http.post(f"/api/broadcasts/{bid}/cancel")
        assert r.status_code == 200, r.text
        [cancel] = await gw.wait_for(1, "broadcast.cancel")
        assert cancel.verified and cancel.expiry_s is not None and cancel.expiry_s > 0
        assert parse_body_as(cancel.envelope, BroadcastCancelBody).broadcast_ids == [bid]

        async def cancelled() -> dict[str, Any] | None:
            s = await running.status(bid)
            kinds = {d["kind"]: d["state"] for d in s["gateways"]}
            return s if kinds == {"plan": "delivered", "cancel": "delivered"} else None

        s = await wait_for_async(cancelled, what="cancel acked")
        assert s["cancelled"] is True
        assert {sp["state"] for sp in s["speakers"]} == {"skipped"}
        assert {sp["reason"] for sp in s["speakers"]} == {"cancelled"}
        # cancelling twice sends nothing more; unknown ids are a clear 404
        r = await running.http.post(f"/api/broadcasts/{bid}/cancel")
        assert r.status_code == 200 and len(r.json()["gateways"]) == 2
        r = await running.http.post("/api/broadcasts/no-such-id/cancel")
        assert r.status_code == 404 and "no broadcast" in r.json()["detail"]
    finally:
        await gw.disconnect()


async def test_bad_broadcast_requests_are_refused(running: Running, tone: Path) -> None:
    media = await running.upload(tone)
    bad = [
        ({"media_sha256": media["sha256"], "targets": ["Xa An Binh"]}, "target"),
        ({"media_sha256": media["sha256"], "targets": ["gw/dev/extra"]}, "GATEWAY/DEVICE"),
        ({"media_sha256": media["sha256"], "targets": ["gw"]}, "unknown gateway"),
        ({"media_sha256": "0" * 64, "targets": ["xa-an-binh"]}, "not in the library"),
        ({"media_sha256": media["sha256"], "targets": ["xa-an-binh"], "start_at": "2001-01-01T00:00:00"}, "past"),
        ({"media_sha256": media["sha256"], "targets": ["xa-an-binh"], "volume": 101}, "volume"),
    ]
    for body, words in bad:
        r = await running.http.post("/api/broadcasts", json=body)
        assert r.status_code in (400, 422), (body, r.text)
        assert words in r.text, (words, r.text)
    assert (await running.http.get("/api/broadcasts")).json() == []
    r = await running.http.put("/api/gateways/xa-an-phu", json={"commune": "Xã An Phú"})
    assert r.status_code == 200
    gws = {g["id"]: g for g in (await running.http.get("/api/gateways")).json()}
    assert gws["xa-an-phu"]["commune"] == "Xã An Phú" and gws["xa-an-phu"]["status"] is None
    r = await running.http.put("/api/gateways/Xa%20An%20Phu", json={"commune": "x"})
    assert r.status_code == 422


async def test_pending_plans_survive_a_scheduler_restart(
    tmp_path: Path, mosquitto: CentralBroker, tone: Path, db_url: str
) -> None:
    keys = Keys()
    raw = scheduler_config_dict(tmp_path, mosquitto, keys, gateways=GATEWAYS, scheduler={"database_url": db_url})
    cfg = SchedulerConfig.model_validate(raw)
    sched = Scheduler.build(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    await wait_for_async(lambda: _true(sched.dispatcher.link.connected.is_set()), what="MQTT up")
    media = await sched.store.call(sched.library.ingest, _copy(tone, tmp_path), "t.wav")
    await sched.store.call(sched.dispatcher.db.add_media, media)
    bid = await sched.dispatcher.create_broadcast(
        media_sha256=media.sha256, targets=["xa-sau-restart"], start_at=None, priority=3, volume=50
    )
    stop.set()
    await asyncio.wait_for(task, 15)

    # a new scheduler process on the same database; the gateway appears only now
    sched2 = Scheduler.build(SchedulerConfig.model_validate(raw))
    stop2 = asyncio.Event()
    task2 = asyncio.create_task(sched2.run(stop2))
    gw = TestGateway(mosquitto, "xa-sau-restart", keys)
    try:
        await wait_for_async(lambda: _true(sched2.dispatcher.link.connected.is_set()), what="MQTT up again")
        await gw.connect()
        [rec] = await gw.wait_for(1, "broadcast.plan")
        assert rec.verified
        assert parse_body_as(rec.envelope, BroadcastPlanBody).items[0].broadcast_id == bid
        await wait_for_async(
            lambda: _status_if(sched2, bid, lambda s: s["gateways"][0]["state"] == "delivered"), what="acked"
        )
    finally:
        await gw.disconnect()
        stop2.set()
        await asyncio.wait_for(task2, 15)


async def test_signing_key_id_is_derived_from_the_key(tmp_path: Path, mosquitto: CentralBroker) -> None:
    """The scheduler signs under the id derived from its key; a configured id that is not the key's
    own is refused at start-up (on main any label was used as the key id)."""
    from scheduler.service import SetupError

    keys = Keys()
    cfg = scheduler_config_dict(tmp_path, mosquitto, keys, gateways=GATEWAYS)
    cfg["signing"]["key_id"] = "centre-key-1"
    with pytest.raises(SetupError, match=keys.key_id):
        Scheduler.build(SchedulerConfig.model_validate(cfg))
    del cfg["signing"]["key_id"]
    sched = Scheduler.build(SchedulerConfig.model_validate(cfg))
    try:
        assert sched.dispatcher.signer.key_id == keys.key_id
    finally:
        sched.store.close()
