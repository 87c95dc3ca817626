"""``loaxa sim water-level``: a simulated river gauge that reports a level you choose.

For the demo and for trying a local warning rule: it publishes ``{"ts":…,"fields":{"water_level_cm":…}}``
on ``loaxa/v1/{gw}/dev/{dev}/telemetry`` of the commune broker every ``--interval`` seconds for
``--for`` seconds, logged in with the device's own account (``--credentials``), exactly like a real
networked gauge. ``--cm 180`` raises the level; ``--cm 60`` lowers it again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from protocol.ids import is_valid_id
from protocol.topics import device_topic

FIELD = "water_level_cm"


def payload(cm: float, ts_ms: int | None = None) -> bytes:
    ts = int(time.time() * 1000) if ts_ms is None else ts_ms
    return json.dumps({"ts": ts, "fields": {FIELD: float(cm)}}).encode()


async def publish_level(url: str, gateway: str, device: str, cm: float, *, username: str | None,
                        password: str | None, interval_s: float, duration_s: float) -> int:
    """Publish the level until ``duration_s`` has passed; returns how many readings went out."""
    import aiomqtt

    from loaxa.mqttconf import MqttEndpoint
    from loaxa.yamlconf import Secret

    endpoint = MqttEndpoint(url=url, username=username, password=Secret(value=password) if password else None)
    kw = endpoint.client_kwargs()
    kw["identifier"] = username or f"loaxa-sim-water-{device}-{os.getpid()}"
    topic = device_topic(gateway, device, "telemetry")
    sent = 0
    deadline = time.monotonic() + duration_s
    async with aiomqtt.Client(**kw) as client:
        while True:
            await client.publish(topic, payload(cm), qos=1)
            sent += 1
            if time.monotonic() + interval_s > deadline:
                break
            await asyncio.sleep(interval_s)
    return sent


def run(args: argparse.Namespace) -> int:
    password = os.environ.get("LOAXA_SIM_MQTT_PASSWORD")
    username = None
    if args.credentials:
        from devices.sim.credentials import load_credentials

        try:
            password = load_credentials(args.credentials, [args.device])[args.device]
        except ValueError as exc:
            print(f"loaxa sim water-level: {exc}", file=sys.stderr)
            return 2
        username = args.device
    try:
        n = asyncio.run(publish_level(args.broker, args.gateway, args.device, args.cm, username=username,
                                      password=password, interval_s=args.interval, duration_s=args.duration))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the broker refused or is unreachable: say which
        print(f"loaxa sim water-level: broker {args.broker}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.gateway}/{args.device}: {FIELD} = {args.cm:g} cm, {n} reading(s) sent", flush=True)
    return 0


def _id(value: str) -> str:
    if not is_valid_id(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not an id ([a-z0-9-]{{1,64}})")
    return value


def _level(value: str) -> float:
    v = float(value)
    if not 0 <= v <= 10_000:
        raise argparse.ArgumentTypeError("--cm must be between 0 and 10000")
    return v


def _positive(value: str) -> float:
    v = float(value)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return v


def register_sim(simsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = simsub.add_parser("water-level", help="a simulated river gauge reporting the level you choose",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gateway", type=_id, help="gateway (commune) id, e.g. xa-an-binh")
    p.add_argument("device", type=_id, help="the gauge's device id, e.g. mucnuoc-song")
    p.add_argument("--cm", type=_level, required=True, help="water level to report, in cm")
    p.add_argument("--broker", required=True, help="commune broker URL for devices, e.g. mqtt://127.0.0.1:1884")
    p.add_argument("--credentials", type=Path, metavar="FILE",
                   help='JSON {"<device id>": "<password>"}: the gauge logs in with its own account')
    p.add_argument("--interval", type=_positive, default=1.0, help="seconds between readings (default 1)")
    p.add_argument("--for", dest="duration", type=_positive, default=15.0,
                   help="keep reporting for this many seconds (default 15)")
    p.set_defaults(func=run)
