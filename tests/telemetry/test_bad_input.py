"""Every class of bad telemetry is refused with its reason counted, never written, never fatal;
a rate-limited alarm goes out on ``event``."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from gateway.telemetry.service import TelemetryService
from protocol.models import AlarmEvent, Reading

from .helpers import Publisher, config_dict, eventually, influx_values, load, running, topic, v1


async def test_bad_input_is_counted_by_reason(tmp_path: Path, mosquitto: Any, influxdb1: Any) -> None:
    cfg = load(
        tmp_path,
        config_dict(tmp_path, mosquitto, influx=v1(influxdb1), retain_days=30, alarm_interval_s=1),
    )
    alarms: list[AlarmEvent] = []

    async def publish_event(ev: AlarmEvent) -> None:
        alarms.append(ev)

    now = int(time.time() * 1000)
    good = {"ts": now - 1000, "fields": {"temp_c": 21.5}}
    cases: list[tuple[str, bytes | str, int]] = [  # (expected reason, payload, readings refused)
        ("bad_json", b'{"ts": 1, "fields": {', 1),
        ("not_utf8", b"\xff\xfe", 1),
        ("not_finite", f'{{"ts": {now}, "fields": {{"t": NaN}}}}', 1),
        ("not_finite", f'{{"ts": {now}, "fields": {{"t": Infinity}}}}', 1),
        ("not_finite", f'{{"ts": {now}, "fields": {{"t": 1e999}}}}', 1),
        ("non_numeric", json.dumps({"ts": now, "fields": {"t": "21.5"}}), 1),
        ("non_numeric", json.dumps({"ts": now, "fields": {"t": True}}), 1),
        ("non_numeric", json.dumps({"ts": now, "fields": {"t": None}}), 1),
        ("bad_field_name", json.dumps({"ts": now, "fields": {"temp c": 1}}), 1),
        ("bad_field_name", json.dumps({"ts": now, "fields": {"a=b,c": 1}}), 1),
        ("bad_field_name", json.dumps({"ts": now, "fields": {"nhiệt_độ": 1}}), 1),
        ("bad_timestamp", json.dumps({"ts": "2026-01-01", "fields": {"t": 1}}), 1),
        ("bad_timestamp", json.dumps({"ts": 1.5, "fields": {"t": 1}}), 1),
        ("future_timestamp", json.dumps({"ts": now + 2 * 86_400_000, "fields": {"t": 1}}), 1),
        ("too_old", json.dumps({"ts": now - 31 * 86_400_000, "fields": {"t": 1}}), 1),
        ("too_large", json.dumps({"ts": now, "fields": {"t": 1}, "pad": "x" * 262_200}), 1),
        ("bad_shape", json.dumps([1, 2]), 1),
        ("bad_shape", json.dumps({"ts": now}), 1),
        ("bad_shape", json.dumps({"readings": []}), 1),
        # a batch with 2 good and 2 bad readings: only the bad ones are refused
        (
            "future_timestamp",
            json.dumps(
                {
                    "readings": [
                        good | {"ts": now - 10},
                        {"ts": now + 9 * 86_400_000, "fields": {"t": 1}},
                        {"ts": now - 20, "fields": {"t": "x"}},
                        good | {"ts": now - 30},
                    ]
                }
            ),
            1,
        ),
    ]
    svc = TelemetryService(cfg, publish_event=publish_event, clock_synced=lambda: True)
    async with running(svc):
        pub = Publisher(mosquitto)
        items: list[tuple[str, Any]] = [(topic("s1"), payload) for _, payload, _ in cases]
        items.append((topic("nobody"), json.dumps(good)))  # unknown device
        items.append((topic("s1"), json.dumps(good)))  # and life goes on
        await asyncio.to_thread(pub.publish_all, items)
        pub.close()
        got = await eventually(
            lambda: len(v := influx_values(influxdb1, "environment", "temp_c")) >= 3 and v,
            what="good readings written",
        )
        await eventually(lambda: alarms, within=10, what="an alarm on event")
        await asyncio.sleep(1.5)
    expected: dict[str, int] = {}
    for reason, _, n in cases:
        expected[reason] = expected.get(reason, 0) + n
    expected["non_numeric"] += 1  # the "x" inside the mixed batch
    expected["unknown_device"] = 1
    assert dict(svc.rejected) == expected
    assert svc.health()["telemetry_rejected"] == expected
    assert svc.health()["driver_errors"]["s1"]["rejected"] == sum(expected.values()) - 1
    # only the good readings were written, nothing else
    assert sorted(got) == sorted([("s1", now - 1000), ("s1", now - 10), ("s1", now - 30)])
    assert set(got.values()) == {21.5}
    assert not any(p.get("t") is not None for p in influxdb1.points("environment"))
    # alarms are rate-limited (one per second here) and together account for every refusal
    rejected_alarms = [a for a in alarms if a.code == "telemetry_rejected"]
    assert 1 <= len(rejected_alarms) <= 3
    # the oversize message also raised an alarm of its own kind, naming the device
    assert [a.details["devices"] for a in alarms if a.code == "telemetry_oversize"] == [["s1"]]
    assert {a.code for a in alarms} == {"telemetry_rejected", "telemetry_oversize"}
    totals: dict[str, int] = {}
    for a in rejected_alarms:
        for reason, n in a.details["counts"].items():
            totals[reason] = totals.get(reason, 0) + n
    assert totals == expected


async def test_future_readings_are_kept_while_the_gateway_clock_is_unsynchronised(tmp_path: Path) -> None:
    """A Pi without RTC boots with an old time; until NTP answers, a correct sensor looks "in the
    future". Those readings are kept (up to 30 days ahead); once the clock is synchronised the 1-day
    limit applies again."""
    synced = False
    cfg = load(tmp_path, config_dict(tmp_path, "mqtt://127.0.0.1:1", influx=None, devices=()))
    svc = TelemetryService(cfg, clock_synced=lambda: synced)
    ahead = int(time.time() * 1000) + 2 * 86_400_000
    async with running(svc):
        await svc.accept_polled("song-1", "water_level", [Reading(ts=ahead, fields={"level_cm": 1.0})])
        assert svc.spool.pending == 1 and not svc.rejected
        assert svc.health()["telemetry_future_limit_ms"] == 30 * 86_400_000
        synced = True
        svc._check_clock()
        await svc.accept_polled("song-1", "water_level", [Reading(ts=ahead + 1, fields={"level_cm": 2.0})])
        assert svc.spool.pending == 1 and svc.rejected == {"future_timestamp": 1}
