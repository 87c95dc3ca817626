"""Plugs serial nodes into the gateway: ``attach(ctx)``.

One :class:`~firmware_bridge.link.BusMaster` per serial port (kept open, reopened when the adapter
comes back), one :class:`SerialNodeDriver` per ``serial_node`` device. Readings go into the gateway's
reading sink (``ctx.reading_sink``, provided by the telemetry service: the same spool and InfluxDB
path as every other sensor); device state is published retained on ``loaxa/v1/{gw}/dev/{dev}/state``; node
events and offline/online changes become alarms on ``loaxa/v1/{gw}/event``. Speaker nodes join the
gateway's speaker registry (``ctx.speakers``), so broadcasts play on them and ``device.set`` reaches
them through the broadcast service like any other speaker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from devices.serial_node.config import SerialNodeConfig, bus_problems
from firmware_bridge.link import BusMaster
from gateway.context import GatewayContext
from gateway.serial.control import SOCKET_NAME, ControlRequest, ControlServer
from gateway.serial.driver import SerialNodeDriver
from protocol.models import AlarmEvent, DeviceState
from protocol.topics import device_topic

log = logging.getLogger(__name__)


class SerialService:
    def __init__(self, ctx: GatewayContext, nodes: list[SerialNodeConfig]) -> None:
        problems = bus_problems(nodes)
        if problems:
            raise ValueError("; ".join(problems))
        self.ctx = ctx
        self.buses: dict[str, BusMaster] = {}
        self.drivers: dict[str, SerialNodeDriver] = {}
        for n in nodes:
            bus = self.buses.get(n.port)
            if bus is None:
                bus = self.buses[n.port] = BusMaster(n.port, n.baud, timeout_s=n.timeout_s, retries=n.retries,
                                                     duplex=n.duplex)
            self.drivers[n.id] = SerialNodeDriver(n, bus, on_state=self._publish_state, on_alarm=self._alarm)

    async def _publish_state(self, device_id: str, state: DeviceState) -> None:
        await self.ctx.uplink.publish(device_topic(self.ctx.id, device_id, "state"), state, qos=1, retain=True)

    async def _alarm(self, alarm: AlarmEvent) -> None:
        await self.ctx.publish_event(alarm)

    def health(self) -> Mapping[str, Any]:
        out: dict[str, Any] = {
            "serial_nodes_online": sum(1 for d in self.drivers.values() if d.online),
            "serial_nodes_total": len(self.drivers),
        }
        for port, bus in self.buses.items():
            s = bus.link_stats()
            out.setdefault("serial_links", {})[port] = {k: s[k] for k in (
                "requests", "retries", "timeouts", "failures", "rx_crc_errors", "rx_resyncs", "duplicates",
                "port_losses")}
        return out

    async def control(self, req: ControlRequest, image: bytes,
                      emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Requests from ``loaxa firmware …`` on the control socket."""
        drv = self.drivers.get(req.device)
        if drv is None:
            raise KeyError(f"no serial_node device {req.device!r} on this gateway "
                           f"(serial nodes: {', '.join(sorted(self.drivers)) or 'none'})")
        if req.op == "info":
            if drv.hello is None or drv.status is None:
                raise ValueError(f"{req.device} has not answered yet (online: {drv.online})")
            return {"hello": asdict(drv.hello), "status": asdict(drv.status), "online": drv.online,
                    "port": drv.cfg.port, "address": drv.cfg.address, "baud": drv.cfg.baud}
        if not req.version:
            raise ValueError("an update needs a version")
        loop = asyncio.get_running_loop()
        last = [0.0]

        def progress(done: int, total: int, phase: str) -> None:
            now = loop.time()
            if phase != "transfer" or done >= total or now - last[0] > 0.2:
                last[0] = now
                emit({"progress": [done, total, phase]})

        log.info("firmware update of %s to %s (%d bytes) requested locally", req.device, req.version, len(image))
        result = await drv.update_firmware(image, req.version, expected_sha256=req.sha256, force=req.force,
                                           progress=progress)
        return asdict(result)

    async def run(self) -> None:
        control = ControlServer(Path(self.ctx.data_dir) / SOCKET_NAME, self.control)
        try:
            await control.start()
        except OSError as exc:
            log.warning("no serial control socket (%s): loaxa firmware update needs the gateway stopped", exc)
        try:
            await self._run()
        finally:
            await control.close()

    async def _run(self) -> None:
        sink = self.ctx.reading_sink
        if sink is None:
            log.warning("no telemetry service: serial node readings are not stored (state and alarms still are)")
        tasks = [asyncio.create_task(b.run(), name=f"serial-bus {p}") for p, b in self.buses.items()]
        tasks += [asyncio.create_task(d.run(sink), name=f"serial-node {d.device_id}") for d in self.drivers.values()]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for d in self.drivers.values():
                await d.close()


def attach(ctx: GatewayContext) -> SerialService | None:
    nodes = [d for d in ctx.config.devices if isinstance(d, SerialNodeConfig)]
    if not nodes:
        return None
    svc = SerialService(ctx, nodes)
    # speakers join the gateway's registry: the broadcast service plays on them and applies device.set
    ctx.speakers.update({d: drv for d, drv in svc.drivers.items() if drv.cfg.role != "sensor"})
    ctx.add_health(svc.health)
    ctx.add_task(svc.run, name="serial")
    return svc
