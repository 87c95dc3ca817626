"""Poison messages, reserved names, huge integers and oversize batches, on a real Mosquitto (production
LAN ACL, one account per device) and a real InfluxDB 1.6.7.

- A message that crashes the JSON parser (nested arrays under 256 KiB: RecursionError; a 5,000-digit
  integer: ValueError) is refused with a named reason and acknowledged; the good readings published
  before and after it all reach InfluxDB (before the fix the whole batch stayed unacknowledged and was
  redelivered for ever).
- Field names that are tag keys or reserved (device, time, gateway, commune, _field) are refused by
  name; integers beyond ±2^53 are refused (a float field would store them rounded); every quarantine
  (InfluxDB refusing a reading the gateway accepted) raises an alarm.
- A batch over the payload limit that the gateway can see is refused whole with an alarm of its own;
  the largest batch of typical readings that fits arrives complete.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from gateway.telemetry.service import TelemetryService
from gateway.telemetry.validate import MAX_READINGS
from loaxa.brokers import LanBroker
from loaxa.servers import MAX_PACKET_SIZE
from protocol.limits import MAX_PAYLOAD_BYTES
from protocol.models import AlarmEvent

from .helpers import Publisher, config_dict, eventually, influx_values, load, running, topic, v1


def _service(tmp_path: Path, lan: LanBroker, influxdb1: Any, alarms: list[AlarmEvent]) -> TelemetryService:
    cfg = load(tmp_path, config_dict(tmp_path, lan, influx=v1(influxdb1), devices=("s1", "s2"),
                                     retain_days=30, alarm_interval_s=1))

    async def publish_event(ev: AlarmEvent) -> None:
        alarms.append(ev)

    return TelemetryService(cfg, publish_event=publish_event, clock_synced=lambda: True)


async def test_poison_messages_do_not_stall_the_good_ones(tmp_path: Path, mosquitto: LanBroker,
                                                          influxdb1: Any) -> None:
    alarms: list[AlarmEvent] = []
    svc = _service(tmp_path, mosquitto, influxdb1, alarms)
    now = int(time.time() * 1000)
    poisons: list[tuple[str, bytes]] = [
        ("too_deep", b"[" * 200_000),  # RecursionError in json.loads, 195 KiB
        ("too_deep", b'{"a":' * 40_000 + b"1" + b"}" * 40_000),
        ("bad_json", b'{"ts": 1, "fields": {"a": ' + b"7" * 5000 + b"}}"),  # int_max_str_digits
    ]
    items: list[tuple[str, Any]] = []
    expected: dict[tuple[str, int], float] = {}
    for i in range(30):
        dev = "s1" if i % 2 else "s2"
        items.append((topic(dev), json.dumps({"ts": now - 1000 + i, "fields": {"temp_c": 20.0 + i}})))
        expected[(dev, now - 1000 + i)] = 20.0 + i
        if i % 10 == 4:
            items.append((topic("s1"), poisons[i // 10][1]))
    async with running(svc):
        pub = Publisher(mosquitto)
        await asyncio.to_thread(pub.publish_all, items)
        got = await eventually(lambda: len(v := influx_values(influxdb1, "environment", "temp_c")) >= 30 and v,
                               within=60, what="every good reading in InfluxDB")
        # every message, poison included, was acknowledged (nothing left for the broker to redeliver)
        await eventually(lambda: svc.ingest.acked >= len(items), within=30, what="every message acknowledged")
        pub.close()
    assert got == expected
    assert dict(svc.rejected) == {"too_deep": 2, "bad_json": 1}
    assert svc.ingest.stats()["telemetry_mqtt_poisoned"] == 0  # refused by name, not dropped as a crash


async def test_reserved_names_big_integers_and_quarantine_alarm(tmp_path: Path, mosquitto: LanBroker,
                                                                influxdb1: Any) -> None:
    alarms: list[AlarmEvent] = []
    svc = _service(tmp_path, mosquitto, influxdb1, alarms)
    now = int(time.time() * 1000)
    # someone wrote field "level" as an integer into this measurement: our float is refused by InfluxDB
    req = urllib.request.Request(f"{influxdb1.url}/write?db={influxdb1.database}&precision=ms",
                                 data=f"environment,device=other level=1i {now - 60_000}".encode(), method="POST")
    assert await asyncio.to_thread(lambda: urllib.request.urlopen(req, timeout=10).status) == 204
    cases: list[tuple[str, dict[str, Any]]] = [
        ("reserved_field_name", {"device": 1.0}),
        ("reserved_field_name", {"time": 1.0}),
        ("reserved_field_name", {"gateway": 1.0}),
        ("reserved_field_name", {"commune": 1.0}),
        ("reserved_field_name", {"_field": 1.0}),
        ("inexact_integer", {"count": 2**53 + 1}),
        ("inexact_integer", {"count": -(2**60)}),
    ]
    items = [(topic("s1"), {"ts": now - 500 + i, "fields": f}) for i, (_, f) in enumerate(cases)]
    items.append((topic("s1"), {"ts": now - 100, "fields": {"count": 2**53}}))  # exact: kept
    items.append((topic("s2"), {"ts": now - 50, "fields": {"level": 2.5}}))  # field type conflict
    async with running(svc):
        pub = Publisher(mosquitto)
        await asyncio.to_thread(pub.publish_all, items)
        await eventually(lambda: influx_values(influxdb1, "environment", "count"), within=30, what="the exact count")
        quarantine = await eventually(lambda: [a for a in alarms if a.code == "telemetry_quarantined"], within=30,
                                      what="an alarm for the quarantined reading")
        await eventually(lambda: any(a.code == "telemetry_rejected" for a in alarms), within=10,
                         what="the refusal alarm")
        pub.close()
    assert quarantine[0].details["count"] == 1
    assert quarantine[0].details["examples"][0]["device"] == "s2"
    assert dict(svc.rejected) == {"reserved_field_name": 5, "inexact_integer": 2, "quarantined": 1}
    assert influx_values(influxdb1, "environment", "count") == {("s1", now - 100): float(2**53)}
    # no field named like a tag: WHERE device = … still means the tag
    keys = influxdb1.query('SHOW FIELD KEYS FROM "environment"')["results"][0]["series"][0]["values"]
    assert {k for k, _ in keys} == {"level", "count"}
    assert [p["device"] for p in influxdb1.points("environment", where="WHERE device = 's1'")] == ["s1"]


def typical_batch(n: int, now: int) -> bytes:
    """n readings of one field each, as compact JSON (what a sensor should send)."""
    readings = [{"ts": now - 1000 * (n - i), "fields": {"water_level_cm": 132.5}} for i in range(n)]
    return json.dumps({"readings": readings}, separators=(",", ":")).encode()


def max_typical_readings(now: int) -> int:
    lo, hi = 1, MAX_READINGS
    while lo < hi:  # the largest n whose payload fits
        mid = (lo + hi + 1) // 2
        if len(typical_batch(mid, now)) <= MAX_PAYLOAD_BYTES:
            lo = mid
        else:
            hi = mid - 1
    return lo


async def test_oversize_batches_alarm_and_the_largest_batch_arrives(tmp_path: Path, mosquitto: LanBroker,
                                                                    influxdb1: Any) -> None:
    alarms: list[AlarmEvent] = []
    svc = _service(tmp_path, mosquitto, influxdb1, alarms)
    now = int(time.time() * 1000)
    n = max_typical_readings(now)
    biggest, over = typical_batch(n, now), typical_batch(n + 1, now)
    assert len(biggest) <= MAX_PAYLOAD_BYTES < len(over) < MAX_PACKET_SIZE - 100
    print(f"largest batch of 1-field readings: {n} readings, {len(biggest)} bytes")
    async with running(svc):
        pub = Publisher(mosquitto)
        await asyncio.to_thread(pub.publish_all, [(topic("s2"), over), (topic("s1"), biggest)])
        await eventually(lambda: len(influx_values(influxdb1, "water_level", "water_level_cm")) >= n or
                         len(influx_values(influxdb1, "environment", "water_level_cm")) >= n,
                         within=60, what=f"all {n} readings of the largest batch")
        oversize = await eventually(lambda: [a for a in alarms if a.code == "telemetry_oversize"], within=10,
                                    what="the oversize alarm")
        pub.close()
    assert oversize[0].details["devices"] == ["s2"]
    assert oversize[0].details["examples"][0]["bytes"] == len(over)
    assert svc.rejected == {"too_large": 1}
    assert len(influx_values(influxdb1, "environment", "water_level_cm")) == n
