"""``loaxa firmware …``: update and inspect the firmware of serial speaker and sensor nodes.

It lives with the gateway because it reads the gateway's config (which node is where) and, while the
gateway runs, asks it to do the update through its control socket (gateway/serial/control.py); the
transfer itself is firmware_bridge's, which knows nothing of the gateway."""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UPDATE_HELP = """\
Send a firmware image to one serial node, verify it there (SHA-256), switch the node to it on trial,
check its health and confirm it. If the new image does not start or reports faults, the node goes back
to its previous image by itself and this command says so (exit status 1).

Interrupted (Ctrl-C, cable pulled, power cut)? Run the same command again: the transfer resumes where
the node stopped.

  loaxa firmware update --gateway-config /etc/loaxa/gateway.yaml --device loa-cho loa-2.1.0.bin

When the gateway is running, the update goes through it (its control socket in its data folder):
it keeps polling the other nodes meanwhile. When it is not, this command opens the port itself.
Without a gateway config, give the port directly: --port /dev/ttyUSB0 --address 3 [--baud 115200].
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("firmware", help="update or inspect serial node firmware",
                       description="Firmware of the speaker and sensor microcontrollers on the gateway's serial "
                                   "ports (protocol: docs/firmware-protocol.md).")
    fsub = p.add_subparsers(title="actions", metavar="ACTION")
    p.set_defaults(func=lambda _a: (p.print_help(), 2)[1])

    up = fsub.add_parser("update", help="install a firmware image on a node (resumable, with rollback)",
                         description=UPDATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _target_args(up)
    up.add_argument("image", type=Path, metavar="IMAGE", help="the firmware image file")
    up.add_argument("--version", help="version of the image, as the node will report it (default: from the "
                    "file name, e.g. loa-2.1.0.bin → 2.1.0)")
    up.add_argument("--sha256", help="expected SHA-256 (hex) of IMAGE, from the release notes; checked first")
    up.add_argument("--window", type=int, default=None, help="chunks in flight (default: from the config, or 4)")
    up.add_argument("--chunk", type=int, default=256, help="bytes per chunk (the node may ask for fewer)")
    up.add_argument("--force", action="store_true", help="send even if the node already runs this version")
    up.set_defaults(func=cmd_update)

    info = fsub.add_parser("info", help="show a node's firmware, boot state, status and the link statistics",
                           description="Ask one node who it is (HELLO) and how it is (STATUS).")
    _target_args(info)
    info.set_defaults(func=cmd_info)


def _target_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("which node")
    g.add_argument("--gateway-config", type=Path, metavar="PATH", help="gateway YAML with the serial_node device")
    g.add_argument("--device", metavar="DEV", help="device id of the serial_node in that config")
    g.add_argument("--port", help="serial port path (instead of --gateway-config/--device)")
    g.add_argument("--address", type=int, default=1, help="node bus address with --port (default 1)")
    g.add_argument("--baud", type=int, default=115200, help="baud rate with --port (default 115200)")
    g.add_argument("--duplex", choices=("full", "half"), default="full",
                   help="with --port: half for a two-wire RS-485 bus (one request at a time; default full)")
    g.add_argument("--direct", action="store_true",
                   help="open the port ourselves even if the gateway is running (it must be stopped)")


@dataclass
class Target:
    port: str
    baud: int
    address: int
    window: int
    duplex: str
    socket: Path | None = None  # the running gateway's control socket, when it has one

    def where(self) -> str:
        return f"node {self.address} on {self.port}"


def _resolve(args: argparse.Namespace) -> Target:
    """Which node, from the arguments; raises SystemExit with a clear message."""
    if args.gateway_config:
        from devices.serial_node.config import SerialNodeConfig
        from gateway.config import load_gateway_config
        from gateway.serial.control import SOCKET_NAME
        from loaxa.yamlconf import ConfigError

        if not args.device:
            raise SystemExit("error: --gateway-config needs --device DEV")
        try:
            cfg = load_gateway_config(args.gateway_config)
        except ConfigError as exc:
            raise SystemExit(f"error: {exc}") from None
        except OSError as exc:
            raise SystemExit(f"error: cannot read {args.gateway_config}: {exc.strerror}") from None
        nodes = {d.id: d for d in cfg.devices if isinstance(d, SerialNodeConfig)}
        node = nodes.get(args.device)
        if node is None:
            known = ", ".join(sorted(nodes)) or "none"
            raise SystemExit(f"error: {args.gateway_config} has no serial_node device {args.device!r} "
                             f"(serial nodes there: {known})")
        sock = Path(cfg.gateway.data_dir) / SOCKET_NAME
        use_socket = sock.is_socket() and not args.direct
        return Target(node.port, node.baud, node.address, node.window, node.duplex, sock if use_socket else None)
    if not args.port:
        raise SystemExit("error: say which node: --gateway-config PATH --device DEV, or --port PATH [--address N]")
    if not 1 <= args.address <= 247:
        raise SystemExit(f"error: --address {args.address} is out of 1..247")
    return Target(args.port, args.baud, args.address, 4, args.duplex)


class ProgressBar:
    def __init__(self, stream: Any = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.t0 = time.monotonic()
        self.start_done: int | None = None
        self.last_pct = -1
        self.phase = ""

    def __call__(self, done: int, total: int, phase: str) -> None:
        if phase != self.phase:
            if self.tty and self.phase == "transfer":
                self.stream.write("\n")
            self.phase = phase
            if phase != "transfer":
                self.stream.write({"verify": "verifying the image on the node (SHA-256)…\n",
                                   "commit": "switching the node to the new image (trial boot)…\n",
                                   "reboot": "waiting for the node to restart…\n",
                                   "health": "checking the new image's health…\n"}.get(phase, f"{phase}\n"))
                self.stream.flush()
                return
        if phase != "transfer" or total <= 0:
            return
        if self.start_done is None:
            self.start_done = done
            self.t0 = time.monotonic()
            if done:
                self.stream.write(f"resuming at {done} of {total} bytes (the node kept the first part)\n")
        pct = int(100 * done / total)
        rate = (done - self.start_done) / max(time.monotonic() - self.t0, 1e-6) / 1024
        if self.tty:
            bar = "#" * (pct * 30 // 100) + "." * (30 - pct * 30 // 100)
            self.stream.write(f"\r[{bar}] {pct:3d}%  {done}/{total} bytes  {rate:6.2f} KiB/s")
        elif pct // 10 != self.last_pct // 10:
            self.stream.write(f"{pct:3d}%  {done}/{total} bytes  {rate:.2f} KiB/s\n")
        self.last_pct = pct
        self.stream.flush()


VERSION_IN_NAME = re.compile(r"(\d+\.\d+(?:\.\d+)?(?:[-+][0-9A-Za-z.]+)?)\.(?:bin|img|hex|fw)$")


def version_from_name(path: Path) -> str | None:
    """``loa-speaker-2.1.0.bin`` → ``2.1.0``; None when the name carries no version."""
    m = VERSION_IN_NAME.search(path.name)
    return m.group(1) if m else None


def cmd_update(args: argparse.Namespace) -> int:
    import asyncio

    from firmware_bridge.errors import BridgeError
    from firmware_bridge.fwupdate import FirmwareError, FirmwareUpdater, UpdateResult

    version = args.version or version_from_name(args.image)
    if not version:
        print(f"error: cannot tell the version from the name {args.image.name!r}; give --version", file=sys.stderr)
        return 2
    if len(version.encode()) > 32:
        print(f"error: version {version!r} is longer than 32 bytes", file=sys.stderr)
        return 2
    t = _resolve(args)
    try:
        image = args.image.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.image}: {exc.strerror}", file=sys.stderr)
        return 2

    async def direct() -> UpdateResult:
        from firmware_bridge.client import NodeClient
        from firmware_bridge.link import BusMaster

        bus = BusMaster(t.port, t.baud, duplex=t.duplex)
        await bus.open()
        run = asyncio.create_task(bus.run())
        try:
            up = FirmwareUpdater(NodeClient(bus, t.address), window=args.window or t.window, chunk_size=args.chunk,
                                 progress=ProgressBar())
            return await up.update(image, version, expected_sha256=args.sha256, force=args.force)
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)

    async def via_gateway(sock: Path) -> UpdateResult:
        from gateway.serial.control import ControlRequest, request

        print(f"the gateway is running: it does the update on its own bus ({sock})", file=sys.stderr)
        req = ControlRequest(op="update", device=args.device, version=version, size=len(image),
                             sha256=args.sha256, force=args.force)
        return UpdateResult(**await request(sock, req, image, ProgressBar()))

    try:
        r = asyncio.run(via_gateway(t.socket) if t.socket else direct())
    except (FirmwareError, BridgeError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 3
    if r.outcome == "already_running":
        print(f"{t.where()} already runs {r.version}; nothing sent (use --force to resend)")
        return 0
    rate = (r.size - r.resumed_from) / r.transfer_s / 1024 if r.transfer_s else 0.0
    if r.outcome == "confirmed":
        print(f"{t.where()}: {r.old_version} → {r.version}, confirmed "
              f"({r.size} bytes, {rate:.1f} KiB/s, {r.elapsed_s:.1f} s in all)")
        return 0
    print(f"{t.where()}: the new image {version} was ROLLED BACK ({r.detail}); it runs {r.version} again",
          file=sys.stderr)
    return 1


def cmd_info(args: argparse.Namespace) -> int:
    import asyncio

    from firmware_bridge.errors import BridgeError
    from firmware_bridge.messages import BootState, Cap, Hello, Source, Status
    from gateway.serial.driver import enum_name, fault_names

    t = _resolve(args)

    async def direct() -> tuple[Hello, Status]:
        from firmware_bridge.client import NodeClient
        from firmware_bridge.link import BusMaster

        bus = BusMaster(t.port, t.baud, duplex=t.duplex)
        try:
            await bus.open()
            node = NodeClient(bus, t.address)
            return await node.hello(), await node.status()
        finally:
            bus.close()

    async def via_gateway(sock: Path) -> tuple[Hello, Status]:
        from gateway.serial.control import ControlRequest, request

        res = await request(sock, ControlRequest(op="info", device=args.device), b"", lambda *_: None)
        return Hello(**res["hello"]), Status(**res["status"])

    try:
        h, s = asyncio.run(via_gateway(t.socket) if t.socket else direct())
    except BridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    caps = ", ".join(c.name.lower() for c in Cap if c & h.capabilities and c.name)
    print(f"{t.where()} ({t.baud} baud){' (asked through the running gateway)' if t.socket else ''}")
    print(f"  device id      {h.device_id}")
    print(f"  firmware       {h.fw_version} (slot {'AB'[h.active_slot & 1]}, {enum_name(BootState, h.boot_state)})")
    print(f"  hardware       {h.hw_revision}")
    print(f"  capabilities   {caps}")
    print(f"  amplifier      {'on' if s.power else 'off'}, volume {s.volume}, source {enum_name(Source, s.source)}")
    print(f"  temperature    {s.temperature_c:.1f} °C, supply {s.supply_v:.2f} V, up {s.uptime_s} s")
    print(f"  faults         {', '.join(fault_names(s.faults)) or 'none'}")
    return 0
