"""Persistent outbox of events for the centre (``loaxa/v1/{gw}/event``).

An event is written to the plan store's ``outbox`` table first (often in the same transaction as the
outcome it reports), then handed to the uplink in order, and deleted only once the publish call
reports it sent (not merely queued in memory). Reports therefore survive both an uplink outage and a
gateway restart; after a crash an event may be sent twice, which the centre tolerates (the outcome
only moves forward).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pydantic import BaseModel

from gateway.broadcast.store import PlanStore

log = logging.getLogger(__name__)

#: ``await publish(payload_json)``: hands one event to the uplink; False when it was only queued in
#: memory (the link went down): the event then stays in the outbox and is sent again later.
Publish = Callable[[str], Awaitable[bool]]
#: ``await publish_many(payloads)``: hands events to the uplink all at once, in order; returns how many,
#: from the first, the broker acknowledged (the rest stay in the outbox).
PublishMany = Callable[[list[str]], Awaitable[int]]


class Outbox:
    def __init__(self, store: PlanStore, publish: Publish, *, connected: asyncio.Event | None = None,
                 gather_s: float = 0.05, window: int = 50, publish_many: PublishMany | None = None) -> None:
        self.store = store
        self._publish = publish
        #: when given, a batch goes out in one call (no task per event): see loaxa.mqttlink.publish_many
        self._publish_many = publish_many
        self._connected = connected
        self._wake = asyncio.Event()
        #: after a wake-up, wait this long so that the reports of a whole commune (its speakers all
        #: start at the same instant) go out as one batch: one read and one delete instead of fifty
        self.gather_s = gather_s
        #: publishes in flight at once (they leave in order on the one connection)
        self.window = window
        self.sent = 0

    def wake(self) -> None:
        self._wake.set()

    async def put(self, event: BaseModel) -> None:
        await self.store.outbox_put(event.model_dump_json(exclude_none=True))
        self._wake.set()

    async def run(self) -> None:
        """Send queued events until cancelled."""
        while True:
            self._wake.clear()
            batch = await self.store.outbox_peek(200)
            if not batch:
                await self._wake.wait()
                await asyncio.sleep(self.gather_s)
                continue
            if self._connected is not None and not self._connected.is_set():
                await self._connected.wait()
            last = None
            try:
                if self._publish_many is not None:
                    n = await self._publish_many([payload for _seq, payload in batch])
                    if n:
                        last = batch[n - 1][0]
                        self.sent += n
                    if n < len(batch):
                        raise _Stop
                    continue
                for i in range(0, len(batch), self.window):
                    part = batch[i:i + self.window]
                    results = await asyncio.gather(*(self._publish(payload) for _seq, payload in part),
                                                   return_exceptions=True)
                    for (seq, _p), ok in zip(part, results, strict=True):
                        if ok is not True:  # only queued in memory, or failed: from here on, send again later
                            if isinstance(ok, BaseException):
                                log.warning("event outbox: publish failed (%s); will retry", ok)
                            raise _Stop
                        last = seq
                        self.sent += 1
            except _Stop:
                await asyncio.sleep(0.5)
            except Exception:
                log.exception("event outbox: publish failed; will retry")
                await asyncio.sleep(1.0)
            finally:
                if last is not None:
                    # not awaited: the next peek, queued after it, shares its transaction and sees it done
                    self.store.outbox_delete_soon(last).add_done_callback(_log_failed_delete)


def _log_failed_delete(fut: asyncio.Future[object]) -> None:
    if not fut.cancelled() and fut.exception() is not None:  # the events are sent again: duplicates, no loss
        log.warning("event outbox: could not delete sent events: %s", fut.exception())


class _Stop(Exception):
    """Stop this round of the outbox: what is left is sent again later."""
