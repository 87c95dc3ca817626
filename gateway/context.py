"""What a gateway service may use of the gateway: :class:`GatewayContext`.

Every service module in ``gateway.app.SERVICE_MODULES`` has ``attach(ctx: GatewayContext)``. The
context is all a service sees of the gateway: its identity and config, the two MQTT links, the
speaker registry, task/closer/command/health registration, event publishing, and a few typed slots
through which services offer something to each other:

- ``reading_sink``: where in-process producers (serial nodes) put readings; provided by telemetry.
- ``reading_observers``: called with every batch of accepted readings (local warning rules).
- ``sensor_drivers``: the sensor drivers telemetry runs (the sensors' health summary reads them).
- ``playback``: the broadcast service's :class:`Playback` (warning rules play through it; fleet's
  ``device.set`` applies volume and power through it).
- ``pinned_media``: media the cache must keep although no plan needs it now (warning rules).

A slot is filled once, at attach time, by the service that owns it; other services read it when they
use it (a command, their task), never while attaching, so the order of ``SERVICE_MODULES`` does not
matter.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from pydantic import BaseModel

from devices.base import ReadingSink, SensorDriver, SpeakerDriver
from gateway.commands import CommandHandler
from gateway.config import GatewayConfig
from loaxa.mqttlink import MqttLink
from protocol.models import COMMAND_BODIES, DeviceSetBody, Envelope, Health, MediaRef, PlanItem

if TYPE_CHECKING:
    from gateway.app import Gateway

#: rows ``(ts, device, measurement, "name=1.0,...")`` of one accepted batch, before the spool commit
ReadingObserver = Callable[[Sequence[tuple[int, str, str, str]]], None]
HealthProvider = Callable[[], Mapping[str, Any]]
Body = TypeVar("Body", bound=BaseModel)


class Playback(Protocol):
    """What the broadcast service offers the other services."""

    @property
    def media_max_bytes(self) -> int: ...

    async def ensure_media(self, media: MediaRef) -> None:
        """Have ``media`` verified in the cache (fetch it now if needed); raises if it cannot."""

    async def play_local(self, item: PlanItem) -> None:
        """Play ``item`` as a broadcast of the gateway's own (no command id)."""

    async def queue_event(self, event: BaseModel) -> None:
        """Send ``event`` to the centre through the persistent outbox (kept on disk while offline)."""

    async def apply_device_set(self, body: DeviceSetBody) -> None:
        """Apply volume/power to speakers; raises ``CommandRefused`` for unknown or failing ones."""


class GatewayContext:
    """The gateway as a service sees it (see the module docstring)."""

    def __init__(self, gw: Gateway) -> None:
        self._gw = gw
        self.id: str = gw.id
        self.config: GatewayConfig = gw.config
        self.data_dir: Path = gw.data_dir
        self.uplink: MqttLink = gw.uplink
        self.local: MqttLink = gw.local
        #: every speaker behind this gateway by device id, whatever drives it (LAN MQTT, serial node,
        #: the Pi's own amplifier); services that own speakers add theirs while attaching
        self.speakers: dict[str, SpeakerDriver] = {}
        self.sensor_drivers: list[SensorDriver] = []
        self.reading_observers: list[ReadingObserver] = []
        self.pinned_media: set[str] = set()
        self._reading_sink: ReadingSink | None = None
        self._playback: Playback | None = None
        self._commands: set[str] = set()

    # ------------------------------------------------------------------ registration

    def add_task(self, factory: Callable[[], Awaitable[Any]], name: str | None = None) -> None:
        """Run ``factory()`` for the life of the gateway (a failure is logged and stops the gateway)."""
        self._gw.add_task(factory, name)

    def add_closer(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run ``closer()`` on a clean stop, before the links are closed."""
        self._gw.add_closer(closer)

    def register_command(self, kind: str, handler: Callable[[Envelope, Body], Awaitable[None]]) -> None:
        """Handle the signed command ``kind`` (its body is ``protocol.models.COMMAND_BODIES[kind]``, which
        the router has validated); a kind has one handler (a second one is a bug)."""
        if kind not in COMMAND_BODIES:
            raise ValueError(f"no command {kind!r} in protocol.models.COMMAND_BODIES")
        if kind in self._commands:
            raise RuntimeError(f"command {kind!r} already has a handler")
        self._commands.add(kind)
        # the router calls it with the body model of ``kind`` only
        self._gw.commands.register(kind, cast(CommandHandler, handler))

    def add_health(self, provider: HealthProvider) -> None:
        """Add fields to every retained ``health`` message."""
        self._gw.health.add_provider(provider)

    def provide_reading_sink(self, sink: ReadingSink) -> None:
        if self._reading_sink is not None:
            raise RuntimeError("a reading sink is provided already")
        self._reading_sink = sink

    def provide_playback(self, playback: Playback) -> None:
        if self._playback is not None:
            raise RuntimeError("a playback service is provided already")
        self._playback = playback

    # ------------------------------------------------------------------ use

    @property
    def reading_sink(self) -> ReadingSink | None:
        """Telemetry's sink for readings (None without the telemetry service)."""
        return self._reading_sink

    @property
    def playback(self) -> Playback | None:
        """The broadcast service (None without it)."""
        return self._playback

    def last_health(self) -> Health | None:
        return self._gw.health.last

    async def report_health(self) -> None:
        """Publish a fresh ``health`` message now."""
        await self._gw.health.report_once()

    async def publish_event(self, event: BaseModel) -> None:
        """Send a report or alarm to the centre (queued in memory while the uplink is down)."""
        await self._gw.publish_event(event)

    def request_restart(self) -> None:
        """Stop cleanly and have the service manager's loop start the gateway again."""
        self._gw.request_restart()


#: the signature every service module's ``attach`` has (``object``: what it returns is kept in
#: ``Gateway.attached`` for tests and introspection only)
ServiceAttach = Callable[[GatewayContext], object]
