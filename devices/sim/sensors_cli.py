"""``loaxa sim sensors``: simulated LAN sensors that publish telemetry to a commune broker.

Each simulated device publishes on ``loaxa/v1/{gw}/dev/{dev}/telemetry`` exactly what a real
networked sensor would: ``{"ts":…,"fields":{…}}`` one reading at a time, or with ``--batch K``
``{"readings":[…]}`` of K readings (as a sensor that buffers while its Wi-Fi is down). The values
come from devices.sensors.sim (flood waves, rain bursts, daily cycles, outages).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devices.sensors.sim import KINDS, SimTime, default_seed, make_model
from protocol.ids import is_valid_id
from protocol.models import Reading, Telemetry
from protocol.topics import device_topic

log = logging.getLogger(__name__)

DESCRIPTION = """\
Simulate networked sensors on a commune LAN: each one publishes telemetry to the broker the
gateway listens to (topic loaxa/v1/GW/dev/DEV/telemetry), in the contract's JSON form.

Device ids are PREFIX-KIND-NNN (e.g. sim-water-level-001); kinds rotate over --kinds. Values are
realistic and reproducible with --seed. The gateway must know these devices: --print-config
prints their 'devices:' entries (type mqtt_sensor, measurement = kind) for the gateway YAML.

Examples:
  loaxa sim sensors --broker mqtt://127.0.0.1:1883 --gateway xa-an-binh --count 5 --interval 10
  loaxa sim sensors --broker mqtt://127.0.0.1:1883 --gateway xa-an-binh --count 200 --interval 1 \\
      --batch 10 --messages 50 --seed 7            (a load test that stops by itself)
"""


@dataclass
class SimDevice:
    id: str
    kind: str
    model: Any
    pending: list[Reading] = field(default_factory=list)
    published: int = 0


@dataclass
class PublishStats:
    messages: int = 0
    readings: int = 0
    errors: int = 0
    started: float = field(default_factory=time.monotonic)

    def summary(self, devices: int) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        return {"devices": devices, "messages": self.messages, "readings": self.readings, "errors": self.errors,
                "elapsed_s": round(elapsed, 2), "readings_per_s": round(self.readings / elapsed, 1) if elapsed else 0}


def make_devices(gateway: str, count: int, kinds: Sequence[str], prefix: str, seed: int | None) -> list[SimDevice]:
    devices = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        dev_id = f"{prefix}-{kind.replace('_', '-')}-{i + 1:03d}"
        if not is_valid_id(dev_id):
            raise ValueError(f"device id {dev_id!r} is not valid: use a prefix of [a-z0-9-]")
        dev_seed = default_seed(gateway, dev_id) if seed is None else seed * 100_003 + i
        devices.append(SimDevice(dev_id, kind, make_model(kind, dev_seed)))
    return devices


def telemetry_payload(readings: Sequence[Reading]) -> bytes:
    """The contract's single form for one reading, the batch form for several."""
    if len(readings) == 1:
        msg = Telemetry(ts=readings[0].ts, fields=readings[0].fields)
    else:
        msg = Telemetry(readings=list(readings))
    return msg.model_dump_json(exclude_none=True).encode()


def devices_yaml(devices: Sequence[SimDevice]) -> str:
    """The gateway YAML ``devices:`` entries for these simulated LAN sensors."""
    lines = ["devices:"]
    for d in devices:
        lines += [f"  - id: {d.id}", "    type: mqtt_sensor", f"    measurement: {d.kind}"]
    return "\n".join(lines) + "\n"


async def publish_sim_sensors(
    client: Any, gateway: str, devices: list[SimDevice], *, interval_s: float, batch: int = 1,
    speed: float = 1.0, messages: int | None = None, duration_s: float | None = None, qos: int = 1,
    stats: PublishStats | None = None, concurrency: int = 100,
) -> PublishStats:
    """Sample every device each ``interval_s`` and publish through ``client`` (an aiomqtt.Client).

    Stops after ``messages`` messages per device, after ``duration_s``, or when cancelled.
    """
    stats = stats or PublishStats()
    clock = SimTime(speed)
    loop = asyncio.get_running_loop()
    start = loop.time()
    gate = asyncio.Semaphore(concurrency)
    tick = 0

    async def send(dev: SimDevice, readings: list[Reading]) -> None:
        async with gate:
            try:
                await client.publish(device_topic(gateway, dev.id, "telemetry"), telemetry_payload(readings), qos=qos)
            except Exception as exc:
                stats.errors += 1
                log.warning("publish for %s failed: %s", dev.id, exc)
                raise
            dev.published += 1
            stats.messages += 1
            stats.readings += len(readings)

    def done() -> bool:
        if messages is not None and all(d.published >= messages for d in devices):
            return True
        return duration_s is not None and loop.time() - start >= duration_s

    while not done():
        ts = time.time_ns() // 1_000_000
        sim_t = clock.at(ts / 1000.0)
        sends = []
        for dev in devices:
            if messages is not None and dev.published >= messages:
                continue
            dev.pending.append(Reading(ts=ts, fields=dev.model.sample(sim_t)))
            if len(dev.pending) >= batch:
                readings, dev.pending = dev.pending, []
                sends.append(send(dev, readings))
        if sends:
            await asyncio.gather(*sends)
        tick += 1
        if done():
            break
        await asyncio.sleep(max(0.0, start + tick * interval_s - loop.time()))
    return stats


class DeviceClients:
    """One MQTT connection per simulated sensor, each with its own account (user name = device id),
    as on a production LAN broker; ``publish`` picks the connection of the device in the topic."""

    def __init__(self, endpoint: Any, ids: list[str], credentials: dict[str, str]) -> None:
        import aiomqtt

        from devices.sim.credentials import device_endpoint

        self.clients: dict[str, Any] = {}
        for dev in ids:
            kw = device_endpoint(endpoint, dev, credentials).client_kwargs()
            kw["identifier"] = dev
            self.clients[dev] = aiomqtt.Client(**kw)
        self._stack = contextlib.AsyncExitStack()

    @property
    def pending_calls_threshold(self) -> int:
        return 0

    @pending_calls_threshold.setter
    def pending_calls_threshold(self, value: int) -> None:
        for c in self.clients.values():
            c.pending_calls_threshold = value

    async def __aenter__(self) -> DeviceClients:
        await self._stack.__aenter__()
        try:
            for c in self.clients.values():
                await self._stack.enter_async_context(c)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._stack.__aexit__(*exc)

    async def publish(self, topic: str, payload: Any, qos: int = 0) -> None:
        await self.clients[topic.split("/")[4]].publish(topic, payload, qos=qos)


async def _main(args: argparse.Namespace) -> int:
    import aiomqtt

    from loaxa.mqttconf import MqttEndpoint
    from loaxa.yamlconf import Secret

    password = os.environ.get("LOAXA_SIM_MQTT_PASSWORD")
    endpoint = MqttEndpoint(url=args.broker, username=args.username,
                            password=Secret(value=password) if password else None)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    devices = make_devices(args.gateway, args.count, kinds, args.prefix, args.seed)
    if args.print_config:
        print(devices_yaml(devices), end="")
        return 0
    stats = PublishStats()
    print(f"simulating {len(devices)} sensor(s) for gateway {args.gateway} on {args.broker}: "
          + ", ".join(d.id for d in devices[:5]) + (" …" if len(devices) > 5 else ""), flush=True)
    credentials = None
    if args.credentials:
        from devices.sim.credentials import load_credentials

        try:
            credentials = load_credentials(args.credentials, [d.id for d in devices])
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    delay = 0.5
    while True:
        try:
            kw = endpoint.client_kwargs()
            kw["identifier"] = f"loaxa-sim-sensors-{args.gateway}-{os.getpid()}"
            connect: Any = (DeviceClients(endpoint, [d.id for d in devices], credentials) if credentials
                            else aiomqtt.Client(**kw))
            async with connect as client:
                client.pending_calls_threshold = 1000  # many sensors publish at once, by design
                delay = 0.5
                await publish_sim_sensors(
                    client, args.gateway, devices, interval_s=args.interval, batch=args.batch, speed=args.speed,
                    messages=args.messages, duration_s=args.duration, qos=args.qos, stats=stats)
                for dev in devices:  # what a partly filled batch still holds
                    if dev.pending:
                        readings, dev.pending = dev.pending, []
                        await client.publish(device_topic(args.gateway, dev.id, "telemetry"),
                                             telemetry_payload(readings), qos=args.qos)
                        stats.messages += 1
                        stats.readings += len(readings)
            break
        except aiomqtt.MqttError as exc:
            print(f"broker {args.broker}: {exc}; retrying in {delay:g}s", file=sys.stderr, flush=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
    print(json.dumps(stats.summary(len(devices))), flush=True)
    return 0


def _kinds(value: str) -> str:
    bad = [k for k in value.split(",") if k.strip() and k.strip() not in KINDS]
    if bad or not value.strip():
        raise argparse.ArgumentTypeError(
            f"unknown kind(s) {', '.join(bad) or '(none)'}; choose from {', '.join(KINDS)}")
    return value


def _positive(kind: type) -> Any:
    def parse(value: str) -> Any:
        v = kind(value)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
        return v
    return parse


def _gateway(value: str) -> str:
    if not is_valid_id(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a gateway id ([a-z0-9-]{{1,64}})")
    return value


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:
        print(f"loaxa sim sensors: {exc}", file=sys.stderr)
        return 2


def register_sim(simsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = simsub.add_parser("sensors", help="simulated LAN sensors publishing telemetry over MQTT",
                          description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", required=True, help="commune broker URL, e.g. mqtt://127.0.0.1:1883")
    p.add_argument("--username", help="broker user name (password from $LOAXA_SIM_MQTT_PASSWORD)")
    p.add_argument("--credentials", type=Path, metavar="FILE",
                   help='JSON {"<device id>": "<password>", ...}: each sensor connects with its own account '
                        "(user name = its device id), as on a production LAN broker")
    p.add_argument("--gateway", required=True, type=_gateway, help="gateway id the sensors belong to")
    p.add_argument("--count", type=_positive(int), default=5, help="number of sensors (default 5)")
    p.add_argument("--interval", type=_positive(float), default=10.0,
                   help="seconds between readings of each sensor (default 10)")
    p.add_argument("--kinds", type=_kinds, default=",".join(KINDS),
                   help=f"comma-separated kinds to rotate over (default {','.join(KINDS)})")
    p.add_argument("--batch", type=_positive(int), default=1,
                   help="readings per message: 1 = single form, more = the readings[] batch form (default 1)")
    p.add_argument("--prefix", default="sim", help="device ids are PREFIX-KIND-NNN (default sim)")
    p.add_argument("--seed", type=int, help="fixed seed: the same values on every run")
    p.add_argument("--speed", type=_positive(float), default=1.0,
                   help="simulated seconds per real second, e.g. 600 to watch a flood pass in minutes")
    p.add_argument("--messages", type=_positive(int), help="stop after this many messages per sensor")
    p.add_argument("--duration", type=_positive(float), help="stop after this many seconds")
    p.add_argument("--qos", type=int, choices=[0, 1], default=1, help="MQTT QoS (default 1)")
    p.add_argument("--print-config", action="store_true",
                   help="print the gateway YAML 'devices:' entries for these sensors and exit")
    p.set_defaults(func=run)
