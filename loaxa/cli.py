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

#: The top-level command words each module of :data:`COMMAND_MODULES` registers. ``loaxa WORD ...``
#: imports only that module, so a long-running process (a gateway on a Pi) does not carry every other
#: subcommand's imports in its memory; ``loaxa --help`` and an unknown word still load them all.
#: tests/test_cli_lazy.py checks this table against what the modules register.
COMMAND_INDEX: dict[str, str] = {
    "config": "loaxa.config_cmd",
    "keys": "loaxa.keys_cmd",
    "tls": "loaxa.tls_cmd",
    "doctor": "loaxa.doctor",
    "broker": "loaxa.broker_cmd",
    "commune": "loaxa.provision_cmd",
    "device": "loaxa.provision_cmd",
    "backup": "loaxa.backup_cmd",
    "gateway": "gateway.cli",
    "scheduler": "scheduler.cli",
    "broadcast": "scheduler.cli",
    "users": "scheduler.access.cli",
    "tokens": "scheduler.access.cli",
    "audit": "scheduler.access.cli",
    "db": "scheduler.store.cli",
    "schedule": "scheduler.schedules.cli",
    "groups": "scheduler.areas.cli",
    "programme": "scheduler.schedules.cli",
    "report": "scheduler.schedules.cli",
    "tts": "scheduler.media.cli",
    "devices": "scheduler.fleet.cli",
    "alarms": "scheduler.fleet.cli",
    "warnings": "scheduler.warnings.cli",
    "sim": "devices.cli",
    "sensors": "devices.sensors.cli",
    "firmware": "gateway.serial.firmware_cli",
    "demo": "loaxa.demo",
}

DESCRIPTION = """\
Loa Xã runs a commune public-address and sensor network: a central scheduler sends signed
broadcast plans over MQTT to a Raspberry Pi gateway in each commune; the gateway plays them on its
speakers on time (even with the uplink down) and spools sensor readings into InfluxDB.

Start with:  loaxa demo            (everything on this machine, Ctrl-C to stop)
             loaxa config check configs/gateway.example.yaml
"""


def command_word(argv: Sequence[str]) -> str | None:
    """The command word of ``argv`` (the first argument that is not an option of ``loaxa`` itself)."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``loaxa`` parser. With ``argv`` naming a known command, only the module of that command is
    imported (the others are not needed to run it); otherwise every command module."""
    word = command_word(argv) if argv is not None else None
    modules = (COMMAND_INDEX[word],) if word in COMMAND_INDEX else COMMAND_MODULES
    parser = argparse.ArgumentParser(
        prog="loaxa", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"loaxa {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for _name, module in optional_modules(modules):
        module.register(sub)
    return parser


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
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
