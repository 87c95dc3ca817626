"""The gateway's command router on a real SQLite seen store, with an injected clock: the order of
commands that touch the same broadcast, the atomic replay check, deferral and its re-check, and the
purge of old seen ids. (tests/test_gateway_commands.py runs the same on a real gateway process.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gateway.commands import DAY_MS, CommandRouter
from loaxa.localsetup import make_signer
from protocol.models import Ack, BroadcastCancelBody, DeviceSetBody, Envelope, PingBody
from protocol.signing import Signer, public_key_b64

GW = "xa-router"
T0 = 1_800_000_000_000
SET = DeviceSetBody(volume=40)


class Clock:
    def __init__(self) -> None:
        self.now = T0
        self.synced: bool | None = True

    def __call__(self) -> int:
        return self.now


def make_router(tmp_path: Path, signer: Signer, clock: Clock, acks: list[Ack], **kw: Any) -> CommandRouter:
    async def send(ack: Ack) -> None:
        acks.append(ack)

    trusted = {signer.key_id: public_key_b64(signer.private_key.public_key())}
    return CommandRouter(GW, trusted, tmp_path / "commands.db", send, clock=clock,
                         clock_synced=lambda: clock.synced, **kw)


def wire(signer: Signer, kind: str, body: BaseModel, cmd_id: str, issued_at: int = T0, ttl_ms: int = DAY_MS) -> bytes:
    return signer.envelope(kind, body, gw=GW, cmd_id=cmd_id, issued_at=issued_at, ttl_ms=ttl_ms) \
        .model_dump_json().encode()


async def test_a_slow_command_holds_up_no_other_and_runs_once(tmp_path: Path) -> None:
    signer, clock, acks = make_signer(), Clock(), []
    router = make_router(tmp_path, signer, clock, acks)
    release = asyncio.Event()
    order: list[str] = []

    async def slow_set(env: Envelope, body: BaseModel) -> None:
        order.append(f"start {env.id}")
        await release.wait()
        order.append(f"end {env.id}")

    async def cancel(env: Envelope, body: BaseModel) -> None:
        order.append(f"cancel {env.id}")

    router.register("broadcast.cancel", cancel)
    router.register("device.set", slow_set)
    # a device.set waiting on its speakers, then a cancel and a ping: neither waits for it
    first = await router.receive(wire(signer, "device.set", SET, "slow-1"))
    assert isinstance(first, asyncio.Task)
    other = await router.handle(wire(signer, "broadcast.cancel", BroadcastCancelBody(broadcast_ids=["b-2"]), "c-2"))
    ping = await router.handle(wire(signer, "ping", PingBody(), "p-1"))
    assert other.ok and ping.ok and order == ["start slow-1", "cancel c-2"]
    # the same id again while it runs: not run twice
    again = await router.handle(wire(signer, "device.set", SET, "slow-1"))
    assert again.reason == "in_progress"
    release.set()
    assert (await first).ok
    assert order == ["start slow-1", "cancel c-2", "end slow-1"]
    assert (await router.handle(wire(signer, "device.set", SET, "slow-1"))).reason == "replay"
    router.close()


async def test_commands_about_one_broadcast_keep_their_order(tmp_path: Path) -> None:
    signer, clock, acks = make_signer(), Clock(), []
    router = make_router(tmp_path, signer, clock, acks)
    release = asyncio.Event()
    order: list[str] = []

    async def plan_like_cancel(env: Envelope, body: BaseModel) -> None:
        order.append(f"start {env.id}")
        if env.id == "first":
            await release.wait()
        order.append(f"end {env.id}")

    router.register("broadcast.cancel", plan_like_cancel)
    body = BroadcastCancelBody(broadcast_ids=["b-1"])
    t1 = await router.receive(wire(signer, "broadcast.cancel", body, "first"))
    t2 = await router.receive(wire(signer, "broadcast.cancel", body, "second"))
    assert isinstance(t1, asyncio.Task) and isinstance(t2, asyncio.Task)
    await asyncio.sleep(0)
    assert order == ["start first"]
    release.set()
    await asyncio.gather(t1, t2)
    assert order == ["start first", "end first", "start second", "end second"]
    router.close()


async def test_deferred_until_the_clock_catches_up_then_expired_ones_refused(tmp_path: Path) -> None:
    signer, clock, acks = make_signer(), Clock(), []
    clock.synced = False
    router = make_router(tmp_path, signer, clock, acks)
    clock.now = T0 - 3 * 3600 * 1000  # three hours behind
    ack = await router.handle(wire(signer, "ping", PingBody(), "late", ttl_ms=3600 * 1000))
    assert ack.reason == "deferred"
    short = await router.handle(wire(signer, "ping", PingBody(), "short", ttl_ms=60_000))
    assert short.reason == "deferred"
    assert await router.recheck_deferred() == 0  # still too early
    router.close()

    router = make_router(tmp_path, signer, clock, acks)  # after a restart, still kept
    clock.now = T0 + 10 * 60_000  # the clock is right: "late" is due, "short" has expired meanwhile
    assert await router.recheck_deferred() == 2
    last = {a.id: a for a in acks}
    assert last["late"].ok is True
    assert last["short"].ok is False and last["short"].reason == "expired"
    assert await router.recheck_deferred() == 0
    router.close()


async def test_old_seen_ids_are_purged_with_a_margin_for_the_clock(tmp_path: Path) -> None:
    signer, clock, acks = make_signer(), Clock(), []
    router = make_router(tmp_path, signer, clock, acks)
    for i, age_days in enumerate((40, 3, 0)):
        clock.now = T0 - age_days * DAY_MS
        assert (await router.handle(wire(signer, "ping", PingBody(), f"c{i}", issued_at=clock.now))).ok
    clock.now = T0
    clock.synced = False  # a clock that may be wrong: only ids older than 30 days go
    assert await asyncio.to_thread(router.purge_seen) == 1
    clock.synced = True  # a day's margin: the 3-day-old one goes too, the fresh one stays
    assert await asyncio.to_thread(router.purge_seen) == 1
    assert router.purged == 2
    assert (await router.handle(wire(signer, "ping", PingBody(), "c2", issued_at=T0))).reason == "replay"
    router.close()
