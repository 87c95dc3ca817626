"""Which occurrences collide on a speaker, and which of them wins.

Two occurrences overlap when their intervals ``[start, start + duration)`` intersect and their
resolved speaker sets share a speaker. The higher priority wins (and pre-empts at play time on the
gateway, as today). Equal priorities are a **conflict**, reported with both occurrences when a
schedule is saved, unless staff have put the two schedules in an explicit order (``order``: the
lower number goes first and wins).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

#: Refuse to compare more than this many occurrences at once (a sweep is O(n * overlapping)).
MAX_OCCURRENCES = 50_000


@dataclass(frozen=True)
class Occurrence:
    schedule: str  # schedule id
    start: datetime  # aware
    duration: timedelta
    priority: int  # 0–9
    speakers: frozenset[str]  # resolved "GATEWAY/DEVICE"
    order: int | None = None  # explicit order among equal priorities (lower first)

    @property
    def end(self) -> datetime:
        return self.start + self.duration


@dataclass(frozen=True)
class Overlap:
    first: Occurrence  # the one that starts first (or the earlier schedule id on a tie)
    second: Occurrence
    speakers: frozenset[str]  # where they collide
    start: datetime
    end: datetime
    winner: Occurrence | None  # None: a conflict of equal priority with no explicit order

    @property
    def is_conflict(self) -> bool:
        return self.winner is None

    def describe(self, tz: tzinfo | None = None) -> str:
        """One line for people; times in ``tz`` (default: as stored)."""

        def at(t: datetime) -> str:
            return t.astimezone(tz).strftime("%Y-%m-%d %H:%M %z")[:-2] if tz else t.isoformat()

        spk = ", ".join(sorted(self.speakers)[:5]) + (" …" if len(self.speakers) > 5 else "")
        what = "conflict (equal priority)" if self.winner is None else f"{self.winner.schedule} wins"
        return (f"{self.first.schedule} at {at(self.first.start)} and {self.second.schedule} at "
                f"{at(self.second.start)} overlap on {spk}: {what}")


def _winner(a: Occurrence, b: Occurrence) -> Occurrence | None:
    if a.priority != b.priority:
        return a if a.priority > b.priority else b
    if a.order is not None and b.order is not None and a.order != b.order:
        return a if a.order < b.order else b
    return None


def find_overlaps(occurrences: Iterable[Occurrence]) -> list[Overlap]:
    """Every pair of occurrences that collide on at least one speaker, in order of time."""
    items = sorted(occurrences, key=lambda o: (o.start, o.schedule))
    if len(items) > MAX_OCCURRENCES:
        raise ValueError(f"{len(items)} occurrences: compare at most {MAX_OCCURRENCES} at once")
    for o in items:
        if o.duration <= timedelta(0):
            raise ValueError(f"occurrence of {o.schedule} at {o.start.isoformat()} has no duration")
    out: list[Overlap] = []
    active: list[Occurrence] = []
    for occ in items:
        active = [a for a in active if a.end > occ.start]  # half-open: back to back is no overlap
        for a in active:
            shared = a.speakers & occ.speakers
            if shared:
                out.append(Overlap(a, occ, frozenset(shared), occ.start, min(a.end, occ.end), _winner(a, occ)))
        active.append(occ)
    return out


def conflicts(occurrences: Iterable[Occurrence]) -> list[Overlap]:
    """Only the overlaps nobody wins: what must be resolved before a schedule can be saved."""
    return [o for o in find_overlaps(occurrences) if o.is_conflict]
