"""Helpers for the scheduler tests: a scheduler config, test audio made by ffmpeg, and a small MQTT
client that plays a gateway's part (verifies each command's signature, acks it, reports playback).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from loaxa.brokers import SCHEDULER_USER, CentralBroker
from loaxa.servers import free_port
from protocol.models import Ack, Envelope, PlaybackEvent, PlaybackState, Status
from protocol.signing import Verifier, key_id_for, now_ms, private_key_b64
from protocol.topics import ack_topic, cmd_topic, device_topic, event_topic, status_topic


@dataclass
class Keys:
    private: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def key_id(self) -> str:
        return key_id_for(self.private.public_key())

    @property
    def seed_b64(self) -> str:
        return private_key_b64(self.private)

    def verifier(self) -> Verifier:
        return Verifier({self.key_id: self.private.public_key()})


def scheduler_config_dict(
    tmp: Path, broker: str | CentralBroker, keys: Keys, *, port: int | None = None, gateways: Iterable[str] = (),
    **sections: dict[str, Any],
) -> dict[str, Any]:
    """A scheduler config; with a :class:`CentralBroker` it logs in as ``scheduler``. ``gateways`` are the
    gateway ids it serves (it ignores every other one)."""
    cfg: dict[str, Any] = {
        "scheduler": {"data_dir": str(tmp / "sched-data")},
        "broker": broker.endpoint(SCHEDULER_USER) if isinstance(broker, CentralBroker) else {"url": broker},
        "gateways": [{"id": g} for g in gateways],
        "signing": {"key_id": keys.key_id, "private_key": {"value": keys.seed_b64}, "command_ttl_s": 3600},
        "http": {"host": "127.0.0.1", "port": port or free_port()},
        "dispatch": {"resend_interval_s": 3600},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def make_tone(path: Path, seconds: float = 1.0, fmt: str = "wav") -> Path:
    """A sine tone made by the real ffmpeg."""
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:duration={seconds}",
            "-ac",
            "1",
            "-ar",
            "16000",
            "-f",
            fmt,
            str(path),
        ],
        check=True,
        capture_output=True,
    )
    return path


@dataclass
class Received:
    envelope: Envelope
    expiry_s: int | None
    verified: bool
    error: str | None


class TestGateway:
    """Plays a gateway's role on the central broker (a real MQTT client, not a mock of anything)."""

    __test__ = False  # not a pytest test class

    def __init__(self, broker: str | CentralBroker, gw: str, keys: Keys, *, auto_ack: bool = True):
        """With a :class:`CentralBroker` it logs in with gateway ``gw``'s own account (made if needed)."""
        url = broker.url if isinstance(broker, CentralBroker) else broker
        self.host, self.port = url.removeprefix("mqtt://").split(":")
        self.account = broker.add_gateway(gw) if isinstance(broker, CentralBroker) else None
        self.gw = gw
        self.verifier = keys.verifier()
        self.auto_ack = auto_ack
        self.seen: set[str] = set()
        self.received: list[Received] = []
        self.arrived = asyncio.Condition()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self, *, online: bool = True) -> None:
        will = aiomqtt.Will(
            status_topic(self.gw), Status(state="offline", ts=now_ms()).model_dump_json(), 1, True
        )
        self._client = aiomqtt.Client(
            self.host,
            int(self.port),
            identifier=f"test-{self.gw}-{now_ms()}",
            username=self.account.username if self.account else None,
            password=self.account.password if self.account else None,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=will,
        )
        await self._client.__aenter__()
        await self._client.subscribe(cmd_topic(self.gw), qos=1)
        self._task = asyncio.create_task(self._loop(self._client))
        if online:
            await self.status("online")

    async def status(self, state: Literal["online", "offline"]) -> None:
        assert self._client is not None
        await self._client.publish(
            status_topic(self.gw),
            Status(state=state, ts=now_ms(), version="test").model_dump_json(),
            qos=1,
            retain=True,
        )

    async def disconnect(self, *, clean: bool = True) -> None:
        if self._client is None:
            return
        if clean:
            await self.status("offline")
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._client.__aexit__(None, None, None)
        self._client = None

    async def _loop(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            props = msg.properties
            expiry = getattr(props, "MessageExpiryInterval", None) if props is not None else None
            env = self.verifier.parse(bytes(msg.payload))
            err: str | None = None
            try:
                self.verifier.verify(env, gateway=self.gw)
            except ValueError as exc:
                err = str(exc)
            rec = Received(env, expiry, err is None, err)
            async with self.arrived:
                self.received.append(rec)
                self.arrived.notify_all()
            if self.auto_ack:
                if env.id in self.seen:
                    await self.ack(env.id, ok=False, reason="replay", error="command id seen before")
                else:
                    self.seen.add(env.id)
                    await self.ack(
                        env.id, ok=err is None, reason=None if err is None else "bad_signature", error=err
                    )

    async def ack(
        self, cmd_id: str, *, ok: bool = True, reason: str | None = None, error: str | None = None
    ) -> None:
        assert self._client is not None
        await self._client.publish(
            ack_topic(self.gw),
            Ack(id=cmd_id, ok=ok, reason=reason, error=error, ts=now_ms()).model_dump_json(),
            qos=1,
        )

    async def playback(
        self,
        broadcast_id: str,
        device: str,
        state: PlaybackState,
        *,
        at: int | None = None,
        reason: str | None = None,
    ) -> None:
        assert self._client is not None
        ev = PlaybackEvent(
            broadcast_id=broadcast_id, device=device, state=state, at=at or now_ms(), reason=reason
        )
        await self._client.publish(event_topic(self.gw), ev.model_dump_json(), qos=1)

    async def raw_event(self, payload: bytes) -> None:
        assert self._client is not None
        await self._client.publish(event_topic(self.gw), payload, qos=1)

    async def speaker_state(self, dev: str, **state: Any) -> None:
        assert self._client is not None
        await self._client.publish(device_topic(self.gw, dev, "state"), json.dumps(state), qos=1, retain=True)

    async def wait_for(
        self, n: int, kind: str | None = None, within: float = 15.0, *, copies: bool = False
    ) -> list[Received]:
        """Wait until at least ``n`` commands (of ``kind``) have arrived; return those.

        The scheduler may send a command more than once (that is its delivery guarantee); unless
        ``copies`` is true, only the first copy of each command id counts.
        """

        def matching() -> list[Received]:
            seen: set[str] = set()
            out = []
            for r in self.received:
                if kind is not None and r.envelope.kind != kind:
                    continue
                if not copies and r.envelope.id in seen:
                    continue
                seen.add(r.envelope.id)
                out.append(r)
            return out

        async with self.arrived:
            try:
                await asyncio.wait_for(self.arrived.wait_for(lambda: len(matching()) >= n), within)
            except TimeoutError:
                raise AssertionError(
                    f"{self.gw}: expected {n} {kind or ''} command(s) within {within}s, "
                    f"got {[r.envelope.kind for r in self.received]}"
                ) from None
        return matching()


async def wait_for_async(
    predicate: Any, within: float = 15.0, what: str = "condition", interval: float = 0.05
) -> Any:
    """Poll an async predicate until truthy; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: Any = None
    while loop.time() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {within}s waiting for {what} (last value: {last!r})")


def add_token(
    store: Any,
    role: str = "admin",
    areas: str | list[str] | None = None,
    *,
    name: str | None = None,
    expires_at: int | None = None,
) -> str:
    """An API token made straight in the scheduler's database (``store``: a scheduler.db.Store)."""
    import secrets

    from scheduler.access.permissions import Grant
    from scheduler.access.store import AccessStore

    return str(
        AccessStore(store.session).create_token(
            name or f"test-{role}-{secrets.token_hex(3)}",
            Grant.make(role, areas),
            expires_at=expires_at,
            actor="test",
            address=None,
            now=now_ms(),
        )
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
