"""The fleet state from messages (applied directly, as the broker link would) and the alarms they
make, on a real SQLite database. The MQTT link is a real MqttLink that is never connected: the
scheduler's own link being down is exactly what makes every status "unknown"."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from loaxa.mqttconf import MqttEndpoint
from loaxa.mqttlink import MqttLink
from protocol.models import AlarmEvent, DeviceState, Health, PlaybackEvent, Status
from protocol.signing import now_ms
from scheduler.db import AsyncStore, Store
from scheduler.fleet.alarms.engine import AlarmEngine
from scheduler.fleet.config import Flapping, Rules, Timing
from scheduler.fleet.state import MAX_EVENT_TYPES, FleetState
from scheduler.fleet.store import FleetStore

GW = "xa-an-binh"


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[FleetState, AlarmEngine]]:
    st = Store(f"sqlite:///{tmp_path / 'scheduler.db'}")
    st.upgrade()
    astore = AsyncStore(st)
    engine = AlarmEngine(astore, FleetStore(st.session), Flapping())
    await engine.load()
    rules = Rules(speaker_offline=Timing(after_s=0, severity="minor"),
                  gateway_offline=Timing(after_s=0, severity="major"))
    link = MqttLink(MqttEndpoint(url="mqtt://127.0.0.1:1"), client_id="test-fleet")
    state = FleetState(link, engine, rules)
    yield state, engine
    astore.close()


def health(*devices: tuple[str, str], **extra: Any) -> Health:
    return Health.model_validate({"ts": now_ms(), "devices": [{"id": d, "kind": k} for d, k in devices], **extra})


async def types(engine: AlarmEngine) -> list[tuple[str, str | None]]:
    await engine.tick(now_ms() + 1000)  # the observations above carry times a few ms ahead
    return sorted((a.type, a.device) for a in engine.alarms.values())


async def test_statuses_are_unknown_while_the_link_is_down(fleet: tuple[FleetState, AlarmEngine]) -> None:
    state, _ = fleet
    now = now_ms()
    state.apply_status(GW, Status(state="online", ts=now), now)
    await state.apply_health(GW, health(("loa-01", "speaker")), now)
    state.apply_device_state(GW, "loa-01", DeviceState(online=True, volume=70), now)
    (gw,) = state.snapshot()
    assert gw["status"] == "unknown" and gw["devices"][0]["status"] == "unknown"
    assert gw["devices"][0]["online"] is None and gw["devices"][0]["volume"] == 70
    state.link.connected.set()  # as if connected: the same facts now show
    (gw,) = state.snapshot()
    assert gw["status"] == "online" and gw["devices"][0]["status"] == "online"


async def test_listing_removal_and_unlisted_states(fleet: tuple[FleetState, AlarmEngine]) -> None:
    state, engine = fleet
    state.link.connected.set()
    synced: list[tuple[str, list[tuple[str, str | None]]]] = []

    async def on_listed(gw: str, speakers: list[tuple[str, str | None]]) -> None:
        synced.append((gw, speakers))

    state.on_devices_listed = on_listed
    now = now_ms()
    state.apply_status(GW, Status(state="online", ts=now), now)
    await state.apply_health(GW, health(("loa-01", "speaker"), ("loa-02", "speaker"), ("muc", "sensor")), now)
    assert synced == [(GW, [("loa-01", None), ("loa-02", None)])]
    state.apply_device_state(GW, "loa-02", DeviceState(online=False), now)
    assert await types(engine) == [("speaker_offline", "loa-02")]
    state.apply_device_state(GW, "ghost", DeviceState(online=False, volume=1), now)  # not configured
    assert "ghost" not in state.gateways[GW].devices and not state.accepts_device(GW, "ghost")
    await state.apply_health(GW, health(("loa-01", "speaker"), ("muc", "sensor")), now + 1)
    assert synced[-1] == (GW, [("loa-01", None)])
    assert "loa-02" not in state.gateways[GW].devices
    assert await types(engine) == []  # the removed speaker's alarm is cleared


async def test_offline_gateway_covers_its_speakers(fleet: tuple[FleetState, AlarmEngine]) -> None:
    state, engine = fleet
    state.link.connected.set()
    now = now_ms()
    state.apply_status(GW, Status(state="online", ts=now), now)
    await state.apply_health(GW, health(("loa-01", "speaker")), now)
    state.apply_device_state(GW, "loa-01", DeviceState(online=True), now)
    state.apply_status(GW, Status(state="offline", ts=now), now + 1)
    state.apply_device_state(GW, "loa-01", DeviceState(online=False), now + 2)  # its will, relayed late
    assert await types(engine) == [("gateway_offline", None)]
    assert state.snapshot()[0]["devices"][0]["status"] == "unknown"


async def test_playback_failures_and_gateway_events(fleet: tuple[FleetState, AlarmEngine]) -> None:
    state, engine = fleet
    state.link.connected.set()
    now = now_ms()
    state.apply_status(GW, Status(state="online", ts=now), now)
    await state.apply_health(GW, health(("loa-01", "speaker")), now)
    state.apply_playback(GW, PlaybackEvent(broadcast_id="b1", device="loa-01", state="failed", at=now,
                                           reason="no_ack"))
    state.apply_playback(GW, PlaybackEvent(broadcast_id="b2", device="loa-01", state="skipped", at=now,
                                           reason="cancelled"))  # not a failure
    state.apply_playback(GW, PlaybackEvent(broadcast_id="b1", device="nobody", state="failed", at=now))
    assert await types(engine) == [("broadcast_failed", "loa-01")]
    state.apply_playback(GW, PlaybackEvent(broadcast_id="b3", device="loa-01", state="finished", at=now))
    assert await types(engine) == []
    state.apply_alarm(GW, AlarmEvent(code="media_server", severity="critical", message="port taken", at=now,
                                     device="nobody"))  # an unknown device: the gateway's alarm
    state.apply_alarm(GW, AlarmEvent(code="chatter", severity="info", message="fyi", at=now))
    assert await types(engine) == [("media_server", None)]
    for i in range(MAX_EVENT_TYPES + 5):
        state.apply_alarm(GW, AlarmEvent(code=f"code_{i}", severity="warning", message="x", at=now))
    got = await types(engine)
    assert len(got) == MAX_EVENT_TYPES + 1 and ("gateway_alarm_other", None) in got
