"""``loaxa sim serial-node``: reference serial nodes on a pseudo-terminal, for tests, demos and benches."""

from __future__ import annotations

import argparse
import re

NODE_RE = re.compile(r"^(?P<addr>\d{1,3})(?::(?P<id>[a-z0-9-]{1,64}))?(?::(?P<kind>speaker|sensor|combo))?$")


def _node_spec(text: str) -> tuple[int, str, str]:
    m = NODE_RE.fullmatch(text)
    if not m or not 1 <= int(m["addr"]) <= 247:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write ADDRESS[:DEVICE-ID[:speaker|sensor|combo]] with ADDRESS 1..247, e.g. 3:loa-cho:speaker")
    addr = int(m["addr"])
    return addr, m["id"] or f"node-{addr}", m["kind"] or "speaker"


def _prob(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{text} must be a probability between 0 and 1")
    return v


def register_sim(simsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = simsub.add_parser(
        "serial-node",
        help="reference speaker/sensor firmware on a pseudo-terminal",
        description=(
            "Run reference serial nodes (the device side of docs/firmware-protocol.md, with A/B firmware "
            "update) on a new pseudo-terminal. The first line printed is the path to give the gateway as "
            "the serial port (port: in a serial_node device). The line is paced to --baud so timings are "
            "those of a real UART. Fault injection simulates a noisy cable."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--pty", action="store_true", required=True,
                   help="create a pseudo-terminal (the only transport so far) and print its path")
    p.add_argument("--link", metavar="PATH", help="also make PATH a symlink to the pty (a stable port name)")
    p.add_argument("--baud", type=int, default=115200, help="line rate to pace to; 0 = unthrottled")
    p.add_argument("--node", dest="nodes", action="append", type=_node_spec, metavar="ADDR[:ID[:KIND]]",
                   help="a node on the bus (repeat for several); default: 1:node-1:speaker")
    p.add_argument("--drop", type=_prob, default=0.0, help="probability that a request or an answer is lost")
    p.add_argument("--corrupt", type=_prob, default=0.0, help="probability that an answer has a flipped bit")
    p.add_argument("--garbage", type=_prob, default=0.0, help="probability of line noise before an answer")
    p.add_argument("--duplicate", type=_prob, default=0.0, help="probability that an answer is sent twice")
    p.add_argument("--delay", type=float, default=0.0, metavar="SECONDS",
                   help="delay every answer by this much")
    p.add_argument("--reboot-at", type=int, action="append", default=[], metavar="OFFSET",
                   help="reboot each node when a firmware upload reaches OFFSET (repeatable)")
    p.add_argument("--trial-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="roll a new image back unless confirmed within this time")
    p.add_argument("--event-every", type=float, default=0.0, metavar="SECONDS",
                   help="raise a simulated button event on every node this often (0 = never)")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible faults")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import signal
    import sys
    import threading

    from firmware_bridge.messages import EventKind
    from firmware_bridge.refnode import RefNode
    from firmware_bridge.simbus import Faults, PtyDevice

    specs = args.nodes or [(1, "node-1", "speaker")]
    if len({a for a, _, _ in specs}) != len(specs):
        print("error: two --node entries have the same address", file=sys.stderr)
        return 2
    nodes = [RefNode(a, i, kind=k, trial_timeout_s=args.trial_timeout, reboot_at_offsets=list(args.reboot_at),
                     seed=args.seed) for a, i, k in specs]
    faults = Faults(rx_drop=args.drop, tx_drop=args.drop, corrupt=args.corrupt, garbage=args.garbage,
                    duplicate=args.duplicate, delay=1.0 if args.delay > 0 else 0.0, delay_s=args.delay)
    dev = PtyDevice(nodes, baud=args.baud, link=args.link, faults=faults, seed=args.seed).start()
    print(dev.path, flush=True)
    desc = ", ".join(f"{n.address}={n.device_id} ({n.kind})" for n in nodes)
    print(f"serial nodes {desc} on {dev.slave_path} at {args.baud or 'unthrottled'} baud; Ctrl-C to stop",
          file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(args.event_every or 1.0):
            if args.event_every:
                for n in nodes:
                    dev.call(n.add_event, EventKind.BUTTON, 1, 0)
    except KeyboardInterrupt:
        pass
    finally:
        dev.stop()
    return 0
