"""The gateway's serial_node driver against reference nodes on a real pty: polling several addresses,
readings into the sink, SET, events into alarms, offline and back by itself, play on the amplifier."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from devices.base import PlayRequest
from devices.serial_node.config import SerialNodeConfig, bus_problems
from firmware_bridge.link import BusMaster
from firmware_bridge.messages import EventKind, Source
from firmware_bridge.refnode import RefNode
from firmware_bridge.simbus import PtyDevice
from gateway.config import GatewayConfig
from gateway.serial.driver import SerialNodeDriver
from loaxa.yamlconf import ConfigError, load_config
from protocol.models import AlarmEvent, DeviceState, Reading


class Recorder:
    def __init__(self) -> None:
        self.readings: list[tuple[str, str, Reading]] = []
        self.states: list[tuple[str, DeviceState]] = []
        self.alarms: list[AlarmEvent] = []
        self.plays: list[tuple[str, str, str]] = []

    async def sink(self, dev: str, measurement: str, readings: Sequence[Reading]) -> None:
        self.readings += [(dev, measurement, r) for r in readings]

    async def state(self, dev: str, st: DeviceState) -> None:
        self.states.append((dev, st))

    async def alarm(self, a: AlarmEvent) -> None:
        self.alarms.append(a)

    async def report(self, dev: str, bid: str, state: str, at: int, reason: str | None) -> None:
        self.plays.append((dev, bid, state))


async def until(pred: Callable[[], object], within_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within_s
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def cfg(**kw: object) -> SerialNodeConfig:
    base: dict[str, object] = {"type": "serial_node", "poll_interval_s": 0.1, "offline_after": 2, "retries": 1}
    base.update(kw)
    return SerialNodeConfig.model_validate(base)


async def test_bus_of_speaker_and_sensor(pty_factory: Callable[..., PtyDevice]) -> None:
    dev = pty_factory([RefNode(1, "fw-1"), RefNode(2, "fw-2", kind="sensor")])
    rec = Recorder()
    bus = BusMaster(dev.path, 115200, reopen_interval_s=0.1, retries=1)
    spk = SerialNodeDriver(cfg(id="loa-1", port=dev.path, address=1), bus, on_state=rec.state, on_alarm=rec.alarm)
    sen = SerialNodeDriver(cfg(id="cb-2", port=dev.path, address=2, role="sensor", measurement="water_level"),
                           bus, on_state=rec.state, on_alarm=rec.alarm)
    tasks = [asyncio.create_task(bus.run()), asyncio.create_task(spk.run(rec.sink)),
             asyncio.create_task(sen.run(rec.sink))]
    try:
        await until(lambda: spk.online and sen.online, what="both nodes online")
        await until(lambda: any(m == "water_level" for _, m, _ in rec.readings), what="a water level reading")
        dev_, _, r = next(x for x in rec.readings if x[1] == "water_level")
        assert dev_ == "cb-2" and set(r.fields) == {"water_level_cm", "rain_mm", "temperature_c"}
        health = [x for x in rec.readings if x[1] == "device_health" and x[0] == "loa-1"]
        assert health and 20 < health[0][2].fields["supply_v"] < 30
        assert rec.states[0][1].online and rec.states[0][1].firmware == "1.0.0"

        await spk.set(volume=42, power=True)
        assert dev.nodes[1].volume == 42 and dev.nodes[1].power is True
        assert rec.states[-1][1].volume == 42

        dev.call(dev.nodes[1].add_event, EventKind.TAMPER, 3, 0)
        await until(lambda: any(a.code == "device_tamper" for a in rec.alarms), what="tamper alarm")
        tamper = next(a for a in rec.alarms if a.code == "device_tamper")
        assert tamper.device == "loa-1" and tamper.severity == "critical"

        # the sensor node goes silent (cable cut at its end): offline, the speaker stays online
        dev.nodes[2].dead_until = time.monotonic() + 1.5
        await until(lambda: not sen.online, what="sensor offline")
        assert spk.online
        assert any(a.code == "device_offline" and a.device == "cb-2" for a in rec.alarms)
        assert any(d == "cb-2" and not s.online for d, s in rec.states)
        await until(lambda: sen.online, what="sensor back online by itself")
        assert any(a.code == "device_online" and a.device == "cb-2" for a in rec.alarms)

        # play: amplifier on, line input, volume of the broadcast; started then finished
        await spk.start(rec.report)
        await spk.play(PlayRequest("b-1", Path("/dev/null"), "http://x/m", "0" * 64, 300,
                                   int(time.time() * 1000) + 200, 66, 3))
        await until(lambda: ("loa-1", "b-1", "finished") in rec.plays, what="playback finished")
        assert rec.plays == [("loa-1", "b-1", "started"), ("loa-1", "b-1", "finished")]
        n1 = dev.nodes[1]
        assert (n1.power, n1.volume, n1.source) == (True, 66, Source.LINE)
        assert spk.stats()["polls"] > 3
    finally:
        for t in tasks:
            t.cancel()
        # bounded: a task that ignored its cancellation fails the test instead of hanging the suite
        _, stuck = await asyncio.wait(tasks, timeout=10)
        assert not stuck, f"tasks still running 10 s after cancel: {stuck}"


def test_config_and_bus_conflicts(tmp_path: Path) -> None:
    p = tmp_path / "gw.yaml"
    p.write_text("""
gateway: {id: xa-test, data_dir: /tmp/x}
uplink: {url: "mqtt://127.0.0.1:1883"}
local_broker: {url: "mqtt://127.0.0.1:1883"}
trust: {keys: []}
devices:
  - {id: loa-1, type: serial_node, port: /dev/ttyUSB0, address: 1}
  - {id: loa-2, type: serial_node, port: /dev/ttyUSB0, address: 300}
""")
    with pytest.raises(ConfigError) as exc:
        load_config(p, GatewayConfig)
    assert ":8:" in str(exc.value) and "address" in str(exc.value)
    a = cfg(id="a", port="/dev/ttyS0", address=1)
    b = cfg(id="b", port="/dev/ttyS0", address=1, baud=9600)
    problems = bus_problems([a, b])
    assert len(problems) == 2 and "baud" in problems[0] and "address 1" in problems[1]
