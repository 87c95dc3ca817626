"""The link over a real pseudo-terminal with the reference node on the other end (paced to 115,200 baud)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import pytest

from firmware_bridge.client import NodeClient
from firmware_bridge.errors import LinkError, LinkTimeout, NakError
from firmware_bridge.frame import Frame
from firmware_bridge.messages import BootState, Cap, EventKind, MsgType, NakCode, Source
from firmware_bridge.refnode import RefNode
from firmware_bridge.simbus import PtyDevice
from tests.firmware_bridge.conftest import running_bus


async def test_every_message_round_trips_on_a_bus_of_three(pty_factory: Callable[..., PtyDevice]) -> None:
    dev = pty_factory([RefNode(1, "loa-cho"), RefNode(2, "mucnuoc-1", kind="sensor"),
                       RefNode(17, "tram-3", kind="combo")])
    async with running_bus(dev.path) as bus:
        speaker, sensor, combo = NodeClient(bus, 1), NodeClient(bus, 2), NodeClient(bus, 17)
        hellos = [await c.hello() for c in (speaker, sensor, combo)]
        assert [h.device_id for h in hellos] == ["loa-cho", "mucnuoc-1", "tram-3"]
        assert all(h.fw_version == "1.0.0" and h.boot_state == BootState.NORMAL for h in hellos)
        assert hellos[0].capabilities & Cap.AMPLIFIER and not hellos[0].capabilities & Cap.SENSORS
        assert hellos[1].capabilities & Cap.SENSORS and not hellos[1].capabilities & Cap.AMPLIFIER

        st = await speaker.set(volume=83, power=True, source=Source.FM)
        assert (st.volume, st.power, st.source) == (83, True, Source.FM)
        st2 = await speaker.status()
        assert (st2.volume, st2.power, st2.source) == (83, True, Source.FM)
        assert 20 < st2.supply_v < 30 and 20 < st2.temperature_c < 50
        # the other nodes on the bus were not touched
        assert (await combo.status()).volume == 50

        fields = await sensor.read_sensors()
        assert set(fields) == {"water_level_cm", "rain_mm", "temperature_c"}
        with pytest.raises(NakError) as exc:
            await sensor.set(volume=10)
        assert exc.value.code == NakCode.NOT_SUPPORTED

        dev.call(dev.nodes[17].add_event, EventKind.TAMPER, 1, 0)
        dev.call(dev.nodes[17].add_event, EventKind.BUTTON, 2, 1)
        await combo.status()
        assert 17 in bus.events_pending
        events = await combo.poll_events()
        assert [(e.kind, e.code) for e in events] == [(EventKind.TAMPER, 1), (EventKind.BUTTON, 2)]
        assert await combo.poll_events() == []  # confirmed: not delivered twice
        assert 17 not in bus.events_pending

        # an address nobody has times out cleanly
        with pytest.raises(LinkTimeout):
            await NodeClient(bus, 99).hello()
        assert bus.stats.failures == 1


async def test_noise_duplicates_and_reordering_never_deliver_a_wrong_value(
        pty_factory: Callable[..., PtyDevice]) -> None:
    dev = pty_factory([RefNode(1, "loa-a"), RefNode(2, "loa-b")], seed=7)
    f = dev.faults
    f.corrupt, f.duplicate, f.reorder, f.garbage, f.tx_drop, f.rx_drop = 0.1, 0.1, 0.1, 0.1, 0.05, 0.05
    async with running_bus(dev.path, retries=10, timeout_s=0.1) as bus:
        clients = [NodeClient(bus, 1), NodeClient(bus, 2)]
        for i in range(80):
            c = clients[i % 2]
            st = await c.set(volume=i % 101, power=bool(i % 3))
            assert (st.volume, st.power) == (i % 101, bool(i % 3))  # the answer to THIS request
            st = await c.status()
            assert (st.volume, st.power) == (i % 101, bool(i % 3))
        s = bus.link_stats()
    assert s["failures"] == 0
    assert s["rx_crc_errors"] + s["rx_cobs_errors"] + s["rx_header_errors"] > 0
    assert s["rx_resyncs"] > 0 and s["retries"] > 0 and s["timeouts"] > 0 and s["duplicates"] > 0
    assert dev.nodes[1].stats["duplicates"] + dev.nodes[2].stats["duplicates"] > 0  # answered from cache


async def test_raw_garbage_and_truncated_frames_from_the_line(pty_factory: Callable[..., PtyDevice]) -> None:
    dev = pty_factory([RefNode(4, "loa-4")])
    async with running_bus(dev.path) as bus:
        node = NodeClient(bus, 4)
        await node.hello()
        truncated = Frame(4, MsgType.STATUS, 1, b"\x01" * 14, flags=1).encode()[:9]
        bad_version = bytearray(Frame(4, MsgType.STATUS, 2, b"", flags=1).raw())
        bad_version[0] = 9
        from firmware_bridge import cobs
        from firmware_bridge.crc import crc16
        raw = bytes(bad_version[:-2])
        raw += crc16(raw).to_bytes(2, "little")
        for junk in (os.urandom(300), truncated + b"\x00", cobs.encode(raw) + b"\x00",
                     bytes(b or 7 for b in os.urandom(3000)) + b"\x00"):
            dev.call(os.write, dev.master, junk)
            assert (await node.status()).volume == 50
        s = bus.decoder.stats
        assert s.header_errors >= 1 and s.oversize >= 1 and s.resyncs >= 3


async def test_cable_pulled_and_put_back(pty_factory: Callable[..., PtyDevice]) -> None:
    dev = pty_factory([RefNode(1, "loa-1")])
    async with running_bus(dev.path, retries=1) as bus:
        node = NodeClient(bus, 1)
        await node.set(volume=61)
        dev.unplug()
        with pytest.raises(LinkError):
            await node.status()
        assert bus.stats.port_losses == 1 and not bus.connected
        await asyncio.sleep(0.3)  # the gateway keeps trying to reopen; the path is gone
        dev.replug()
        deadline = time.monotonic() + 5
        while True:
            try:
                st = await node.status()
                break
            except LinkError:
                assert time.monotonic() < deadline, "link did not come back"
                await asyncio.sleep(0.1)
        assert st.volume == 61  # the same node, back on a new pty behind the same path
        assert bus.stats.port_opens >= 2


async def test_silent_node_then_back(pty_factory: Callable[..., PtyDevice]) -> None:
    dev = pty_factory([RefNode(1, "loa-1")])
    async with running_bus(dev.path, retries=2) as bus:
        node = NodeClient(bus, 1)
        dev.faults.silent = True
        with pytest.raises(LinkTimeout):
            await node.status()
        assert bus.stats.timeouts == 3 and bus.stats.retries == 2
        dev.faults.silent = False
        assert (await node.status()).volume == 50


async def test_events_survive_lost_answers(pty_factory: Callable[..., PtyDevice]) -> None:
    dev = pty_factory([RefNode(3, "cb-3", kind="sensor")], seed=3)
    async with running_bus(dev.path, retries=10) as bus:
        node = NodeClient(bus, 3)
        dev.faults.tx_drop = 0.3
        got = []
        for i in range(30):
            dev.call(dev.nodes[3].add_event, EventKind.BUTTON, i, 0)
            got += [e.code for e in await node.poll_events()]
        for _ in range(5):
            got += [e.code for e in await node.poll_events()]
    assert got == list(range(30))  # each once, in order, none lost


@pytest.mark.parametrize("duplex", ["full", "half"])
async def test_update_and_polls_share_the_bus_fairly(pty_factory: Callable[..., PtyDevice], duplex: str) -> None:
    """While node 1 is being updated, node 2 is still polled; requests in flight at once always go to a
    single node, and on a half-duplex bus there is never more than one."""
    from firmware_bridge.fwupdate import FirmwareUpdater

    dev = pty_factory([RefNode(1, "a", reboot_s=0.1), RefNode(2, "b", kind="sensor")])
    async with running_bus(dev.path, duplex=duplex) as bus:
        polls: list[float] = []
        done = asyncio.Event()

        async def poll() -> None:
            while not done.is_set():
                await NodeClient(bus, 2).read_sensors()
                polls.append(time.monotonic())
                await asyncio.sleep(0.05)

        poller = asyncio.create_task(poll())
        t0 = time.monotonic()
        up = FirmwareUpdater(NodeClient(bus, 1), window=4, health_interval_s=0.05)
        r = await up.update(os.urandom(12_000), "2.0")
        t1 = time.monotonic()
        done.set()
        await poller
    assert r.outcome == "confirmed"
    assert len([t for t in polls if t0 < t < t1]) >= 5
    assert bus.stats.failures == 0
    assert bus.stats.max_in_flight == (1 if duplex == "half" else 4)
