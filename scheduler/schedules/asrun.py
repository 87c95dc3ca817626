"""The as-run log: per broadcast (scheduled occurrence or one-off) and per speaker, what played.

Rows come from ``speaker_deliveries`` (filled by the gateways' playback reports, which the gateway
keeps in its outbox while the link is down), joined with the broadcast and, for a scheduled one, the
schedule run it was sent for. The monthly summary is the report a commune sends to its district.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from scheduler.db import BadRequest, Store
from scheduler.models import SPEAKER_RANK, Broadcast, Gateway, Media, SpeakerDelivery
from scheduler.schedules.models import ScheduleRun

#: An as-run query returns at most this many rows (narrow the range, or page with ``offset``).
MAX_ROWS = 100_000
MAX_RANGE_DAYS = 400
CSV_FIELDS = ("start_at", "broadcast_id", "schedule_id", "title", "gateway", "commune", "device", "state",
              "started_at", "ended_at", "reason", "duration_ms", "priority")


@dataclass(frozen=True)
class AsRunFilter:
    start: int  # UTC ms, inclusive (the broadcast's start)
    end: int  # exclusive
    gateways: frozenset[str] | None = None  # None: all (the caller's areas are applied by the route)
    states: frozenset[str] | None = None
    schedule_id: str | None = None

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise BadRequest("the range is empty: --to must be after --from")
        if self.end - self.start > MAX_RANGE_DAYS * 86_400_000:
            raise BadRequest(f"the range is longer than {MAX_RANGE_DAYS} days; ask for less")
        bad = sorted((self.states or set()) - set(SPEAKER_RANK))
        if bad:
            raise BadRequest(f"state {bad[0]!r}: one of {', '.join(SPEAKER_RANK)}")


def _iso(ms: int | None, tz: ZoneInfo) -> str | None:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz).isoformat() if ms is not None else None


def as_run(store: Store, f: AsRunFilter, tz: str = "Asia/Ho_Chi_Minh", limit: int = MAX_ROWS) -> list[dict[str, Any]]:
    """The as-run rows in ``f``, by start time then gateway and device."""
    zone = ZoneInfo(tz)
    with store.session() as s:
        q = (
            select(SpeakerDelivery, Broadcast, Media.duration_ms, ScheduleRun.schedule_id, Gateway.commune)
            .join(Broadcast, Broadcast.id == SpeakerDelivery.broadcast_id)
            .join(Media, Media.sha256 == Broadcast.media_sha256)
            .join(Gateway, Gateway.id == SpeakerDelivery.gateway_id)
            .outerjoin(ScheduleRun, ScheduleRun.broadcast_id == Broadcast.id)
            .where(Broadcast.start_at >= f.start, Broadcast.start_at < f.end)
            .order_by(Broadcast.start_at, SpeakerDelivery.gateway_id, SpeakerDelivery.device_id)
            .limit(max(1, min(limit, MAX_ROWS)))
        )
        if f.gateways is not None:
            q = q.where(SpeakerDelivery.gateway_id.in_(sorted(f.gateways)))
        if f.states is not None:
            q = q.where(SpeakerDelivery.state.in_(sorted(f.states)))
        if f.schedule_id is not None:
            q = q.where(ScheduleRun.schedule_id == f.schedule_id)
        out = []
        for d, b, duration, sid, commune in s.execute(q).all():
            out.append({
                "start_at": _iso(b.start_at, zone), "broadcast_id": b.id, "schedule_id": sid, "title": b.title,
                "gateway": d.gateway_id, "commune": commune, "device": d.device_id, "state": d.state,
                "started_at": _iso(d.started_at, zone), "ended_at": _iso(d.ended_at, zone), "reason": d.reason,
                "duration_ms": duration * b.repeat, "priority": b.priority, "cancelled": b.cancelled,
            })
        return out


def to_csv(rows: list[dict[str, Any]]) -> Iterator[str]:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_FIELDS)
    yield buf.getvalue()
    for r in rows:
        buf.seek(0)
        buf.truncate()
        w.writerow(["" if r[k] is None else r[k] for k in CSV_FIELDS])
        yield buf.getvalue()


def month_range(month: str, tz: str) -> tuple[int, int]:
    """``2026-12`` -> [first instant, first instant of the next month) in ``tz``, UTC ms."""
    try:
        first = date.fromisoformat(f"{month}-01")
    except ValueError as exc:
        raise BadRequest(f"month {month!r}: write it as YYYY-MM, e.g. 2026-12") from exc
    nxt = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
    zone = ZoneInfo(tz)
    a = datetime(first.year, first.month, 1, tzinfo=zone)
    b = datetime(nxt.year, nxt.month, 1, tzinfo=zone)
    return int(a.timestamp() * 1000), int(b.timestamp() * 1000)


def monthly_summary(store: Store, month: str, gateways: frozenset[str] | None, tz: str = "Asia/Ho_Chi_Minh"
                    ) -> list[dict[str, Any]]:
    """Per commune (gateway): hours broadcast (each broadcast that played on at least one speaker
    counts once, for its length), and per item (title) the share of targeted speakers that played it
    to the end, over the month's broadcasts (cancelled ones left out)."""
    start, end = month_range(month, tz)
    rows = [r for r in as_run(store, AsRunFilter(start, end, gateways), tz) if not r["cancelled"]]
    by_gw: dict[str, dict[str, Any]] = {}
    for r in rows:
        g = by_gw.setdefault(r["gateway"], {"gateway": r["gateway"], "commune": r["commune"], "month": month,
                                            "_played": set(), "_ms": 0, "_items": {}, "broadcasts": set()})
        g["broadcasts"].add(r["broadcast_id"])
        played = r["state"] == "finished"
        if played and r["broadcast_id"] not in g["_played"]:
            g["_played"].add(r["broadcast_id"])
            g["_ms"] += r["duration_ms"]
        item = g["_items"].setdefault(r["title"] or r["broadcast_id"],
                                      {"targeted": 0, "played": 0, "broadcasts": set()})
        item["targeted"] += 1
        item["played"] += played
        item["broadcasts"].add(r["broadcast_id"])
    out = []
    for gw in sorted(by_gw):
        g = by_gw[gw]
        out.append({
            "gateway": gw, "commune": g["commune"], "month": month,
            "broadcasts": len(g["broadcasts"]), "broadcasts_played": len(g["_played"]),
            "hours_broadcast": round(g["_ms"] / 3_600_000, 3), "seconds_broadcast": round(g["_ms"] / 1000, 1),
            "items": [{"title": title, "broadcasts": len(i["broadcasts"]), "speaker_plays": i["played"],
                       "speaker_targets": i["targeted"], "share_played": round(i["played"] / i["targeted"], 4)}
                      for title, i in sorted(g["_items"].items())],
        })
    return out
