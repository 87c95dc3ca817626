"""What the gateway does for the centre's fleet view and remote actions: ``attach(ctx)``.

* **Device list.** Every health report carries ``devices``: each device of the gateway's
  configuration with its kind (speaker / sensor / other). The centre lists a configured speaker
  before it ever speaks, and forgets a device that is no longer configured.
* **Device state relay.** IP speakers publish their retained state on the commune LAN broker; the
  gateway copies the state of each *configured* device to the central broker, retained, on
  ``loaxa/v1/{gw}/dev/{dev}/state`` (validated, at most one copy per device per ``RELAY_MIN_S``, the
  newest one always kept). Serial nodes publish their own state there already. The local amplifier
  has no state of its own; the gateway publishes one for it.
* **Remote actions** (signed commands, checked by the router like every command):
  ``ping`` with ``targets`` asks each device and sends one ``device_report`` event per device;
  ``device.set`` (this service owns the command) selects the input with ``source`` on speakers that
  have one and applies volume and power through the broadcast service (the context's ``playback``);
  ``health.report`` publishes a fresh health report now;
  ``gateway.restart`` acks, stops the gateway cleanly and starts it again (``ctx.request_restart``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol, cast, runtime_checkable

from pydantic import BaseModel, ValidationError

from gateway.context import GatewayContext
from protocol.errors import ProtocolError
from protocol.limits import parse_json
from protocol.models import (
    DeviceKind,
    DeviceListing,
    DeviceReport,
    DeviceSetBody,
    DeviceState,
    Envelope,
    GatewayRestartBody,
    PingBody,
)
from protocol.signing import now_ms
from protocol.topics import device_topic, filter_devices, parse_topic

log = logging.getLogger(__name__)

#: A device's state is copied to the centre at most once per this many seconds (the newest is kept).
RELAY_MIN_S = 1.0
#: A device state larger than this is not relayed (a state is a few hundred bytes).
MAX_STATE_BYTES = 4096
#: How long a ping waits for each device.
PING_TIMEOUT_S = 5.0
#: Pause between the ack of ``gateway.restart`` and the stop, so the ack leaves first.
RESTART_DELAY_S = 1.0

SPEAKER_TYPES = frozenset({"ip_speaker", "amplifier"})
SENSOR_TYPES = frozenset({"mqtt_sensor", "sim_sensor", "modbus_rtu", "gpio_rain_gauge", "gpio_inputs", "ds18b20",
                          "pi_health"})


@runtime_checkable
class SourceSelect(Protocol):
    """A speaker with more than one input (IP speakers with FM / line in)."""

    async def set_source(self, source: str) -> None: ...


def _refuse(reason: str, message: str) -> Exception:
    from gateway.commands import CommandRefused

    return CommandRefused(reason, message)


def listing_of(dev: Any) -> DeviceListing:
    """How one configured device is announced to the centre."""
    dtype = str(getattr(dev, "type", "") or "")
    kind: DeviceKind = "speaker" if dtype in SPEAKER_TYPES else "sensor" if dtype in SENSOR_TYPES else "other"
    if dtype == "serial_node":
        kind = "sensor" if getattr(dev, "role", "speaker") == "sensor" else "speaker"
    return DeviceListing(id=dev.id, kind=kind, type=dtype or None, name=getattr(dev, "name", None))


class FleetService:
    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.listing = [listing_of(d) for d in ctx.config.devices]
        self.configured = {d.id: d for d in ctx.config.devices}
        self._last_sent: dict[str, float] = {}
        self._latest: dict[str, str] = {}
        self._flushers: dict[str, asyncio.Task[None]] = {}
        self.relayed = 0
        self.relay_refused = 0
        self._restart: asyncio.TimerHandle | None = None
        ctx.local.subscribe(filter_devices(ctx.id, "state"), self._on_lan_state, qos=1)

    # ---------------------------------------------------------------- health

    def health(self) -> Mapping[str, Any]:
        return {
            "devices": [d.model_dump(exclude_none=True) for d in self.listing],
            "device_states_relayed": self.relayed,
        }

    # ---------------------------------------------------------------- state relay

    async def _on_lan_state(self, msg: Any) -> None:
        topic = str(msg.topic)
        try:
            dev = parse_topic(topic).device
        except ProtocolError:
            return
        if dev is None or dev not in self.configured:
            return  # an unconfigured device says nothing to the centre
        drv = self.ctx.speakers.get(dev)
        if drv is not None and type(drv).__name__ == "SerialNodeDriver":
            return  # publishes its own state on the uplink
        payload = msg.payload if isinstance(msg.payload, bytes | bytearray) else str(msg.payload or "").encode()
        if not payload:
            return
        try:
            if len(payload) > MAX_STATE_BYTES:
                raise ProtocolError(f"state of {len(payload)} bytes exceeds {MAX_STATE_BYTES}")
            state = DeviceState.model_validate(parse_json(bytes(payload)))
        except (ProtocolError, ValidationError) as exc:
            self.relay_refused += 1
            log.warning("not relaying the state on %s: %s", topic, exc)
            return
        await self.relay(dev, state)

    async def relay(self, dev: str, state: DeviceState) -> None:
        """Copy one device state to the centre (retained), at most once per RELAY_MIN_S per device."""
        self._latest[dev] = state.model_dump_json(exclude_none=True)
        if dev in self._flushers:
            return  # a copy is already due; it takes the newest state
        wait = self._last_sent.get(dev, 0.0) + RELAY_MIN_S - time.monotonic()
        if wait <= 0:
            await self._send(dev)
            return
        task = asyncio.create_task(self._send_later(dev, wait))
        self._flushers[dev] = task

    async def _send_later(self, dev: str, wait: float) -> None:
        try:
            await asyncio.sleep(wait)
            await self._send(dev)
        finally:
            self._flushers.pop(dev, None)

    async def _send(self, dev: str) -> None:
        payload = self._latest.get(dev)
        if payload is None:
            return
        self._last_sent[dev] = time.monotonic()
        self.relayed += 1
        await self.ctx.uplink.publish(device_topic(self.ctx.id, dev, "state"), payload, qos=1, retain=True)

    async def publish_own_states(self) -> None:
        """Speakers with no state of their own (the Pi's amplifier): the gateway speaks for them."""
        for dev, drv in list(self.ctx.speakers.items()):
            if type(drv).__name__ != "Amplifier":
                continue
            power = getattr(drv, "manual_power", None)
            await self.relay(dev, DeviceState(online=True, ts=now_ms(), volume=getattr(drv, "volume", None),
                                              power=power if isinstance(power, bool) else None))

    # ---------------------------------------------------------------- commands

    def _targets(self, targets: Any) -> list[str]:
        if targets is None or targets == "*" or "*" in targets:
            return list(self.configured)
        missing = [t for t in targets if t not in self.configured]
        if missing:
            raise _refuse("unknown_device", f"no device {', '.join(missing)} on this gateway")
        return list(dict.fromkeys(targets))

    async def on_ping(self, env: Envelope, body: BaseModel) -> None:
        assert isinstance(body, PingBody)
        if body.targets is None:
            return  # a ping of the gateway: the ack is the answer
        ids = self._targets(body.targets)
        await asyncio.gather(*(self._ping_one(env.id, dev) for dev in ids))

    async def _ping_one(self, cmd_id: str, dev: str) -> None:
        drv = self.ctx.speakers.get(dev)
        started = time.monotonic()
        ok, reason, state = False, None, None
        ping = getattr(drv, "ping", None)
        if drv is None:
            # sensors answer through their readings, which the centre sees in InfluxDB
            reason = "not_pingable"
        elif ping is not None:
            try:
                ok, reason = await asyncio.wait_for(ping(), PING_TIMEOUT_S)
            except TimeoutError:
                reason = "no_answer"
            st = getattr(drv, "state", None)
            state = st if isinstance(st, DeviceState) else None
        else:
            ok = bool(getattr(drv, "online", False))
            reason = None if ok else "offline"
        report = DeviceReport(command_id=cmd_id, device=dev, ok=ok, reason=reason, at=now_ms(),
                              rtt_ms=int((time.monotonic() - started) * 1000) if ok else None, state=state)
        await self.ctx.publish_event(report)

    async def on_set(self, env: Envelope, body: BaseModel) -> None:
        assert isinstance(body, DeviceSetBody)
        ids = self._targets(body.targets)
        if body.source is not None:
            unable = [d for d in ids if not isinstance(self.ctx.speakers.get(d), SourceSelect)]
            if unable:
                raise _refuse("unsupported", f"cannot select a source on {', '.join(unable)}")
        if body.volume is not None or body.power is not None:
            playback = self.ctx.playback
            if playback is None:
                raise _refuse("unsupported", "this gateway has no speaker service")
            await playback.apply_device_set(DeviceSetBody(targets=body.targets, volume=body.volume, power=body.power))
        if body.source is not None:
            source = body.source
            selectors = [cast(SourceSelect, self.ctx.speakers[d]) for d in ids]  # checked above
            results = await asyncio.gather(*(s.set_source(source) for s in selectors), return_exceptions=True)
            failed = [f"{d} ({r})" for d, r in zip(ids, results, strict=True) if isinstance(r, Exception)]
            if failed:
                raise _refuse("device_error", f"source not set on {', '.join(failed)}")
        await self.publish_own_states()

    async def on_health_report(self, env: Envelope, body: BaseModel) -> None:
        await self.ctx.report_health()

    async def on_restart(self, env: Envelope, body: BaseModel) -> None:
        assert isinstance(body, GatewayRestartBody)
        log.warning("restart asked by the centre (command %s%s)", env.id,
                    f": {body.reason}" if body.reason else "")
        task = asyncio.get_running_loop().call_later(RESTART_DELAY_S, self.ctx.request_restart)
        self._restart = task

    async def run(self) -> None:
        with contextlib.suppress(Exception):
            await self.publish_own_states()
        await asyncio.Event().wait()


def attach(ctx: GatewayContext) -> FleetService:
    svc = FleetService(ctx)
    ctx.register_command("ping", svc.on_ping)
    ctx.register_command("device.set", svc.on_set)
    ctx.register_command("health.report", svc.on_health_report)
    ctx.register_command("gateway.restart", svc.on_restart)
    ctx.add_health(svc.health)
    ctx.add_task(svc.run, name="fleet")
    return svc
