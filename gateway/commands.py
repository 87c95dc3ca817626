"""Every command from the centre passes here: verified, de-duplicated, dispatched, and acknowledged.

Order of checks: size and JSON, envelope schema, trusted key, signature, time window, replay (the
persistent seen store), body schema for the kind, then the handler. Every command gets exactly one
ack on ``loaxa/v1/{gw}/ack`` — ``ok: false`` with a ``reason`` (``malformed``, ``unknown_key``,
``bad_signature``, ``expired``, ``future``, ``replay``, ``unknown_kind``, or the handler's own) when refused.

A command id is recorded as seen only after its handler succeeded; handlers must therefore be
idempotent (the plan store keys on broadcast_id), so that a crash between the two never loses a command.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiomqtt
from pydantic import BaseModel

from gateway.seen import SeenStore
from protocol.errors import PayloadError, VerifyError
from protocol.models import Ack, Envelope
from protocol.signing import Verifier, load_public_key, now_ms, parse_body
from protocol.topics import ack_topic

log = logging.getLogger(__name__)

CommandHandler = Callable[[Envelope, BaseModel], Awaitable[None]]
AckSender = Callable[[Ack], Awaitable[None]]


class CommandRefused(Exception):
    """Raised by a handler to refuse a command; ``reason`` goes into the ack."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


class CommandRouter:
    def __init__(self, gateway_id: str, trusted: dict[str, str], seen_path: Path, send_ack: AckSender,
                 *, skew_s: int = 120) -> None:
        self.gateway_id = gateway_id
        self._verifier = Verifier({kid: load_public_key(pk) for kid, pk in trusted.items()}, skew_ms=skew_s * 1000)
        self._seen = SeenStore(seen_path)
        self._send_ack = send_ack
        self._handlers: dict[str, CommandHandler] = {"ping": self._ping}
        self.accepted = 0
        self.refused: dict[str, int] = {}

    def register(self, kind: str, handler: CommandHandler) -> None:
        self._handlers[kind] = handler

    def handler(self, kind: str) -> CommandHandler | None:
        """The handler registered for ``kind`` (a service may wrap another's)."""
        return self._handlers.get(kind)

    async def _ping(self, env: Envelope, body: BaseModel) -> None:
        return None

    async def on_message(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        raw = payload if isinstance(payload, bytes | bytearray | str) else b""
        await self.handle(raw)

    async def handle(self, raw: bytes | bytearray | str) -> Ack:
        """Process one command payload and send (and return) its ack."""
        cmd_id = _best_effort_id(raw)
        try:
            env = self._verifier.parse(bytes(raw) if isinstance(raw, bytearray) else raw)
            cmd_id = env.id
            now = now_ms()
            self._verifier.verify(env, at_ms=now)
            if await asyncio.to_thread(self._seen.contains, env.id):
                raise VerifyError(f"command {env.id} was already received", reason="replay")
            handler = self._handlers.get(env.kind)
            if handler is None:
                raise PayloadError(f"this gateway does not handle {env.kind!r} commands", reason="unknown_kind")
            body = parse_body(env)
            await handler(env, body)
            await asyncio.to_thread(self._seen.add, env.id, env.expires_at, now)
        except (PayloadError, VerifyError) as exc:
            return await self._refuse(cmd_id, exc.reason, str(exc))
        except CommandRefused as exc:
            return await self._refuse(cmd_id, exc.reason, str(exc))
        except Exception as exc:  # a handler bug must not kill the gateway; the centre learns of it
            log.exception("command %s failed", cmd_id)
            return await self._refuse(cmd_id, "internal", f"{type(exc).__name__}: {exc}")
        self.accepted += 1
        ack = Ack(id=cmd_id, ok=True, ts=now_ms())
        await self._send_ack(ack)
        return ack

    async def _refuse(self, cmd_id: str, reason: str, message: str) -> Ack:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        log.warning("refused command %s: %s (%s)", cmd_id, reason, message)
        ack = Ack(id=cmd_id, ok=False, error=message[:500], reason=reason, ts=now_ms())
        await self._send_ack(ack)
        return ack

    def purge_seen(self) -> int:
        return self._seen.purge(now_ms() - 24 * 3600 * 1000)

    def stats(self) -> dict[str, object]:
        return {"commands_accepted": self.accepted, "commands_refused": dict(self.refused)}

    def close(self) -> None:
        self._seen.close()


def _best_effort_id(raw: bytes | bytearray | str) -> str:
    """The command id to put in the ack of a payload we could not parse: its "id" if it has one."""
    try:
        data = json.loads(raw) if len(raw) <= 256 * 1024 else None
    except (ValueError, TypeError):
        return "unknown"
    if isinstance(data, dict) and isinstance(data.get("id"), str) and 0 < len(data["id"]) <= 128:
        return str(data["id"])
    return "unknown"


def make_ack_sender(publish: Callable[..., Awaitable[bool]], gateway_id: str) -> AckSender:
    topic = ack_topic(gateway_id)

    async def send(ack: Ack) -> None:
        await publish(topic, ack, qos=1)

    return send
