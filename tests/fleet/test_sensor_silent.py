"""The "sensor stopped reporting" rule against a real InfluxDB 1.x: a configured sensor of an online
gateway with no reading for ``after_s`` raises ``sensor_silent``; a fresh reading clears it; the Pi's own
health series never counts, and a gateway that is offline (its readings wait in its spool) raises nothing."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from loaxa.mqttconf import MqttEndpoint
from loaxa.mqttlink import MqttLink
from loaxa.servers import InfluxDB1
from protocol.models import Health, Status
from protocol.signing import now_ms
from scheduler.db import AsyncStore, Store
from scheduler.fleet.alarms.engine import AlarmEngine
from scheduler.fleet.config import Flapping, Rules, SilentRule
from scheduler.fleet.readings import InfluxQL, ReadingRules
from scheduler.fleet.state import FleetState
from scheduler.fleet.store import FleetStore

GW = "xa-an-binh"
AFTER_S = 600


def write_point(influx: InfluxDB1, device: str, at_ms: int, cm: float) -> None:
    line = f"water_level,gateway={GW},device={device} water_level_cm={cm} {at_ms}"
    req = urllib.request.Request(f"{influx.url}/write?db={influx.database}&precision=ms", data=line.encode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 204


@pytest.fixture
async def rules_env(tmp_path: Path,
                    influxdb1: InfluxDB1) -> AsyncIterator[tuple[ReadingRules, AlarmEngine, FleetState]]:
    st = Store(f"sqlite:///{tmp_path / 'scheduler.db'}")
    st.upgrade()
    astore = AsyncStore(st)
    engine = AlarmEngine(astore, FleetStore(st.session), Flapping())
    await engine.load()
    rules = Rules(sensor_silent=SilentRule(after_s=AFTER_S, measurements=["water_level"]))
    link = MqttLink(MqttEndpoint(url="mqtt://127.0.0.1:1"), client_id="test-fleet")
    link.connected.set()  # the scheduler's own link is up: statuses are facts, not "unknown"
    state = FleetState(link, engine, rules)
    influx = InfluxQL(influxdb1.url, influxdb1.database, None, lambda: None)
    yield ReadingRules(influx, state, engine, rules, interval_s=60), engine, state
    await influx.aclose()
    astore.close()


def online(state: FleetState, now: int, *devices: dict[str, Any]) -> Health:
    state.apply_status(GW, Status(state="online", ts=now), now)
    return Health.model_validate({"ts": now, "devices": list(devices)})


async def silent_devices(engine: AlarmEngine, now: int) -> set[str | None]:
    await engine.tick(now + 1000)
    return {a.device for a in engine.alarms.values() if a.type == "sensor_silent" and a.cleared_at is None}


async def test_silent_sensor_raises_and_a_fresh_reading_clears(
        rules_env: tuple[ReadingRules, AlarmEngine, FleetState], influxdb1: InfluxDB1) -> None:
    rr, engine, state = rules_env
    now = now_ms()
    health = online(state, now, {"id": "muc-nuoc", "kind": "sensor", "type": "mqtt_sensor"},
                    {"id": "pi", "kind": "sensor", "type": "pi_health"},
                    {"id": "loa-01", "kind": "speaker"})
    await state.apply_health(GW, health, now)
    write_point(influxdb1, "muc-nuoc", now - 1000, 120.0)

    await rr.evaluate(now)
    assert rr.errors == 0, rr.last_error
    assert await silent_devices(engine, now) == set()

    later = now + (AFTER_S + 5) * 1000  # the last reading is now older than the rule allows
    state.apply_status(GW, Status(state="online", ts=later), later)
    await rr.evaluate(later)
    assert await silent_devices(engine, later) == {"muc-nuoc"}  # not the Pi, not the speaker
    [alarm] = [a for a in engine.alarms.values() if a.type == "sensor_silent"]
    assert alarm.severity == "minor" and alarm.gateway == GW

    write_point(influxdb1, "muc-nuoc", later - 500, 121.0)
    await rr.evaluate(later)
    assert await silent_devices(engine, later) == set()


async def test_no_silent_alarm_while_the_gateway_is_offline(
        rules_env: tuple[ReadingRules, AlarmEngine, FleetState]) -> None:
    rr, engine, state = rules_env
    now = now_ms()
    health = online(state, now, {"id": "muc-nuoc", "kind": "sensor", "type": "mqtt_sensor"})
    await state.apply_health(GW, health, now)
    state.apply_status(GW, Status(state="offline", ts=now), now)
    await rr.evaluate(now + (AFTER_S + 5) * 1000)  # no reading at all, but the gateway is away
    assert rr.errors == 0, rr.last_error
    assert await silent_devices(engine, now + (AFTER_S + 5) * 1000) == set()
