"""Line protocol, validation and the spool on their own (real SQLite, no servers)."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.telemetry.lineproto import escape_tag, format_fields, line, parse_fields, tag_set
from gateway.telemetry.spool import Spool, iter_readings
from gateway.telemetry.validate import REASONS, check_payload

NOW = 1_780_000_000_000


@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True),
        st.floats(allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=8,
    )
)
def test_fields_round_trip_exactly(fields: dict[str, float]) -> None:
    back = parse_fields(format_fields(fields))
    assert back.keys() == fields.keys()
    for k, v in fields.items():
        assert back[k] == v and math.copysign(1, back[k]) == math.copysign(1, v)


def test_tags_are_escaped_and_sorted() -> None:
    assert escape_tag("Xã An Bình, huyện=X") == r"Xã\ An\ Bình\,\ huyện\=X"
    assert tag_set({"gateway": "gw-1", "device": "d1", "commune": None}) == ",device=d1,gateway=gw-1"
    assert line("water level", ",device=d1", "level_cm=1.5", 7) == r"water\ level,device=d1 level_cm=1.5 7"
    with pytest.raises(ValueError):
        format_fields({"x": float("nan")})


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{", "bad_json"),
        (b"\xc3\x28", "not_utf8"),
        (b'{"ts": 1780000000000, "fields": {"x": NaN}}', "not_finite"),
        (b'{"ts": 1780000000000, "fields": {"x": -Infinity}}', "not_finite"),
        (b'{"ts": 1780000000000, "fields": {"x": "1"}}', "non_numeric"),
        (b'{"ts": 1780000000000, "fields": {"x y": 1}}', "bad_field_name"),
        (b'{"ts": 1780000000000, "fields": {"9x": 1}}', "bad_field_name"),
        (b'{"ts": -1, "fields": {"x": 1}}', "bad_timestamp"),
        (b'{"ts": true, "fields": {"x": 1}}', "bad_timestamp"),
        (b'{"ts": 1790000000000, "fields": {"x": 1}}', "future_timestamp"),
        (b'{"ts": 1000, "fields": {"x": 1}}', "too_old"),
        (b'{"ts": 1780000000000, "fields": {}}', "bad_shape"),
        (b'{"ts": 1780000000000, "fields": {"x": 1}, "readings": []}', "bad_shape"),
        (b'"just a string"', "bad_shape"),
        (b"{" + b" " * 300_000 + b"}", "too_large"),
    ],
)
def test_each_bad_payload_has_its_reason(payload: bytes, reason: str) -> None:
    checked = check_payload(payload, NOW)
    assert checked.accepted == []
    assert [r.reason for r in checked.rejected] == [reason]
    assert reason in REASONS


def test_integers_are_stored_as_floats_and_batches_checked_per_reading() -> None:
    checked = check_payload(
        b'{"readings": [{"ts": 1780000000000, "fields": {"n": 3}}, {"ts": 1780000000001, "fields": {"n": "3"}}]}',
        NOW,
    )
    assert checked.accepted == [(1780000000000, "n=3.0")]
    assert [(r.reason, r.count) for r in checked.rejected] == [("non_numeric", 1)]


async def _spool(tmp_path: Path, **kw: int) -> tuple[Spool, asyncio.Task[None]]:
    spool = Spool(tmp_path / "spool.sqlite3", max_bytes=kw.pop("max_bytes", 10**9), **kw)
    await spool.open()
    return spool, asyncio.create_task(spool.run())


async def _stop(spool: Spool, task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await spool.close()


async def test_group_commit_delivery_and_restart(tmp_path: Path) -> None:
    spool, task = await _spool(tmp_path)
    # many concurrent producers → few transactions
    await asyncio.gather(
        *(spool.put([(NOW + i * 10 + j, f"d{i}", "m", f"v={j}.0") for j in range(10)]) for i in range(50))
    )
    assert spool.pending == 500 and spool.commits < 50
    batch = await spool.next_batch(0, 200)
    assert [r.ts for r in batch[:3]] == [NOW, NOW + 1, NOW + 2] and len(batch) == 200
    await spool.mark_delivered(batch[-1].id)
    assert spool.pending == 300
    await _stop(spool, task)
    spool, task = await _spool(tmp_path)  # reopened: the mark and the rest survived
    assert spool.pending == 300
    rest = await spool.next_batch(0, 1000)
    assert rest[0].id == batch[-1].id + 1 and len(rest) == 300
    await spool.mark_delivered(rest[-1].id)
    assert spool.pending == 0 and spool.bytes == 0  # retain_days=0: delivered rows are gone
    await _stop(spool, task)
    # the table is empty now; new readings must get ids above the delivered mark, across restarts too
    spool, task = await _spool(tmp_path)
    await spool.put([(NOW + 9000, "d9", "m", "v=9.0")])
    await _stop(spool, task)
    spool, task = await _spool(tmp_path)
    again = await spool.next_batch(0, 10)
    assert spool.pending == 1 and [(r.device, r.fields) for r in again] == [("d9", "v=9.0")]
    assert again[0].id > rest[-1].id
    await _stop(spool, task)


async def test_retention_keeps_delivered_rows_then_purges_old_ones(tmp_path: Path) -> None:
    spool, task = await _spool(tmp_path, retain_days=2)
    day = 86_400_000
    await spool.put([(NOW - 3 * day, "d", "m", "v=1.0"), (NOW - day, "d", "m", "v=2.0")])
    batch = await spool.next_batch(0, 10)
    await spool.mark_delivered(batch[-1].id)
    assert spool.pending == 0 and spool.bytes > 0
    assert [r[3] for r in iter_readings(spool.path, 0, NOW)] == ["v=1.0", "v=2.0"]
    assert await spool.purge_retained(NOW) == 1
    assert [(r[3], r[4]) for r in iter_readings(spool.path, 0, NOW)] == [("v=2.0", True)]
    await _stop(spool, task)


async def test_eviction_drops_retained_rows_before_undelivered(tmp_path: Path) -> None:
    spool, task = await _spool(tmp_path, retain_days=30, max_bytes=10_000)
    await spool.put([(NOW + i, "d", "m", "v=1.0") for i in range(200)])  # 200 x 31 bytes = 6,200
    await spool.mark_delivered((await spool.next_batch(0, 1000))[-1].id)
    assert spool.pending == 0
    await spool.put([(NOW + 1000 + i, "d", "m", "v=2.0") for i in range(100)])  # 3,100 more: 9,300
    assert spool.dropped == 0
    await spool.put([(NOW + 2000 + i, "d", "m", "v=3.0") for i in range(50)])  # over: retained go first
    assert spool.dropped == 0 and spool.retained_evicted > 0
    await spool.put([(NOW + 3000 + i, "d", "m", "v=4.0") for i in range(300)])  # now undelivered go too
    assert spool.dropped > 0 and spool.bytes <= 10_000
    left = await spool.next_batch(0, 10_000)
    undelivered = (
        [NOW + 1000 + i for i in range(100)]
        + [NOW + 2000 + i for i in range(50)]
        + [NOW + 3000 + i for i in range(300)]
    )
    assert [r.ts for r in left] == undelivered[spool.dropped :]  # exactly the oldest were dropped
    await _stop(spool, task)
    conn = sqlite3.connect(tmp_path / "spool.sqlite3")
    assert conn.execute("SELECT value FROM meta WHERE key='dropped'").fetchone()[0] == spool.dropped


async def test_unreadable_spool_file_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "spool.sqlite3").write_bytes(b"this is not an SQLite database, it is a damaged SD card sector" * 100)
    spool, task = await _spool(tmp_path)
    assert spool.moved_aside is not None and spool.moved_aside.read_bytes().startswith(b"this is not")
    await spool.put([(NOW, "d", "m", "v=1.0")])  # the new spool works
    assert spool.pending == 1
    await _stop(spool, task)
