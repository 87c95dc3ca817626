"""Firmware update over a real pty: resume after every kind of interruption, refusal of a bad image,
A/B trial with confirm, and rollback of an image that fails its health check or does not boot."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import Callable

import pytest

from firmware_bridge.client import NodeClient
from firmware_bridge.errors import NakError
from firmware_bridge.fwupdate import FirmwareError, FirmwareUpdater
from firmware_bridge.messages import BootState, NakCode
from firmware_bridge.refnode import RefNode
from firmware_bridge.simbus import PtyDevice
from tests.firmware_bridge.conftest import running_bus

FAST = {"health_interval_s": 0.05, "boot_timeout_s": 10.0, "reconnect_timeout_s": 10.0}


def node(**kw: object) -> RefNode:
    return RefNode(5, "loa-5", reboot_s=0.15, **kw)  # type: ignore[arg-type]


def running_image(n: RefNode) -> bytes:
    return n.flash.slots[n.running].image


async def test_update_confirms_new_image(pty_factory: Callable[..., PtyDevice]) -> None:
    dev = pty_factory([node()])
    image = os.urandom(24_000)
    seen: list[tuple[int, int, str]] = []
    async with running_bus(dev.path) as bus:
        up = FirmwareUpdater(NodeClient(bus, 5), progress=lambda d, t, p: seen.append((d, t, p)), **FAST)
        r = await up.update(image, "2.1.0")
        assert (r.outcome, r.old_version, r.version, r.resumed_from) == ("confirmed", "1.0.0", "2.1.0", 0)
        hello = await NodeClient(bus, 5).hello()
    assert (hello.fw_version, hello.boot_state) == ("2.1.0", BootState.NORMAL)
    n = dev.nodes[5]
    assert running_image(n) == image and n.flash.active == 1 and n.flash.slots[0].version == "1.0.0"
    phases = [p for _, _, p in seen]
    assert phases.index("transfer") < phases.index("verify") < phases.index("commit") < phases.index("health")
    done = [d for d, _, p in seen if p == "transfer"]
    assert done == sorted(done) and done[-1] == len(image)


@pytest.mark.parametrize(("seed", "reboot_s"), [(11, 0.15), (12, 2.0)])
async def test_node_reboots_at_random_points_and_update_resumes(pty_factory: Callable[..., PtyDevice],
                                                                seed: int, reboot_s: float) -> None:
    """A short reset is bridged by retransmission; a long one makes the transfer fail and start again
    with FW_BEGIN, which answers the offset the node kept in flash."""
    rng = random.Random(seed)
    image = rng.randbytes(20_000)
    marks = sorted(rng.sample(range(1, len(image)), 3))
    n = node(reboot_at_offsets=list(marks))
    n.reboot_s = reboot_s
    dev = pty_factory([n])
    async with running_bus(dev.path, timeout_s=0.1) as bus:  # 4 tries ≈ 0.5 s: bridges 0.15 s, not 2 s
        r = await FirmwareUpdater(NodeClient(bus, 5), **FAST).update(image, "2.0.1")
    assert r.outcome == "confirmed" and r.bytes_sent > len(image)
    if reboot_s >= 1.0:
        assert r.resumes >= 3
    assert running_image(dev.nodes[5]) == image
    assert dev.nodes[5].stats["reboots"] >= 4  # three interruptions and the switch to the new image


async def test_gateway_dies_mid_transfer_and_a_new_run_resumes(pty_factory: Callable[..., PtyDevice]) -> None:
    dev = pty_factory([node()])
    image = os.urandom(30_000)
    stop_at = random.Random(5).randrange(5_000, 25_000)
    async with running_bus(dev.path) as bus:
        reached = asyncio.Event()
        up = FirmwareUpdater(NodeClient(bus, 5), progress=lambda d, t, p: d >= stop_at and reached.set(), **FAST)
        task = asyncio.create_task(up.update(image, "3.0.0"))
        await reached.wait()
        task.cancel()  # the gateway process is killed mid-transfer
        with pytest.raises(asyncio.CancelledError):
            await task
    async with running_bus(dev.path) as bus:  # restarted gateway: new bus master, new sequence numbers
        r = await FirmwareUpdater(NodeClient(bus, 5), **FAST).update(image, "3.0.0")
    assert r.outcome == "confirmed" and r.resumed_from >= stop_at - 4 * 256
    assert running_image(dev.nodes[5]) == image


async def test_cable_pulled_mid_transfer(pty_factory: Callable[..., PtyDevice]) -> None:
    dev = pty_factory([node()])
    image = os.urandom(20_000)
    async with running_bus(dev.path, retries=1) as bus:
        pulled = asyncio.Event()

        def progress(done: int, total: int, phase: str) -> None:
            if phase == "transfer" and done >= 8_000 and not pulled.is_set():
                pulled.set()

        task = asyncio.create_task(FirmwareUpdater(NodeClient(bus, 5), progress=progress, **FAST)
                                   .update(image, "2.2.0"))
        await pulled.wait()
        await asyncio.to_thread(dev.unplug)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(dev.replug)
        r = await asyncio.wait_for(task, 30)
    assert r.outcome == "confirmed"
    assert bus.stats.port_losses >= 1 and bus.stats.port_opens >= 2
    assert running_image(dev.nodes[5]) == image


async def test_noisy_line_during_update(pty_factory: Callable[..., PtyDevice]) -> None:
    dev = pty_factory([node()], seed=9)
    f = dev.faults
    f.corrupt, f.rx_drop, f.tx_drop, f.duplicate, f.garbage = 0.03, 0.03, 0.03, 0.03, 0.03
    image = os.urandom(20_000)
    async with running_bus(dev.path, retries=6) as bus:
        r = await FirmwareUpdater(NodeClient(bus, 5), **FAST).update(image, "2.3.0")
        stats = bus.link_stats()
    assert r.outcome == "confirmed" and running_image(dev.nodes[5]) == image
    assert stats["retries"] > 0 and stats["rx_resyncs"] > 0


async def test_damaged_file_is_refused_before_sending(pty_factory: Callable[..., PtyDevice]) -> None:
    dev = pty_factory([node()])
    image = os.urandom(5_000)
    async with running_bus(dev.path) as bus:
        with pytest.raises(FirmwareError, match="SHA-256"):
            await FirmwareUpdater(NodeClient(bus, 5), **FAST).update(
                image, "2.0.0", expected_sha256=hashlib.sha256(image + b"x").hexdigest())
    assert dev.nodes[5].flash.session is None and dev.nodes[5].stats["requests"] == 0


async def test_image_corrupted_in_flash_is_refused_and_nothing_changes(
        pty_factory: Callable[..., PtyDevice]) -> None:
    dev = pty_factory([node(corrupt_flash_at=4_321)])
    image = os.urandom(10_000)
    async with running_bus(dev.path) as bus:
        client = NodeClient(bus, 5)
        with pytest.raises(FirmwareError, match="refused the image"):
            await FirmwareUpdater(client, **FAST).update(image, "2.0.0")
        # the node still runs its old image and will not commit anything
        hello = await client.hello()
        assert (hello.fw_version, hello.boot_state) == ("1.0.0", BootState.NORMAL)
        with pytest.raises(NakError) as exc:
            await client.fw_commit()
        assert exc.value.code == NakCode.NOT_VERIFIED
        # data that does not match the announced digest is refused the same way
        digest = hashlib.sha256(image).digest()
        dev.nodes[5].corrupt_flash_at = None
        begin = await client.fw_begin(len(image), digest, "2.0.0")
        assert begin.offset == 0
        tampered = bytearray(image)
        tampered[100] ^= 0xFF
        for off in range(0, len(image), 256):
            await client.fw_chunk(off, bytes(tampered[off : off + 256]))
        with pytest.raises(NakError) as exc:
            await client.fw_end()
        assert exc.value.code == NakCode.BAD_DIGEST
        assert dev.nodes[5].flash.active == 0 and running_image(dev.nodes[5]) == b"factory image"


async def test_image_failing_health_check_rolls_back(pty_factory: Callable[..., PtyDevice]) -> None:
    dev = pty_factory([node()])
    image = os.urandom(6_000) + b"LOAXA-SIM:fault" + os.urandom(100)
    async with running_bus(dev.path) as bus:
        r = await FirmwareUpdater(NodeClient(bus, 5), **FAST).update(image, "9.9.9")
        hello = await NodeClient(bus, 5).hello()
    assert r.outcome == "rolled_back" and r.version == "1.0.0" and "fault" in r.detail
    assert (hello.fw_version, hello.boot_state) == ("1.0.0", BootState.ROLLED_BACK)
    assert running_image(dev.nodes[5]) == b"factory image"


async def test_image_that_does_not_boot_rolls_back_by_itself(pty_factory: Callable[..., PtyDevice]) -> None:
    dev = pty_factory([node()])
    image = b"LOAXA-SIM:crash" + os.urandom(3_000)
    async with running_bus(dev.path) as bus:
        r = await FirmwareUpdater(NodeClient(bus, 5), **FAST).update(image, "6.6.6")
    assert r.outcome == "rolled_back" and r.version == "1.0.0"
    assert running_image(dev.nodes[5]) == b"factory image"


async def test_unconfirmed_trial_rolls_back_and_a_rerun_after_commit_confirms(
        pty_factory: Callable[..., PtyDevice]) -> None:
    dev = pty_factory([node(trial_timeout_s=1.0), RefNode(6, "loa-6", reboot_s=0.15)])
    image = os.urandom(4_000)
    async with running_bus(dev.path) as bus:
        for addr in (5, 6):  # send and commit by hand, then "die" before confirming
            c = NodeClient(bus, addr)
            await c.fw_begin(len(image), hashlib.sha256(image).digest(), "4.0.0")
            for off in range(0, len(image), 256):
                await c.fw_chunk(off, image[off : off + 256])
            await c.fw_end()
            await c.fw_commit()
        await asyncio.sleep(0.5)
        # node 6: a new run finds it on trial with this image and just checks and confirms it
        r = await FirmwareUpdater(NodeClient(bus, 6), **FAST).update(image, "4.0.0")
        assert r.outcome == "confirmed"
        # node 5: nobody confirms; its trial timer rolls it back
        await asyncio.sleep(1.5)
        hello5 = await NodeClient(bus, 5).hello()
    assert (hello5.fw_version, hello5.boot_state) == ("1.0.0", BootState.ROLLED_BACK)
    assert running_image(dev.nodes[6]) == image and dev.nodes[6].flash.trial is None
