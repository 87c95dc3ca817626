"""The gateway process: two MQTT links, the command router, health, and the services that plug in.

Services (telemetry, broadcast, serial nodes) live in their own packages and plug in through
``attach(ctx)``, where ``ctx`` is a :class:`gateway.context.GatewayContext`: all a service may use of
the gateway. This module only wires the links and runs everything until stopped.
Online state follows Sparkplug's birth/death idea: a retained ``status`` ``online`` on every connect,
``offline`` as the MQTT will (crash, power cut, lost link) and on a clean stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
from pydantic import BaseModel

from gateway.commands import CommandRouter, make_ack_sender
from gateway.config import GatewayConfig
from gateway.context import GatewayContext, ServiceAttach
from gateway.health import HealthReporter
from loaxa import __version__, sdnotify
from loaxa.mqttlink import MqttLink
from loaxa.plugins import optional_modules
from protocol.models import Health, Status
from protocol.signing import now_ms
from protocol.topics import cmd_topic, event_topic, health_topic, status_topic

log = logging.getLogger(__name__)

#: Packages that add a service; each module has ``attach(ctx: GatewayContext)``. Missing ones are
#: skipped. The order does not matter: what one service offers another goes through a typed slot of
#: the context, filled while attaching and read only when used (tests attach them in reverse).
SERVICE_MODULES: tuple[str, ...] = (
    "gateway.telemetry.service",
    "gateway.serial.service",
    "devices.sensors.service",
    "gateway.broadcast.service",
    "gateway.fleet",
    "gateway.warnings.service",
)

if TYPE_CHECKING:  # mypy checks each service's attach against the context it is given
    import devices.sensors.service
    import gateway.broadcast.service
    import gateway.fleet
    import gateway.serial.service
    import gateway.telemetry.service
    import gateway.warnings.service

    _TYPED_ATTACH: tuple[ServiceAttach, ...] = (
        gateway.telemetry.service.attach,
        gateway.serial.service.attach,
        devices.sensors.service.attach,
        gateway.broadcast.service.attach,
        gateway.fleet.attach,
        gateway.warnings.service.attach,
    )


class Gateway:
    def __init__(self, config: GatewayConfig, *, version: str = __version__) -> None:
        self.config = config
        self.id = config.gateway.id
        self.version = version
        self.data_dir = Path(config.gateway.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        offline = Status(state="offline", ts=now_ms(), version=version).model_dump_json(exclude_none=True)
        self.uplink = MqttLink(
            config.uplink, client_id=f"loaxa-gw-{self.id}", name="uplink",
            will=aiomqtt.Will(status_topic(self.id), offline, qos=1, retain=True),
        )
        self.local = MqttLink(config.local_broker, client_id=f"loaxa-gw-{self.id}-lan", name="lan")
        self.commands = CommandRouter(
            self.id, {k.id: k.public_key for k in config.trust.keys}, self.data_dir / "commands.db",
            make_ack_sender(self.uplink.publish, self.id), skew_s=config.trust.clock_skew_s,
            timeout_s=config.trust.command_timeout_s,
        )
        self.health = HealthReporter(config.health.interval_s, self._publish_health, version)
        self.health.add_provider(self._link_metrics)
        self.uplink.subscribe(cmd_topic(self.id), self.commands.on_message)
        self.uplink.on_connect(self._birth)
        self._tasks: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self.services: list[str] = []
        #: set by ``request_restart`` (the centre's ``gateway.restart``): run_gateway starts it again
        self.restart_requested = False
        self._stop: asyncio.Event | None = None
        #: what each service's ``attach`` returned, by short name ("broadcast", "telemetry", ...)
        self.attached: dict[str, object] = {}
        #: all the services see of this gateway
        self.context = GatewayContext(self)

    # ------------------------------------------------------------------ for services

    def add_task(self, factory: Callable[[], Awaitable[Any]], name: str | None = None) -> None:
        """Run ``factory()`` for the life of the gateway (a failure is logged and stops the gateway)."""
        self._tasks.append((name or str(getattr(factory, "__qualname__", "task")), factory))

    def add_closer(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run ``closer()`` on a clean stop, before the links are closed."""
        self._closers.append(closer)

    def request_restart(self) -> None:
        """Stop cleanly (offline status, closers) and have ``run_gateway`` start the service again."""
        self.restart_requested = True
        if self._stop is not None:
            self._stop.set()

    async def publish_event(self, event: BaseModel) -> None:
        """Send a playback report or alarm to the centre (queued while the uplink is down)."""
        await self.uplink.publish(event_topic(self.id), event, qos=1)

    # ------------------------------------------------------------------ internals

    async def _birth(self) -> None:
        status = Status(state="online", ts=now_ms(), version=self.version, commune=self.config.gateway.commune)
        await self.uplink.publish(status_topic(self.id), status, qos=1, retain=True)
        await self.health.report_once()

    async def _publish_health(self, health: Health) -> None:
        # health is only worth sending fresh: while the uplink is down it is not queued
        if self.uplink.connected.is_set():
            await self.uplink.publish(health_topic(self.id), health, qos=1, retain=True)

    def _link_metrics(self) -> dict[str, Any]:
        return {
            "uplink_connected": self.uplink.connected.is_set(),
            "uplink_queued": self.uplink.queued,
            "uplink_reconnects": self.uplink.reconnects,
            "lan_connected": self.local.connected.is_set(),
            **self.commands.stats(),
        }

    def attach_services(self) -> None:
        for name, module in optional_modules(SERVICE_MODULES):
            parts = name.split(".")
            short = parts[-2] if parts[-1] == "service" else parts[-1]
            attach: ServiceAttach = module.attach
            self.attached[short] = attach(self.context)
            self.services.append(short)

    async def _watchdog(self) -> None:
        interval = sdnotify.watchdog_interval_s()
        if interval is None:
            return
        while True:  # proves to systemd that the event loop is alive
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _ready(self) -> None:
        """Tell systemd the gateway has started once it can work in its commune: its LAN link (or its
        uplink) is up. Never wait for the WAN alone: the unit is ``Type=notify``, and a gateway that
        boots with the WAN cut and never says READY=1 would be killed after TimeoutStartSec and
        started again, every 90 s, for as long as the cut lasts, cutting off what it is playing."""
        waits = [asyncio.create_task(self.local.connected.wait()), asyncio.create_task(self.uplink.connected.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if not self.uplink.connected.is_set():
            sdnotify.notify(f"READY=1\nSTATUS=gateway {self.id} running without the centre (uplink down)")
            log.info("gateway %s running on its LAN without the centre (services: %s)", self.id,
                     ", ".join(self.services) or "none")
            await self.uplink.connected.wait()
        sdnotify.notify(f"READY=1\nSTATUS=gateway {self.id} online")
        log.info("gateway %s online (services: %s)", self.id, ", ".join(self.services) or "none")

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or forever), then publish ``offline`` and close."""
        stop = stop or asyncio.Event()
        self._stop = stop
        self.attach_services()
        tasks = [
            asyncio.create_task(self.uplink.run(), name="uplink"),
            asyncio.create_task(self.local.run(), name="lan"),
            asyncio.create_task(self.health.run(), name="health"),
            asyncio.create_task(self.commands.run(), name="commands"),
        ]
        tasks += [asyncio.create_task(_logged(name, f), name=name) for name, f in self._tasks]
        helpers = [asyncio.create_task(self._watchdog(), name="watchdog"),
                   asyncio.create_task(self._ready(), name="ready")]
        stopper = asyncio.create_task(stop.wait())
        try:
            # a long-running task that ends (it failed: already logged) stops the gateway, so that
            # systemd restarts it whole rather than leaving a half-working gateway behind
            await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            sdnotify.notify("STOPPING=1")
            began = time.monotonic()
            log.info("gateway %s stopping", self.id)
            await _stop_step("commands", self.commands.aclose(), 5)
            for closer in self._closers:
                await _stop_step(getattr(closer, "__qualname__", "closer"), closer(), 10)
            offline = Status(state="offline", ts=now_ms(), version=self.version)
            await _stop_step("offline status", self.uplink.disconnect_gracefully(
                [(status_topic(self.id), offline, True)]), 5)
            for t in [*tasks, *helpers, stopper]:
                t.cancel()
            await _stop_step("tasks", asyncio.gather(*tasks, *helpers, stopper, return_exceptions=True), 10)
            self.commands.close()
            log.info("gateway %s stopped in %.1f s", self.id, time.monotonic() - began)


async def _stop_step(name: str, aw: Awaitable[Any], within: float) -> None:
    """One step of a clean stop, bounded; a slow step is logged so that a slow stop can be traced."""
    began = time.monotonic()
    try:
        await asyncio.wait_for(aw, within)
    except TimeoutError:
        log.warning("stopping: %s did not finish within %.0f s; going on", name, within)
    except Exception as exc:  # a failing closer must not keep the others from running
        log.warning("stopping: %s failed: %s", name, exc)
    else:
        took = time.monotonic() - began
        if took > 1.0:
            log.warning("stopping: %s took %.1f s", name, took)


async def _logged(name: str, factory: Callable[[], Awaitable[Any]]) -> None:
    try:
        await factory()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("gateway service %s failed", name)
        raise


def run_gateway(config: GatewayConfig) -> int:
    """Run a gateway in this process until SIGINT/SIGTERM."""

    async def main() -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        gw = Gateway(config)
        await gw.run(stop)
        return gw.restart_requested

    if asyncio.run(main()):
        # the centre asked for a restart: the same program again, in this process (same PID, so
        # systemd's Type=notify and watchdog carry on; outside systemd it restarts all the same)
        log.warning("restarting the gateway service")
        logging.shutdown()
        os.execv(sys.executable, sys.orig_argv)
    return 0
