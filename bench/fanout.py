"""Fan-out benchmark of the broadcast path on loopback.

Starts one central Mosquitto, then per commune a Mosquitto, a real gateway process
(``loaxa gateway run``) and a simulated-speaker process (``loaxa sim speakers``: all speakers of a
commune on one event loop, one MQTT connection each), by default 50 gateways × 20 speakers = 1,000
speakers. Every broker runs as production runs it (loaxa/brokers.py): the central broker with the
production ACL and an account per gateway, each commune broker with its ACL, the gateway's account and
one account per speaker (the simulators log in with ``--credentials``). The centre's part is played by
this script, logged in as ``scheduler``: it signs ``broadcast.plan`` commands with
protocol.signing and publishes them to every gateway, and serves the media over HTTP. Measured, once
the fleet is at rest after its start-up:

1. ``now``: time from publishing the commands to each speaker's ``started`` (the speaker's own
   timestamp): p50, p99 and max (all started); the spread within each gateway and each speaker's
   start against the start its gateway fixed; when the reports reached the centre;
2. scheduled 5 s ahead: spread of the speakers' start timestamps within each gateway (p99 and max
   over gateways) and across all, their error against ``start_at`` by the speaker's clock and, with
   each speaker's clock offset measured NTP-style over its broker, on the reference clock;
3. a lone gateway with 20 and with 50 speakers (``--cpu-sizes``): CPU seconds per broadcast (command
   → every ``finished`` at the centre; new media each time), per thread, RSS and idle CPU; with
   ``--baseline PATH`` (a checkout of main, e.g. ``git worktree add --detach /tmp/main main``) main's
   gateway is measured alike in the same run and the ratios are given.

Prints figures, then one JSON line with each target and what was measured (``null`` = not measured
in this run, never counted as met). Report ``cat /proc/loadavg`` with a run. From the repository root:

    python bench/fanout.py                                # 50 × 20, then the lone gateways
    python bench/fanout.py --gateways 5                   # a quick run
    python bench/fanout.py --gateways 0 --profile /tmp/p  # CPU only, cProfile of the broadcasts
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

from loaxa.brokers import SCHEDULER_USER, CentralBroker, LanBroker  # noqa: E402
from loaxa.localsetup import gateway_config, make_signer, write_yaml  # noqa: E402
from protocol.models import PRIORITY_NORMAL, BroadcastPlanBody, MediaRef, PlanItem  # noqa: E402
from tests.broadcast_env import Recorder, tone_wav  # noqa: E402

#: lone gateways (the CPU and RSS measurements) are numbered from here on
LONE_INDEX = 900


def gateway_id(index: int) -> str:
    return f"xa-{index:03d}"


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def env(root: Path = ROOT) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(root) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def spawn(args: list[str], log: Path, *, root: Path = ROOT, profile: Path | None = None) -> subprocess.Popen[bytes]:
    """``loaxa ARGS`` from the code at ``root`` (this checkout, or a baseline checkout of main);
    with ``profile``, under bench/profiled.py (cProfile switched on and off by SIGUSR1/SIGUSR2)."""
    pre = [str(ROOT / "bench" / "profiled.py"), str(profile)] if profile else ["-m", "loaxa"]
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, *pre, *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env(root), cwd=root, start_new_session=True)


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


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user+system) of each thread of a process, by thread name (same names summed)."""
    out: dict[str, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = "main" if task.name == str(pid) else name.rstrip("0123456789_") or name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


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
    def __init__(self, work: Path, index: int, speakers: int, central: CentralBroker, signer: Any, *,
                 root: Path = ROOT, profile: Path | None = None) -> None:
        self.gw = gateway_id(index)
        self.root = root
        self.profile = profile
        self.sim_args: list[str] = []
        self.dir = work / self.gw
        self.speakers = [f"loa-{i:02d}" for i in range(1, speakers + 1)]
        # as in production: the commune's ACL, the gateway's own account on the loopback listener and
        # one account per speaker on the device listener (client id = device id)
        self.lan = LanBroker(self.dir / "lan", gateway_id=self.gw, devices=list(self.speakers)).start()
        self.credentials = self.lan.write_credentials(self.dir / "speakers.json")
        media_port = port_below_ephemeral(20000 + 7 * index)
        cfg = gateway_config(self.gw, data_dir=self.dir / "data", uplink_url=central.url, lan_url=self.lan.url,
                             signer=signer, devices=[{"id": s, "type": "ip_speaker"} for s in self.speakers],
                             health_interval_s=5, uplink_auth=central.gateway_auth(self.gw),
                             lan_auth=self.lan.gateway_auth())
        cfg["broadcast"] = {"media_listen": f"127.0.0.1:{media_port}",
                            "media_public_url": f"http://127.0.0.1:{media_port}"}
        self.config = write_yaml(self.dir / "gw.yaml", cfg)
        self.gateway: subprocess.Popen[bytes] | None = None
        self.sim: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.gateway = spawn(["gateway", "run", "--config", str(self.config)], self.dir / "gw.log", root=self.root,
                             profile=self.profile)
        self.sim = spawn(["sim", "speakers", "--broker", self.lan.device_url, "--gateway", self.gw,
                          "--count", str(len(self.speakers)), "--credentials", str(self.credentials),
                          *self.sim_args], self.dir / "sim.log")

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


def finished_count(rec: Recorder, gw: str, bid: str) -> int:
    return len(rec.on(f"{gw}/event", lambda p: p.get("broadcast_id") == bid and p.get("state") == "finished"))


def measure_gateway(work: Path, index: int, speakers: int, central: CentralBroker, rec: Recorder, signer: Any,
                    media_srv: MediaDir, broadcasts: int, root: Path, profile_dir: Path | None) -> dict[str, Any]:
    """One gateway with ``speakers`` speakers, alone on the machine: CPU seconds it spends per
    broadcast (command → every speaker's ``finished`` at the centre; new media each time, so the
    download and hash are counted), by thread; its RSS; its idle CPU."""
    label = "main" if root != ROOT else "branch"
    prof = profile_dir / f"{label}-{speakers}.prof" if profile_dir else None
    c = Commune(work, index, speakers, central, signer, root=root, profile=prof)
    c.start()
    try:
        wait(lambda: any(p.get("speakers_online") == speakers for p in rec.on(f"{c.gw}/health")), 180,
             f"gateway {c.gw} ({label}) online with its {speakers} speakers")
        time.sleep(3)
        assert c.gateway is not None
        pid = c.gateway.pid
        _, cpu0 = proc_stats(pid)
        time.sleep(5)
        _, cpu1 = proc_stats(pid)
        idle_pct = (cpu1 - cpu0) / 5 * 100
        per: list[float] = []
        threads0 = thread_cpu(pid)
        if prof is not None:
            os.kill(pid, signal.SIGUSR1)
        for k in range(broadcasts):
            media = media_srv.add(tone_wav(1000, freq=200 + 10 * k + index), 1000)
            bid = f"cpu-{c.gw}-{k}"
            a = proc_stats(pid)[1]
            publish_plans(rec, signer, [c], bid, media, None)
            wait(lambda bid=bid: finished_count(rec, c.gw, bid) == speakers, 60,
                 f"{c.gw} ({label}) finished {bid}", interval=0.05)
            per.append(proc_stats(pid)[1] - a)
            time.sleep(0.3)
        if prof is not None:
            os.kill(pid, signal.SIGUSR2)
            wait(lambda: prof.exists(), 10, "profile written")
        threads = {k: round((v - threads0.get(k, 0.0)) / broadcasts, 4) for k, v in thread_cpu(pid).items()
                   if v - threads0.get(k, 0.0) > 0}
        rss = proc_stats(pid)[0]
    finally:
        c.stop()
    rest = per[1:] or per  # the first broadcast also pays lazy set-up (first HTTP request): reported apart
    out = {"cpu_s_per_broadcast": round(sum(rest) / len(rest), 4), "cpu_s_first": round(per[0], 4),
           "cpu_s_all": [round(x, 3) for x in per], "rss_mb": round(rss, 1), "idle_cpu_pct": round(idle_pct, 2),
           "cpu_s_by_thread": threads}
    print(f"gateway ({label}) with {speakers} speakers: {out}", flush=True)
    return out


def run_fleet(args: argparse.Namespace, work: Path, central: CentralBroker, rec: Recorder, signer: Any,
              media_srv: MediaDir, communes: list[Commune]) -> dict[str, Any]:
    total = args.gateways * args.speakers
    t_boot = time.monotonic()
    for i in range(args.gateways):
        communes.append(Commune(work, i + 1, args.speakers, central, signer))
        if args.clock_spread_ms:
            communes[-1].sim_args = ["--clock-spread-ms", str(args.clock_spread_ms)]
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
    print(f"{args.gateways} gateways × {args.speakers} speakers up in {time.monotonic() - t_boot:.1f} s; "
          f"load average {Path('/proc/loadavg').read_text().split()[0:3]}", flush=True)
    settle(communes)
    load_before = Path("/proc/loadavg").read_text().split()[0]

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
    stages = plan_stages(communes, "bench-now", t0, got)
    now_fixed = {gw: st for gw, st in fixed_starts(communes, "bench-now").items()}
    now_err = [at - now_fixed[gw] for (gw, _d), (at, _a) in got.items() if gw in now_fixed]
    per_gw_now: dict[str, list[int]] = {}
    for (gw, _dev), (at, _arr) in got.items():
        per_gw_now.setdefault(gw, []).append(at)
    now_spreads = [max(v) - min(v) for v in per_gw_now.values()]
    print(f"now → started ({now_started} of {total} speakers): p50 {now_p50:.3f} s, p99 {now_p99:.3f} s, "
          f"{'all' if now_all else 'max of those that started'} {now_max:.3f} s; "
          f"report at the centre: p50 {pct(arrive, 50):.3f} s, max {max(arrive):.3f} s; "
          f"spread within a gateway p99 {pct(now_spreads, 99)} ms; start − the gateway's start_at: "
          f"p50 {pct(now_err, 50)} ms, max {max(now_err, default=0)} ms", flush=True)
    print(f"  CPU seconds spent meanwhile: {cpu_now}", flush=True)
    print("  stages (p50 / max, s): " + ", ".join(f"{k} {pct(v, 50):.3f} / {max(v, default=float('nan')):.3f}"
                                                for k, v in stages.items()), flush=True)
    time.sleep(2.5)

    # ---- 2. scheduled ahead
    offsets = clock_offsets(communes, rec)
    media_at = media_srv.add(tone_wav(1000, freq=660), 1000)
    start_at = now_ms() + int(args.ahead_s * 1000)
    publish_plans(rec, signer, communes, "bench-at", media_at, start_at)
    got, at_all = wait_started(rec, "bench-at", total, args.ahead_s + 60)
    at_started = len(got)
    if args.dump:
        Path(args.dump).write_text(json.dumps({"start_at": start_at, "offsets_ms": {
            f"{gw}/{d}": o for (gw, d), o in offsets.items()}, "started": [
            [gw, dev, at, arr] for (gw, dev), (at, arr) in sorted(got.items())]}))
    per_gw: dict[str, list[int]] = {}
    for (gw, _dev), (at, _arr) in got.items():
        per_gw.setdefault(gw, []).append(at)
    spreads = [max(v) - min(v) for v in per_gw.values()]
    ats = [at for at, _ in got.values()]
    errors = [abs(at - start_at) for at in ats]  # by the speaker's own clock
    # by the reference clock: the speaker's timestamp corrected by its measured offset
    true_errors = [abs(at - offsets[k] - start_at) for k, (at, _a) in got.items() if k in offsets]
    spread_all = max(ats) - min(ats)
    off_abs = [abs(o) for o in offsets.values()]
    rtts: list[float] = getattr(clock_offsets, "rtts", [])
    print(f"scheduled {args.ahead_s:.0f} s ahead ({at_started} of {total} started): spread within a gateway "
          f"p99 {pct(spreads, 99):.1f} ms, max {max(spreads)} ms; across all {spread_all} ms; "
          f"|start − start_at| by the speaker's clock p99 {pct(errors, 99):.0f} ms, max {max(errors)} ms; "
          f"speaker clock offsets measured {len(offsets)}, |offset| p99 {pct(off_abs, 99)} ms "
          f"(± half a round trip, p99 {pct(rtts, 99):.1f} ms); "
          f"|start − start_at| on the reference clock p99 {pct(true_errors, 99)} ms", flush=True)
    load_after = Path("/proc/loadavg").read_text().split()[0]
    rss_20 = [proc_stats(c.gateway.pid)[0] for c in communes if c.gateway is not None and c.gateway.poll() is None]
    return {
        "speakers": total,
        "gateways": args.gateways,
        "speakers_per_gateway": args.speakers,
        "loadavg_1m_before": float(load_before),
        "loadavg_1m_after": float(load_after),
        "now_to_started_p50_s": round(now_p50, 4),
        "now_to_started_p99_s": round(now_p99, 4),
        # null when some speaker never started: "all started" was not reached
        "now_to_all_started_max_s": round(now_max, 4) if now_all else None,
        "now_started_max_s_of_those_started": round(now_max, 4),
        "now_started": now_started,
        "now_spread_gateway_p99_ms": pct(now_spreads, 99),
        "now_start_minus_gateway_start_at_max_ms": max(now_err, default=None),
        "scheduled_started": at_started,
        "scheduled_all_started": at_all,
        "now_report_at_centre_max_s": round(max(arrive), 4),
        "spread_gateway_p99_ms": round(pct(spreads, 99), 1),
        "spread_gateway_max_ms": max(spreads),
        "spread_all_max_ms": spread_all,
        "start_error_p99_ms": pct(errors, 99),
        "start_error_max_ms": max(errors),
        "clock_offsets_measured": len(offsets),
        "clock_offset_abs_p99_ms": pct(off_abs, 99) if off_abs else None,
        # the offsets are known within ± half the round trip of the probe
        "clock_probe_rtt_p99_ms": round(pct(rtts, 99), 1) if rtts else None,
        "start_error_reference_p99_ms": pct(true_errors, 99) if true_errors else None,
        "missing_now": total - now_started,
        "missing_scheduled": total - at_started,
        "gateway20_rss_mb_mean": round(sum(rss_20) / len(rss_20), 1) if rss_20 else None,
        "cpu_s_during_now": cpu_now,
    }


def settle(communes: list[Commune], limit_s: float = 90.0) -> None:
    """Wait until the fleet itself is quiet after its start-up (the processes of this run use less
    than a fifth of a core over 2 s), at most ``limit_s``: the broadcast is measured on a fleet at
    rest, as in the field, not on one still importing and connecting."""
    deadline = time.monotonic() + limit_s
    time.sleep(3)
    while time.monotonic() < deadline:
        before = sum(cpu_by_kind(communes).values())
        time.sleep(2)
        used = (sum(cpu_by_kind(communes).values()) - before) / 2
        if used < 0.2:
            print(f"  fleet at rest ({used:.2f} of a core); load average "
                  f"{Path('/proc/loadavg').read_text().split()[0:3]}", flush=True)
            return
    print("  ! the fleet did not come to rest; measuring anyway", flush=True)


def fixed_starts(communes: list[Commune], bid: str) -> dict[str, int]:
    """The start each gateway fixed for ``bid`` (its plan store)."""
    import sqlite3

    out = {}
    for c in communes:
        db = sqlite3.connect(c.dir / "data" / "broadcast.sqlite")
        row = db.execute("SELECT start_at FROM plans WHERE broadcast_id=?", (bid,)).fetchone()
        db.close()
        if row is not None:
            out[c.gw] = int(row[0])
    return out


def clock_offsets(communes: list[Commune], rec: Recorder, probes: int = 3) -> dict[tuple[str, str], int]:
    """Each speaker's clock offset in ms (its clock minus this machine's), measured the way NTP
    does over the LAN broker: a ``power on`` command (which changes nothing on a speaker that is
    on) is sent at t1, the speaker's ack carries its clock ``ts``, it arrives at t2; offset =
    ts − (t1 + t2) / 2, within ± (t2 − t1) / 2. Of ``probes`` exchanges the one with the shortest
    round trip counts. Speakers that do not answer are left out. The round trips are kept in
    ``clock_offsets.rtts`` (ms) for the report."""
    import threading
    import uuid

    import paho.mqtt.client as paho

    from protocol.models import DeviceCommand

    best: dict[tuple[str, str], tuple[float, int]] = {}  # (gw, dev) → (rtt, offset)
    for c in communes:
        # the probe speaks as the gateway (its account on the loopback listener, another client id)
        cl = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                         client_id=f"clock-probe-{c.gw}")
        cl.username_pw_set(*c.lan.gateway_auth())
        cl.connect("127.0.0.1", c.lan.port)
        cl.loop_start()
        try:
            cl.subscribe(f"loaxa/v1/{c.gw}/dev/+/ack", qos=1)
            time.sleep(0.2)
            for _ in range(probes):
                got: dict[str, tuple[int, float]] = {}
                done = threading.Event()
                ids = {uuid.uuid4().hex: d for d in c.speakers}

                def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage, got: Any = got, ids: Any = ids,
                               done: Any = done) -> None:
                    t2 = time.time() * 1000
                    try:
                        ack = json.loads(msg.payload)
                    except ValueError:
                        return
                    dev = ids.get(ack.get("id"))
                    if dev is not None and isinstance(ack.get("ts"), int):
                        got[dev] = (ack["ts"], t2)
                        if len(got) == len(ids):
                            done.set()

                cl.on_message = on_message
                sent: dict[str, float] = {}
                for cid, dev in ids.items():
                    cmd = DeviceCommand(id=cid, op="power", power=True, ts=now_ms())
                    sent[dev] = time.time() * 1000
                    cl.publish(f"loaxa/v1/{c.gw}/dev/{dev}/cmd", cmd.model_dump_json(exclude_none=True), qos=0)
                done.wait(5)
                for dev, (ts, t2) in got.items():
                    t1 = sent[dev]
                    rtt = t2 - t1
                    if (c.gw, dev) not in best or rtt < best[(c.gw, dev)][0]:
                        best[(c.gw, dev)] = (rtt, round(ts - (t1 + t2) / 2))
                time.sleep(0.1)
        finally:
            cl.loop_stop()
            cl.disconnect()
    clock_offsets.rtts = [r for r, _o in best.values()]  # type: ignore[attr-defined]
    return {k: o for k, (_r, o) in best.items()}


TARGETS: dict[str, tuple[str, float]] = {
    "gateway_cpu_s_per_broadcast_20": ("<=", 0.03),
    "gateway_cpu_s_per_broadcast_50": ("<=", 0.06),
    "gateway_rss_mb_50": ("<=", 60.0),
    "now_to_all_started_max_s": ("<=", 2.0),
    "spread_gateway_p99_ms": ("<=", 20.0),
    "spread_all_max_ms": ("<=", 50.0),
    "missing_now": ("<=", 0),
    "missing_scheduled": ("<=", 0),
}


def judge(result: dict[str, Any], full: bool) -> dict[str, Any]:
    """Each target against what was measured in this run; a target not measured is listed as such,
    never counted as met. The fleet targets are for 50 × 20: a smaller run reports them as
    ``fleet_targets_for`` its own size."""
    checks: dict[str, Any] = {}
    for key, (_op, limit) in TARGETS.items():
        v = result.get(key)
        checks[key] = {"target": limit, "measured": v, "met": None if v is None else bool(v <= limit)}
    unmeasured = [k for k, v in checks.items() if v["measured"] is None]
    return {"targets": checks, "targets_unmeasured": unmeasured,
            "targets_met": bool(full and not unmeasured and all(v["met"] for v in checks.values()))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", type=int, default=50, help="communes of the fleet run (0: skip the fleet)")
    ap.add_argument("--speakers", type=int, default=20, help="speakers per gateway")
    ap.add_argument("--cpu-sizes", default="20,50",
                    help="speaker counts of the lone gateway measured for CPU and RSS ('' to skip)")
    ap.add_argument("--cpu-broadcasts", type=int, default=6,
                    help="broadcasts per CPU measurement (figure: mean of all but the first)")
    ap.add_argument("--baseline", type=Path,
                    help="a checkout of main (e.g. `git worktree add --detach /tmp/main main`): its gateway is "
                         "measured the same way in the same run, and the ratios are reported")
    ap.add_argument("--profile", type=Path, help="write cProfile statistics of the measured broadcasts here")
    ap.add_argument("--ahead-s", type=float, default=5.0, help="lead of the scheduled broadcast")
    ap.add_argument("--clock-spread-ms", type=int, default=0,
                    help="simulated speakers' clocks are off by up to ± this (default 0: NTP-synced)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--dump", help="write every start of the scheduled broadcast to this JSON file")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_a: sys.exit(143))  # clean up the fleet on SIGTERM too

    work = Path(tempfile.mkdtemp(prefix="loaxa-fanout-"))
    sizes = [int(x) for x in args.cpu_sizes.split(",") if x.strip()]
    lone = [LONE_INDEX + k + 1 for k in range(len(sizes) * (2 if args.baseline else 1))]
    # the production central broker: an account per gateway (known up front: no reload per commune),
    # this script as the ``scheduler`` account (reads everything, writes only commands)
    central = CentralBroker(work / "central", gateways=[gateway_id(i) for i in [*range(1, args.gateways + 1), *lone]])
    central.start()
    rec = Recorder(central.port, user=central.user(SCHEDULER_USER))
    media_srv = MediaDir(work / "central-media")
    signer = make_signer()
    communes: list[Commune] = []
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3]}
    try:
        if args.gateways:
            result.update(run_fleet(args, work, central, rec, signer, media_srv, communes))
            for c in communes:  # free the cores for the lone-gateway measurements
                c.stop()
            communes.clear()
        index = LONE_INDEX
        for n in sizes:
            for root, prefix in [(ROOT, ""), *([(args.baseline.resolve(), "main_")] if args.baseline else [])]:
                index += 1
                m = measure_gateway(work, index, n, central, rec, signer, media_srv, args.cpu_broadcasts, root,
                                    args.profile)
                result[f"{prefix}gateway_cpu_s_per_broadcast_{n}"] = m["cpu_s_per_broadcast"]
                result[f"{prefix}gateway_cpu_s_first_broadcast_{n}"] = m["cpu_s_first"]
                result[f"{prefix}gateway_cpu_s_by_thread_{n}"] = m["cpu_s_by_thread"]
                result[f"{prefix}gateway_rss_mb_{n}"] = m["rss_mb"]
                result[f"{prefix}gateway_idle_cpu_pct_{n}"] = m["idle_cpu_pct"]
            if args.baseline:
                base = result[f"main_gateway_cpu_s_per_broadcast_{n}"]
                result[f"cpu_ratio_vs_main_{n}"] = round(result[f"gateway_cpu_s_per_broadcast_{n}"] / base, 3) \
                    if base else None
        result["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
        result.update(judge(result, args.gateways == 50 and args.speakers == 20))
        print(json.dumps(result))
        return 0
    finally:
        for c in communes:
            c.stop()
        rec.close()
        media_srv.close()
        central.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
