"""The three broadcast levels of Circular 39/2020/TT-BTTTT (thông thường, ưu tiên, khẩn cấp) on the
wire's priority scale 0–9 (``protocol.models.PRIORITY_NAMES``: 3, 6, 9).

A level is what staff choose; the number is what gateways compare when two plans overlap on a
speaker (the higher pre-empts). Numbers between the three defaults fall in the band below them.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from protocol.models import PRIORITY_EMERGENCY, PRIORITY_HIGH, PRIORITY_NAMES, PRIORITY_NORMAL


@dataclass(frozen=True)
class Level:
    name: str  # as in protocol.models.PRIORITY_NAMES
    vi: str  # the TT 39/2020 term
    priority: int  # the default on the 0–9 scale
    lowest: int  # the band of 0–9 numbers that belong to this level
    highest: int


NORMAL = Level("normal", "thông thường", PRIORITY_NAMES["normal"], 0, PRIORITY_HIGH - 1)
PRIORITY = Level("priority", "ưu tiên", PRIORITY_NAMES["priority"], PRIORITY_HIGH, PRIORITY_EMERGENCY - 1)
EMERGENCY = Level("emergency", "khẩn cấp", PRIORITY_NAMES["emergency"], PRIORITY_EMERGENCY, 9)
LEVELS: tuple[Level, ...] = (NORMAL, PRIORITY, EMERGENCY)
assert NORMAL.priority == PRIORITY_NORMAL and NORMAL.lowest <= NORMAL.priority <= NORMAL.highest


def _plain(text: str) -> str:
    """Lower case, no diacritics, single spaces: "Khẩn  cấp" -> "khan cap" (đ -> d)."""
    decomposed = unicodedata.normalize("NFD", text.strip().lower().replace("đ", "d"))
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).replace("_", " ").split())


_BY_WORD: dict[str, Level] = {}
for _lv in LEVELS:
    _BY_WORD[_lv.name] = _lv
    _BY_WORD[_plain(_lv.vi)] = _lv
_BY_WORD["urgent"] = EMERGENCY


def level_of(priority: int) -> Level:
    """The level a 0–9 priority belongs to."""
    if isinstance(priority, bool) or not 0 <= priority <= 9:
        raise ValueError(f"priority {priority!r}: must be 0-9")
    return next(lv for lv in LEVELS if lv.lowest <= priority <= lv.highest)


def parse_level(text: str | int) -> int:
    """A level as staff write it: normal/priority/emergency, thông thường/ưu tiên/khẩn cấp (with or
    without diacritics), or a number 0–9. Returns the 0–9 priority."""
    if isinstance(text, int) and not isinstance(text, bool):
        level_of(text)
        return text
    s = str(text)
    if s.strip().isdigit():
        return parse_level(int(s.strip()))
    found = _BY_WORD.get(_plain(s))
    if found is None:
        raise ValueError(f"level {s!r}: write thông thường, ưu tiên or khẩn cấp (normal, priority, emergency) or 0-9")
    return found.priority
