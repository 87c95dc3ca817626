"""Telemetry ingest benchmark: MQTT → durable spool → InfluxDB 1.6.7, on this machine, in one run.

    /work/venv/bin/python bench/ingest.py [--batch-readings 300000] [--single-readings 30000] ...

Starts its own Mosquitto and InfluxDB 1.6.7 (loaxa.servers) and a gateway as a child process
(``loaxa gateway run``, with ``mqtt_sensor`` devices), with ``mosquitto_pub`` as the sensors, then
measures:

* durable end-to-end readings/s: from the first publish until InfluxDB has every reading, for
  100-reading batch messages and for 1-reading messages (QoS 1, PUBACK only after the SQLite commit);
* a naive baseline: paho ``on_message`` → one synchronous HTTP ``/write`` per message;
* the ceiling: InfluxDB's own ingest rate from a plain batch writer (5,000-line gzip batches);
* the time to drain 432,000 spooled readings (24 h of 50 sensors every 10 s) after an outage;
* the gateway process's peak RSS and CPU-seconds per 10,000 readings.

A reading counts as written when the gateway's spool has marked it delivered (after InfluxDB's 2xx);
at the end the InfluxDB point counts are checked against what was sent.

Prints the figures and, last, one JSON line. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402
import yaml  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from loaxa.brokers import LanBroker  # noqa: E402
from loaxa.servers import InfluxDB1  # noqa: E402
from protocol.signing import key_id_for, public_key_b64  # noqa: E402

GW = "bench-gw"
TICKS = os.sysconf("SC_CLK_TCK")
EXTRA_ENV = dict(kv.split("=", 1) for kv in os.environ.get("BENCH_PIPELINE_ENV", "").split() if "=" in kv)


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------- process measurements


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ---------------------------------------------------------------- helpers


class Pipeline:
    """The gateway (``loaxa gateway run``) as a child process. Progress is read from its spool file
    (read-only, as ``loaxa gateway export`` does): a reading counts as written once the spool's
    ``delivered_upto`` mark, moved only after InfluxDB answered 2xx, has passed it."""

    def __init__(self, workdir: Path, broker: LanBroker, influx: InfluxDB1, devices: list[str]) -> None:
        self.workdir = workdir
        self.broker = broker
        self.data_dir = workdir / "gwdata"
        self.spool = self.data_dir / "telemetry-spool.sqlite3"
        trusted = Ed25519PrivateKey.generate().public_key()
        cfg = {
            "gateway": {"id": GW, "commune": "Xã Benchmark", "data_dir": str(self.data_dir)},
            "uplink": broker.gateway_endpoint(),  # telemetry needs no centre: the LAN broker stands in
            "local_broker": broker.gateway_endpoint(),
            "trust": {"keys": [{"id": key_id_for(trusted), "public_key": public_key_b64(trusted)}]},
            "influx": {"api": "v1", "url": influx.url, "database": influx.database},
            "devices": [{"id": d, "type": "mqtt_sensor", "measurement": "environment"} for d in [*devices, "probe"]],
        }
        self.config = workdir / "gateway.yaml"
        self.config.write_text(yaml.safe_dump(cfg, allow_unicode=True))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ingest: bool = True) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **EXTRA_ENV)
        out = open(self.workdir / "gateway.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loaxa", "gateway", "run", "--config", str(self.config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        out.close()
        if not wait_ingest:
            return
        # ready when a probe reading sent over MQTT is in the spool: the telemetry client is subscribed
        deadline = time.monotonic() + 30
        while (
            self.query("SELECT COUNT(*) FROM readings r JOIN series s ON s.id = r.series WHERE s.device = 'probe'") == 0
        ):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"gateway did not start; see {self.workdir / 'gateway.log'}")
            probe = self.broker.add_device("probe")
            subprocess.run(
                [
                    "mosquitto_pub",
                    "-p",
                    str(self.broker.device_port),
                    "-u",
                    probe.username,
                    "-P",
                    probe.password,
                    "-q",
                    "1",
                    "-t",
                    topic("probe"),
                    "-m",
                    json.dumps({"ts": int(time.time() * 1000), "fields": {"v": 1}}),
                ],
                check=False,
            )
            time.sleep(0.2)

    def query(self, sql: str, *args: Any) -> int:
        """One integer from the spool file (0 while it does not exist yet)."""
        if not self.spool.exists():
            return 0
        conn = sqlite3.connect(f"file:{self.spool}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute(sql, args).fetchone()
            return int(row[0] or 0) if row else 0
        except sqlite3.OperationalError:  # tables not created yet
            return 0
        finally:
            conn.close()

    def last_id(self) -> int:
        return max(
            self.query("SELECT MAX(id) FROM readings"),
            self.query("SELECT value FROM meta WHERE key = 'delivered_upto'"),
        )

    def wait_written(self, device: str, n: int, after_id: int, timeout: float = 300) -> float:
        """Wait until the ``n`` readings of ``device`` stored after row ``after_id`` are delivered."""
        deadline = time.monotonic() + timeout
        sql = (
            "SELECT COUNT(*) FROM readings WHERE id > ? "
            "AND series = (SELECT id FROM series WHERE device = ?) "
            "AND id <= (SELECT value FROM meta WHERE key = 'delivered_upto')"
        )
        while time.monotonic() < deadline:
            if self.query(sql, after_id, device) >= n:
                return time.monotonic()
            time.sleep(0.05)
        raise RuntimeError(f"only {self.query(sql, after_id, device)} of {n} readings written in {timeout}s")

    def wait_delivered_upto(self, row_id: int, timeout: float = 300) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.query("SELECT value FROM meta WHERE key = 'delivered_upto'") >= row_id:
                return time.monotonic()
            time.sleep(0.05)
        raise RuntimeError(f"spool not drained to row {row_id} in {timeout}s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


def start_publisher(broker: LanBroker, topic_: str, payloads: list[bytes]) -> subprocess.Popen[bytes]:
    """The sensors: ``mosquitto_pub -l`` (C, QoS 1, one message per line), so the benchmark's own
    publishing costs little CPU next to the gateway, as real sensors are other devices. It logs in as
    the device of the topic, with its own account, as on a production commune broker."""
    device = broker.add_device(topic_.split("/")[4])
    proc = subprocess.Popen(
        [
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            str(broker.device_port),
            "-u",
            device.username,
            "-P",
            device.password,
            "-t",
            topic_,
            "-l",
            "-q",
            "1",
            "-M",
            "1000",
            "-V",
            "mqttv5",
            "-i",
            f"pub-{time.monotonic_ns()}",
        ],
        stdin=subprocess.PIPE,
    )
    assert proc.stdin is not None
    threading.Thread(target=_feed, args=(proc, payloads), daemon=True).start()
    return proc


def _feed(proc: subprocess.Popen[bytes], payloads: list[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"".join(p + b"\n" for p in payloads))
    proc.stdin.close()


def influx_count(influx: InfluxDB1, where: str, database: str | None = None) -> int:
    ans: Any = influx.query(f'SELECT count("v") FROM "environment" {where}', database=database)
    try:
        return int(ans["results"][0]["series"][0]["values"][0][1])
    except (KeyError, IndexError):
        return 0


def topic(dev: str) -> str:
    return f"loaxa/v1/{GW}/dev/{dev}/telemetry"


# ---------------------------------------------------------------- phases


def durable_rate(
    pipe: Pipeline, broker: LanBroker, dev: str, n_readings: int, per_msg: int, t_base: int
) -> tuple[float, float]:
    """Readings/s from first publish to all in InfluxDB; CPU-seconds of the pipeline per 10k readings."""
    msgs: list[bytes] = []
    for m in range(n_readings // per_msg):
        if per_msg == 1:
            msgs.append(json.dumps({"ts": t_base + m, "fields": {"v": m * 0.5}}).encode())
        else:
            msgs.append(
                json.dumps(
                    {
                        "readings": [
                            {"ts": t_base + m * per_msg + j, "fields": {"v": (m * per_msg + j) * 0.5}}
                            for j in range(per_msg)
                        ]
                    }
                ).encode()
            )
    after = pipe.last_id()
    cpu0 = cpu_seconds(pipe.pid)
    t0 = time.monotonic()
    pub = start_publisher(broker, topic(dev), msgs)
    t1 = pipe.wait_written(dev, n_readings, after)
    cpu = cpu_seconds(pipe.pid) - cpu0
    pub.wait(60)
    return n_readings / (t1 - t0), cpu / n_readings * 10_000


def baseline_rate(broker: LanBroker, influx: InfluxDB1, n_msgs: int, t_base: int) -> float:
    """paho on_message → one synchronous /write per message (auto-ack, not durable)."""
    done = threading.Event()
    count = [0]
    conn = http.client.HTTPConnection("127.0.0.1", influx.port, timeout=10)
    path = f"/write?db={influx.database}&precision=ms"

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        data = json.loads(msg.payload)
        body = f"environment,gateway={GW},device=baseline v={float(data['fields']['v'])!r} {data['ts']}"
        conn.request("POST", path, body=body)
        resp = conn.getresponse()
        resp.read()
        count[0] += 1
        if count[0] >= n_msgs:
            done.set()

    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="baseline-sub", protocol=paho.MQTTv5)
    sub.username_pw_set(*broker.gateway_auth())
    sub.on_message = on_message
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    sub.subscribe(topic("baseline"), qos=1)
    subscribed.wait(10)
    msgs = [json.dumps({"ts": t_base + i, "fields": {"v": i * 0.5}}).encode() for i in range(n_msgs)]
    t0 = time.monotonic()
    pub = start_publisher(broker, topic("baseline"), msgs)
    done.wait(300)
    elapsed = time.monotonic() - t0
    pub.wait(60)
    sub.disconnect()
    sub.loop_stop()
    return n_msgs / elapsed


def ceiling_rate(influx: InfluxDB1, n_points: int, t_base: int, batch: int = 5000) -> float:
    """A plain batch writer: pre-rendered 5,000-line gzip bodies, sequential POSTs, no spool."""
    influx.query('CREATE DATABASE "ceiling"')
    bodies = []
    for start in range(0, n_points, batch):
        text = "\n".join(
            f"environment,gateway={GW},device=c{i % 50} v={i * 0.5!r} {t_base + i}"
            for i in range(start, min(start + batch, n_points))
        )
        bodies.append(gzip.compress(text.encode(), 1))
    conn = http.client.HTTPConnection("127.0.0.1", influx.port, timeout=30)
    t0 = time.monotonic()
    for body in bodies:
        conn.request("POST", "/write?db=ceiling&precision=ms", body=body, headers={"Content-Encoding": "gzip"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 204:
            raise RuntimeError(f"ceiling write failed: {resp.status}")
    return n_points / (time.monotonic() - t0)


def prefill_spool(pipe: Pipeline, n_sensors: int, interval_ms: int, hours: int) -> int:
    """Put 24 h of readings from n sensors straight into the pipeline's spool file (as an outage
    would have left it), through the same Spool class and group commits."""
    from gateway.telemetry.lineproto import format_fields
    from gateway.telemetry.service import SPOOL_FILE
    from gateway.telemetry.spool import Spool

    async def fill() -> int:
        spool = Spool(pipe.data_dir / SPOOL_FILE, max_bytes=512 * 1024 * 1024, retain_days=60)
        await spool.open()
        task = asyncio.create_task(spool.run())
        start = int(time.time() * 1000) - hours * 3_600_000 - 60_000
        steps = hours * 3_600_000 // interval_ms
        n = 0
        chunk: list[tuple[int, str, str, str]] = []
        for k in range(steps):
            ts = start + k * interval_ms
            for s in range(n_sensors):
                chunk.append((ts, f"sim-{s}", "environment", format_fields({"v": 100.0 + (k % 500) * 0.25 + s})))
            if len(chunk) >= 20_000:
                await spool.put(chunk)
                n += len(chunk)
                chunk = []
        await spool.put(chunk)
        n += len(chunk)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await spool.close()
        return n

    return asyncio.run(fill())


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-readings", type=int, default=300_000)
    ap.add_argument("--single-readings", type=int, default=30_000)
    ap.add_argument("--baseline-messages", type=int, default=3_000)
    ap.add_argument("--ceiling-points", type=int, default=500_000)
    ap.add_argument("--drain-sensors", type=int, default=50)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="loaxa-bench-ingest-"))
    broker = LanBroker(work / "mosquitto", gateway_id=GW).start()  # the production LAN ACL, accounts
    influx = InfluxDB1(work / "influxdb").start()
    sims = [f"sim-{i}" for i in range(args.drain_sensors)]
    pipe = Pipeline(work, broker, influx, ["batch", "single", *sims])
    result: dict[str, Any] = {}
    try:
        t_base = int(time.time() * 1000) - 2 * 86_400_000
        pipe.start()
        log(f"work dir {work}; gateway pid {pipe.pid}")

        batch_rate, batch_cpu = durable_rate(pipe, broker, "batch", args.batch_readings, 100, t_base)
        log(f"durable, 100-reading messages: {batch_rate:12,.0f} readings/s   ({batch_cpu:.2f} CPU-s per 10k readings)")
        single_rate, single_cpu = durable_rate(pipe, broker, "single", args.single_readings, 1, t_base + 10_000_000)
        log(
            f"durable, 1-reading messages:   {single_rate:12,.0f} readings/s   "
            f"({single_cpu:.2f} CPU-s per 10k readings)"
        )
        rss_after_stream = peak_rss_mb(pipe.pid)
        pipe.stop()

        base = baseline_rate(broker, influx, args.baseline_messages, t_base + 20_000_000)
        log(f"naive baseline (1 sync write per message): {base:,.0f} readings/s")
        ceiling = ceiling_rate(influx, args.ceiling_points, t_base)
        log(f"ceiling (plain 5,000-line gzip batch writer): {ceiling:,.0f} points/s")

        t_fill = time.monotonic()
        n_spooled = prefill_spool(pipe, args.drain_sensors, 10_000, 24)
        log(
            f"spooled {n_spooled:,} readings (24 h of {args.drain_sensors} sensors at 10 s) in "
            f"{time.monotonic() - t_fill:.1f} s"
        )
        last = pipe.last_id()
        first = pipe.query("SELECT value FROM meta WHERE key = 'delivered_upto'") + 1
        t0 = time.monotonic()
        pipe.start(wait_ingest=False)
        t_first = pipe.wait_delivered_upto(first)  # the first batch is in: start-up is over
        t1 = pipe.wait_delivered_upto(last)
        drain = t1 - t0
        drain_after_start = t1 - t_first
        rss_drain = peak_rss_mb(pipe.pid)
        drain_cpu = cpu_seconds(pipe.pid) / n_spooled * 10_000
        pipe.stop()
        in_db = influx_count(influx, "WHERE device =~ /^sim-/")
        log(
            f"drain of {n_spooled:,} spooled readings: {drain:.1f} s from the gateway's start "
            f"({drain_after_start:.1f} s from its first write, {n_spooled / drain_after_start:,.0f} readings/s); "
            f"InfluxDB holds {in_db:,}"
        )
        checks = {
            "batch": influx_count(influx, "WHERE device = 'batch'") == args.batch_readings,
            "single": influx_count(influx, "WHERE device = 'single'") == args.single_readings,
            "drain": in_db == n_spooled,
        }
        rss = max(rss_after_stream, rss_drain)
        log(f"gateway peak RSS: {rss_after_stream:.1f} MB (streaming), {rss_drain:.1f} MB (drain)")
        log(f"CPU-seconds per 10,000 readings: batch {batch_cpu:.2f}, single {single_cpu:.2f}, drain {drain_cpu:.2f}")
        log(
            f"ratios: batch/baseline {batch_rate / base:.1f}x, single/baseline {single_rate / base:.1f}x, "
            f"batch/ceiling {batch_rate / ceiling:.2f}, "
            f"drain-rate/ceiling {n_spooled / drain_after_start / ceiling:.2f}"
        )
        log(f"counts exact in InfluxDB: {checks}")
        targets = {
            "batch>=50000": batch_rate >= 50_000,
            "single>=5000": single_rate >= 5_000,
            "drain<=30s": drain <= 30,
            "rss<=80MB": rss <= 80,
        }
        log(f"targets met: {targets}")
        result = {
            "batch_readings_per_s": round(batch_rate),
            "single_readings_per_s": round(single_rate),
            "baseline_readings_per_s": round(base),
            "ceiling_points_per_s": round(ceiling),
            "batch_vs_baseline": round(batch_rate / base, 1),
            "single_vs_baseline": round(single_rate / base, 1),
            "batch_vs_ceiling": round(batch_rate / ceiling, 3),
            "drain_s": round(drain, 2),
            "drain_after_startup_s": round(drain_after_start, 2),
            "drain_readings": n_spooled,
            "rss_mb": round(rss, 1),
            "cpu_s_per_10k_batch": round(batch_cpu, 3),
            "cpu_s_per_10k_single": round(single_cpu, 3),
            "cpu_s_per_10k_drain": round(drain_cpu, 3),
            "counts_exact": all(checks.values()),
            "targets_met": targets,
        }
    finally:
        pipe.stop()
        influx.stop()
        broker.stop()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
