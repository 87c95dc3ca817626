"""Evaluation of local warning rules over readings, as they are accepted (pure, no I/O).

A rule is *met* when the value is at or above its threshold for ``for_s`` seconds (measured on the
readings' own timestamps, so a buffered batch is judged by when it was measured), or when the value
rose by at least ``rise_per_10min`` within the last ten minutes. An active rule is *cleared* only when
the value falls below ``threshold - hysteresis`` (and the rise below ``rise - hysteresis``), so a level
hovering at the threshold does not make the speakers start and stop. A reading older than the last one
seen for a rule is ignored (at-least-once delivery repeats readings; a buffered batch may arrive late).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from protocol.models import WarningRule

TEN_MIN_MS = 10 * 60 * 1000
#: readings kept per rule for the rate of rise (a sensor reporting every second fills it in 10 min)
WINDOW_MAX = 1200


@dataclass
class RuleState:
    """What the gateway knows of one rule; the first four fields are stored durably."""

    active: bool = False
    started_at: int | None = None
    plays: int = 0
    last_play_at: int | None = None
    #: not stored: after a restart a level must again be above for the whole duration
    above_since: int | None = None
    last_ts: int | None = None
    window: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=WINDOW_MAX))
    quiet_reported: bool = False


@dataclass(frozen=True)
class Transition:
    rule_id: str
    kind: Literal["start", "clear"]
    value: float
    ts: int
    why: str


def _milli(v: int | None) -> float | None:
    return None if v is None else v / 1000.0


def evaluate(rule: WarningRule, st: RuleState, ts: int, value: float) -> Transition | None:
    """Feed one reading of ``rule.device``/``rule.field`` to ``st``; the transition it causes, if any."""
    if st.last_ts is not None and ts <= st.last_ts:
        return None
    st.last_ts = ts
    st.window.append((ts, value))
    while st.window and st.window[0][0] < ts - TEN_MIN_MS:
        st.window.popleft()
    thr = _milli(rule.threshold_milli)
    rise_thr = _milli(rule.rise_per_10min_milli)
    hyst = rule.hysteresis_milli / 1000.0
    if thr is not None and value >= thr:
        if st.above_since is None:
            st.above_since = ts
    else:
        st.above_since = None
    level_met = st.above_since is not None and ts - st.above_since >= rule.for_s * 1000
    rise = value - min(v for _t, v in st.window)
    rise_met = rise_thr is not None and rise >= rise_thr
    if not st.active:
        if level_met:
            return Transition(rule.id, "start", value, ts,
                              f"{rule.field} = {value:g} >= {thr:g} for {rule.for_s} s")
        if rise_met:
            return Transition(rule.id, "start", value, ts,
                              f"{rule.field} rose {rise:g} within 10 min (>= {rise_thr:g})")
        return None
    level_clear = thr is None or value < thr - hyst
    rise_clear = rise_thr is None or rise < rise_thr - hyst
    if level_clear and rise_clear:
        return Transition(rule.id, "clear", value, ts, f"{rule.field} = {value:g} fell below the clearing level")
    return None


def play_due(rule: WarningRule, st: RuleState, now: int) -> bool:
    """An active rule plays when it has not played yet, or its repeat interval has passed (up to max_plays)."""
    if not st.active or st.plays >= rule.max_plays:
        return False
    if st.plays == 0 or st.last_play_at is None:
        return True
    return rule.repeat_every_s > 0 and now >= st.last_play_at + rule.repeat_every_s * 1000


def quiet_now(rule: WarningRule, now: int) -> bool:
    """Quiet hours hold back a warning below the emergency level; never an emergency one."""
    from protocol.models import PRIORITY_EMERGENCY

    return rule.quiet_hours is not None and rule.priority < PRIORITY_EMERGENCY and rule.quiet_hours.contains(now)
