"""kill -9 of the gateway (``loaxa gateway run``) in the middle of a stream, then restart: nothing lost.

Delivery is at-least-once (docs/telemetry.md): readings committed but not yet acknowledged to the
broker, or written to InfluxDB but not yet marked delivered, are sent again after the restart.
InfluxDB keeps one point per series and timestamp, so such duplicates overwrite themselves with the
same value. What must hold, and is checked here: every reading sent is in InfluxDB with its exact
value and timestamp, nothing else is, and the point count equals the number of readings sent.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tests.conftest import spawn_loaxa, wait_until

from .helpers import GW, HealthWatcher, Publisher, config_dict, influx_values, topic, v1, write_config


def spawn(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return spawn_loaxa("gateway", "run", "--config", str(config), log=log)


def test_kill9_mid_stream_loses_nothing(tmp_path: Path, mosquitto: Any, influxdb1: Any) -> None:
    data = config_dict(tmp_path, mosquitto, influx=v1(influxdb1), devices=("s1",))
    data["health"] = {"interval_s": 1}
    cfg = write_config(tmp_path, data)
    log = tmp_path / "gateway.log"
    watcher = HealthWatcher(mosquitto)
    proc = spawn(cfg, log)
    wait_until(lambda: "spool_depth" in watcher.latest, 20, what="gateway health with spool figures")
    time.sleep(0.5)

    t0 = int(time.time() * 1000) - 600_000
    sent: dict[tuple[str, int], float] = {}
    batches = []
    for b in range(1500):  # 15,000 readings in 10-reading messages
        readings = [{"ts": t0 + b * 10 + j, "fields": {"level_cm": round(b * 0.37 + j * 0.011, 6)}} for j in range(10)]
        for r in readings:
            sent[("s1", r["ts"])] = r["fields"]["level_cm"]
        batches.append((topic("s1"), {"readings": readings}))

    pub = Publisher(mosquitto)
    done = threading.Event()

    def stream() -> None:
        for i in range(0, len(batches), 50):
            pub.publish_all(batches[i : i + 50])
            time.sleep(0.02)
        done.set()

    threading.Thread(target=stream, daemon=True).start()
    wait_until(lambda: influx_values(influxdb1, "environment", "level_cm"), 20, what="first readings written")
    proc.send_signal(signal.SIGKILL)  # mid-stream: the publisher keeps going, the broker queues for us
    proc.wait(5)
    at_kill = len(influx_values(influxdb1, "environment", "level_cm"))
    assert not done.is_set() and at_kill < len(sent), "the kill must land mid-stream"
    time.sleep(0.5)
    proc = spawn(cfg, log)
    try:
        assert done.wait(60), "publisher did not finish"
        got = wait_until(
            lambda: (v := influx_values(influxdb1, "environment", "level_cm")) and len(v) >= len(sent) and v,
            60,
            what="all readings after restart",
        )
        # the retained health tells the same story: nothing pending, nothing dropped, nothing refused
        health = wait_until(
            lambda: (h := watcher.latest).get("spool_depth") == 0 and h.get("influx_written") and h,
            20,
            what="health after the catch-up",
        )
        # the gateway writes its own health to InfluxDB too (every health.interval_s)
        gw_health = wait_until(lambda: influxdb1.points("gateway_health"), 10, what="gateway_health points")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        pub.close()
        watcher.close()
    assert got == sent
    assert len(got) == 15_000
    assert health["spool_dropped"] == 0 and health["telemetry_rejected"] == {}
    assert health["influx_last_write_ts"] > 0 and health["spool_quarantined"] == 0
    assert gw_health[-1]["gateway"] == GW and "spool_depth" in gw_health[-1] and "mem_used_pct" in gw_health[-1]
