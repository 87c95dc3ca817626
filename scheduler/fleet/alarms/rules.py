"""The rules that turn what the scheduler hears into conditions: pure functions, no I/O.

A *condition* is (type, holds?, severity, message, details) for one source (``gw:GW`` or
``dev:GW/DEV``). The engine (engine.py) decides, with each rule's timing, when a condition that holds
becomes an alarm and when the alarm clears. Which rule reads which message is in docs/alarms.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scheduler.fleet.config import Rules, ThresholdRule, Timing

#: Playback ends that are not the speaker's fault.
NOT_A_FAILURE = frozenset({"cancelled"})
#: Gateway alarm codes become alarm types: lower case letters, digits and underscores only.
_CODE_RE = re.compile(r"[^a-z0-9_]+")


def gw_source(gw: str) -> str:
    return f"gw:{gw}"


def dev_source(gw: str, dev: str) -> str:
    return f"dev:{gw}/{dev}"


@dataclass(frozen=True)
class Condition:
    type: str
    holds: bool
    timing: Timing
    severity: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def health_conditions(gw: str, health: Mapping[str, Any], previous: Mapping[str, Any] | None,
                      rules: Rules) -> list[Condition]:
    """Conditions read from one gateway health report (and the one before it, for counters)."""
    out: list[Condition] = []
    disk = _num(health.get("disk_used_pct"))
    if disk is not None and rules.disk_full.enabled:
        out.append(Condition("disk_full", disk > rules.disk_pct, rules.disk_full, rules.disk_full.severity,
                             f"{gw}: disk {disk:.1f} % full (limit {rules.disk_pct:g} %)",
                             {"disk_used_pct": disk}))
    temp = _num(health.get("cpu_temp_c"))
    if temp is not None and rules.cpu_temp_high.enabled:
        out.append(Condition("cpu_temp_high", temp >= rules.cpu_temp_c, rules.cpu_temp_high,
                             rules.cpu_temp_high.severity,
                             f"{gw}: CPU at {temp:.1f} °C (limit {rules.cpu_temp_c:g} °C)", {"cpu_temp_c": temp}))
    synced = health.get("clock_synced")
    offset = _num(health.get("clock_offset_ms"))
    if rules.clock_unsynced.enabled and (isinstance(synced, bool) or offset is not None):
        off_bad = offset is not None and abs(offset) > rules.clock_offset_ms
        bad = synced is False or off_bad
        why = "not synchronised (NTP)" if synced is False else f"{offset:+.0f} ms off" if off_bad else "synchronised"
        out.append(Condition("clock_unsynced", bad, rules.clock_unsynced, rules.clock_unsynced.severity,
                             f"{gw}: clock {why}", {"clock_synced": synced, "clock_offset_ms": offset}))
    out += _counter(gw, "spool_dropping", "spool_dropped", health, previous, rules.spool_dropping,
                    "the telemetry spool is full and dropped {n} readings (oldest first)")
    out += _counter(gw, "telemetry_quarantine", "spool_quarantined", health, previous, rules.telemetry_quarantine,
                    "{n} telemetry readings were quarantined (InfluxDB refused them)")
    return out


def _counter(gw: str, kind: str, key: str, health: Mapping[str, Any], previous: Mapping[str, Any] | None,
             timing: Timing, text: str) -> list[Condition]:
    """A counter that grew since the previous report: the condition holds (until it stops growing)."""
    now, before = _num(health.get(key)), _num(previous.get(key)) if previous else None
    if not timing.enabled or now is None:
        return []
    grew = before is not None and now > before  # the first report sets the baseline
    n = int(now - before) if before is not None and now > before else 0
    return [Condition(kind, grew, timing, timing.severity, f"{gw}: " + text.format(n=n),
                      {key: now, "increase": n})]


def event_type(code: str) -> str:
    """The alarm type of a gateway alarm code (``telemetry_rejected``, ``media_server`` …)."""
    return (_CODE_RE.sub("_", code.lower()).strip("_") or "gateway_alarm")[:64]


def event_severity(severity: str) -> str | None:
    """Gateway severities (info / warning / critical) onto the centre's; info makes no alarm."""
    return {"critical": "critical", "warning": "minor"}.get(severity)


@dataclass
class Hysteresis:
    """Where a threshold rule stands for one series, from its points in time order."""

    high: bool = False
    since: int | None = None  # first point of the current run past the limit
    last: float | None = None
    last_ts: int | None = None


def threshold_state(rule: ThresholdRule, points: Sequence[tuple[int, float]]) -> Hysteresis:
    """Walk the points (ts ms, value), oldest first: the run is entered at the limit and left only
    past ``clear_at`` (hysteresis), so a value wobbling around the limit is one run, not many."""
    st = Hysteresis()
    limit = rule.above if rule.above is not None else rule.below
    assert limit is not None
    back = rule.clear_at if rule.clear_at is not None else limit
    for ts, v in points:
        if rule.above is not None:
            enter, leave = v >= limit, v < back
        else:
            enter, leave = v <= limit, v > back
        if not st.high and enter:
            st.high, st.since = True, ts
        elif st.high and leave:
            st.high, st.since = False, None
        st.last, st.last_ts = v, ts
    return st


def threshold_condition(rule: ThresholdRule, gw: str, dev: str, st: Hysteresis, now: int) -> Condition:
    """Holds once the value has been past the limit for ``for_s`` (by the points' own times)."""
    timing = Timing(after_s=0, clear_after_s=0, severity=rule.severity)
    held_ms = (now - st.since) if st.high and st.since is not None else 0
    holds = st.high and held_ms >= rule.for_s * 1000
    side = f">= {rule.above:g}" if rule.above is not None else f"<= {rule.below:g}"
    msg = (f"{gw}/{dev}: {rule.field} = {st.last:g} ({side} for {held_ms / 1000:.0f} s)" if st.last is not None
           else f"{gw}/{dev}: no {rule.field} reading")
    return Condition(f"threshold_{rule.name}", holds, timing, rule.severity, msg,
                     {"measurement": rule.measurement, "field": rule.field, "value": st.last, "since": st.since,
                      "last_ts": st.last_ts})
