"""The notifier: groups alarm notices per gateway, renders one message per recipient and group,
keeps it in the database outbox and sends it, retrying with exponential backoff.

Grouping: the first notice of a (recipient, gateway, raised|cleared) group starts a timer of
``notify.group_wait_s``; every notice of that group arriving before it fires joins the same message.
Ten speakers of one commune that go offline together are one e-mail (and one webhook call).
The outbox survives a restart; a group still waiting in memory does not (at most ``group_wait_s``
of notices can be lost by a crash, and the alarms themselves are in the database).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import httpx

from protocol.signing import now_ms
from scheduler.db import AsyncStore
from scheduler.fleet.alarms.lifecycle import AlarmRecord
from scheduler.fleet.config import NotifySection
from scheduler.fleet.notify.messages import email_recipients, render, webhook_targets
from scheduler.fleet.notify.senders import SendError, post_webhook, send_mail
from scheduler.fleet.store import FleetStore, Outgoing

log = logging.getLogger(__name__)


@dataclass
class _Group:
    channel: str
    target: str
    gateway: str
    kind: str
    alarms: dict[int, AlarmRecord] = field(default_factory=dict)


class Notifier:
    def __init__(self, astore: AsyncStore, store: FleetStore, cfg: NotifySection, *, timezone: str,
                 commune_of: Callable[[str], str | None]):
        self.astore = astore
        self.store = store
        self.cfg = cfg
        self.tz = ZoneInfo(timezone)
        self.commune_of = commune_of
        self._groups: dict[tuple[str, str, str, str], _Group] = {}
        self._timers: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._hooks = {w.name: w for w in cfg.webhooks}
        self.sent = 0
        self.failed = 0
        self.attempts = 0

    async def submit(self, kind: str, rec: AlarmRecord) -> None:
        """Queue the notice of one alarm (raised or cleared) into its groups."""
        if rec.id is None:
            return
        targets = [("email", addr) for addr in email_recipients(self.cfg, rec, kind)]
        if targets and self.cfg.smtp is None:
            log.warning("alarm %s has e-mail recipients but no notify.smtp is configured", rec.id)
            targets = []
        targets += [("webhook", w.name) for w in webhook_targets(self.cfg, rec, kind)]
        for channel, target in targets:
            key = (channel, target, rec.gateway, kind)
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(channel, target, rec.gateway, kind)
                task = asyncio.create_task(self._flush_later(key))
                self._timers.add(task)
                task.add_done_callback(self._timers.discard)
            group.alarms[rec.id] = rec

    async def _flush_later(self, key: tuple[str, str, str, str]) -> None:
        await asyncio.sleep(self.cfg.group_wait_s)
        group = self._groups.pop(key, None)
        if group is None or not group.alarms:
            return
        alarms = sorted(group.alarms.values(), key=lambda a: (a.type, a.device or "", a.id or 0))
        msg = render(group.kind, group.gateway, self.commune_of(group.gateway), alarms, sent_at=now_ms(), tz=self.tz,
                     public_url=self.cfg.public_url)
        body = msg.text if group.channel == "email" else msg.json()
        try:
            await self.astore.call(self.store.queue_notifications,
                                   [(group.channel, group.target, msg.subject, body,
                                     [a.id for a in alarms if a.id is not None])], now_ms())
        except Exception:
            log.exception("could not queue a notification to %s", group.target)
            return
        self._wake.set()

    def _backoff_ms(self, attempts: int) -> int:
        delay = min(self.cfg.retry_initial_s * (2 ** max(0, attempts - 1)), self.cfg.retry_max_s)
        return int(delay * 1000 * (0.8 + 0.4 * random.random()))

    async def _deliver(self, n: Outgoing, client: httpx.AsyncClient) -> None:
        if n.channel == "email":
            if self.cfg.smtp is None:
                raise SendError("no notify.smtp is configured", permanent=True)
            await send_mail(self.cfg.smtp, n.target, n.subject, n.body)
        elif n.channel == "webhook":
            hook = self._hooks.get(n.target)
            if hook is None:
                raise SendError(f"no webhook named {n.target!r} in notify.webhooks", permanent=True)
            await post_webhook(hook, n.body, client)
        else:
            raise SendError(f"unknown channel {n.channel!r}", permanent=True)

    async def run(self) -> None:
        """Send due notifications until cancelled."""
        async with httpx.AsyncClient() as client:
            while True:
                due = await self.astore.call(self.store.due_notifications, now_ms())
                for n in due:
                    self.attempts += 1
                    error: str | None = None
                    next_at: int | None = None
                    try:
                        await self._deliver(n, client)
                    except SendError as exc:
                        error = str(exc)
                        if not exc.permanent and n.attempts + 1 < self.cfg.max_attempts:
                            next_at = now_ms() + self._backoff_ms(n.attempts + 1)
                    except Exception as exc:  # a bug must not stop the other notifications
                        log.exception("notification %s failed", n.id)
                        error = f"{type(exc).__name__}: {exc}"
                        next_at = now_ms() + self._backoff_ms(n.attempts + 1)
                    if error is None:
                        self.sent += 1
                        log.info("notification %s (%s) sent to %s", n.id, n.subject, n.target)
                    elif next_at is None:
                        self.failed += 1
                        log.error("notification %s to %s given up after %d attempts: %s", n.id, n.target,
                                  n.attempts + 1, error)
                    else:
                        log.warning("notification %s to %s failed (%s); retrying in %.0f s", n.id, n.target, error,
                                    (next_at - now_ms()) / 1000)
                    await self.astore.call(self.store.notification_done, n.id, now_ms(), error=error,
                                           next_at=next_at)
                if len(due) >= 50:
                    continue
                nxt = await self.astore.call(self.store.next_notification_at)
                wait = 60.0 if nxt is None else max(0.0, min(60.0, (nxt - now_ms()) / 1000))
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except TimeoutError:
                    pass
                self._wake.clear()
