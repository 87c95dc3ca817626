"""Fan-out benchmark of the broadcast path on loopback.

Starts one central Mosquitto, then per commune a Mosquitto, a real gateway process
(``loaxa gateway run``) and a simulated-speaker process (``loaxa sim speakers``), by default
50 gateways × 20 speakers = 1,000 speakers. The centre's part is played by this script: it signs
``broadcast.plan`` commands with protocol.signing and publishes them to every gateway, and serves the
media over HTTP. Measured:

1. ``now``: time from publishing the commands to each speaker's ``started`` (the speaker's own
   timestamp, same clock): p50, p99 and max (all started); also when the reports reached the centre;
2. scheduled 5 s ahead: spread of the speakers' start timestamps within each gateway (p99 and max
   over gateways), across all speakers, and their error against ``start_at``;
3. one gateway with 50 speakers: its RSS and the CPU time it spends on one broadcast, and idle CPU.

Prints figures, then one JSON line. Run from the repository root:

    /work/venv/bin/python bench/fanout.py                 # 50 × 20
    /work/venv/bin/python bench/fanout.py --gateways 5    # a quick run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loaxa.clock import now_ms

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loaxa.localsetup import gateway_config, make_signer, write_yaml  # noqa: E402
from loaxa.servers import Mosquitto  # noqa: E402
from protocol.models import PRIORITY_NORMAL, BroadcastPlanBody, MediaRef, PlanItem  # noqa: E402
from tests.broadcast_env import Recorder, tone_wav  # noqa: E402


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    prof = os.environ.get("LOAXA_BENCH_PROFILE")  # a folder: gateways run under cProfile (for development)
    pre = ["-m", "cProfile", "-o", str(Path(prof) / f"{log.parent.name}-{args[0]}.prof")] if prof else []
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, *pre, "-m", "loaxa", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env(), cwd=ROOT, start_new_session=True)


def wait_started(rec: Any, bid: str, total: int, timeout: float) -> tuple[dict[Any, Any], bool]:
    """Every speaker's ``started`` for ``bid``, or — after ``timeout`` — those that did start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = started_events(rec, bid)
        if len(got) == total:
            return got, True
        time.sleep(0.2)
    got = started_events(rec, bid)
    print(f"  ! only {len(got)} of {total} speakers started {bid} within {timeout:.0f} s "
          "(the rest are counted as missing; see the gateways' playback reports)", flush=True)
    if not got:
        raise SystemExit(f"no speaker started {bid}")
    return got, False


def wait(pred: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS in MiB, CPU seconds user+system) of a process, from /proc."""
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_kb / 1024, (int(fields[11]) + int(fields[12])) / ticks


def port_below_ephemeral(start: int) -> int:
    """A free port from ``start`` up, below Linux's ephemeral range (so no broker started later by
    ``free_port`` can take it before the gateway binds it)."""
    import socket

    for port in range(start, 32000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("no free port below 32000")


class MediaDir:
    """The centre's media server for the benchmark: files named by sha256 in a folder, served by
    aiohttp (with Range) in its own process, as a real central server would be."""

    SERVER = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from gateway.broadcast.media import MediaCache\n"
        "from gateway.broadcast.mediaserver import serve\n"
        "async def main():\n"
        "    await serve(MediaCache(Path(sys.argv[1]), 1 << 40), '127.0.0.1:' + sys.argv[2])\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )

    def __init__(self, folder: Path) -> None:
        import socket

        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        with open(folder.parent / "central-media.log", "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", self.SERVER, str(folder), str(self.port)],
                                         stdout=out, stderr=subprocess.STDOUT, env=env(), cwd=ROOT)
        wait(lambda: _listening(self.port), 30, "central media server")

    def add(self, data: bytes, duration_ms: int) -> MediaRef:
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        (self.folder / sha).write_bytes(data)
        return MediaRef(sha256=sha, url=f"http://127.0.0.1:{self.port}/media/{sha}", bytes=len(data),
                        duration_ms=duration_ms, content_type="audio/wav")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def cpu_by_kind(communes: list[Commune]) -> dict[str, float]:
    """CPU seconds so far of all gateways, all simulators, all commune brokers."""
    out = {"gateways": 0.0, "simulators": 0.0, "lan_brokers": 0.0}
    for c in communes:
        for kind, proc in (("gateways", c.gateway), ("simulators", c.sim), ("lan_brokers", c.lan.proc)):
            if proc is not None and proc.poll() is None:
                out[kind] += proc_stats(proc.pid)[1]
    return out


def plan_stages(communes: list[Commune], bid: str, t0: int,
                got: dict[tuple[str, str], tuple[int, float]]) -> dict[str, list[float]]:
    """Where the time went, from each gateway's plan store: command → accepted, accepted → the start
    the gateway fixed (media download + lead), and that start → each speaker's real start."""
    import sqlite3

    out: dict[str, list[float]] = {"received": [], "fixed_start": [], "speaker_late": []}
    for c in communes:
        db = sqlite3.connect(c.dir / "data" / "broadcast.sqlite")
        row = db.execute("SELECT received_at, start_at FROM plans WHERE broadcast_id=?", (bid,)).fetchone()
        db.close()
        if row is None:
            continue
        out["received"].append((row[0] - t0) / 1000)
        out["fixed_start"].append((row[1] - row[0]) / 1000)
        out["speaker_late"] += [(at - row[1]) / 1000 for (gw, _d), (at, _a) in got.items() if gw == c.gw]
    return out


class Commune:
    def __init__(self, work: Path, index: int, speakers: int, central: Mosquitto, signer: Any) -> None:
        self.gw = f"xa-{index:03d}"
        self.dir = work / self.gw
        self.lan = Mosquitto(self.dir / "lan", anonymous=True).start()
        self.speakers = [f"loa-{i:02d}" for i in range(1, speakers + 1)]
        media_port = port_below_ephemeral(20000 + 7 * index)
        cfg = gateway_config(self.gw, data_dir=self.dir / "data", uplink_url=central.url, lan_url=self.lan.url,
                             signer=signer, devices=[{"id": s, "type": "ip_speaker"} for s in self.speakers],
                             health_interval_s=5)
        cfg["broadcast"] = {"media_listen": f"127.0.0.1:{media_port}",
                            "media_public_url": f"http://127.0.0.1:{media_port}"}
        self.config = write_yaml(self.dir / "gw.yaml", cfg)
        self.gateway: subprocess.Popen[bytes] | None = None
        self.sim: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.gateway = spawn(["gateway", "run", "--config", str(self.config)], self.dir / "gw.log")
        self.sim = spawn(["sim", "speakers", "--broker", self.lan.url, "--gateway", self.gw,
                          "--count", str(len(self.speakers))], self.dir / "sim.log")

    def stop(self) -> None:
        for p in (self.sim, self.gateway):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in (self.sim, self.gateway):
            if p is not None:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.lan.stop()


def publish_plans(central: Recorder, signer: Any, communes: list[Commune], bid: str, media: MediaRef,
                  start_at: int | None) -> int:
    item = PlanItem(broadcast_id=bid, media=media, start_at=start_at, priority=PRIORITY_NORMAL, volume=70)
    envs = [(c.gw, signer.envelope("broadcast.plan", BroadcastPlanBody(items=[item]), gw=c.gw).model_dump_json())
            for c in communes]
    t0 = now_ms()
    infos = [central.client.publish(f"loaxa/v1/{gw}/cmd", payload, qos=1) for gw, payload in envs]
    for info in infos:
        info.wait_for_publish(10)
    return t0


def started_events(rec: Recorder, bid: str) -> dict[tuple[str, str], tuple[int, float]]:
    """(gateway, device) → (speaker's start timestamp ms, arrival time at the centre s)."""
    out: dict[tuple[str, str], tuple[int, float]] = {}
    with rec._lock:
        msgs = list(rec.messages)
    for t, topic, p in msgs:
        if topic.endswith("/event") and p.get("broadcast_id") == bid and p.get("state") == "started":
            out.setdefault((topic.split("/")[2], p["device"]), (int(p["at"]), t))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", type=int, default=50)
    ap.add_argument("--speakers", type=int, default=20, help="speakers per gateway")
    ap.add_argument("--big", type=int, default=50, help="speakers of the gateway measured for RSS/CPU (0: skip)")
    ap.add_argument("--ahead-s", type=float, default=5.0, help="lead of the scheduled broadcast")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--dump", help="write every start of the scheduled broadcast to this JSON file")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_a: sys.exit(143))  # clean up the fleet on SIGTERM too

    work = Path(tempfile.mkdtemp(prefix="loaxa-fanout-"))
    central = Mosquitto(work / "central", anonymous=True).start()
    rec = Recorder(central.port)
    media_srv = MediaDir(work / "central-media")
    signer = make_signer()
    communes: list[Commune] = []
    big: Commune | None = None
    total = args.gateways * args.speakers
    try:
        t_boot = time.monotonic()
        for i in range(args.gateways):
            communes.append(Commune(work, i + 1, args.speakers, central, signer))
        for i, c in enumerate(communes):  # start in waves so 2 cores are not swamped by imports
            c.start()
            if i % 10 == 9:
                time.sleep(2)

        def all_online() -> bool:
            healths: dict[str, dict[str, Any]] = {}
            with rec._lock:
                for _t, topic, p in rec.messages:
                    if topic.endswith("/health"):
                        healths[topic.split("/")[2]] = p
            return bool(sum(1 for h in healths.values() if h.get("speakers_online") == args.speakers) == args.gateways)

        wait(all_online, 600, "every gateway online with all its speakers")
        print(f"{args.gateways} gateways × {args.speakers} speakers up in {time.monotonic() - t_boot:.1f} s",
              flush=True)
        time.sleep(3)  # let the start-up settle

        # ---- 1. broadcast now
        media_now = media_srv.add(tone_wav(1000), 1000)
        cpu_before = cpu_by_kind(communes)
        t0 = publish_plans(rec, signer, communes, "bench-now", media_now, None)
        got, now_all = wait_started(rec, "bench-now", total, 60)
        now_started = len(got)
        cpu_now = {k: round(v - cpu_before[k], 2) for k, v in cpu_by_kind(communes).items()}
        lat = [(at - t0) / 1000 for at, _ in got.values()]
        arrive = [arr - t0 / 1000 for _, arr in got.values()]
        now_p50, now_p99, now_max = pct(lat, 50), pct(lat, 99), max(lat)
        print(f"now → started ({now_started} of {total} speakers): p50 {now_p50:.3f} s, p99 {now_p99:.3f} s, "
              f"all {now_max:.3f} s; "
              f"report at the centre: p50 {pct(arrive, 50):.3f} s, max {max(arrive):.3f} s", flush=True)
        print(f"  CPU seconds spent meanwhile: {cpu_now}", flush=True)
        stages = plan_stages(communes, "bench-now", t0, got)
        print("  stages (p50 / max, s): " + ", ".join(f"{k} {pct(v, 50):.3f} / {max(v):.3f}"
                                                    for k, v in stages.items()), flush=True)
        time.sleep(2.5)

        # ---- 2. scheduled ahead
        media_at = media_srv.add(tone_wav(1000, freq=660), 1000)
        start_at = now_ms() + int(args.ahead_s * 1000)
        publish_plans(rec, signer, communes, "bench-at", media_at, start_at)
        got, at_all = wait_started(rec, "bench-at", total, args.ahead_s + 60)
        at_started = len(got)
        if args.dump:
            Path(args.dump).write_text(json.dumps({"start_at": start_at, "started": [
                [gw, dev, at, arr] for (gw, dev), (at, arr) in sorted(got.items())]}))
        per_gw: dict[str, list[int]] = {}
        for (gw, _dev), (at, _arr) in got.items():
            per_gw.setdefault(gw, []).append(at)
        spreads = [max(v) - min(v) for v in per_gw.values()]
        ats = [at for at, _ in got.values()]
        errors = [abs(at - start_at) for at in ats]
        spread_all = max(ats) - min(ats)
        print(f"scheduled {args.ahead_s:.0f} s ahead: spread within a gateway p99 {pct(spreads, 99):.1f} ms, "
              f"max {max(spreads)} ms; across all {spread_all} ms; |start - start_at| p99 {pct(errors, 99):.0f} ms, "
              f"max {max(errors)} ms", flush=True)
        time.sleep(2)
        rss_20 = [proc_stats(c.gateway.pid)[0] for c in communes if c.gateway is not None]

        # ---- 3. one gateway with many speakers: RSS and CPU
        rss_big = cpu_big = idle_pct = float("nan")
        if args.big:
            for c in communes:  # free the cores for a clean measurement
                c.stop()
            communes_alive: list[Commune] = []
            big = Commune(work, 999, args.big, central, signer)
            big.start()
            wait(lambda: any(p.get("speakers_online") == args.big for p in rec.on("xa-999/health")), 120,
                 "the big gateway online with its speakers")
            time.sleep(3)
            assert big.gateway is not None
            _, cpu0 = proc_stats(big.gateway.pid)
            time.sleep(10)
            _, cpu1 = proc_stats(big.gateway.pid)
            idle_pct = (cpu1 - cpu0) / 10 * 100
            media_big = media_srv.add(tone_wav(1000, freq=550), 1000)
            publish_plans(rec, signer, [big], "bench-big", media_big, None)
            wait(lambda: len([p for p in rec.on("xa-999/event") if p.get("broadcast_id") == "bench-big"
                              and p.get("state") == "finished"]) == args.big, 60, "big gateway finished")
            rss_big, cpu2 = proc_stats(big.gateway.pid)
            cpu_big = cpu2 - cpu1
            print(f"gateway with {args.big} speakers: RSS {rss_big:.1f} MiB, CPU {cpu_big:.2f} s for one broadcast "
                  f"(command → all finished), idle {idle_pct:.1f} % of a core; "
                  f"gateways with {args.speakers}: RSS mean {sum(rss_20) / len(rss_20):.1f} MiB", flush=True)
            communes = communes_alive
        result = {
            "speakers": total,
            "gateways": args.gateways,
            "speakers_per_gateway": args.speakers,
            "now_to_started_p50_s": round(now_p50, 4),
            "now_to_started_p99_s": round(now_p99, 4),
            # null when some speaker never started: "all started" was not reached
            "now_to_all_started_max_s": round(now_max, 4) if now_all else None,
            "now_started": now_started,
            "scheduled_started": at_started,
            "now_report_at_centre_max_s": round(max(arrive), 4),
            "spread_gateway_p99_ms": round(pct(spreads, 99), 1),
            "spread_gateway_max_ms": max(spreads),
            "spread_all_max_ms": spread_all,
            "start_error_p99_ms": pct(errors, 99),
            "gateway_rss_mb": round(rss_big, 1),
            "gateway_speakers_measured": args.big,
            "gateway_cpu_s_per_broadcast": round(cpu_big, 3),
            "gateway_idle_cpu_pct": round(idle_pct, 2),
            "gateway20_rss_mb_mean": round(sum(rss_20) / len(rss_20), 1),
            "targets_met": bool(now_all and at_all and now_max <= 2.0 and pct(spreads, 99) <= 20),
        }
        print(json.dumps(result))
        return 0
    finally:
        for c in communes:
            c.stop()
        if big is not None:
            big.stop()
        rec.close()
        media_srv.close()
        central.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
