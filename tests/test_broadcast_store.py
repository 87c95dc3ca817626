"""The gateway's plan store on a real SQLite file: idempotent plans, outcomes that only move forward,
the event outbox, persistence across a reopen, and purging of old finished plans."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.broadcast.store import PlanStore
from protocol.models import MediaRef, PlanItem

MEDIA = MediaRef(sha256="a" * 64, url="http://x/media/" + "a" * 64, bytes=10, duration_ms=1000)


def _item(bid: str) -> PlanItem:
    return PlanItem(broadcast_id=bid, media=MEDIA, start_at=10_000, priority=9)


async def test_plans_outcomes_outbox_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    store = PlanStore(path)
    assert await store.add(_item("b1"), 10_000, 11_000, False, 5_000, ["loa-01", "loa-02"], "cmd-1",
                           {"loa-99": "unknown_device"})
    assert not await store.add(_item("b1"), 20_000, 21_000, False, 6_000, ["loa-03"], "cmd-2")  # same broadcast
    assert await store.advance("b1", "loa-01", "started", 10_002, None, '{"e":1}')
    assert not await store.advance("b1", "loa-01", "sent", None, None)  # never backwards
    assert await store.advance("b1", "loa-01", "finished", 11_003, None, '{"e":2}')
    assert not await store.advance("b1", "loa-01", "failed", 11_004, "late", '{"e":3}')  # an end is final
    assert not await store.advance("b1", "nobody", "started", 1, None, '{"e":4}')
    store.close()

    store = PlanStore(path)
    [plan] = await store.pending()
    assert plan.broadcast_id == "b1" and plan.start_at == 10_000 and plan.priority == 9
    outcomes = await store.outcomes("b1")
    assert {d: o.state for d, o in outcomes.items()} == {"loa-01": "finished", "loa-02": "pending",
                                                         "loa-99": "skipped"}
    assert [p for _s, p in await store.outbox_peek()] == ['{"e":1}', '{"e":2}']
    seq = (await store.outbox_peek())[0][0]
    await store.outbox_delete(seq)
    assert [p for _s, p in await store.outbox_peek()] == ['{"e":2}']
    await store.set_plan_state("b1", "done")
    assert await store.pending() == []
    assert await store.purge(12_000) == 1
    assert await store.get("b1") is None and await store.outcomes("b1") == {}
    store.close()


async def test_concurrent_writes_are_batched_in_order(tmp_path: Path) -> None:
    store = PlanStore(tmp_path / "b.sqlite")
    devices = [f"loa-{i:02d}" for i in range(40)]
    await store.add(_item("b2"), 10_000, 11_000, False, 5_000, devices)
    before = store.commits
    # every speaker reports started then finished at once: order per speaker must hold
    await asyncio.gather(*(store.advance("b2", d, s, 1, None, f"{d}-{s}") for d in devices
                           for s in ("started", "finished")))
    assert all(o.state == "finished" for o in (await store.outcomes("b2")).values())
    assert len(await store.outbox_peek(1000)) == 80
    assert store.commits - before < 80  # group commit: far fewer transactions than writes
    store.close()
