"""What the scheduler knows of every gateway and device, from the messages it hears.

Sources (all on the central broker): the gateway's retained ``status`` and ``health`` (with its
configured device list), the retained ``dev/{dev}/state`` that the gateway relays for each configured
device, and ``event`` (playback reports, alarms, device reports). Everything retained comes back on
every (re)connection, so this state is rebuilt from the broker after a restart; alarms, which must
outlive a restart, are in the database (engine.py).

**Unknown, not offline.** A device is ``online`` or ``offline`` only while the scheduler's own link to
the broker is up, its gateway says ``online`` and the device has reported; otherwise it is
``unknown``. A gateway is ``unknown`` while the scheduler's link is down. "Last seen" of an online
device is kept current by its gateway's reports (every health interval): the gateway vouches for
the devices it relays, and a device that drops off is reported by its MQTT will at once.

Messages of one gateway are applied in arrival order on the event loop (the broker keeps one
topic in order), so nothing here needs a lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from pydantic import ValidationError

from loaxa.mqttlink import MqttLink
from protocol.errors import ProtocolError
from protocol.limits import parse_json, parse_payload
from protocol.models import Ack, AlarmEvent, DeviceReport, DeviceState, Health, PlaybackEvent, Status
from protocol.signing import now_ms
from protocol.topics import ROOT, filter_all_gateways, parse_topic
from scheduler.fleet.alarms.engine import AlarmEngine
from scheduler.fleet.alarms.rules import (
    NOT_A_FAILURE,
    dev_source,
    event_severity,
    event_type,
    gw_source,
    health_conditions,
)
from scheduler.fleet.config import Rules

log = logging.getLogger(__name__)

#: Speakers are told from sensors by their kind in the gateway's list, or (older gateways) by a state
#: carrying one of these keys.
SPEAKER_STATE_KEYS = ("volume", "playing")
#: Acks and device reports are kept for the commands the scheduler's actions wait on, at most this many.
MAX_WATCHED = 1000
#: The broadcast registry is made to match a gateway's list when the list changes, and at least this
#: often (a speaker named in a broadcast target that the gateway does not have is dropped again).
SYNC_EVERY_MS = 60_000
#: At most this many distinct alarm codes per gateway become alarm types of their own.
MAX_EVENT_TYPES = 50
#: At most this many devices per gateway are tracked when the gateway sends no list.
MAX_UNLISTED = 2000


@dataclass
class DeviceView:
    gateway: str
    device: str
    kind: str = "other"
    type: str | None = None
    name: str | None = None
    listed: bool = False  # in the gateway's configured device list
    state: dict[str, Any] | None = None
    state_at: int | None = None  # our clock, when the last state arrived
    online: bool | None = None
    since: int | None = None  # our clock, when ``online`` last changed
    version: int = 0


@dataclass
class GatewayView:
    id: str
    commune: str | None = None
    status: str | None = None
    status_at: int | None = None
    since: int | None = None
    version_sw: str | None = None
    health: dict[str, Any] | None = None
    health_at: int | None = None
    listed: bool = False  # the gateway sends its device list
    devices: dict[str, DeviceView] = field(default_factory=dict)
    synced_at: int = 0  # when the broadcast registry was last made to match the list
    version: int = 0


class FleetState:
    def __init__(self, link: MqttLink, engine: AlarmEngine, rules: Rules, *,
                 known_gateways: Callable[[], set[str] | None] = lambda: None,
                 on_devices_listed: Callable[[str, list[tuple[str, str | None]]], Any] | None = None):
        self.link = link
        self.engine = engine
        self.rules = rules
        self.known_gateways = known_gateways
        self.on_devices_listed = on_devices_listed
        self.gateways: dict[str, GatewayView] = {}
        self.changed = asyncio.Condition()
        self.acks: OrderedDict[str, Ack | None] = OrderedDict()
        self.reports: dict[str, dict[str, DeviceReport]] = {}
        self.ignored = 0
        self._event_types: dict[str, set[str]] = {}
        link.subscribe(filter_all_gateways("status"), self._on_status)
        link.subscribe(filter_all_gateways("health"), self._on_health)
        link.subscribe(filter_all_gateways("event"), self._on_event)
        link.subscribe(filter_all_gateways("ack"), self._on_ack)
        link.subscribe(f"{ROOT}/+/dev/+/state", self._on_device_state)

    # ------------------------------------------------------------ views

    @property
    def connected(self) -> bool:
        return self.link.connected.is_set()

    def gateway(self, gw: str) -> GatewayView:
        view = self.gateways.get(gw)
        if view is None:
            view = self.gateways[gw] = GatewayView(gw)
        return view

    def register(self, gw: str, commune: str | None) -> None:
        """A gateway of this scheduler (configured or registered), listed before it ever speaks."""
        view = self.gateway(gw)
        if commune:
            view.commune = commune

    def accepts_device(self, gw: str, dev: str) -> bool:
        """False for a device its gateway's configuration no longer lists (True while unknown)."""
        view = self.gateways.get(gw)
        return view is None or not view.listed or dev in view.devices

    def gateway_status(self, view: GatewayView) -> str:
        if not self.connected or view.status is None:
            return "unknown"
        return view.status

    def device_status(self, view: GatewayView, dev: DeviceView) -> str:
        if self.gateway_status(view) != "online" or dev.online is None:
            return "unknown"
        return "online" if dev.online else "offline"

    def device_last_seen(self, view: GatewayView, dev: DeviceView) -> int | None:
        """The last message about the device; while it is online, its gateway's latest report too."""
        seen = dev.state_at
        if self.device_status(view, dev) == "online":
            vouch = max(view.health_at or 0, view.status_at or 0)
            seen = max(seen or 0, vouch) or None
        return seen

    def device_dict(self, view: GatewayView, dev: DeviceView) -> dict[str, Any]:
        st = dev.state or {}
        return {
            "gateway": view.id,
            "device": dev.device,
            "kind": dev.kind,
            "type": dev.type,
            "name": dev.name,
            "configured": dev.listed if view.listed else None,
            "status": self.device_status(view, dev),
            "online": dev.online if self.device_status(view, dev) != "unknown" else None,
            "since": dev.since,
            "last_seen": self.device_last_seen(view, dev),
            "volume": st.get("volume"),
            "power": st.get("power"),
            "source": st.get("source"),
            "playing": st.get("playing"),
            "firmware": st.get("firmware"),
            "rssi": st.get("rssi"),
            "signal": {k: st[k] for k in ("rssi", "sim", "operator", "network", "snr") if k in st} or None,
            "state_ts": st.get("ts"),
            "state": st or None,
        }

    def gateway_dict(self, view: GatewayView, *, devices: bool = True) -> dict[str, Any]:
        h = view.health or {}
        out: dict[str, Any] = {
            "id": view.id,
            "commune": view.commune,
            "status": self.gateway_status(view),
            "since": view.since,
            "last_seen": max(view.health_at or 0, view.status_at or 0) or None,
            "version": view.version_sw or h.get("version"),
            "health": {k: v for k, v in h.items() if k != "devices"} or None,
            "health_at": view.health_at,
            "devices_listed": view.listed,
        }
        if devices:
            out["devices"] = [self.device_dict(view, d) for d in sorted(view.devices.values(),
                                                                        key=lambda d: d.device)]
        return out

    def snapshot(self, gateways: frozenset[str] | None = None) -> list[dict[str, Any]]:
        return [self.gateway_dict(v) for gid, v in sorted(self.gateways.items())
                if gateways is None or gid in gateways]

    async def _changed(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, predicate: Callable[[], Any], within_s: float) -> Any:
        """Wait until ``predicate()`` is truthy (re-checked after each message); None on timeout."""
        async with self.changed:
            try:
                return await asyncio.wait_for(self.changed.wait_for(predicate), within_s)
            except TimeoutError:
                return None

    def watch(self, cmd_id: str) -> None:
        """Keep the ack and device reports of ``cmd_id`` (a command an action waits on)."""
        self.acks[cmd_id] = None
        self.reports[cmd_id] = {}
        while len(self.acks) > MAX_WATCHED:
            old, _ = self.acks.popitem(last=False)
            self.reports.pop(old, None)

    def unwatch(self, cmd_id: str) -> None:
        self.acks.pop(cmd_id, None)
        self.reports.pop(cmd_id, None)

    # ------------------------------------------------------------ incoming

    def _gateway_of(self, msg: aiomqtt.Message) -> tuple[str, str | None] | None:
        try:  # parsed once for every subscriber of the message (MqttLink.memo)
            t = self.link.memo(msg, "topic", lambda: parse_topic(str(msg.topic)))
        except ProtocolError:
            return None
        known = self.known_gateways()
        if known is not None and t.gateway not in known:
            self.ignored += 1
            return None
        return t.gateway, t.device

    async def _on_status(self, msg: aiomqtt.Message) -> None:
        where = self._gateway_of(msg)
        if where is None or not msg.payload:
            return
        try:
            status = self.link.memo(msg, "status", lambda: parse_payload(bytes(msg.payload), Status))
        except ProtocolError as exc:
            log.warning("fleet: bad status on %s: %s", msg.topic, exc)
            return
        self.apply_status(where[0], status, now_ms())
        await self._changed()

    def apply_status(self, gw: str, status: Status, now: int) -> None:
        view = self.gateway(gw)
        if view.status != status.state:
            view.since = now
        view.status, view.status_at = status.state, now
        if status.version:
            view.version_sw = status.version[:64]
        if status.commune:
            view.commune = status.commune
        view.version += 1
        timing = self.rules.gateway_offline
        self.engine.observe(gw_source(gw), "gateway_offline", gateway=gw, device=None, timing=timing,
                            holds=status.state == "offline", severity=timing.severity,
                            message=f"gateway {gw} ({view.commune or 'commune unknown'}) is offline", at=now)
        if status.state == "online":
            for dev in view.devices.values():  # a gateway back online re-establishes its devices' states
                self._observe_device(view, dev, now)

    async def _on_health(self, msg: aiomqtt.Message) -> None:
        where = self._gateway_of(msg)
        if where is None or not msg.payload:
            return
        try:
            health = parse_payload(bytes(msg.payload), Health)
        except ProtocolError as exc:
            log.warning("fleet: bad health on %s: %s", msg.topic, exc)
            return
        await self.apply_health(where[0], health, now_ms())
        await self._changed()

    async def apply_health(self, gw: str, health: Health, now: int) -> None:
        view = self.gateway(gw)
        previous = view.health
        data = health.model_dump(mode="json", exclude_none=True)
        view.health, view.health_at = data, now
        view.version += 1
        if health.devices is not None:
            await self._apply_listing(view, health, now)
        for c in health_conditions(gw, data, previous, self.rules):
            self.engine.observe(gw_source(gw), c.type, gateway=gw, device=None, timing=c.timing, holds=c.holds,
                                severity=c.severity, message=c.message, details=c.details, at=now)

    async def _apply_listing(self, view: GatewayView, health: Health, now: int) -> None:
        assert health.devices is not None
        listed = {d.id: d for d in health.devices}
        before = {d for d, v in view.devices.items() if v.listed}
        view.listed = True
        for dev_id in [d for d in view.devices if d not in listed]:
            log.info("fleet: %s/%s is no longer in its gateway's configuration; forgetting it", view.id, dev_id)
            del view.devices[dev_id]
            self.engine.forget(dev_source(view.id, dev_id))
        for d in health.devices:
            dev = view.devices.get(d.id)
            if dev is None:
                dev = view.devices[d.id] = DeviceView(view.id, d.id)
            dev.kind, dev.type, dev.name, dev.listed = d.kind, d.type, d.name, True
        due = now - view.synced_at >= SYNC_EVERY_MS
        if (set(listed) != before or due) and self.on_devices_listed is not None:
            view.synced_at = now
            speakers = [(d.id, d.name) for d in health.devices if d.kind == "speaker"]
            try:
                await self.on_devices_listed(view.id, speakers)
            except Exception:
                log.exception("fleet: could not update the speakers of %s", view.id)

    async def _on_device_state(self, msg: aiomqtt.Message) -> None:
        where = self._gateway_of(msg)
        if where is None or where[1] is None or not msg.payload:
            return
        try:
            state = parse_payload(bytes(msg.payload), DeviceState)
        except ProtocolError as exc:
            log.warning("fleet: bad device state on %s: %s", msg.topic, exc)
            return
        self.apply_device_state(where[0], where[1], state, now_ms())
        await self._changed()

    def apply_device_state(self, gw: str, device: str, state: DeviceState, now: int) -> None:
        view = self.gateway(gw)
        dev = view.devices.get(device)
        if dev is None:
            if view.listed:
                return  # a retained state of a device no longer configured: not a device any more
            if len(view.devices) >= MAX_UNLISTED:
                return
            data = state.model_dump(exclude_none=True)
            dev = view.devices[device] = DeviceView(gw, device)
            if any(data.get(k) is not None for k in SPEAKER_STATE_KEYS):
                dev.kind = "speaker"
        if dev.online != state.online:
            dev.since = now
        dev.state = state.model_dump(mode="json", exclude_none=True)
        dev.state_at, dev.online = now, state.online
        dev.version += 1
        self._observe_device(view, dev, now)

    def _observe_device(self, view: GatewayView, dev: DeviceView, now: int) -> None:
        if dev.kind != "speaker" or dev.online is None or view.status != "online":
            return  # a device behind an offline gateway is unknown: the gateway's alarm covers it
        timing = self.rules.speaker_offline
        self.engine.observe(dev_source(view.id, dev.device), "speaker_offline", gateway=view.id, device=dev.device,
                            timing=timing, holds=not dev.online, severity=timing.severity,
                            message=f"speaker {dev.device}{f' ({dev.name})' if dev.name else ''} of "
                                    f"{view.commune or view.id} is offline", at=now)

    async def _on_ack(self, msg: aiomqtt.Message) -> None:
        where = self._gateway_of(msg)
        if where is None:
            return
        try:
            data = self.link.memo(msg, "json", lambda: parse_json(bytes(msg.payload)))
            cmd_id = data.get("id") if isinstance(data, dict) else None
            if not isinstance(cmd_id, str) or cmd_id not in self.acks:
                return  # not a command an action waits for (the dispatcher has its own)
            self.acks[cmd_id] = Ack.model_validate(data)
        except (ProtocolError, ValidationError) as exc:
            log.debug("fleet: bad ack on %s: %s", msg.topic, exc)
            return
        await self._changed()

    async def _on_event(self, msg: aiomqtt.Message) -> None:
        where = self._gateway_of(msg)
        if where is None:
            return
        gw = where[0]
        try:
            data = self.link.memo(msg, "json", lambda: parse_json(bytes(msg.payload)))
            if not isinstance(data, dict):
                return
            kind = data.get("kind")
            if kind == "playback":
                self.apply_playback(gw, self.link.memo(msg, "playback", lambda: PlaybackEvent.model_validate(data)))
            elif kind == "alarm":
                self.apply_alarm(gw, AlarmEvent.model_validate(data))
            elif kind == "device_report":
                rep = DeviceReport.model_validate(data)
                if rep.command_id in self.reports:
                    self.reports[rep.command_id][rep.device] = rep
                    if rep.state is not None:
                        self.apply_device_state(gw, rep.device, rep.state, now_ms())
                    await self._changed()
        except (ProtocolError, ValidationError) as exc:
            log.warning("fleet: bad event on %s: %s", msg.topic, exc)

    def apply_playback(self, gw: str, ev: PlaybackEvent) -> None:
        view = self.gateway(gw)
        if not self.accepts_device(gw, ev.device):
            return  # not a device of this gateway's configuration: no alarm for a name
        source = dev_source(gw, ev.device)
        timing = self.rules.broadcast_failed
        if ev.state in ("failed", "skipped") and (ev.reason or "") not in NOT_A_FAILURE:
            self.engine.occur(source, "broadcast_failed", gateway=gw, device=ev.device, timing=timing,
                              severity=timing.severity,
                              message=f"broadcast {ev.broadcast_id} {ev.state} on {ev.device} of "
                                      f"{view.commune or gw}: {ev.reason or 'no reason given'}",
                              details={"broadcast_id": ev.broadcast_id, "state": ev.state, "reason": ev.reason})
        elif ev.state in ("started", "finished"):
            self.engine.resolve(source, "broadcast_failed")

    def apply_alarm(self, gw: str, ev: AlarmEvent) -> None:
        severity = event_severity(ev.severity)
        if severity is None:
            log.info("fleet: %s says (info) %s: %s", gw, ev.code, ev.message)
            return
        device = ev.device if ev.device and self.accepts_device(gw, ev.device) else None
        source = dev_source(gw, device) if device else gw_source(gw)
        timing = self.rules.gateway_events
        alarm_type = event_type(ev.code)
        kinds = self._event_types.setdefault(gw, set())
        if alarm_type not in kinds and len(kinds) >= MAX_EVENT_TYPES:
            alarm_type = "gateway_alarm_other"  # a gateway cannot make alarm types without end
        kinds.add(alarm_type)
        if alarm_type == "telemetry_quarantine":
            timing = self.rules.telemetry_quarantine
        self.engine.occur(source, alarm_type, gateway=gw, device=device, timing=timing, severity=severity,
                          message=f"{gw}: {ev.message}"[:2000], details={"code": ev.code, **ev.details})

    # ------------------------------------------------------------ link

    async def on_link_change(self) -> None:
        """Wake waiters when the scheduler's own broker link goes up or down (status → unknown)."""
        await self._changed()
