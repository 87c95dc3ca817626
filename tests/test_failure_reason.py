"""The real failure reason wins (issue 15, point 4): the gateway closes a silent speaker's outcome as
``failed no_start_report``; the speaker's own later ``failed media_unavailable`` must not be dropped,
neither on the gateway (plan store + event to the centre) nor at the centre (speaker delivery row)."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.broadcast.store import PlanStore
from protocol.models import MediaRef, PlanItem, refined_reason
from scheduler.db import advance_speaker
from scheduler.models import SpeakerDelivery

MEDIA = MediaRef(sha256="a" * 64, url="http://x/media/" + "a" * 64, bytes=10, duration_ms=1000)


def _ev(state: str, reason: str | None) -> str:
    return json.dumps({"kind": "playback", "broadcast_id": "b1", "device": "loa-01", "state": state,
                       "at": 1, "reason": reason})


def test_refined_reason_rules() -> None:
    assert refined_reason("no_start_report", "media_unavailable") == "media_unavailable; no_start_report"
    assert refined_reason("no_start_report", "no_start_report") is None
    assert refined_reason("no_start_report", None) is None
    assert refined_reason("media_unavailable", "no_start_report") is None  # a specific reason stays
    assert refined_reason("media_mismatch", "media_unavailable") is None  # the first specific one wins
    assert refined_reason("media_unavailable; no_start_report", "media_unavailable") is None


async def test_gateway_store_keeps_the_speakers_reason(tmp_path: Path) -> None:
    store = PlanStore(tmp_path / "b.sqlite")
    item = PlanItem(broadcast_id="b1", media=MEDIA, start_at=10_000, priority=5)
    assert await store.add(item, 10_000, 11_000, False, 5_000, ["loa-01"], "cmd-1")
    assert await store.advance("b1", "loa-01", "failed", 26_000, "no_start_report", _ev("failed", "no_start_report"))
    # the speaker's own report arrives later: it refines the outcome and goes to the centre too
    assert await store.advance("b1", "loa-01", "failed", 27_000, "media_unavailable",
                               _ev("failed", "media_unavailable"))
    assert (await store.outcomes("b1"))["loa-01"].reason == "media_unavailable; no_start_report"
    sent = [json.loads(p) for _s, p in await store.outbox_peek()]
    assert [e["reason"] for e in sent] == ["no_start_report", "media_unavailable; no_start_report"]
    # nothing more to learn: a repeat changes nothing, and a finished outcome stays final
    assert not await store.advance("b1", "loa-01", "failed", 28_000, "media_unavailable",
                                   _ev("failed", "media_unavailable"))
    assert not await store.advance("b1", "loa-01", "finished", 28_000, None, _ev("finished", None))
    store.close()


def test_centre_keeps_the_refined_reason() -> None:
    row = SpeakerDelivery(broadcast_id="b1", gateway_id="gw", device_id="loa-01", state="started")
    assert advance_speaker(row, "failed", 26_000, 26_001, "no_start_report")
    assert advance_speaker(row, "failed", 27_000, 27_001, "media_unavailable; no_start_report")
    assert row.state == "failed" and row.reason == "media_unavailable; no_start_report"
    assert not advance_speaker(row, "failed", 28_000, 28_001, "no_start_report")
    assert row.reason == "media_unavailable; no_start_report"
