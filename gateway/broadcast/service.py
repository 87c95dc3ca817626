"""Plugs the broadcast path into the gateway: ``attach(gw)``.

Registers the handlers of ``broadcast.plan``, ``broadcast.cancel`` and ``device.set`` on the
gateway's command router (which has already checked signature, key, expiry and replay), builds the
speaker drivers from the ``devices`` of the config (``ip_speaker``, ``amplifier``), and runs the
executor, the event outbox and (if configured) the media server for the speakers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from devices.base import SpeakerDriver
from devices.speakers.ip_speaker import IpSpeakerHub
from gateway.broadcast.config import BroadcastSection
from gateway.broadcast.executor import Executor, ExecutorSettings
from gateway.broadcast.media import MediaCache
from gateway.broadcast.outbox import Outbox
from gateway.broadcast.store import PlanStore
from protocol.models import BroadcastCancelBody, BroadcastPlanBody, DeviceSetBody, Envelope, MediaRef
from protocol.topics import event_topic

log = logging.getLogger(__name__)


def _refuse(reason: str, message: str) -> Exception:
    from gateway.commands import CommandRefused

    return CommandRefused(reason, message)


class BroadcastService:
    def __init__(self, gw: Any) -> None:
        self.gw = gw
        cfg = gw.config
        self.cfg: BroadcastSection = getattr(cfg, "broadcast", None) or BroadcastSection()
        data_dir = gw.data_dir
        self.store = PlanStore(data_dir / "broadcast.sqlite")
        self.media = MediaCache(data_dir / "media", cfg.media.max_bytes,
                                pinned=lambda: self.executor.needed_media() | set(getattr(gw, "pinned_media", ())))
        self.hub = IpSpeakerHub(gw.id, gw.local)
        # the gateway's speaker registry: serial-node speakers are in it already; ours join them
        self.drivers: dict[str, SpeakerDriver] = gw.speakers
        for dev in cfg.devices:
            if dev.type == "ip_speaker":
                self.drivers[dev.id] = self.hub.add(dev.id, ack_timeout_s=self.cfg.ack_timeout_s,
                                                    retries=self.cfg.retries)
            elif dev.type == "amplifier":
                from devices.speakers.amplifier import Amplifier

                self.drivers[dev.id] = Amplifier(dev)
        self.hub.subscribe()  # before the LAN link connects; MqttLink re-subscribes on reconnect
        self.outbox = Outbox(self.store, self._publish_event, connected=getattr(gw.uplink, "connected", None),
                             publish_many=self._publish_events)
        settings = ExecutorSettings(
            now_lead_ms=self.cfg.now_lead_ms, dispatch_ahead_ms=self.cfg.dispatch_ahead_ms,
            late_max_ms=int(self.cfg.late_max_s * 1000), now_media_wait_ms=int(self.cfg.now_media_wait_s * 1000),
            report_grace_ms=int(self.cfg.report_grace_s * 1000))
        self.executor = Executor(self.store, self.media, self.drivers, self.outbox, media_url=self._media_url,
                                 settings=settings)
        self.hub.report_many = self.executor.report_many  # the speakers' reports in batches
        self._cache_bytes = 0

    def _media_url(self, media: MediaRef) -> str:
        if self.cfg.media_public_url:
            return f"{self.cfg.media_public_url.rstrip('/')}/media/{media.sha256}"
        return media.url

    async def _publish_event(self, payload: str) -> bool:
        return bool(await self.gw.uplink.publish(event_topic(self.gw.id), payload, qos=1))

    async def _publish_events(self, payloads: list[str]) -> int:
        return int(await self.gw.uplink.publish_many(event_topic(self.gw.id), list(payloads), qos=1))

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

    async def on_set(self, env: Envelope, body: DeviceSetBody) -> None:
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
            "broadcasts_pending": len(self.executor._plans),
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


def attach(gw: Any) -> BroadcastService:
    svc = BroadcastService(gw)
    gw.commands.register("broadcast.plan", svc.on_plan)
    gw.commands.register("broadcast.cancel", svc.on_cancel)
    gw.commands.register("device.set", svc.on_set)
    gw.health.add_provider(svc.health)
    gw.add_task(svc.run)
    return svc
