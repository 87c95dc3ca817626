"""``loaxa sensors …``: tools for the technician at the cabinet: read each sensor once, find
Modbus slaves on a bus. They use the same drivers as the gateway (stop the gateway first if it
holds the serial port or the GPIO pins)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

READ_HELP = """\
Read every sensor of a gateway config once (or only the DEVICE ids given) and print the values,
or the error that stopped the read. Nothing is sent anywhere. Exit code 0 when every sensor
answered, 1 when one did not, 2 for a bad config.

Stop the gateway first (systemctl stop loaxa-gateway): a serial port or a GPIO pin can be
held by one program at a time.

Example:
  loaxa sensors read --config /etc/loaxa/gateway.yaml mucnuoc-song-cai
"""

SCAN_HELP = """\
Ask every slave address on an RS-485 bus for one register and list the addresses that answer,
to find a sensor whose address is unknown or to check the wiring. A slave that answers with a
Modbus exception is present too (it only has no such register).

Example:
  loaxa sensors scan-modbus --port /dev/ttyUSB0 --baudrate 9600 --to 20
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("sensors", help="read sensors once, find Modbus slaves (technician tools)",
                       description=__doc__)
    ssub = p.add_subparsers(title="sensor tools", metavar="ACTION")
    r = ssub.add_parser("read", help="read each sensor of a gateway config once", description=READ_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--config", type=Path, required=True, help="the gateway YAML")
    r.add_argument("devices", nargs="*", metavar="DEVICE", help="device ids (default: every sensor)")
    r.add_argument("--watch", type=float, default=0.0, metavar="SECONDS",
                   help="GPIO: count rain-gauge tips / input changes for this long before reporting")
    r.set_defaults(func=run_read)
    s = ssub.add_parser("scan-modbus", help="find the slave addresses that answer on an RS-485 bus",
                        description=SCAN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--port", required=True, help="serial device, e.g. /dev/ttyUSB0")
    s.add_argument("--baudrate", type=int, default=9600)
    s.add_argument("--parity", choices=["N", "E", "O"], default="N")
    s.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    s.add_argument("--from", dest="first", type=int, default=1, help="first address (default 1)")
    s.add_argument("--to", dest="last", type=int, default=247, help="last address (default 247)")
    s.add_argument("--address", type=int, default=0, help="register to ask for (default 0)")
    s.add_argument("--function", choices=["holding", "input"], default="holding")
    s.add_argument("--timeout", type=float, default=0.3, help="seconds to wait per address (default 0.3)")
    s.set_defaults(func=run_scan)
    p.set_defaults(func=lambda _a: (p.print_help(), 2)[1])


def _fmt(fields: dict[str, float]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in fields.items())


async def _read(args: argparse.Namespace, devices: list[Any], gateway_id: str, data_dir: Path) -> int:
    from devices.sensors.common import PollingDriver
    from devices.sensors.factory import build_sensor_drivers
    from devices.sensors.gpio import _GpioDriver

    drivers = build_sensor_drivers(devices, gateway_id=gateway_id, data_dir=data_dir)
    if not drivers:
        print("no sensor the gateway reads itself in this config (mqtt_sensor devices publish on their own)")
        return 0
    failed = 0
    for drv in drivers:
        label = f"{drv.device_id:<24} {getattr(drv, 'measurement', ''):<15}"
        if isinstance(drv, PollingDriver):
            readings = await drv.poll_once()
            await drv.close()
            if readings:
                print(f"{label} OK     {_fmt(readings[-1].fields)}")
            else:
                failed += 1
                print(f"{label} ERROR  {drv.stats()['last_error']}")
        elif isinstance(drv, _GpioDriver):
            try:
                drv._loop = asyncio.get_running_loop()
                drv._open()
            except Exception as exc:
                failed += 1
                print(f"{label} ERROR  cannot open GPIO: {exc}")
                drv._close()
                continue
            if args.watch > 0:
                await asyncio.sleep(args.watch)
            reading = drv.take_reading()  # type: ignore[attr-defined]
            drv._close()
            changes = f"  ({drv.changes} change(s) in {args.watch:g}s)" if args.watch > 0 and hasattr(
                drv, "changes") else ""
            print(f"{label} OK     {_fmt(reading.fields)}{changes}")
    return 1 if failed else 0


def _quiet() -> None:
    """The tools print each problem themselves; the drivers' log lines would only repeat them."""
    import logging
    import warnings

    logging.getLogger("devices.sensors").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="gpiozero")


def run_read(args: argparse.Namespace) -> int:
    from devices.config import load_devices
    from loaxa.yamlconf import ConfigError

    _quiet()

    try:
        cfg = load_devices(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    devices = list(cfg.devices)
    if args.devices:
        known = {d.id for d in devices}
        unknown = [d for d in args.devices if d not in known]
        if unknown:
            print(f"{args.config}: no device {', '.join(unknown)} (known: {', '.join(sorted(known))})",
                  file=sys.stderr)
            return 2
        devices = [d for d in devices if d.id in args.devices]
    return asyncio.run(_read(args, devices, cfg.gateway.id, Path(cfg.gateway.data_dir)))


async def _scan(args: argparse.Namespace) -> int:
    from devices.sensors.common import SensorError, SensorTimeout
    from devices.sensors.modbus import ModbusBus

    bus = ModbusBus(args.port, baudrate=args.baudrate, parity=args.parity, stopbits=args.stopbits, bytesize=8,
                    timeout_s=args.timeout, retries=0)
    found = 0
    try:
        for unit in range(max(1, args.first), min(247, args.last) + 1):
            try:
                words = await bus.read(unit, args.function, args.address, 1)
            except SensorTimeout:
                continue
            except SensorError as exc:
                if "exception code" not in str(exc):
                    print(f"error: {exc}", file=sys.stderr)
                    return 2
                print(f"address {unit:>3}: present ({str(exc).split(': ', 1)[-1]})")
            else:
                print(f"address {unit:>3}: present, {args.function} register {args.address} = {words[0]}")
            found += 1
    finally:
        bus.close()
    print(f"{found} slave(s) answered on {args.port} at {args.baudrate} baud, parity {args.parity}")
    return 0 if found else 1


def run_scan(args: argparse.Namespace) -> int:
    _quiet()
    return asyncio.run(_scan(args))
