"""Loss is loud, recovery is fast (issue 15, points 2, 5 and 6), with real servers:

* the LAN broker comes back without the gateway's session → ``telemetry_session_lost`` alarm (and
  not after a clean restart that kept it, nor on the very first connection);
* a full spool that drops readings → ``telemetry_dropped`` alarm with count and ts span;
* ``influx_last_error`` clears once a write succeeds;
* after an outage the InfluxDB writer and the MQTT link are back within their configured cap.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from gateway.config import InfluxSection
from gateway.telemetry.service import TelemetryService
from loaxa.brokers import LanBroker
from loaxa.mqttconf import MqttEndpoint
from loaxa.mqttlink import MqttLink
from protocol.models import AlarmEvent

from .helpers import Publisher, config_dict, eventually, influx_values, load, running, topic, v1


def recorder() -> tuple[list[AlarmEvent], Any]:
    events: list[AlarmEvent] = []

    async def publish_event(ev: AlarmEvent) -> None:
        events.append(ev)

    return events, publish_event


async def test_session_lost_alarm(tmp_path: Path, mosquitto: LanBroker) -> None:
    cfg = load(tmp_path, config_dict(tmp_path, mosquitto, influx=None))
    events, publish_event = recorder()
    svc = TelemetryService(cfg, publish_event=publish_event, clock_synced=lambda: True)
    async with running(svc):
        assert (tmp_path / "gwdata" / "telemetry-mqtt-session").exists()  # first connection: no alarm
        # a clean broker restart keeps the session (saved on SIGTERM): still no alarm
        connects = svc.ingest.connects
        await asyncio.to_thread(mosquitto.stop)
        await asyncio.to_thread(mosquitto.start)
        await eventually(lambda: svc.ingest.connects > connects, within=30, what="reconnected after a clean restart")
        assert svc.ingest.sessions_lost == 0
        # the broker loses its database: the session is gone and so is whatever it held
        connects = svc.ingest.connects
        await asyncio.to_thread(mosquitto.kill)
        (mosquitto.workdir / "mosquitto.db").unlink(missing_ok=True)
        await asyncio.to_thread(mosquitto.start)
        await eventually(lambda: svc.ingest.connects > connects, within=30, what="reconnected after the loss")
        lost = await eventually(lambda: [e for e in events if e.code == "telemetry_session_lost"],
                                what="the session-lost alarm")
        assert svc.health()["telemetry_mqtt_sessions_lost"] == 1
    assert lost[0].severity == "critical" and mosquitto.url in lost[0].message
    assert not [e for e in events if e.code == "telemetry_session_lost" and e is not lost[0]]


async def test_full_spool_alarm_and_last_error_clears(tmp_path: Path, mosquitto: LanBroker, influxdb1: Any) -> None:
    await asyncio.to_thread(influxdb1.stop)
    data = config_dict(tmp_path, mosquitto, influx=v1(influxdb1), max_bytes=1024 * 1024, alarm_interval_s=1)
    cfg = load(tmp_path, data)
    events, publish_event = recorder()
    t0 = int(time.time() * 1000) - 3_600_000
    n_msgs, per_msg = 80, 500
    svc = TelemetryService(cfg, publish_event=publish_event, clock_synced=lambda: True)
    async with running(svc):
        pub = Publisher(mosquitto)
        msgs = [(topic("s1"), {"readings": [{"ts": t0 + (m * per_msg + j) * 10, "fields": {"level_cm": 1.0 + j}}
                                            for j in range(per_msg)]}) for m in range(n_msgs)]
        await asyncio.to_thread(pub.publish_all, msgs)
        pub.close()
        await eventually(lambda: svc.spool.pending + svc.spool.dropped == n_msgs * per_msg, what="spool settled")
        dropped = svc.spool.dropped
        assert dropped > 0
        alarms = await eventually(
            lambda: (a := [e for e in events if e.code == "telemetry_dropped"])
            and sum(e.details["count"] for e in a) == dropped and a,
            what="telemetry_dropped alarms for every dropped reading",
        )
        assert min(e.details["oldest_ts"] for e in alarms) == t0
        assert max(e.details["newest_ts"] for e in alarms) == t0 + (dropped - 1) * 10
        assert alarms[0].severity == "critical"
        assert svc.health()["influx_last_error"]
        await asyncio.to_thread(influxdb1.start)
        await eventually(lambda: svc.spool.pending == 0, within=30, what="spool drained after InfluxDB came back")
        health = svc.health()
    assert health["influx_last_error"] is None and health["influx_last_write_ts"]


async def test_writer_back_within_its_cap(tmp_path: Path, mosquitto: LanBroker, influxdb1: Any) -> None:
    assert InfluxSection(api="v1", url="http://x:8086", database="d").retry_max_s == 10.0  # the default cap
    cap = 2.0
    cfg = load(tmp_path, config_dict(tmp_path, mosquitto, influx=v1(influxdb1, retry_initial_s=0.5, retry_max_s=cap),
                                     devices=()))
    svc = TelemetryService(cfg, clock_synced=lambda: True)
    async with running(svc):
        await asyncio.to_thread(influxdb1.stop)
        from protocol.models import Reading

        t0 = int(time.time() * 1000) - 60_000
        await svc.accept_polled("p1", "environment", [Reading(ts=t0, fields={"level_cm": 1.5})])
        await asyncio.sleep(12)  # long enough for the backoff to reach its cap several times over
        await asyncio.to_thread(influxdb1.start)
        back = time.monotonic()
        await eventually(lambda: influx_values(influxdb1, "environment", "level_cm"), within=30, what="written")
        took = time.monotonic() - back
    assert took <= cap + 2.0, f"writer took {took:.1f} s after InfluxDB returned (cap {cap} s)"


async def test_mqtt_link_back_within_its_cap(mosquitto: LanBroker) -> None:
    assert MqttEndpoint(url="mqtt://x:1883").reconnect_max_s == 10.0  # the default cap
    cap = 2.0
    ep = MqttEndpoint.model_validate({**mosquitto.gateway_endpoint(), "reconnect_max_s": cap})
    link = MqttLink(ep, client_id="loaxa-gw-cap-test", name="cap-test")
    task = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.connected.wait(), 15)
        await asyncio.to_thread(mosquitto.kill)
        await asyncio.sleep(12)  # several failed attempts: the backoff would have grown far past the cap
        assert not link.connected.is_set() and link.reconnects >= 4
        await asyncio.to_thread(mosquitto.start)
        back = time.monotonic()
        await asyncio.wait_for(link.connected.wait(), 30)
        took = time.monotonic() - back
    finally:
        task.cancel()
    assert took <= cap + 2.0, f"link took {took:.1f} s after the broker returned (cap {cap} s)"
