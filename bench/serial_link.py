"""Benchmark of the serial link against the reference node throttled to a real baud rate.

Starts ``loaxa sim serial-node --pty --baud B`` in its own process (the "board"), then measures from
the gateway side:

- STATUS round-trip time (request 12 bytes on the wire, answer 25 bytes);
- firmware transfer throughput as a share of the line rate (baud / 10 bytes per second at 8N1),
  for window 1 and the default window of 4 chunks in flight;
- framing efficiency: image bytes / wire bytes of one 256-byte FW_CHUNK frame, and the same ratio over
  the whole transfer (all frames the gateway sent, retransmissions included).

Prints the figures and, last, one JSON line. Usage: ``python bench/serial_link.py [--baud 115200] [--kib 128]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# this file is named serial.py: keep its folder off the path so ``import serial`` finds pyserial
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from firmware_bridge.client import NodeClient  # noqa: E402
from firmware_bridge.frame import Frame  # noqa: E402
from firmware_bridge.fwupdate import FirmwareUpdater  # noqa: E402
from firmware_bridge.link import BusMaster  # noqa: E402
from firmware_bridge.messages import FwChunk, MsgType  # noqa: E402


def start_board(baud: int) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loaxa",
            "sim",
            "serial-node",
            "--pty",
            "--baud",
            str(baud),
            "--node",
            "1:bench-node:speaker",
            "--trial-timeout",
            "600",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    path = proc.stdout.readline().strip()
    if not path:
        raise SystemExit("the reference node did not start")
    return proc, path


async def measure(baud: int, kib: int, rtt_count: int) -> dict[str, float]:
    proc, path = start_board(baud)
    try:
        bus = BusMaster(path, baud)
        await bus.open()
        node = NodeClient(bus, 1)
        await node.hello()
        line_rate = baud / 10

        rtts = []
        for _ in range(rtt_count):
            t = time.perf_counter()
            await node.status()
            rtts.append((time.perf_counter() - t) * 1000)
        rtts.sort()
        status_wire = len(Frame(1, MsgType.STATUS, 0).encode()) + 25
        print(
            f"STATUS round trip at {baud} baud: median {statistics.median(rtts):.2f} ms, "
            f"p95 {rtts[int(len(rtts) * 0.95) - 1]:.2f} ms (the {status_wire} bytes alone need "
            f"{status_wire / line_rate * 1000:.2f} ms on the line)"
        )

        chunk = 256
        frame = Frame(1, MsgType.FW_CHUNK, 0, FwChunk(0, bytes(range(256)) * (chunk // 256)).pack())
        framing = chunk / len(frame.encode())
        print(f"framing: a {chunk}-byte chunk travels in a {len(frame.encode())}-byte frame: {framing:.1%} payload")

        results: dict[int, float] = {}
        whole_transfer = 0.0
        for i, window in enumerate((1, 4)):
            image = os.urandom(kib * 1024)
            tx0 = bus.stats.bytes_tx
            up = FirmwareUpdater(node, window=window, chunk_size=chunk, health_interval_s=0.05)
            r = await up.update(image, f"bench-{i}")
            assert r.outcome == "confirmed", r
            share = len(image) / r.transfer_s / line_rate
            results[window] = share
            wire = bus.stats.bytes_tx - tx0
            whole_transfer = len(image) / wire
            print(
                f"firmware {kib} KiB, window {window}: {r.transfer_s:.2f} s transfer "
                f"({len(image) / r.transfer_s / 1024:.2f} KiB/s) = {share:.1%} of the {line_rate:.0f} B/s "
                f"line rate; whole update incl. reboot and health check {r.elapsed_s:.2f} s; "
                f"image/wire bytes {whole_transfer:.1%}"
            )
        stats = bus.link_stats()
        print(
            f"link stats: retries {stats['retries']}, timeouts {stats['timeouts']} (HELLOs unanswered while "
            f"the node restarts into each new image), crc errors {stats['rx_crc_errors']}, "
            f"resyncs {stats['rx_resyncs']}"
        )
        bus.close()
        return {
            "baud": baud,
            "image_kib": kib,
            "fw_line_rate_share": round(results[4], 4),
            "fw_line_rate_share_window1": round(results[1], 4),
            "framing_efficiency": round(framing, 4),
            "transfer_payload_per_wire_byte": round(whole_transfer, 4),
            "status_rtt_ms": round(statistics.median(rtts), 3),
            "status_rtt_p95_ms": round(rtts[int(len(rtts) * 0.95) - 1], 3),
        }
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--kib", type=int, default=128, help="firmware image size")
    ap.add_argument("--rtt-count", type=int, default=200)
    args = ap.parse_args()
    result = asyncio.run(measure(args.baud, args.kib, args.rtt_count))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
