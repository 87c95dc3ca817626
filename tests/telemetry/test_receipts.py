"""The faults of issue 15, for real: a commune LAN Mosquitto with the production config
(``commune-lan.conf.example``: autosave every second), the gateway as a process
(``loaxa gateway run``), InfluxDB 1.x, and ``kill -9`` by pid of the broker, the gateway or both,
in the middle of a stream.

Two sensors stream side by side: ``s1`` follows the receipt protocol (keeps each reading until the
gateway's receipt says it is on disk, sends again after reconnecting), ``s2`` is a plain QoS 1 sensor
that trusts the broker's PUBACK. ``s1`` must lose nothing in every fault. ``s2`` may lose what the
broker acknowledged and had not saved yet; its figures are recorded (``LOAXA_FAULT_FIGURES=file``
appends them as JSON lines), not asserted, except that what InfluxDB holds is exactly what was sent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from loaxa.brokers import LanBroker
from tests.conftest import spawn_loaxa, wait_until

from .faults import FaultSensor, stream
from .helpers import HealthWatcher, config_dict, influx_values, v1, write_config

N = 3000  # readings per sensor
RATE = 400.0  # readings per second per sensor


def spawn(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return spawn_loaxa("gateway", "run", "--config", str(config), log=log)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def figures(fault: str, sensor: FaultSensor, stored: dict[tuple[str, int], float]) -> dict[str, Any]:
    mine = {ts: v for (dev, ts), v in stored.items() if dev == sensor.device}
    with sensor.lock:
        sent, acked = dict(sensor.sent), set(sensor.acked)
        resent = sensor.buffer.resent if sensor.buffer is not None else 0
    return {
        "fault": fault,
        "receipts": sensor.receipts,
        "sent": len(sent),
        "acknowledged": len(acked),
        "in_influxdb": len(mine),
        "missing": len(set(sent) - set(mine)),
        "acknowledged_missing": len(acked - set(mine)),
        "duplicated": len(mine) - len(set(mine) & set(sent)),  # points InfluxDB holds beyond those sent
        "sent_again": resent,
        "wrong_values": sum(1 for ts, v in mine.items() if sent.get(ts) != v),
    }


@pytest.mark.parametrize("fault", ["broker", "broker+gateway", "gateway-down-then-broker"])
def test_fault_with_and_without_receipts(
    fault: str, tmp_path: Path, lan_broker_factory: Any, influxdb1: Any
) -> None:
    lan: LanBroker = lan_broker_factory("gw-test", devices=["s1", "s2"])
    assert "autosave_interval 1" in (lan.workdir / "mosquitto.conf").read_text()  # the production setting
    data = config_dict(tmp_path, lan, influx=v1(influxdb1), devices=("s1", "s2"))
    data["local_broker"]["reconnect_max_s"] = 1.0
    data["uplink"]["reconnect_max_s"] = 1.0
    data["health"] = {"interval_s": 1}
    cfg = write_config(tmp_path, data)
    log = tmp_path / "gateway.log"
    watcher = HealthWatcher(lan)
    gw = spawn(cfg, log)
    wait_until(lambda: "spool_depth" in watcher.latest, 30, what="gateway health")
    watcher.close()

    s1 = FaultSensor(lan, "s1", receipts=True, resend_after_s=5.0)
    s2 = FaultSensor(lan, "s2", receipts=False)
    t0 = int(time.time() * 1000) - 3_600_000
    stop = threading.Event()
    streamer = threading.Thread(target=stream, args=([s1, s2], t0, N, RATE, stop), daemon=True)
    streamer.start()
    try:
        wait_until(lambda: len(s2.sent) > N // 4, 30, what="a quarter of the stream sent")
        if fault == "broker":
            lan.kill()
            time.sleep(1.0)
            lan.start()
        elif fault == "broker+gateway":
            lan.kill()
            kill9(gw)
            time.sleep(1.0)
            lan.start()
            gw = spawn(cfg, log)
        else:  # the gateway is away while the broker queues for it; then the broker dies too
            kill9(gw)
            wait_until(lambda: len(s2.sent) > N // 2, 30, what="half the stream sent with the gateway down")
            lan.kill()
            time.sleep(1.0)
            lan.start()
            gw = spawn(cfg, log)
        streamer.join(60)
        assert not streamer.is_alive(), "the stream did not finish"

        def s1_done() -> bool:
            s1.resend_due()
            return s1.held() == 0

        wait_until(s1_done, 120, interval=0.5, what="every reading of the receipt-aware sensor receipted")
        wait_until(lambda: len([k for k in influx_values(influxdb1, "environment", "level_cm") if k[0] == "s1"]) >= N,
                   60, what="the receipt-aware sensor's readings in InfluxDB")
        # the plain sensor: wait until what InfluxDB holds stops changing
        last: list[int] = [-1]

        def settled() -> bool:
            n = len(influx_values(influxdb1, "environment", "level_cm"))
            same, last[0] = n == last[0], n
            return same

        wait_until(settled, 60, interval=3.0, what="InfluxDB settled")
        stored = influx_values(influxdb1, "environment", "level_cm")
    finally:
        stop.set()
        s1.close()
        s2.close()
        if gw.poll() is None:
            gw.send_signal(signal.SIGTERM)
            gw.wait(15)
    with_receipts, without = figures(fault, s1, stored), figures(fault, s2, stored)
    out = os.environ.get("LOAXA_FAULT_FIGURES")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(with_receipts) + "\n" + json.dumps(without) + "\n")
    print(json.dumps(with_receipts), json.dumps(without), sep="\n")
    assert with_receipts["sent"] == N and with_receipts["missing"] == 0
    assert with_receipts["wrong_values"] == 0 and with_receipts["duplicated"] == 0
    assert without["sent"] == N and without["wrong_values"] == 0 and without["duplicated"] == 0
