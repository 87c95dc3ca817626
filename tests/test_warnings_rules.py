"""The local warning rule evaluator (pure functions) and the ``warning.rules`` body's checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.warnings.rules import RuleState, evaluate, play_due, quiet_now
from protocol.models import MediaRef, QuietHours, WarningRule, WarningRulesBody

MEDIA = MediaRef(sha256="0" * 64, url="http://centre/media/x", bytes=10, duration_ms=1000)


def rule(**kw: object) -> WarningRule:
    base: dict[str, object] = {"id": "r1", "device": "g", "field": "water_level_cm", "threshold_milli": 150_000,
                               "for_s": 60, "hysteresis_milli": 10_000, "media": MEDIA}
    base.update(kw)
    return WarningRule.model_validate(base)


def feed(r: WarningRule, st: RuleState, points: list[tuple[int, float]]) -> list[str]:
    out = []
    for ts, v in points:
        tr = evaluate(r, st, ts, v)
        if tr is not None:
            out.append(tr.kind)
            st.active = tr.kind == "start"
    return out


def test_threshold_must_hold_for_the_duration() -> None:
    r, st = rule(), RuleState()
    assert feed(r, st, [(0, 160), (30_000, 170), (59_000, 165)]) == []
    assert feed(r, st, [(60_000, 161)]) == ["start"]


def test_a_spike_shorter_than_the_duration_starts_nothing() -> None:
    r, st = rule(), RuleState()
    assert feed(r, st, [(0, 200), (30_000, 200), (40_000, 100), (70_000, 200), (100_000, 200)]) == []


def test_hysteresis_clears_only_below_threshold_minus_hysteresis() -> None:
    r, st = rule(), RuleState()
    assert feed(r, st, [(0, 160), (60_000, 160)]) == ["start"]
    assert feed(r, st, [(61_000, 145), (62_000, 140.5)]) == []
    assert feed(r, st, [(63_000, 139.9)]) == ["clear"]


def test_rate_of_rise_per_ten_minutes() -> None:
    r, st = rule(threshold_milli=None, rise_per_10min_milli=20_000, hysteresis_milli=5_000), RuleState()
    assert feed(r, st, [(0, 100), (300_000, 110), (540_000, 119)]) == []
    assert feed(r, st, [(590_000, 121)]) == ["start"]
    # an hour later the level is steady: the rise within 10 min is gone
    assert feed(r, st, [(4_000_000, 121), (4_300_000, 121)]) == ["clear"]


def test_old_or_repeated_readings_are_ignored() -> None:
    r, st = rule(for_s=0), RuleState()
    assert feed(r, st, [(1000, 100)]) == []
    assert feed(r, st, [(1000, 200), (500, 200)]) == []


def test_repeats_and_their_limit() -> None:
    r = rule(repeat_every_s=600, max_plays=2)
    st = RuleState(active=True, started_at=0, plays=0)
    assert play_due(r, st, 0)
    st.plays, st.last_play_at = 1, 0
    assert not play_due(r, st, 599_000)
    assert play_due(r, st, 600_000)
    st.plays = 2
    assert not play_due(r, st, 10_000_000)


def test_quiet_hours_never_hold_back_an_emergency() -> None:
    quiet = QuietHours(from_min=22 * 60, to_min=6 * 60)  # 22:00–06:00 in Việt Nam (UTC+7)
    at_23h_vn = (16 * 60) * 60_000  # 16:00 UTC
    at_noon_vn = (5 * 60) * 60_000
    assert quiet_now(rule(priority=6, quiet_hours=quiet), at_23h_vn)
    assert not quiet_now(rule(priority=6, quiet_hours=quiet), at_noon_vn)
    assert not quiet_now(rule(quiet_hours=quiet), at_23h_vn)  # priority 9 = emergency by default


def test_body_checks() -> None:
    with pytest.raises(ValidationError, match="threshold_milli, rise_per_10min_milli"):
        rule(threshold_milli=None)
    with pytest.raises(ValidationError, match="unique"):
        WarningRulesBody(rules=[rule(), rule()])
    with pytest.raises(ValidationError):
        rule(threshold_milli=150.5)  # signed envelopes carry integers only
    with pytest.raises(ValidationError, match="at least 60"):
        rule(repeat_every_s=5)
