"""Plugs the broadcast path into the gateway: ``attach(ctx)``.

Registers the handlers of ``broadcast.plan`` and ``broadcast.cancel`` on the gateway's command
router (which has already checked signature, key, expiry and replay), builds the speaker drivers
from the ``devices`` of the config (``ip_speaker``, ``amplifier``), and runs the executor, the event
outbox and (if configured) the media server for the speakers. It is the context's ``playback``
(:class:`gateway.context.Playback`): local warning rules play through it, and the fleet service's
``device.set`` applies volume and power through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from devices.base import SpeakerDriver
from devices.speakers.ip_speaker import IpSpeakerHub
from gateway.broadcast.config import BroadcastSection
from gateway.broadcast.executor import Executor, ExecutorSettings
from gateway.broadcast.media import MediaCache
from gateway.broadcast.outbox import Outbox
from gateway.broadcast.store import PlanStore
from gateway.context import GatewayContext
from protocol.models import BroadcastCancelBody, BroadcastPlanBody, DeviceSetBody, Envelope, MediaRef, PlanItem
from protocol.topics import event_topic

log = logging.getLogger(__name__)


def _refuse(reason: str, message: str) -> Exception:
    from gateway.commands import CommandRefused

    return CommandRefused(reason, message)


class BroadcastService:
    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.cfg: BroadcastSection = cfg.broadcast
        data_dir = ctx.data_dir
        self.store = PlanStore(data_dir / "broadcast.sqlite")
        self.media = MediaCache(data_dir / "media", cfg.media.max_bytes,
                                pinned=lambda: self.executor.needed_media() | ctx.pinned_media)
        self.hub = IpSpeakerHub(ctx.id, ctx.local)
        # the gateway's speaker registry, shared with the services that own speakers (serial nodes)
        self.drivers: dict[str, SpeakerDriver] = ctx.speakers
        for dev in cfg.devices:
            if dev.type == "ip_speaker":
                self.drivers[dev.id] = self.hub.add(dev.id, ack_timeout_s=self.cfg.ack_timeout_s,
                                                    retries=self.cfg.retries)
            elif dev.type == "amplifier":
                from devices.speakers.amplifier import Amplifier

                self.drivers[dev.id] = Amplifier(dev)
        self.hub.subscribe()  # before the LAN link connects; MqttLink re-subscribes on reconnect
        self.outbox = Outbox(self.store, self._publish_event, connected=ctx.uplink.connected,
                             publish_many=self._publish_events)
        settings = ExecutorSettings(
            now_lead_ms=self.cfg.now_lead_ms, dispatch_ahead_ms=self.cfg.dispatch_ahead_ms,
            late_max_ms=int(self.cfg.late_max_s * 1000), now_media_wait_ms=int(self.cfg.now_media_wait_s * 1000),
            report_grace_ms=int(self.cfg.report_grace_s * 1000),
            media_retry_first_ms=min(5000, int(self.cfg.media_retry_max_s * 1000)),
            media_retry_max_ms=int(self.cfg.media_retry_max_s * 1000))
        self.executor = Executor(self.store, self.media, self.drivers, self.outbox, media_url=self._media_url,
                                 settings=settings)
        self.hub.report_many = self.executor.report_many  # the speakers' reports in batches
        self._cache_bytes = 0

    def _media_url(self, media: MediaRef) -> str:
        if self.cfg.media_public_url:
            return f"{self.cfg.media_public_url.rstrip('/')}/media/{media.sha256}"
        return media.url

    async def _publish_event(self, payload: str) -> bool:
        return bool(await self.ctx.uplink.publish(event_topic(self.ctx.id), payload, qos=1))

    async def _publish_events(self, payloads: list[str]) -> int:
        topic = event_topic(self.ctx.id)
        acked = await self.ctx.uplink.publish_many([(topic, p.encode(), None) for p in payloads])
        n = 0  # how many, from the first, the broker acknowledged (the outbox keeps the rest)
        for ok in acked:
            if not ok:
                break
            n += 1
        return n

    # ---------------------------------------------------------------- commands

    async def on_plan(self, env: Envelope, body: BroadcastPlanBody) -> None:
        for item in body.items:  # check everything before accepting anything
            if item.media.bytes > self.media.max_bytes:
                raise _refuse("media_too_large", f"broadcast {item.broadcast_id}: media of {item.media.bytes} "
                              f"bytes is larger than the cache ({self.media.max_bytes} bytes)")
        for item in body.items:
            await self.executor.accept(item, env.id)

    async def on_cancel(self, env: Envelope, body: BroadcastCancelBody) -> None:
        result = await self.executor.cancel(body.broadcast_ids)
        log.info("cancel %s: %s", env.id, result)

    # ---------------------------------------------------------------- Playback (for the other services)

    @property
    def media_max_bytes(self) -> int:
        return self.media.max_bytes

    async def ensure_media(self, media: MediaRef) -> None:
        await self.media.ensure(media)

    async def play_local(self, item: PlanItem) -> None:
        await self.executor.accept(item, None)

    async def queue_event(self, event: BaseModel) -> None:
        await self.outbox.put(event)

    async def apply_device_set(self, body: DeviceSetBody) -> None:
        targets = None if body.targets == "*" or "*" in body.targets else list(body.targets)
        missing = [t for t in targets or [] if t not in self.drivers]
        if missing:
            raise _refuse("unknown_device", f"no speaker {', '.join(missing)} on this gateway")
        failed = await self.executor.set_devices(targets, volume=body.volume, power=body.power)
        if failed:
            raise _refuse("device_error", f"not applied on {', '.join(failed)}")

    # ---------------------------------------------------------------- health

    def health(self) -> Mapping[str, Any]:
        return {
            "speakers_online": sum(1 for d in self.drivers.values() if d.online),
            "speakers_total": len(self.drivers),
            "broadcasts_pending": self.executor.pending_count(),
            "media_cache_bytes": self._cache_bytes,
            "events_sent": self.outbox.sent,
            "speaker_cmd_retries": sum(s.stats_["retries"] for s in self.hub.speakers.values()),
            "speaker_no_ack": sum(s.stats_["no_ack"] for s in self.hub.speakers.values()),
        }

    # ---------------------------------------------------------------- run

    async def run(self) -> None:
        for drv in self.drivers.values():
            await drv.start(self.executor.report)
        server = asyncio.create_task(self._serve_media(), name="media-server") if self.cfg.media_listen else None
        outbox = asyncio.create_task(self.outbox.run(), name="event-outbox")
        self.media.client()  # build the HTTP client now, not when the first broadcast is waiting for it
        # hash what a power cut may have left in the cache, in the background; a plan that needs a
        # file before this reaches it hashes that file itself
        verify = asyncio.create_task(self.media.verify_all(), name="media-verify")
        await self.executor.start()
        try:
            while True:
                self._cache_bytes = await asyncio.to_thread(self.media.total_bytes)
                await asyncio.sleep(30)
        finally:
            verify.cancel()
            await self.executor.close()
            outbox.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await outbox
            for drv in self.drivers.values():
                with contextlib.suppress(Exception):
                    await drv.close()
            if server is not None:
                server.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await server
            await self.media.aclose()
            self.store.close()

    async def _serve_media(self) -> None:
        """Serve the cache to the speakers; if the port is taken, say so and keep trying."""
        from gateway.broadcast.mediaserver import serve
        from protocol.models import AlarmEvent
        from protocol.signing import now_ms

        assert self.cfg.media_listen is not None
        alarmed = False
        while True:
            try:
                runner = await serve(self.media, self.cfg.media_listen)
                break
            except OSError as exc:
                log.error("media server on %s: %s (retrying)", self.cfg.media_listen, exc)
                if not alarmed:
                    alarmed = True
                    await self.outbox.put(AlarmEvent(
                        code="media_server", severity="critical", at=now_ms(),
                        message=f"cannot serve media to the speakers on {self.cfg.media_listen}: {exc}"))
                await asyncio.sleep(5)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


def attach(ctx: GatewayContext) -> BroadcastService:
    svc = BroadcastService(ctx)
    ctx.register_command("broadcast.plan", svc.on_plan)
    ctx.register_command("broadcast.cancel", svc.on_cancel)
    ctx.provide_playback(svc)  # device.set is the fleet service's command; it calls apply_device_set
    ctx.add_health(svc.health)
    ctx.add_task(svc.run, name="broadcast")
    return svc
