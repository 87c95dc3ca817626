"""``loaxa sim …``: simulators of speakers, sensors and serial nodes, for the demo, tests and benchmarks."""

from __future__ import annotations

import argparse

from loaxa.plugins import optional_modules

#: Modules that add a simulator: each has ``register_sim(simsub) -> None``.
SIM_MODULES: tuple[str, ...] = (
    "devices.sim.speakers_cli",
    "devices.sim.sensors_cli",
    "devices.sim.water_level_cli",
    "firmware_bridge.sim_cli",
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "sim",
        help="run simulated speakers, sensors or serial nodes",
        description="Simulated devices that speak the real protocols (MQTT device topics, serial frames).",
    )
    simsub = p.add_subparsers(title="simulators", metavar="KIND")
    for _name, module in optional_modules(SIM_MODULES):
        module.register_sim(simsub)
    p.set_defaults(func=lambda _a: (p.print_help(), 2)[1])
