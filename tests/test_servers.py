"""The harness itself: each real server starts, answers and stores what it is sent."""

from __future__ import annotations

import pwd
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from loaxa.servers import InfluxDB1, Mosquitto, MosquittoUser, VictoriaMetrics
from tests.conftest import wait_until


def _post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(resp.status)


def test_influxdb1_roundtrip(influxdb1: InfluxDB1) -> None:
    ts = int(time.time() * 1000)
    assert _post(f"{influxdb1.url}/write?db={influxdb1.database}&precision=ms",
                 f"water_level,gateway=g1 level_cm=132.5 {ts}".encode()) == 204
    points = influxdb1.points("water_level")
    assert points == [{"time": ts, "gateway": "g1", "level_cm": 132.5}]


def test_victoria_metrics_accepts_v2_write(victoria: VictoriaMetrics) -> None:
    ts = int(time.time() * 1000)
    assert _post(f"{victoria.url}/api/v2/write?bucket=loaxa&precision=ms",
                 f"rain,gateway=g1 mm=0.2 {ts}".encode()) == 204
    series = wait_until(lambda: victoria.export('{__name__="rain_mm"}'), what="the sample in VictoriaMetrics")
    assert series[0]["values"] == [0.2]
    assert series[0]["timestamps"] == [ts]


def test_mosquitto_acl_keeps_gateways_apart(mosquitto_factory) -> None:  # type: ignore[no-untyped-def]
    broker: Mosquitto = mosquitto_factory(users=[
        MosquittoUser("gw-a", "pa", ["topic readwrite loaxa/v1/gw-a/#"]),
        MosquittoUser("watcher", "pw", ["topic read loaxa/v1/#"]),
    ])
    got: list[str] = []
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    watcher.username_pw_set("watcher", "pw")
    watcher.on_message = lambda _c, _u, msg: got.append(msg.topic)
    watcher.connect("127.0.0.1", broker.port)
    watcher.subscribe("loaxa/v1/#", qos=1)
    watcher.loop_start()
    gw = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    gw.username_pw_set("gw-a", "pa")
    gw.connect("127.0.0.1", broker.port)
    gw.loop_start()
    try:
        time.sleep(0.3)
        gw.publish("loaxa/v1/gw-b/status", b"{}", qos=1).wait_for_publish(5)  # not its own: dropped
        gw.publish("loaxa/v1/gw-a/status", b"{}", qos=1).wait_for_publish(5)
        wait_until(lambda: "loaxa/v1/gw-a/status" in got, what="gw-a's own status")
        time.sleep(0.3)
        assert got == ["loaxa/v1/gw-a/status"]
    finally:
        gw.loop_stop()
        watcher.loop_stop()


def test_missing_binary_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from loaxa import servers

    monkeypatch.setattr(servers, "SEARCH_PATH", str(tmp_path))
    with pytest.raises(servers.ServerUnavailable, match="apt-get install influxdb"):
        InfluxDB1(tmp_path / "x").start()


def test_postgresql_cluster_runs_unprivileged_and_is_removed(tmp_path: Path) -> None:
    import os

    import psycopg

    from loaxa.servers import PostgreSQL

    pg = PostgreSQL(tmp_path / "pg").start()
    try:
        assert pg.proc is not None and pg.cluster_dir is not None
        uid = next(int(line.split()[1]) for line in Path(f"/proc/{pg.proc.pid}/status").read_text().splitlines()
                   if line.startswith("Uid:"))
        assert uid != 0 and (os.geteuid() != 0 or uid == pwd.getpwnam(os.environ.get("LOAXA_PG_USER", "nobody")).pw_uid)
        url = pg.create_database("t_harness")
        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
            conn.execute("CREATE TABLE t (x text)")
            conn.execute("INSERT INTO t VALUES ('Loa Xã')")
            assert conn.execute("SELECT x FROM t").fetchone() == ("Loa Xã",)
        cluster = pg.cluster_dir
    finally:
        pg.stop()
    assert not cluster.exists() and pg.proc is None
