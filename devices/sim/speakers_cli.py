"""``loaxa sim speakers``: run N simulated IP speakers against a commune broker."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
examples:
  loaxa sim speakers --broker mqtt://127.0.0.1:1883 --gateway xa-an-binh --count 5
      speakers loa-01 … loa-05 of gateway xa-an-binh (list them as ip_speaker devices in its config)
  loaxa sim speakers --broker mqtt://127.0.0.1:1883 --gateway xa-an-binh --ids loa-cho,loa-uy-ban
  loaxa sim speakers ... --count 3 --fault refuse:loa-02 --fault die-mid-play:loa-03

faults: no-ack (ignore every command), refuse (answer play with ok=false),
        die-mid-play (drop the connection halfway through the first broadcast; the broker then
        publishes the speaker's will {"online": false}). Without ':IDS' a fault hits every speaker.
"""


def register_sim(simsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = simsub.add_parser(
        "speakers",
        help="simulated IP speakers on a commune broker",
        description=(
            "Run simulated smart IP speakers that speak the device side of the broadcast contract: "
            "retained state with an offline will, acks, play at the commanded start time, started/finished "
            "reports with real timestamps, and optional faults for tests."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--broker", required=True, help="commune broker URL, e.g. mqtt://127.0.0.1:1883")
    p.add_argument("--username", help="broker user name (password from $LOAXA_SIM_MQTT_PASSWORD)")
    p.add_argument("--credentials", type=Path, metavar="FILE",
                   help='JSON {"<device id>": "<password>", ...}: each speaker logs in with its own account '
                        "(user name = its device id), as on a production LAN broker")
    p.add_argument("--gateway", required=True, help="gateway id the speakers belong to")
    p.add_argument("--count", type=int, default=2, help="number of speakers (default 2)")
    p.add_argument("--prefix", default="loa", help="speaker ids are PREFIX-01 … PREFIX-NN (default loa)")
    p.add_argument("--ids", help="comma-separated speaker ids instead of --prefix/--count")
    p.add_argument("--fault", action="append", default=[], metavar="KIND[:IDS]",
                   help="inject a fault: no-ack, refuse or die-mid-play, optionally only for IDS (a,b)")
    p.add_argument("--no-fetch", action="store_true", help="do not download and check the media")
    p.add_argument("--clock-spread-ms", type=int, default=0, metavar="MS",
                   help="give each speaker a fixed clock offset within ±MS (as with poor NTP); default 0")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import os
    import sys

    from devices.sim.credentials import load_credentials
    from devices.sim.speakers import parse_faults, run_fleet, speaker_ids
    from loaxa.mqttconf import MqttEndpoint
    from loaxa.yamlconf import Secret
    from protocol.ids import is_valid_id

    ids = speaker_ids(args.count, args.prefix, [i.strip() for i in args.ids.split(",")] if args.ids else None)
    bad = [i for i in ids + [args.gateway] if not is_valid_id(i)]
    if bad:
        print(f"error: invalid id(s) {', '.join(map(repr, bad))}: use [a-z0-9-]{{1,64}}", file=sys.stderr)
        return 2
    try:
        faults = parse_faults(args.fault, ids)
        password = os.environ.get("LOAXA_SIM_MQTT_PASSWORD")
        endpoint = MqttEndpoint(url=args.broker, username=args.username,
                                password=Secret(value=password) if password else None)
        credentials = load_credentials(args.credentials, ids) if args.credentials else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"simulating {len(ids)} speaker(s) of {args.gateway} on {args.broker}: {', '.join(ids)}", flush=True)
    try:
        asyncio.run(run_fleet(endpoint, args.gateway, ids, faults, fetch=not args.no_fetch, credentials=credentials,
                              clock_spread_ms=max(0, args.clock_spread_ms)))
    except KeyboardInterrupt:
        pass
    return 0
