"""Two scheduler workers (``loaxa scheduler run``) share one PostgreSQL and one central Mosquitto with
the production ACL: acks and playback reports reach them through the MQTT 5 shared subscriptions
``$share/loaxa-sched/...``. One worker is killed (SIGKILL) in the middle of a broadcast's reports
and comes back, as systemd restarts it; every report is recorded, once, and each gateway got its
plan exactly once (only the worker that created the broadcast published it; the other did not)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine, text

from loaxa.brokers import CentralBroker
from loaxa.localsetup import write_yaml
from protocol.models import Ack, PlaybackEvent, Status
from protocol.signing import now_ms
from protocol.topics import ack_topic, cmd_topic, device_topic, event_topic, status_topic
from scheduler.db import Store
from tests.conftest import spawn_loaxa, wait_until
from tests.sched_support import Keys, add_token, bearer, make_tone, scheduler_config_dict

GATEWAYS = [f"xa-chia-{i:02d}" for i in range(8)]
SPEAKERS = [f"loa-{i}" for i in range(6)]
GROUP = "loaxa-sched"


class Gateway:
    """One simulated gateway on its own broker account: acks plans and reports when told to."""

    def __init__(self, broker: CentralBroker, gw: str):
        self.gw = gw
        self.plans: list[dict[str, Any]] = []
        self.got_plan = threading.Event()
        user, password = broker.gateway_auth(gw)
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=paho.MQTTv5)
        self.c.username_pw_set(user, password)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", broker.port)
        self.c.subscribe(cmd_topic(gw), qos=1)
        self.c.loop_start()
        self.c.publish(status_topic(gw), Status(state="online", ts=now_ms()).model_dump_json(), qos=1, retain=True)
        for dev in SPEAKERS:
            self.c.publish(device_topic(gw, dev, "state"), json.dumps({"online": True, "volume": 60}), qos=1,
                           retain=True)

    def _on_message(self, c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        env = json.loads(msg.payload)
        c.publish(ack_topic(self.gw), Ack(id=env["id"], ok=True, ts=now_ms()).model_dump_json(), qos=1)
        if env["kind"] == "broadcast.plan":
            self.plans.append(env)
            self.got_plan.set()

    def report(self, bid: str, state: Literal["started", "finished"]) -> list[paho.MQTTMessageInfo]:
        return [
            self.c.publish(event_topic(self.gw),
                           PlaybackEvent(broadcast_id=bid, device=dev, state=state, at=now_ms()).model_dump_json(),
                           qos=1)
            for dev in SPEAKERS
        ]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def fleet(central: CentralBroker) -> Iterator[list[Gateway]]:
    gws = [Gateway(central, gw) for gw in GATEWAYS]
    yield gws
    for g in gws:
        g.close()


@pytest.fixture
def central(central_broker_factory: Any) -> CentralBroker:
    broker: CentralBroker = central_broker_factory(gateways=GATEWAYS, workers=("scheduler-2",))
    return broker


def worker_config(tmp: Path, central: CentralBroker, keys: Keys, db: str, account: str, name: str) -> Path:
    cfg = scheduler_config_dict(
        tmp, central, keys, gateways=GATEWAYS,
        scheduler={"data_dir": str(tmp / "shared-data"), "database_url": db},  # media files shared too
        dispatch={"share_group": GROUP, "resend_interval_s": 3600},
    )
    cfg["broker"] = central.endpoint(account)
    return write_yaml(tmp / f"{name}.yaml", cfg)


def received(port: int, headers: dict[str, str]) -> float:
    """The worker's count of messages applied to the database (its /metrics)."""
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=headers, timeout=10)
    for line in r.text.splitlines():
        if line.startswith("loaxa_scheduler_messages_received_total"):
            return float(line.split()[-1])
    return 0.0


def healthy(port: int) -> bool:
    try:
        return bool(httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5).json().get("mqtt_connected"))
    except (httpx.HTTPError, ValueError):
        return False


def test_two_workers_share_reports_and_survive_a_kill(tmp_path: Path, postgres_url: str, central: CentralBroker,
                                                      fleet: list[Gateway]) -> None:
    keys = Keys()
    conf_a = worker_config(tmp_path, central, keys, postgres_url, "scheduler", "a")
    conf_b = worker_config(tmp_path, central, keys, postgres_url, "scheduler-2", "b")
    port_a = yaml.safe_load(conf_a.read_text())["http"]["port"]
    port_b = yaml.safe_load(conf_b.read_text())["http"]["port"]
    procs: list[subprocess.Popen[bytes]] = []

    def start(conf: Path, name: str) -> subprocess.Popen[bytes]:
        p = spawn_loaxa("-v", "scheduler", "run", "--config", str(conf), log=tmp_path / f"{name}.log")
        procs.append(p)
        return p

    engine = create_engine(postgres_url)
    try:
        start(conf_a, "a")  # the first worker creates the schema; then the second joins
        wait_until(lambda: healthy(port_a), 90, what="worker a up")
        b = start(conf_b, "b")
        wait_until(lambda: healthy(port_b), 90, what="worker b up")

        def count(sql: str, **kw: Any) -> int:
            with engine.connect() as conn:
                return int(conn.execute(text(sql), kw).scalar_one())

        wait_until(lambda: count("SELECT count(*) FROM speakers") == len(GATEWAYS) * len(SPEAKERS), 60,
                   what="every speaker learned")
        store = Store(postgres_url)
        headers = bearer(add_token(store))
        store.close()
        with httpx.Client(base_url=f"http://127.0.0.1:{port_a}", headers=headers, timeout=60) as http:
            media = http.post("/api/media", content=make_tone(tmp_path / "t.wav", 1.0).read_bytes())
            assert media.status_code == 201, media.text
            r = http.post("/api/broadcasts", json={"media_sha256": media.json()["sha256"], "targets": GATEWAYS})
            assert r.status_code == 201, r.text
            bid = r.json()["id"]
        for g in fleet:
            assert g.got_plan.wait(60), f"{g.gw} got no plan"
        wait_until(lambda: count("SELECT count(*) FROM gateway_deliveries WHERE broadcast_id = :b "
                                 "AND state = 'delivered'", b=bid) == len(GATEWAYS), 60, what="every ack recorded")
        for g in fleet:
            g.report(bid, "started")
        learned = len(GATEWAYS) * (1 + len(SPEAKERS))  # retained statuses and speaker states: every worker
        # the shared reports and acks are split between the workers: b takes its part
        wait_until(lambda: received(port_b, headers) > learned, 60, what="worker b applying shared messages")
        # mid-broadcast: worker b dies while the "finished" reports pour in (some of them are on their
        # way to it, or in its memory, not yet in the database)
        sent = [info for g in fleet for info in g.report(bid, "finished")]
        os.kill(b.pid, signal.SIGKILL)
        b.wait(30)
        for info in sent:
            info.wait_for_publish(30)
        time.sleep(0.5)  # let the broker see the dead connection before b comes back
        start(conf_b, "b2")  # systemd's Restart=always: the same account and client id, same session
        wait_until(lambda: healthy(port_b), 90, what="worker b back")
        total = len(GATEWAYS) * len(SPEAKERS)
        wait_until(lambda: count("SELECT count(*) FROM speaker_deliveries WHERE broadcast_id = :b "
                                 "AND state = 'finished'", b=bid) == total, 90, what="every report recorded")
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT gateway_id, device_id, state, started_at, ended_at FROM "
                                     "speaker_deliveries WHERE broadcast_id = :b"), {"b": bid}).all()
            plans = conn.execute(text("SELECT gateway_id, attempts FROM gateway_deliveries WHERE broadcast_id = :b"),
                                 {"b": bid}).all()
        assert len(rows) == total and len({(r.gateway_id, r.device_id) for r in rows}) == total  # once each
        assert all(r.state == "finished" and r.started_at and r.ended_at for r in rows)
        # exactly one worker dispatched it: each gateway got its plan once, with one id
        assert {g.gw: len(g.plans) for g in fleet} == {gw: 1 for gw in GATEWAYS}
        assert {p.gateway_id: p.attempts for p in plans} == {gw: 1 for gw in GATEWAYS}
        log_a = (tmp_path / "a.log").read_text()
        assert "dispatch lock" in log_a  # a took the lock first; b never sent anything again
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        engine.dispose()
