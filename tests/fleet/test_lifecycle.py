"""The alarm lifecycle state machine (pure functions) and the engine on a real database.

The engine tests drive conditions with explicit times (``at`` / ``tick(now)``), so delays, flap
windows and silences are exact without any sleep.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scheduler.db import AsyncStore, Store
from scheduler.fleet.alarms.engine import FLAPPING, AlarmEngine
from scheduler.fleet.alarms.lifecycle import (
    AlarmRecord,
    LifecycleError,
    Occurrence,
    acknowledge,
    clear,
    occur,
    touch,
)
from scheduler.fleet.config import Flapping, Timing
from scheduler.fleet.store import FleetStore

T0 = 1_800_000_000_000


def occ(at: int, severity: str = "minor", message: str = "speaker loa-01 is offline") -> Occurrence:
    return Occurrence("dev:xa/loa-01", "speaker_offline", "xa", "loa-01", severity, message, {"n": at}, at)


# ---------------------------------------------------------------- lifecycle


def test_first_occurrence_raises_active_unacknowledged() -> None:
    rec, tr = occur(None, occ(T0))
    assert tr == "raised"
    assert (rec.status, rec.acknowledged, rec.state) == ("active", False, "ACTIVE_UNACK")
    assert (rec.first_seen, rec.last_seen, rec.count, rec.severity) == (T0, T0, 1, "minor")


def test_repeat_while_active_updates_the_same_alarm() -> None:
    rec, _ = occur(None, occ(T0))
    rec = AlarmRecord(**{**rec.__dict__, "id": 7})
    again, tr = occur(rec, occ(T0 + 5000, message="still offline"))
    assert tr == "updated"
    assert (again.id, again.first_seen, again.last_seen, again.count) == (7, T0, T0 + 5000, 2)
    assert again.message == "still offline"


def test_escalation_raises_severity_and_takes_the_acknowledgement_away() -> None:
    rec, _ = occur(None, occ(T0))
    rec = acknowledge(rec, T0 + 1, by="tuan", note="on my way")
    assert rec.state == "ACTIVE_ACK"
    up, tr = occur(rec, occ(T0 + 2, severity="critical"))
    assert tr == "escalated"
    assert (up.severity, up.acknowledged, up.ack_note) == ("critical", False, None)
    down, tr = occur(up, occ(T0 + 3, severity="warning"))
    assert (tr, down.severity) == ("updated", "critical")  # never lowered by a repeat


def test_cleared_alarm_stays_history_and_the_next_occurrence_is_a_new_alarm() -> None:
    rec, _ = occur(None, occ(T0))
    rec = clear(AlarmRecord(**{**rec.__dict__, "id": 1}), T0 + 10)
    assert (rec.status, rec.cleared_at, rec.cleared_by, rec.state) == ("cleared", T0 + 10, None, "CLEARED_UNACK")
    new, tr = occur(rec, occ(T0 + 20))
    assert tr == "raised" and new.id is None and new.count == 1 and new.first_seen == T0 + 20


def test_acknowledge_then_clear_gives_cleared_ack_and_keeps_the_note() -> None:
    rec, _ = occur(None, occ(T0))
    rec = acknowledge(rec, T0 + 1, by="lan", note="loa bị mất trộm, đã báo công an")
    rec = clear(rec, T0 + 2, by="lan", note="replaced")
    assert rec.state == "CLEARED_ACK"
    assert (rec.ack_by, rec.ack_note, rec.cleared_by, rec.clear_note) == (
        "lan", "loa bị mất trộm, đã báo công an", "lan", "replaced")


def test_refused_transitions() -> None:
    rec, _ = occur(None, occ(T0))
    acked = acknowledge(rec, T0 + 1, by="a")
    with pytest.raises(LifecycleError, match="already acknowledged"):
        acknowledge(acked, T0 + 2, by="b")
    cleared = clear(rec, T0 + 3)
    with pytest.raises(LifecycleError, match="already cleared"):
        clear(cleared, T0 + 4)
    with pytest.raises(LifecycleError):
        touch(cleared, T0 + 5)
    other = Occurrence("gw:xa", "disk_full", "xa", None, "major", "disk", {}, T0)
    with pytest.raises(LifecycleError):
        occur(rec, other)


# ---------------------------------------------------------------- engine on a real database


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AlarmEngine]:
    st = Store(f"sqlite:///{tmp_path / 'scheduler.db'}")
    st.upgrade()
    astore = AsyncStore(st)
    notices: list[tuple[str, AlarmRecord]] = []

    async def notify(kind: str, rec: AlarmRecord) -> None:
        notices.append((kind, rec))

    eng = AlarmEngine(astore, FleetStore(st.session), Flapping(toggles=4, window_s=60), notify=notify)
    eng.notices = notices  # type: ignore[attr-defined]
    await eng.load()
    yield eng
    astore.close()


OFFLINE = Timing(after_s=30, clear_after_s=0, severity="minor")


def speaker(eng: AlarmEngine, holds: bool, at: int, dev: str = "loa-01") -> None:
    eng.observe(f"dev:xa/{dev}", "speaker_offline", gateway="xa", device=dev, timing=OFFLINE, holds=holds,
                severity="minor", message=f"{dev} offline", at=at)


async def test_level_condition_waits_for_its_delay_then_raises_and_clears_with_recovery(engine: AlarmEngine) -> None:
    speaker(engine, True, T0)
    assert await engine.tick(T0 + 29_000) == 0
    assert await engine.tick(T0 + 30_000) == 1
    (rec,) = engine.alarms.values()
    assert rec.id is not None and rec.state == "ACTIVE_UNACK" and rec.notified
    speaker(engine, False, T0 + 40_000)
    await engine.tick(T0 + 40_000)
    assert not engine.alarms
    kinds = [k for k, _ in engine.notices]  # type: ignore[attr-defined]
    assert kinds == ["raised", "cleared"]
    stored = await engine.astore.call(engine.store.get_alarm, rec.id)
    assert stored is not None and stored.status == "cleared" and stored.cleared_by is None
    log = await engine.astore.call(engine.store.alarm_log, rec.id)
    assert [e["action"] for e in log] == ["raised", "cleared"]


async def test_short_outage_makes_no_alarm(engine: AlarmEngine) -> None:
    speaker(engine, True, T0)
    speaker(engine, False, T0 + 10_000)
    await engine.tick(T0 + 60_000)
    assert not engine.alarms and not engine.notices  # type: ignore[attr-defined]


async def test_flapping_condition_is_one_flapping_alarm(engine: AlarmEngine) -> None:
    for i in range(6):  # offline/online every 5 s: never 30 s in a row
        speaker(engine, i % 2 == 0, T0 + i * 5000)
        await engine.tick(T0 + i * 5000)
    active = list(engine.alarms.values())
    assert [(a.type, a.source) for a in active] == [(FLAPPING, "dev:xa/loa-01")]
    assert active[0].details["condition"] == "speaker_offline"
    assert [k for k, _ in engine.notices] == ["raised"]  # type: ignore[attr-defined]
    # it keeps flapping: still one alarm, no new notice
    for i in range(6, 10):
        speaker(engine, i % 2 == 0, T0 + i * 5000)
        await engine.tick(T0 + i * 5000)
    assert len(engine.alarms) == 1 and len(engine.notices) == 1  # type: ignore[attr-defined]
    # steady (online) for a whole window: the flapping alarm clears with a recovery notice
    await engine.tick(T0 + 10 * 5000 + 61_000)
    assert not engine.alarms
    assert [k for k, _ in engine.notices] == ["raised", "cleared"]  # type: ignore[attr-defined]


async def test_silence_suppresses_both_notices_but_records_the_alarm(engine: AlarmEngine) -> None:
    await engine.astore.call(engine.store.add_silence, gateway="xa", device="loa-01", types=None, starts_at=T0,
                             ends_at=T0 + 3_600_000, reason="thay loa", created_by="tuan", now=T0)
    await engine.refresh_silences(force=True)
    speaker(engine, True, T0)
    await engine.tick(T0 + 31_000)
    (rec,) = engine.alarms.values()
    assert rec.silenced and not rec.notified
    speaker(engine, False, T0 + 40_000)
    await engine.tick(T0 + 40_000)
    assert not engine.alarms and engine.notices == []  # type: ignore[attr-defined]
    # another speaker of the same gateway is not covered by a device silence
    speaker(engine, True, T0 + 50_000, dev="loa-02")
    await engine.tick(T0 + 81_000)
    assert [k for k, _ in engine.notices] == ["raised"]  # type: ignore[attr-defined]


async def test_alarm_raised_in_a_silence_is_notified_when_the_silence_ends(engine: AlarmEngine) -> None:
    s = await engine.astore.call(engine.store.add_silence, gateway="xa", device=None, types=None, starts_at=T0,
                                 ends_at=T0 + 60_000, reason=None, created_by="t", now=T0)
    await engine.refresh_silences(force=True)
    speaker(engine, True, T0)
    await engine.tick(T0 + 31_000)
    assert engine.notices == []  # type: ignore[attr-defined]
    assert s.covers("xa", "loa-01", "speaker_offline", T0 + 31_000)
    await engine.tick(T0 + 61_000)  # the silence is over, the speaker still offline
    assert [k for k, _ in engine.notices] == ["raised"]  # type: ignore[attr-defined]


async def test_events_count_and_resolve(engine: AlarmEngine) -> None:
    t = Timing(after_s=0, clear_after_s=0, severity="minor")
    for i in range(3):
        engine.occur("dev:xa/loa-01", "broadcast_failed", gateway="xa", device="loa-01", timing=t, severity="minor",
                     message=f"bc-{i} failed", at=T0 + i)
    await engine.tick(T0 + 10)
    (rec,) = engine.alarms.values()
    assert rec.count == 3 and rec.message == "bc-2 failed"
    engine.occur("dev:xa/loa-01", "broadcast_failed", gateway="xa", device="loa-01", timing=t, severity="minor",
                 message="bc-3 failed", at=T0 + 20)
    await engine.tick(T0 + 20)
    (rec,) = engine.alarms.values()
    assert rec.count == 4
    engine.resolve("dev:xa/loa-01", "broadcast_failed", at=T0 + 30)
    await engine.tick(T0 + 30)
    assert not engine.alarms


async def test_acknowledge_and_hand_clear_through_the_engine(engine: AlarmEngine) -> None:
    speaker(engine, True, T0)
    await engine.tick(T0 + 30_000)
    (rec,) = engine.alarms.values()
    assert rec.id is not None
    acked = await engine.acknowledge(rec.id, "tuan", "đang đến", at=T0 + 31_000)
    assert acked.state == "ACTIVE_ACK" and engine.alarms[rec.key].acknowledged
    with pytest.raises(LifecycleError):
        await engine.acknowledge(rec.id, "lan", None)
    cleared = await engine.clear_by_hand(rec.id, "tuan", "fixed the cable", at=T0 + 32_000)
    assert cleared.state == "CLEARED_ACK" and cleared.cleared_by == "tuan"
    # the condition still holds: after its full delay again, a NEW alarm
    await engine.tick(T0 + 40_000)
    assert not engine.alarms
    await engine.tick(T0 + 32_000 + 30_000)
    (again,) = engine.alarms.values()
    assert again.id != rec.id


async def test_active_alarms_survive_a_restart(engine: AlarmEngine, tmp_path: Path) -> None:
    speaker(engine, True, T0)
    await engine.tick(T0 + 30_000)
    other = AlarmEngine(engine.astore, engine.store, Flapping())
    await other.load()
    assert [a.type for a in other.alarms.values()] == ["speaker_offline"]
