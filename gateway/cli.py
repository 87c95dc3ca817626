"""``loaxa gateway …``: run a commune gateway and look after its data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loaxa.plugins import optional_modules

RUN_HELP = """\
Run the commune gateway: connect to the central broker (uplink) and the commune broker (LAN),
publish a retained 'online' status (the MQTT will says 'offline' if the gateway dies), obey signed
commands from the centre, play broadcasts on the speakers, spool sensor readings to InfluxDB and
report health. Stops cleanly on Ctrl-C or SIGTERM. Under systemd it uses Type=notify and the watchdog.
"""

#: Modules that add more ``loaxa gateway`` actions with ``register_gateway(gsub)``.
EXTRA_MODULES: tuple[str, ...] = ("gateway.telemetry.export_cli", "loaxa.gateway_install")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("gateway", help="run a commune gateway", description="The commune gateway (Raspberry Pi).")
    gsub = p.add_subparsers(title="gateway commands", metavar="ACTION")
    r = gsub.add_parser("run", help="run the gateway", description=RUN_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--config", "-c", type=Path, required=True, help="gateway YAML (see configs/gateway.example.yaml)")
    r.set_defaults(func=run)
    for _name, module in optional_modules(EXTRA_MODULES):
        module.register_gateway(gsub)
    p.set_defaults(func=lambda _a: (p.print_help(), 2)[1])


def run(args: argparse.Namespace) -> int:
    from gateway.app import run_gateway
    from gateway.config import load_gateway_config
    from loaxa.yamlconf import ConfigError

    try:
        config = load_gateway_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return run_gateway(config)
