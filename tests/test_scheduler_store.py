"""The scheduler's Store on a real SQLite file: state rules that need no broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from loaxa.localsetup import make_signer
from protocol.models import Ack, BroadcastPlanBody, Envelope, MediaRef, PlanItem, PlaybackEvent, Status
from scheduler.db import BadRequest, Incoming, Store, Target, advance_speaker
from scheduler.models import Broadcast, Media, SpeakerDelivery

SHA = "ab" * 32
T0 = 1_800_000_000_000


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A Store on SQLite and, in a second run, on PostgreSQL (both real servers)."""
    st = Store(db_url)
    st.upgrade()  # the migrations, as the scheduler runs them on start
    st.add_media(
        Media(
            sha256=SHA,
            size=1000,
            duration_ms=2000,
            content_type="audio/mpeg",
            path="x.mp3",
            original_name=None,
            created_at=T0,
        )
    )
    yield st
    st.close()


signer = make_signer()


def make_plan(b: Broadcast, targets: list[str] | str, gateway: str = "") -> BroadcastPlanBody:
    ref = MediaRef(sha256=b.media_sha256, url="http://x/m", bytes=1000, duration_ms=2000)
    return BroadcastPlanBody(items=[PlanItem(broadcast_id=b.id, media=ref, targets=targets)])  # type: ignore[arg-type]


def make_env(kind: str, body: BaseModel, ttl: int, gw: str) -> Envelope:
    return signer.envelope(kind, body, gw=gw, ttl_ms=ttl, issued_at=T0)


def create(store: Store, targets: list[str], **kw: int) -> tuple[str, list[str]]:
    bid, out = store.create_broadcast(
        media_sha256=SHA,
        targets=targets,
        start_at=None,
        priority=3,
        volume=70,
        repeat=1,
        title=None,
        created_by=None,
        max_late_ms=kw.get("max_late_ms", 60_000),
        now=T0,
        make_plan=make_plan,
        make_envelope=make_env,
    )
    return bid, [o.command_id for o in out]


def test_sqlite_commits_are_durable_before_commands_are_published(tmp_path: Path) -> None:
    """Commands are published right after commit: the commit must be on disk (synchronous=FULL, WAL)."""
    st = Store(f"sqlite:///{tmp_path / 'scheduler.db'}")
    try:
        with st.engine.connect() as conn:  # a connection of the pool the Store really uses
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # 2 = FULL (1 = NORMAL)
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        st.close()


def test_targets_parse() -> None:
    assert Target.parse("xa-a") == Target("xa-a", None)
    assert Target.parse("xa-a/loa-1") == Target("xa-a", "loa-1")
    for bad in ("", "/loa", "XA", "a/b/c", "xa a"):
        with pytest.raises(BadRequest):
            Target.parse(bad)


def test_advance_never_goes_back() -> None:
    row = SpeakerDelivery(broadcast_id="b", gateway_id="g", device_id="d", state="pending")
    assert advance_speaker(row, "started", 10, 99)
    assert not advance_speaker(row, "delivered", 5, 99)  # fills delivered_at only
    assert row.state == "started" and row.delivered_at == 5
    assert advance_speaker(row, "preempted", 20, 99, "emergency")
    assert not advance_speaker(row, "finished", 30, 99, "late")
    assert (row.state, row.ended_at, row.reason) == ("preempted", 20, "emergency")


def test_undelivered_plans_expire_and_their_speakers_fail(store: Store) -> None:
    bid, _ = create(store, ["xa-off/loa-1", "xa-off/loa-2", "xa-on"], max_late_ms=60_000)
    store.record_status("xa-on", Status(state="online", ts=T0), T0)
    store.record_status("xa-off", Status(state="offline", ts=T0), T0)
    assert len(store.pending_commands(["xa-off"], T0 + 1000)) == 1
    assert [o.gateway for o in store.pending_commands("online", T0 + 1000)] == ["xa-on"]
    store.mark_sent([o.command_id for o in store.pending_commands("online", T0)], T0 + 1000)
    assert store.pending_commands("online", T0 + 2000, sent_before=T0 + 1000) == []  # not due yet
    assert len(store.pending_commands("online", T0 + 2000, sent_before=T0 + 1001)) == 1
    # audio 2 s + 60 s late allowance: after that nothing is sent any more, to any gateway, and the
    # offline gateway's plan expires even though only online gateways were asked for
    assert store.pending_commands("online", T0 + 62_001) == []
    assert store.pending_commands(["xa-off"], T0 + 62_001) == []
    st = store.broadcast_status(bid)
    assert {d["state"] for d in st["gateways"]} == {"expired"}
    assert {(s["state"], s["reason"]) for s in st["speakers"]} == {("failed", "not delivered in time")}


def test_acks_only_count_from_the_right_gateway(store: Store) -> None:
    bid, [cmd] = create(store, ["xa-mot/loa-1"])
    store.set_commune("xa-mot", "Xã Một")
    [gw] = store.gateways()  # a named target registers the gateway and the speaker
    assert (gw["id"], gw["commune"], [sp["device"] for sp in gw["speakers"]]) == ("xa-mot", "Xã Một", ["loa-1"])
    assert store.record_ack("xa-hai", Ack(id=cmd, ok=True, ts=T0), T0) is None
    assert store.broadcast_status(bid)["gateways"][0]["state"] == "pending"
    assert store.record_ack("xa-mot", Ack(id=cmd, ok=True, ts=T0), T0) == "delivered"
    # a later refusal of the same command changes nothing: the first answer counts
    assert store.record_ack("xa-mot", Ack(id=cmd, ok=False, reason="expired", ts=T0), T0) == "delivered"
    # reports from a gateway that was not targeted are ignored
    ev = PlaybackEvent(broadcast_id=bid, device="loa-1", state="started", at=T0)
    assert store.record_playback("xa-hai", ev, T0) is None
    assert store.broadcast_status(bid)["speakers"][0]["state"] == "delivered"


def test_batch_with_a_bad_message_still_applies_the_others(store: Store) -> None:
    bid, [cmd] = create(store, ["xa-ba/loa-1"])
    items = [
        Incoming("xa-ba", Status(state="online", ts=T0)),
        Incoming("xa-ba", Ack(id=cmd, ok=True, ts=T0)),
        Incoming("xa-ba", {"volume": 3}),  # a speaker state without its device id: cannot be applied
        Incoming("xa-ba", PlaybackEvent(broadcast_id=bid, device="loa-1", state="finished", at=T0 + 5)),
    ]
    results = store.apply(items, T0)
    assert results == [True, "delivered", None, "finished"]
    assert store.broadcast_status(bid)["speakers"][0]["state"] == "finished"


def test_whole_gateway_broadcast_lists_known_speakers_and_learns_new_ones(store: Store) -> None:
    store.record_speaker("xa-bon", "loa-1", {"online": True, "volume": 50, "name": "Loa UBND"}, T0)
    bid, _ = create(store, ["xa-bon", "xa-bon/loa-9"])  # the whole gateway wins over one of its speakers
    st = store.broadcast_status(bid)
    assert [s["device"] for s in st["speakers"]] == ["loa-1"]
    store.apply(
        [
            Incoming(
                "xa-bon",
                PlaybackEvent(broadcast_id=bid, device="loa-7", state="skipped", at=T0, reason="speaker offline"),
            )
        ],
        T0,
    )
    st = store.broadcast_status(bid)
    assert {s["device"]: s["state"] for s in st["speakers"]} == {"loa-1": "delivered", "loa-7": "skipped"}
    assert st["gateways"][0]["state"] == "delivered"  # the report proves the plan arrived
    [gw] = store.gateways()
    assert [s["device"] for s in gw["speakers"]] == ["loa-1", "loa-7"]


def test_schema_and_queries_compile_for_postgresql() -> None:
    """No SQLite-only SQL: the tables and the delivery queries compile for PostgreSQL too."""
    from sqlalchemy import or_, select
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateIndex, CreateTable

    from scheduler.models import Base, Gateway, GatewayDelivery

    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    for table in Base.metadata.sorted_tables:
        ddl = str(CreateTable(table).compile(dialect=dialect))
        assert "CREATE TABLE" in ddl
        for index in table.indexes:
            str(CreateIndex(index).compile(dialect=dialect))
    q = (
        select(GatewayDelivery)
        .join(Gateway, Gateway.id == GatewayDelivery.gateway_id)
        .where(Gateway.status == "online", or_(GatewayDelivery.last_sent_at.is_(None), GatewayDelivery.attempts < 3))
    )
    assert "JOIN gateways" in str(q.compile(dialect=dialect))
    assert "BIGINT" in str(CreateTable(Base.metadata.tables["broadcasts"]).compile(dialect=dialect))


def test_refusals_that_can_heal_keep_the_command_pending(store: Store) -> None:
    """On main every refusal was final: a gateway whose clock was behind lost an emergency plan."""
    bid, [cmd] = create(store, ["xa-lech/loa-1"], max_late_ms=3_600_000)
    for n, reason in enumerate(["deferred", "future", "expired", "internal", "timeout", "in_progress"]):
        assert store.record_ack("xa-lech", Ack(id=cmd, ok=False, reason=reason, ts=T0), T0 + n) == "pending"
        st = store.broadcast_status(bid)
        assert reason in st["gateways"][0]["error"] and st["speakers"][0]["state"] == "pending"
    assert [o.command_id for o in store.pending_commands(["xa-lech"], T0 + 10)] == [cmd]  # sent again
    assert store.record_ack("xa-lech", Ack(id=cmd, ok=True, ts=T0), T0 + 20) == "delivered"
    # a refusal that cannot heal is final, and so is "expired" once it is expired by our clock too
    _, [cmd2] = create(store, ["xa-lech/loa-2"], max_late_ms=3_600_000)
    assert store.record_ack("xa-lech", Ack(id=cmd2, ok=False, reason="wrong_gateway", ts=T0), T0) == "refused"
    _, [cmd3] = create(store, ["xa-lech/loa-3"], max_late_ms=60_000)
    assert store.record_ack("xa-lech", Ack(id=cmd3, ok=False, reason="expired", ts=T0), T0 + 62_001) == "refused"


def test_plan_beyond_the_lifetime_cap_is_signed_again_not_lost(store: Store) -> None:
    """A plan 10 days ahead gets a command that lives 7 days (the cap). If the gateway was offline
    all that time, the plan is signed again (new id) rather than marked expired."""
    now = {"t": T0}

    def renew(kind: str, body: BaseModel, ttl: int, gw: str) -> Envelope:
        return signer.envelope(kind, body, gw=gw, ttl_ms=ttl, issued_at=now["t"])

    bid, out = store.create_broadcast(
        media_sha256=SHA, targets=["xa-xa/loa-1"], start_at=T0 + 10 * 86_400_000, priority=3, volume=70,
        repeat=1, title=None, created_by=None, max_late_ms=60_000, now=T0, make_plan=make_plan,
        make_envelope=make_env)
    [first] = out
    assert first.expires_at == T0 + 7 * 86_400_000  # capped
    now["t"] = first.expires_at + 1
    [again] = store.pending_commands(["xa-xa"], now["t"], renew=renew)
    assert again.command_id != first.command_id and again.expires_at > now["t"]
    env = Envelope.model_validate_json(again.envelope)
    assert env.gw == "xa-xa" and env.body["items"][0]["broadcast_id"] == bid
    st = store.broadcast_status(bid)
    assert st["gateways"][0]["state"] == "pending" and st["speakers"][0]["state"] == "pending"
    # without renewal (or once the broadcast itself is over) it expires as before
    assert store.pending_commands(["xa-xa"], T0 + 11 * 86_400_000, renew=renew) == []
    assert store.broadcast_status(bid)["gateways"][0]["state"] == "expired"
