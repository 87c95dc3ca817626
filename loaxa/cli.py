"""The ``loaxa`` command. Each component adds its own subcommands through a ``register`` function."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from loaxa import __version__
from loaxa.plugins import optional_modules

#: Modules that contribute subcommands: each has ``register(subparsers) -> None`` and sets
#: ``func`` (a callable taking the parsed args and returning an exit code) on its parsers.
#: Heavy imports belong inside the handlers so that ``loaxa --help`` stays fast.
COMMAND_MODULES: tuple[str, ...] = (
    "loaxa.config_cmd",
    "loaxa.keys_cmd",
    "loaxa.tls_cmd",
    "loaxa.doctor",
    "loaxa.broker_cmd",
    "loaxa.provision_cmd",
    "loaxa.backup_cmd",
    "gateway.cli",
    "scheduler.cli",
    "scheduler.access.cli",
    "scheduler.store.cli",
    "scheduler.schedules.cli",
    "scheduler.areas.cli",
    "scheduler.media.cli",
    "scheduler.fleet.cli",
    "scheduler.warnings.cli",
    "devices.cli",
    "devices.sensors.cli",
    "gateway.serial.firmware_cli",
    "loaxa.demo",
)

DESCRIPTION = """\
Loa Xã runs a commune public-address and sensor network: a central scheduler sends signed
broadcast plans over MQTT to a Raspberry Pi gateway in each commune; the gateway plays them on its
speakers on time (even with the uplink down) and spools sensor readings into InfluxDB.

Start with:  loaxa demo            (everything on this machine, Ctrl-C to stop)
             loaxa config check configs/gateway.example.yaml
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loaxa", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"loaxa {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for _name, module in optional_modules(COMMAND_MODULES):
        module.register(sub)
    return parser


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
