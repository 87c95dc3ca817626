"""Assembles the fleet on top of the dispatcher's broker link and database thread, and runs it.

Only the dispatcher holds the MQTT client (scheduler/dispatcher.py); the fleet subscribes through
the same :class:`~loaxa.mqttlink.MqttLink` and signs its actions with the same key.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from scheduler.fleet.actions import FleetActions
from scheduler.fleet.alarms.engine import AlarmEngine
from scheduler.fleet.config import FleetSection
from scheduler.fleet.notify.service import Notifier
from scheduler.fleet.readings import InfluxQL, ReadingRules
from scheduler.fleet.state import FleetState
from scheduler.fleet.store import FleetStore, alarm_dict

log = logging.getLogger(__name__)

#: Cleared alarms, sent notifications and ended silences are forgotten after this long.
KEEP_HISTORY_MS = 180 * 24 * 3600 * 1000


class Fleet:
    def __init__(self, cfg: FleetSection, dispatcher: Any, *, influx: Any = None,
                 timezone: str = "Asia/Ho_Chi_Minh"):
        self.cfg = cfg
        self.dispatcher = dispatcher
        self.astore = dispatcher.store
        self.store = FleetStore(dispatcher.db.session)
        self.notifier = Notifier(self.astore, self.store, cfg.notify, timezone=timezone, commune_of=self._commune)
        self.engine = AlarmEngine(self.astore, self.store, cfg.flapping, notify=self.notifier.submit)
        self.state = FleetState(dispatcher.link, self.engine, cfg.rules, known_gateways=self._known,
                                on_devices_listed=self._sync_speakers)
        dispatcher.accept_device = self.state.accepts_device
        self.actions = FleetActions(dispatcher.signer, self.state, timeout_s=cfg.action_timeout_s)
        self.readings: ReadingRules | None = None
        self.influx: InfluxQL | None = None
        if influx is not None and (cfg.rules.thresholds or cfg.rules.sensor_silent.enabled):
            password = influx.password
            self.influx = InfluxQL(influx.url, influx.database, influx.username,
                                   lambda: password.get() if password is not None else None)
            self.readings = ReadingRules(self.influx, self.state, self.engine, cfg.rules,
                                         interval_s=cfg.readings_interval_s)

    def _known(self) -> set[str] | None:
        known = getattr(self.dispatcher, "known_gateways", None)
        return known if isinstance(known, set) else None

    def _commune(self, gw: str) -> str | None:
        view = self.state.gateways.get(gw)
        return view.commune if view is not None else None

    async def alarm_list(self, gateways: frozenset[str] | None, status: str | None,
                         limit: int = 1000) -> list[dict[str, Any]]:
        """Alarms of ``gateways`` (None: all), newest first, as the API shows them (the IOC API uses it)."""
        rows = await self.astore.call(self.store.list_alarms, status=status, gateways=gateways, limit=limit)
        return [alarm_dict(a) for a in rows]

    async def _sync_speakers(self, gw: str, speakers: list[tuple[str, str | None]]) -> None:
        added, removed = await self.astore.call(self.store.sync_speakers, gw, speakers)
        if added or removed:
            log.info("fleet: speakers of %s from its configuration: %d added, %d removed", gw, added, removed)

    async def start(self) -> None:
        """Take up active alarms and list the registered gateways (before they speak)."""
        await self.engine.load()
        for gw, commune in await self.astore.call(self.store.registered_gateways):
            known = self._known()
            if known is None or gw in known:
                self.state.register(gw, commune)

    async def run(self) -> None:
        await self.start()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.engine.run(self.cfg.evaluate_interval_s), name="fleet-alarms")
                tg.create_task(self.notifier.run(), name="fleet-notify")
                tg.create_task(self._purge_forever(), name="fleet-purge")
                if self.readings is not None:
                    tg.create_task(self.readings.run(), name="fleet-readings")
        finally:
            if self.influx is not None:
                await self.influx.aclose()

    async def _purge_forever(self) -> None:
        from protocol.signing import now_ms

        while True:
            await asyncio.sleep(3600)
            try:
                await self.astore.call(self.store.purge, now_ms() - KEEP_HISTORY_MS)
            except Exception:
                log.exception("fleet: purge of old alarms failed")
