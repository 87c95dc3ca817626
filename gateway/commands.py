"""Every command from the centre passes here: verified, de-duplicated, dispatched, and acknowledged.

Order of checks, all in the uplink's message loop and quick: size and strict JSON, envelope schema
(no conversion of any value), trusted key, signature over the object as received, target gateway,
lifetime, time window, replay (the persistent seen store and the commands in progress), body schema
for the kind. Then the handler runs in **its own task with a deadline**, so a ``device.set`` waiting
on speaker acks never holds up a broadcast plan. Commands that touch the same thing (the same
broadcast id; every ``device.set``) still run one after another, in the order they arrived, so a
cancel never overtakes the plan it cancels.

Every command gets an ack on ``loaxa/v1/{gw}/ack``: ``ok: true`` once its handler succeeded, or
``ok: false`` with a ``reason`` (docs/protocol.md lists them). A command id is recorded as seen only
after its handler succeeded; handlers must therefore be idempotent (the plan store keys on
broadcast_id), so that a crash between the two never loses a command.

**Clock behind.** A Pi without a real-time clock boots with the time it saved before a power cut,
possibly days behind, until NTP answers. A command "issued in the future" by that clock is most
likely right and the Pi wrong, so it is **deferred**, not refused: kept in the seen store's database
(it survives a restart), acked with reason ``deferred``, and acted on as soon as the gateway's clock
reaches its ``issued_at`` (re-checked every few seconds and at start-up). How far ahead a command may
be deferred depends on whether the kernel says the clock is synchronised: 1 day when it is, 30 days
when it is not (or cannot tell). Beyond that, or with the deferred store full, it is refused
``future`` and the centre sends it again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
from pydantic import BaseModel

from gateway.seen import SeenStore
from protocol.errors import PayloadError, VerifyError
from protocol.models import Ack, BroadcastCancelBody, BroadcastPlanBody, Envelope
from protocol.signing import Verifier, load_public_key, now_ms, parse_body
from protocol.topics import ack_topic

log = logging.getLogger(__name__)

CommandHandler = Callable[[Envelope, BaseModel], Awaitable[None]]
AckSender = Callable[[Ack], Awaitable[None]]
ClockSynced = Callable[[], bool | None]

HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS
#: How far in its future the gateway defers a command, by what the kernel says of its clock.
DEFER_MAX_SYNCED_MS = DAY_MS
DEFER_MAX_UNSYNCED_MS = 30 * DAY_MS
#: At most this many deferred commands are kept; more are refused ``future`` (the centre resends).
DEFER_LIMIT = 1000
#: Seen ids are forgotten this long after their command expired (a margin for a clock that steps back).
PURGE_MARGIN_MS = DAY_MS
PURGE_MARGIN_UNSYNCED_MS = 30 * DAY_MS


class CommandRefused(Exception):
    """Raised by a handler to refuse a command; ``reason`` goes into the ack."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


def kernel_clock_synced() -> bool | None:
    """True/False from the kernel (adjtimex, as ``timedatectl`` shows it); None when unknown."""
    try:
        from devices.sensors.pihealth import clock_state
    except ImportError:
        return None
    synced = clock_state().get("clock_synced")
    return bool(synced) if synced is not None else None


def lanes_of(env: Envelope, body: BaseModel) -> list[str]:
    """What a command touches: commands sharing a lane run one at a time, in arrival order."""
    if isinstance(body, BroadcastPlanBody):
        return sorted({f"broadcast:{item.broadcast_id}" for item in body.items})
    if isinstance(body, BroadcastCancelBody):
        return sorted({f"broadcast:{bid}" for bid in body.broadcast_ids})
    if env.kind == "ping":
        return []
    return [env.kind]


@dataclass
class _Lane:
    lock: asyncio.Lock
    users: int = 0


class CommandRouter:
    def __init__(self, gateway_id: str, trusted: dict[str, str], seen_path: Path, send_ack: AckSender,
                 *, skew_s: int = 120, timeout_s: float = 30.0, clock_synced: ClockSynced = kernel_clock_synced,
                 recheck_s: float = 5.0, purge_interval_s: float = 3600.0, defer_limit: int = DEFER_LIMIT,
                 clock: Callable[[], int] = now_ms) -> None:
        self.gateway_id = gateway_id
        self._verifier = Verifier({kid: load_public_key(pk) for kid, pk in trusted.items()}, skew_ms=skew_s * 1000)
        self._seen = SeenStore(seen_path)
        self._send_ack = send_ack
        self._handlers: dict[str, CommandHandler] = {"ping": self._ping}
        self._timeout_s = timeout_s
        self._clock_synced = clock_synced
        self._recheck_s = recheck_s
        self._purge_interval_s = purge_interval_s
        self._defer_limit = defer_limit
        self._now = clock
        #: ids whose handler is running: with the seen store, what makes the replay check atomic
        self._in_flight: set[str] = set()
        self._tasks: dict[str, asyncio.Task[Ack]] = {}
        self._lanes: dict[str, _Lane] = {}
        self.accepted = 0
        self.deferred = 0
        self.purged = 0
        self.refused: dict[str, int] = {}

    def register(self, kind: str, handler: CommandHandler) -> None:
        self._handlers[kind] = handler

    def handler(self, kind: str) -> CommandHandler | None:
        """The handler registered for ``kind`` (a service may wrap another's)."""
        return self._handlers.get(kind)

    async def _ping(self, env: Envelope, body: BaseModel) -> None:
        return None

    # ------------------------------------------------------------------ receiving

    async def on_message(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        raw = payload if isinstance(payload, bytes | bytearray | str) else b""
        await self.receive(raw)

    async def handle(self, raw: bytes | bytearray | str) -> Ack:
        """Process one command payload and wait for its ack (which is also sent)."""
        result = await self.receive(raw)
        return await result if isinstance(result, asyncio.Task) else result

    async def receive(self, raw: bytes | bytearray | str, *, from_deferred: bool = False) -> Ack | asyncio.Task[Ack]:
        """Check a command and start its handler. Returns the ack of a command refused or deferred
        at once, or the task that runs the handler (and sends the ack when it ends)."""
        cmd_id = _best_effort_id(raw)
        reserved = False
        try:
            env = self._verifier.parse(bytes(raw) if isinstance(raw, bytearray) else raw)
            cmd_id = env.id
            self._verifier.verify_signature(env, gateway=self.gateway_id)
            now = self._now()
            try:
                self._verifier.check_time(env, at_ms=now)
            except VerifyError as exc:
                if exc.reason != "future":
                    raise
                return await self._defer(env, raw, now, exc, from_deferred)
            if env.id in self._in_flight:  # no await between this check and the reservation below
                raise VerifyError(f"command {env.id} is being acted on already", reason="in_progress")
            self._in_flight.add(env.id)
            reserved = True
            if await asyncio.to_thread(self._seen.contains, env.id):
                raise VerifyError(f"command {env.id} was already received", reason="replay")
            handler = self._handlers.get(env.kind)
            if handler is None:
                raise PayloadError(f"this gateway does not handle {env.kind!r} commands", reason="unknown_kind")
            body = parse_body(env)
        except _StillDeferred:
            raise
        except (PayloadError, VerifyError, CommandRefused) as exc:
            if reserved:
                self._in_flight.discard(cmd_id)
            return await self._refuse(cmd_id, exc.reason, str(exc))
        except Exception as exc:  # a bug must not kill the gateway; the centre learns of it
            if reserved:
                self._in_flight.discard(cmd_id)
            log.exception("command %s failed", cmd_id)
            return await self._refuse(cmd_id, "internal", f"{type(exc).__name__}: {exc}")
        task = asyncio.create_task(self._run(env, body, handler, now), name=f"command-{env.id}")
        self._tasks[env.id] = task
        return task

    async def _run(self, env: Envelope, body: BaseModel, handler: CommandHandler, received_at: int) -> Ack:
        try:
            async with self._lanes_held(lanes_of(env, body)):
                try:
                    await asyncio.wait_for(handler(env, body), self._timeout_s)
                except TimeoutError:
                    return await self._refuse(env.id, "timeout", f"{env.kind} did not finish within "
                                              f"{self._timeout_s:g} s; it may be sent again")
                except CommandRefused as exc:
                    return await self._refuse(env.id, exc.reason, str(exc))
                except (PayloadError, VerifyError) as exc:
                    return await self._refuse(env.id, exc.reason, str(exc))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.exception("command %s failed", env.id)
                    return await self._refuse(env.id, "internal", f"{type(exc).__name__}: {exc}")
                await asyncio.to_thread(self._seen.add, env.id, env.expires_at, received_at)
            self.accepted += 1
            ack = Ack(id=env.id, ok=True, ts=now_ms())
            await self._send_ack(ack)
            return ack
        finally:
            self._in_flight.discard(env.id)
            self._tasks.pop(env.id, None)

    @contextlib.asynccontextmanager
    async def _lanes_held(self, names: Iterable[str]) -> AsyncIterator[None]:
        held: list[str] = []
        try:
            for name in names:  # sorted by lanes_of: no two commands wait on each other in a circle
                lane = self._lanes.setdefault(name, _Lane(asyncio.Lock()))
                lane.users += 1
                held.append(name)
                await lane.lock.acquire()
            yield
        finally:
            for name in reversed(held):
                lane = self._lanes[name]
                if lane.lock.locked():
                    lane.lock.release()
                lane.users -= 1
                if lane.users == 0:
                    del self._lanes[name]

    async def _refuse(self, cmd_id: str, reason: str, message: str) -> Ack:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        log.warning("refused command %s: %s (%s)", cmd_id, reason, message)
        ack = Ack(id=cmd_id, ok=False, error=message[:500], reason=reason, ts=now_ms())
        await self._send_ack(ack)
        return ack

    # ------------------------------------------------------------------ clock behind: deferral

    def _clock_is_synced(self) -> bool | None:
        try:
            return self._clock_synced()
        except Exception:  # a probe that fails says nothing about the clock
            return None

    async def _defer(self, env: Envelope, raw: bytes | bytearray | str, now: int, exc: VerifyError,
                     from_deferred: bool) -> Ack:
        if from_deferred:  # still ahead of our clock: it stays where it is
            raise _StillDeferred()
        synced = self._clock_is_synced()
        horizon = DEFER_MAX_SYNCED_MS if synced else DEFER_MAX_UNSYNCED_MS
        ahead_s = (env.issued_at - now) // 1000
        if env.issued_at > now + horizon:
            return await self._refuse(env.id, "future", f"{exc}; {ahead_s} s ahead is more than this gateway "
                                      f"defers with its clock {'synchronised' if synced else 'unsynchronised'}")
        data = bytes(raw) if isinstance(raw, bytes | bytearray) else raw.encode("utf-8", "surrogatepass")
        stored = await asyncio.to_thread(self._seen.defer, env.id, data, env.issued_at, env.expires_at, now,
                                         self._defer_limit)
        if stored is None:
            return await self._refuse(env.id, "future", f"{exc}; the deferred store is full")
        if stored:
            self.deferred += 1
            log.warning("command %s was issued %d s ahead of this gateway's clock (synchronised: %s); "
                        "deferred until then", env.id, ahead_s, synced)
        ack = Ack(id=env.id, ok=False, reason="deferred", ts=now_ms(),
                  error=f"issued {ahead_s} s ahead of this gateway's clock; kept, and acted on when its time comes")
        await self._send_ack(ack)
        return ack

    async def recheck_deferred(self) -> int:
        """Act on deferred commands whose time has come (and refuse those that expired meanwhile)."""
        now = self._now()
        due = await asyncio.to_thread(self._seen.deferred_due, now + self._verifier.skew_ms)
        done = 0
        for cmd_id, payload in due:
            try:
                result = await self.receive(payload, from_deferred=True)
            except _StillDeferred:
                continue
            await asyncio.to_thread(self._seen.drop_deferred, cmd_id)
            if isinstance(result, asyncio.Task):
                await result
            done += 1
        return done

    # ------------------------------------------------------------------ upkeep

    def purge_seen(self) -> int:
        """Forget seen ids whose command expired long enough ago that no clock error brings it back:
        a day with a synchronised clock, 30 days while the kernel says it is not (or cannot tell),
        since a wrong clock could otherwise forget ids that are still valid."""
        margin = PURGE_MARGIN_MS if self._clock_is_synced() else PURGE_MARGIN_UNSYNCED_MS
        n = self._seen.purge(self._now() - margin)
        self.purged += n
        return n

    async def run(self) -> None:
        """Re-check deferred commands every few seconds and purge the seen store now and then."""
        loop = asyncio.get_running_loop()
        next_purge = loop.time()
        while True:
            try:
                await self.recheck_deferred()
                if loop.time() >= next_purge:
                    n = await asyncio.to_thread(self.purge_seen)
                    if n:
                        log.info("forgot %d expired command id(s)", n)
                    next_purge = loop.time() + self._purge_interval_s
            except Exception:
                log.exception("command upkeep failed; trying again")
            await asyncio.sleep(self._recheck_s)

    def stats(self) -> dict[str, object]:
        return {"commands_accepted": self.accepted, "commands_refused": dict(self.refused),
                "commands_running": len(self._in_flight), "commands_deferred": self.deferred,
                "commands_seen_purged": self.purged}

    async def aclose(self) -> None:
        """Cancel running handlers (their commands are not marked seen: the centre resends them)."""
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        self._seen.close()


class _StillDeferred(Exception):
    """A deferred command re-checked too early: it stays deferred."""


def _best_effort_id(raw: bytes | bytearray | str) -> str:
    """The command id to put in the ack of a payload we could not parse: its "id" if it has one."""
    try:
        data = json.loads(raw) if len(raw) <= 256 * 1024 else None
    except (ValueError, TypeError, RecursionError):
        return "unknown"
    if isinstance(data, dict) and isinstance(data.get("id"), str) and 0 < len(data["id"]) <= 128:
        try:
            data["id"].encode("utf-8")
        except UnicodeEncodeError:
            return "unknown"
        return str(data["id"])
    return "unknown"


def make_ack_sender(publish: Callable[..., Awaitable[bool]], gateway_id: str) -> AckSender:
    topic = ack_topic(gateway_id)

    async def send(ack: Ack) -> None:
        await publish(topic, ack, qos=1)

    return send
