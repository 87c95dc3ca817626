"""Batched ingest of acks, playback reports and speaker states (scheduler.db.Store.apply) on SQLite
and PostgreSQL: bulk statements, and idempotent by (broadcast, speaker, state), so a resend, a
duplicate from the broker or a second scheduler worker applying the same messages is harmless."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from loaxa.brokers import central_acl
from protocol.models import Ack, PlaybackEvent
from scheduler.db import Incoming, Store
from tests.test_scheduler_store import T0, create
from tests.test_scheduler_store import store as store  # the fixture, on SQLite and PostgreSQL

GWS = [f"xa-nhieu-{i}" for i in range(12)]
DEVS = [f"loa-{i}" for i in range(5)]


@pytest.fixture
def fleet_store(store: Store) -> Iterator[Store]:
    store.register_gateways((g, None) for g in GWS)
    store.apply([Incoming(g, {"online": True, "volume": 40, "name": f"Loa {d}"}, d) for g in GWS for d in DEVS], T0)
    yield store


def reports(bid: str) -> list[Incoming]:
    started = [Incoming(g, PlaybackEvent(broadcast_id=bid, device=d, state="started", at=T0 + 10))
               for g in GWS for d in DEVS]
    finished = [Incoming(g, PlaybackEvent(broadcast_id=bid, device=d, state="finished", at=T0 + 20))
                for g in GWS for d in DEVS]
    return started + finished


def test_speaker_states_are_learned_in_bulk(fleet_store: Store) -> None:
    rows = {g["id"]: g["speakers"] for g in fleet_store.gateways()}
    assert all([s["device"] for s in rows[g]] == DEVS for g in GWS)
    assert rows[GWS[0]][0]["name"] == "Loa loa-0" and rows[GWS[0]][0]["volume"] == 40
    # a state with fewer fields keeps the others
    fleet_store.apply([Incoming(GWS[0], {"online": False}, "loa-0")], T0 + 1)
    sp = fleet_store.gateways()[0]["speakers"][0]
    assert (sp["online"], sp["volume"], sp["name"], sp["last_seen"]) == (False, 40, "Loa loa-0", T0 + 1)


def test_acks_and_reports_applied_twice_and_shuffled_count_once(fleet_store: Store) -> None:
    bid, cmds = create(fleet_store, GWS)
    acks = [Incoming(g, Ack(id=c, ok=True, ts=T0)) for g, c in zip(GWS, cmds, strict=True)]
    msgs = acks + reports(bid)
    fleet_store.apply(msgs, T0 + 100)
    once = fleet_store.broadcast_status(bid)
    # the same messages again (a broker redelivery, a second worker), in another order, in small batches
    again = msgs[:]
    random.Random(7).shuffle(again)
    for i in range(0, len(again), 7):
        fleet_store.apply(again[i : i + 7], T0 + 500)
    twice = fleet_store.broadcast_status(bid)
    assert once["summary"] == {"finished": len(GWS) * len(DEVS)}
    assert twice["speakers"] == once["speakers"]
    assert [(d["state"], d["acked_at"]) for d in twice["gateways"]] == [("delivered", T0 + 100)] * len(GWS)
    sp = once["speakers"][0]
    assert (sp["delivered_at"], sp["started_at"], sp["ended_at"]) == (T0 + 100, T0 + 10, T0 + 20)


def test_reports_before_the_ack_and_out_of_order(fleet_store: Store) -> None:
    bid, cmds = create(fleet_store, GWS[:2])
    gw = GWS[0]
    finished = Incoming(gw, PlaybackEvent(broadcast_id=bid, device="loa-1", state="finished", at=T0 + 20))
    started = Incoming(gw, PlaybackEvent(broadcast_id=bid, device="loa-1", state="started", at=T0 + 10))
    res = fleet_store.apply([finished, started, Incoming(gw, Ack(id=cmds[0], ok=True, ts=T0))], T0 + 50)
    assert res[:2] == ["finished", "started"]  # the reported states
    st = fleet_store.broadcast_status(bid)
    assert st["gateways"][0]["state"] == "delivered"  # a report proves the plan arrived
    row = next(s for s in st["speakers"] if s["gateway"] == gw and s["device"] == "loa-1")
    assert (row["state"], row["started_at"], row["ended_at"]) == ("finished", T0 + 10, T0 + 20)
    others = [s["state"] for s in st["speakers"] if s["gateway"] == gw and s["device"] != "loa-1"]
    assert others == ["delivered"] * (len(DEVS) - 1)
    # a refusal after the plan was delivered changes nothing: the first answer counts
    assert fleet_store.record_ack(gw, Ack(id=cmds[0], ok=False, reason="bad_signature", ts=T0), T0 + 60) == "delivered"
    # a speaker nobody knew of (targets "*") is learned from its report, once
    new = Incoming(gw, PlaybackEvent(broadcast_id=bid, device="loa-new", state="started", at=T0 + 30))
    fleet_store.apply([new, new], T0 + 70)
    st = fleet_store.broadcast_status(bid)
    assert [s["state"] for s in st["speakers"] if s["device"] == "loa-new"] == ["started"]


def test_central_acl_gives_each_worker_the_scheduler_block() -> None:
    text = central_acl(["xa-an-binh"], ["viewer"], workers=["scheduler-2"])
    block = text.split("user scheduler-2\n", 1)[1].split("\n\n", 1)[0]
    assert block.splitlines() == ["topic read loaxa/v1/#", "topic write loaxa/v1/+/cmd"]
    with pytest.raises(ValueError, match="already the name"):
        central_acl(["scheduler-2"], workers=["scheduler-2"])


def test_a_fleet_learned_from_retained_messages_costs_a_few_statements(store: Store) -> None:
    """Retained statuses and speaker states arrive interleaved (a status, then its gateway's speakers):
    a status must not flush the queued speaker states, or a batch costs statements per gateway (a
    national fleet of 10,000 gateways took half an hour to learn on PostgreSQL)."""
    from sqlalchemy import event

    from protocol.models import Status

    gws = [f"xa-hoc-{i}" for i in range(40)]
    store.register_gateways((g, None) for g in gws)
    batch: list[Incoming] = []
    for g in gws:
        batch.append(Incoming(g, Status(state="online", ts=T0)))
        batch += [Incoming(g, {"online": True, "volume": 50}, d) for d in DEVS]
    statements = 0

    def count(*_args: object) -> None:
        nonlocal statements
        statements += 1

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        results = store.apply(batch, T0)
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
    assert [r for r, i in zip(results, batch, strict=True) if isinstance(i.message, Status)] == [True] * len(gws)
    assert statements <= 20, f"{statements} statements for one batch of {len(gws)} gateways"
    rows = {g["id"]: g for g in store.gateways()}
    assert all(rows[g]["status"] == "online" and len(rows[g]["speakers"]) == len(DEVS) for g in gws)


def test_a_national_broadcast_can_name_every_gateway() -> None:
    """10,000 communes' gateways in one POST /api/broadcasts (the limit was 1,000 targets)."""
    from pydantic import ValidationError

    from scheduler.http import MAX_TARGETS, BroadcastIn

    sha = "a" * 64
    assert len(BroadcastIn(media_sha256=sha, targets=[f"xa-{i:05d}" for i in range(10_000)]).targets) == 10_000
    with pytest.raises(ValidationError):
        BroadcastIn(media_sha256=sha, targets=["xa-1"] * (MAX_TARGETS + 1))
