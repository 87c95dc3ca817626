"""Pure functions of the fleet: threshold hysteresis, health rules, routing, message rendering, the
webhook signature, config checks and query quoting."""

from __future__ import annotations

import json
import time
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from scheduler.fleet.alarms.lifecycle import AlarmRecord
from scheduler.fleet.alarms.rules import (
    event_severity,
    event_type,
    health_conditions,
    threshold_condition,
    threshold_state,
)
from scheduler.fleet.config import FleetSection, NotifySection, Rules, ThresholdRule
from scheduler.fleet.notify.messages import email_recipients, render, webhook_targets
from scheduler.fleet.notify.senders import sign, verify
from scheduler.fleet.readings import threshold_query

T0 = 1_800_000_000_000
RULE = ThresholdRule(name="water_high", measurement="water_level", field="water_level_cm", above=150, clear_at=140,
                     for_s=300)


def pts(*values: float, step_s: int = 60) -> list[tuple[int, float]]:
    return [(T0 + i * step_s * 1000, v) for i, v in enumerate(values)]


def test_threshold_needs_the_whole_window() -> None:
    st = threshold_state(RULE, pts(120, 151, 155, 160, 158, 152))  # high from the 2nd point: 4 min
    assert st.high and st.since == T0 + 60_000
    assert not threshold_condition(RULE, "xa", "muc", st, T0 + 5 * 60_000).holds
    assert threshold_condition(RULE, "xa", "muc", st, T0 + 6 * 60_000).holds


def test_hysteresis_keeps_one_run_while_the_level_wobbles() -> None:
    st = threshold_state(RULE, pts(151, 149, 152, 141, 150))  # never below 140: one run since the first
    assert st.high and st.since == T0
    st = threshold_state(RULE, pts(151, 139, 150))  # below 140 ends the run; 150 starts a new one
    assert st.high and st.since == T0 + 120_000
    st = threshold_state(RULE, pts(151, 139, 149))
    assert not st.high


def test_below_rule_and_config_checks() -> None:
    low = ThresholdRule(name="battery_low", measurement="power", field="battery_v", below=11.5, clear_at=12.0,
                        for_s=0)
    assert threshold_state(low, pts(12.5, 11.4)).high
    assert threshold_state(low, pts(11.4, 11.9)).high  # not yet back above 12.0
    assert not threshold_state(low, pts(11.4, 12.1)).high
    with pytest.raises(ValidationError, match="exactly one"):
        ThresholdRule(name="x", measurement="m", field="f", above=1, below=0)
    with pytest.raises(ValidationError, match="hysteresis"):
        ThresholdRule(name="x", measurement="m", field="f", above=150, clear_at=160)
    with pytest.raises(ValidationError):
        ThresholdRule(name="x", measurement='water"; DROP', field="f", above=1)


def test_queries_quote_every_name() -> None:
    rule = ThresholdRule(name="w", measurement="water_level", field="water_level_cm", above=1,
                         gateways=["xa-a"], devices=["muc-1", "muc-2"])
    q = threshold_query(rule, 360)
    assert q == ('SELECT "water_level_cm" FROM "water_level" WHERE time > now() - 360s AND ("gateway" = \'xa-a\') '
                 'AND ("device" = \'muc-1\' OR "device" = \'muc-2\') GROUP BY "gateway", "device"')


def test_health_rules() -> None:
    rules = Rules()
    prev = {"spool_dropped": 10, "spool_quarantined": 0}
    got = {c.type: c for c in health_conditions("xa", {"disk_used_pct": 93.5, "cpu_temp_c": 82.0,
                                                        "clock_synced": False, "spool_dropped": 25,
                                                        "spool_quarantined": 0}, prev, rules)}
    assert got["disk_full"].holds and "93.5" in got["disk_full"].message
    assert got["cpu_temp_high"].holds and got["clock_unsynced"].holds
    assert got["spool_dropping"].holds and got["spool_dropping"].details["increase"] == 15
    assert not got["telemetry_quarantine"].holds
    calm = {c.type: c.holds for c in health_conditions("xa", {"disk_used_pct": 50, "cpu_temp_c": 50,
                                                              "clock_synced": True, "clock_offset_ms": 3,
                                                              "spool_dropped": 25}, {"spool_dropped": 25}, rules)}
    assert not any(calm.values())
    # the first report after a restart is only a baseline for the counters
    first = {c.type: c.holds for c in health_conditions("xa", {"spool_dropped": 99}, None, rules)}
    assert first == {"spool_dropping": False}
    assert event_type("Telemetry-Rejected!") == "telemetry_rejected" and event_severity("info") is None


def alarm(i: int, gw: str = "xa-an-binh", sev: str = "minor", type_: str = "speaker_offline") -> AlarmRecord:
    return AlarmRecord(id=i, source=f"dev:{gw}/loa-{i:02d}", type=type_, gateway=gw, device=f"loa-{i:02d}",
                       severity=sev, message=f"speaker loa-{i:02d} is offline", first_seen=T0, last_seen=T0)


def notify_cfg() -> NotifySection:
    return NotifySection.model_validate({
        "contacts": [{"name": "A", "email": "a@x.test", "roles": ["technician"], "areas": ["xa-an-binh"]},
                     {"name": "B", "email": "b@x.test", "roles": ["technician"]},
                     {"name": "C", "email": "c@x.test", "roles": ["approver"], "areas": ["xa-an-binh"]}],
        "routes": [{"roles": ["technician"]}, {"roles": ["approver"], "min_severity": "critical", "recovery": False}],
        "webhooks": [{"name": "sms", "url": "https://sms.example/hook", "secret": {"value": "s"},
                      "min_severity": "major", "areas": ["xa-an-binh"]}],
    })


def test_routing_by_role_area_and_severity() -> None:
    cfg = notify_cfg()
    assert email_recipients(cfg, alarm(1), "raised") == ["a@x.test", "b@x.test"]
    assert email_recipients(cfg, alarm(1, gw="xa-khac"), "raised") == ["b@x.test"]
    crit = alarm(1, sev="critical", type_="threshold_water_high")
    assert email_recipients(cfg, crit, "raised") == ["a@x.test", "b@x.test", "c@x.test"]
    assert email_recipients(cfg, crit, "cleared") == ["a@x.test", "b@x.test"]  # the chairman: no recovery mails
    assert [w.name for w in webhook_targets(cfg, crit, "raised")] == ["sms"]
    assert webhook_targets(cfg, alarm(1), "raised") == []  # minor is below the webhook's major


def test_ten_speakers_render_as_one_message() -> None:
    alarms = [alarm(i) for i in range(1, 11)]
    msg = render("raised", "xa-an-binh", "Xã An Bình", alarms, sent_at=T0, tz=ZoneInfo("Asia/Ho_Chi_Minh"),
                 public_url="https://loaxa.example")
    assert msg.subject == "[Loa Xã] MINOR: Xã An Bình: speaker offline ×10"
    assert all(f"loa-{i:02d}" in msg.text for i in range(1, 11))
    payload = json.loads(msg.json())
    assert payload["version"] == 1 and payload["kind"] == "raised" and len(payload["alarms"]) == 10
    assert payload["alarms"][0]["url"] == "https://loaxa.example/api/alarms/1"
    assert payload["text"].startswith("CẢNH BÁO Xã An Bình: loa mất kết nối (10)") and len(payload["text"]) <= 480


def test_webhook_signature_round_trip_and_refusals() -> None:
    body = b'{"kind":"raised"}'
    ts = int(time.time())
    sig = sign("secret", ts, body)
    assert sig.startswith("sha256=") and verify("secret", str(ts), body, sig)
    assert not verify("other", str(ts), body, sig)
    assert not verify("secret", str(ts), body + b" ", sig)
    assert not verify("secret", str(ts - 3600), body, sign("secret", ts - 3600, body))  # replayed an hour later
    assert not verify("secret", "soon", body, sig)


def test_fleet_section_defaults_and_errors() -> None:
    f = FleetSection()
    assert f.rules.gateway_offline.after_s == 300 and f.rules.disk_pct == 90 and f.flapping.toggles == 6
    with pytest.raises(ValidationError, match="email"):
        NotifySection.model_validate({"contacts": [{"name": "x", "email": "not-an-address", "roles": ["a"]}]})
    with pytest.raises(ValidationError):
        FleetSection.model_validate({"rules": {"speaker_ofline": {}}})  # a typo is an error, not ignored
