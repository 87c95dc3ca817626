"""Command hardening on a real gateway process between real Mosquitto brokers (issue 8, points 5-9):
commands bound to their gateway, strict canonical verification, capped lifetimes, derived key ids,
deferral while the gateway's clock is behind (libfaketime), handlers in their own tasks with a
deadline, and the replay store's purge."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.seen import SeenStore
from loaxa.brokers import SCHEDULER_USER
from loaxa.localsetup import gateway_config, make_signer, write_yaml
from protocol.canonical import canonical_json
from protocol.models import DeviceSetBody, PingBody
from protocol.signing import Signer
from tests.conftest import ROOT, loaxa_env, run_loaxa, wait_until
from tests.test_gateway_core import Watcher

GW = "xa-cmd"
CMD = f"loaxa/v1/{GW}/cmd"
ACK = f"loaxa/v1/{GW}/ack"
DAY_MS = 24 * 3600 * 1000
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Bench:
    def __init__(self, tmp: Path, central: Any, lan: Any, **cfg_extra: Any) -> None:
        self.tmp = tmp
        self.signer: Signer = make_signer()
        cfg = gateway_config(GW, data_dir=tmp / "gw", uplink_url=central.url, lan_url=lan.url, signer=self.signer,
                             health_interval_s=1, devices=cfg_extra.pop("devices", None),
                             uplink_auth=central.gateway_auth(GW), lan_auth=lan.gateway_auth())
        for section, values in cfg_extra.items():
            cfg.setdefault(section, {}).update(values)
        self.config = write_yaml(tmp / "gw.yaml", cfg)
        self.log = tmp / "gw.log"
        self.watcher = Watcher(central.port, central.user(SCHEDULER_USER))
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *, fake_offset: str | None = None) -> subprocess.Popen[bytes]:
        """Run ``loaxa gateway run``; with ``fake_offset`` (e.g. ``-3h``) under libfaketime, as a Pi
        whose clock is behind after a power cut."""
        env = loaxa_env()
        if fake_offset is not None:
            if not LIBFAKETIME.exists():
                pytest.fail("libfaketime is missing: apt-get install faketime", pytrace=False)
            env.update(LD_PRELOAD=str(LIBFAKETIME), FAKETIME=fake_offset, FAKETIME_DONT_FAKE_MONOTONIC="1")
        with open(self.log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "loaxa", "gateway", "run", "--config", str(self.config)],
                                    stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        self.procs.append(proc)
        n = len(self.statuses())
        wait_until(lambda: self.statuses()[n:][-1:] == ["online"], timeout=40, what="gateway online")
        return proc

    def statuses(self) -> list[str]:
        return [p["state"] for p in self.watcher.on(f"loaxa/v1/{GW}/status")]

    def acks(self, cmd_id: str) -> list[dict[str, Any]]:
        return [a for a in self.watcher.on(ACK) if a["id"] == cmd_id]

    def ack(self, cmd_id: str, n: int = 1, timeout: float = 20) -> dict[str, Any]:
        """The ``n``-th ack of ``cmd_id``."""
        got = wait_until(lambda: len(self.acks(cmd_id)) >= n and self.acks(cmd_id), timeout=timeout,
                         what=f"ack #{n} of {cmd_id}")
        return dict(got[n - 1])

    def send(self, payload: bytes | str | dict[str, Any]) -> None:
        raw = json.dumps(payload) if isinstance(payload, dict) else payload
        self.watcher.publish(CMD, raw)

    def signed(self, kind: str = "ping", body: Any = None, **kw: Any) -> dict[str, Any]:
        kw.setdefault("gw", GW)
        env = self.signer.envelope(kind, PingBody() if body is None else body, **kw)
        return dict(json.loads(env.model_dump_json()))

    def resigned(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` signed as it stands (what a careless or hostile signer could produce)."""
        unsigned = {k: v for k, v in data.items() if k != "sig"}
        return {**unsigned, "sig": base64.b64encode(self.signer.private_key.sign(canonical_json(unsigned))).decode()}

    def close(self) -> None:
        self.watcher.close()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def bench(tmp_path: Path, central_broker_factory: Any, lan_broker_factory: Any) -> Any:
    central, lan = central_broker_factory(gateways=[GW]), lan_broker_factory(GW)
    made: list[Bench] = []

    def make(**cfg: Any) -> Bench:
        b = Bench(tmp_path, central, lan, **cfg)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


# ---------------------------------------------------------------- point 5: the target gateway


def test_command_for_another_gateway_is_refused(bench: Any) -> None:
    """On main, a command signed for gateway A and published on B's topic was acted on by B."""
    b: Bench = bench()
    b.start()
    b.send(b.signed(cmd_id="for-other", gw="xa-other"))
    ack = b.ack("for-other")
    assert ack["ok"] is False and ack["reason"] == "wrong_gateway", ack
    no_gw = b.signed(cmd_id="no-gw")
    del no_gw["gw"]
    b.send(b.resigned(no_gw))
    ack = b.ack("no-gw")
    assert ack["ok"] is False and ack["reason"] == "missing_gateway", ack
    b.send(b.signed(cmd_id="for-me"))
    assert b.ack("for-me")["ok"] is True


# ---------------------------------------------------------------- point 6: strict canonical verification


def test_signature_covers_the_envelope_as_received(bench: Any) -> None:
    """On main, a genuine envelope with ``issued_at`` turned into a string or a float, or ``"v": true``,
    still verified (the signature was checked over the type-coerced model) and was acted on."""
    b: Bench = bench()
    b.start()
    as_string = b.signed(cmd_id="coerce-str")
    as_string["issued_at"] = str(as_string["issued_at"])
    as_bool = b.signed(cmd_id="coerce-bool")
    as_bool["v"] = True
    as_float = b.signed(cmd_id="coerce-float")
    float_raw = json.dumps(as_float).replace(f'"issued_at": {as_float["issued_at"]}',
                                             f'"issued_at": {as_float["issued_at"]}.0')
    dup = b.signed(cmd_id="dup-key")
    dup_raw = json.dumps(dup)[:-1] + ', "kind": "ping"}'
    big = b.signed(cmd_id="big-int")
    big_raw = json.dumps(big).replace(f'"issued_at": {big["issued_at"]}', '"issued_at": 36028797018963968')
    deep = b.signed(cmd_id="deep")
    deep["body"] = {"x": json.loads("[" * 40 + "]" * 40)}
    surrogate = b.signed(cmd_id="lone-surrogate")
    surrogate_raw = json.dumps(surrogate).replace('"kind": "ping"', '"kind": "\\ud800"')
    for payload in (as_string, as_bool, float_raw, dup_raw, big_raw, deep, surrogate_raw):
        b.send(payload)
    expected = {"coerce-str": "malformed", "coerce-bool": "malformed", "coerce-float": "float_not_allowed",
                "dup-key": "duplicate_key", "big-int": "int_out_of_range", "deep": "too_deep",
                "lone-surrogate": "bad_unicode"}
    for cmd_id, reason in expected.items():
        ack = b.ack(cmd_id)
        assert ack["ok"] is False and ack["reason"] == reason, ack
    assert "Traceback" not in b.log.read_text(errors="replace")
    # white space and key order on the wire do not matter: the canonical form does
    shuffled = b.signed(cmd_id="shuffled")
    b.send(json.dumps(dict(reversed(list(shuffled.items()))), indent=2))
    assert b.ack("shuffled")["ok"] is True


# ---------------------------------------------------------------- point 7: lifetime and key ids


def test_lifetime_is_capped_and_key_ids_are_derived(bench: Any, tmp_path: Path) -> None:
    b: Bench = bench()
    b.start()
    long_lived = b.signed(cmd_id="long-lived")
    long_lived["expires_at"] = long_lived["issued_at"] + 8 * DAY_MS
    b.send(b.resigned(long_lived))
    ack = b.ack("long-lived")
    assert ack["ok"] is False and ack["reason"] == "lifetime_too_long", ack

    # a trusted key under a free label is refused when the config is read
    cfg = json.loads(json.dumps(gateway_config("xa-label", data_dir=tmp_path / "l", uplink_url="mqtt://127.0.0.1:1",
                                               lan_url="mqtt://127.0.0.1:1", signer=b.signer)))
    cfg["trust"]["keys"][0]["id"] = "centre-key-1"
    path = write_yaml(tmp_path / "label.yaml", cfg)
    r = run_loaxa("config", "check", str(path))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "trust.keys[0]" in r.stdout + r.stderr and b.signer.key_id in r.stdout + r.stderr


# ---------------------------------------------------------------- point 8: a clock that is behind


def test_gateway_behind_in_time_defers_and_acts_after_restart(bench: Any) -> None:
    """A Pi three hours behind (libfaketime) keeps a command it sees as "future" on disk instead of
    refusing it (on main: ``future``, and the centre gave up), and acts on it once its clock is right,
    after a restart, without the command being sent again."""
    b: Bench = bench()
    late = b.start(fake_offset="-3h")
    b.send(b.signed(cmd_id="late-1"))
    first = b.ack("late-1")
    assert first["ok"] is False and first["reason"] == "deferred", first
    assert first["ts"] < now_ms() - 2 * 3600 * 1000  # the ack carries the gateway's (wrong) clock
    b.send(b.signed(cmd_id="late-1"))  # the centre sends it again: still deferred, kept once
    assert b.ack("late-1", 2)["reason"] == "deferred"
    far = b.signed(cmd_id="too-far", issued_at=now_ms() + 40 * DAY_MS)
    b.send(far)
    assert b.ack("too-far")["reason"] == "future"
    rows = sqlite3.connect(b.tmp / "gw" / "commands.db").execute("SELECT id FROM deferred").fetchall()
    assert rows == [("late-1",)]

    late.send_signal(signal.SIGTERM)
    assert late.wait(20) == 0
    b.start()  # NTP has answered: the clock is right
    done = b.ack("late-1", 3, timeout=30)
    assert done["ok"] is True, done
    assert len(b.acks("too-far")) == 1
    b.send(b.signed(cmd_id="late-1"))  # now it is an ordinary replay
    assert b.ack("late-1", 4)["reason"] == "replay"


# ---------------------------------------------------------------- point 9: tasks, deadlines, purge


def test_slow_command_blocks_nothing_and_hits_its_deadline(bench: Any) -> None:
    """``device.set`` on a speaker that never answers waits on its acks (here up to 60 s). On main it
    held the whole command loop; now a ping is answered meanwhile, a second copy of the running
    command is not run twice, and the deadline refuses it with ``timeout``."""
    b: Bench = bench(devices=[{"id": "loa-mute", "type": "ip_speaker"}],
                     broadcast={"ack_timeout_s": 10, "retries": 5}, trust={"command_timeout_s": 4})
    b.start()
    slow = b.signed("device.set", DeviceSetBody(targets=["loa-mute"], volume=40), cmd_id="slow-set")
    t0 = time.monotonic()
    b.send(slow)
    b.send(slow)  # the same id while the first copy runs
    b.send(b.signed(cmd_id="quick-ping"))
    assert b.ack("quick-ping")["ok"] is True
    second = b.ack("slow-set")
    assert second["ok"] is False and second["reason"] == "in_progress", second
    final = b.ack("slow-set", 2, timeout=30)
    assert final["ok"] is False and final["reason"] == "timeout", final
    assert 3.5 <= time.monotonic() - t0 < 30
    acks = [a["id"] for a in b.watcher.on(ACK)]
    assert acks.index("quick-ping") < len(acks) - 1 - acks[::-1].index("slow-set")
    assert len(b.acks("slow-set")) == 2  # ran once: one in_progress, one timeout


def test_replay_store_is_purged(bench: Any) -> None:
    """On main the seen store grew forever (``purge_seen`` was never called)."""
    b: Bench = bench()
    db = b.tmp / "gw" / "commands.db"
    store = SeenStore(db)
    now = now_ms()
    store.add("old-1", now - 60 * DAY_MS, now - 61 * DAY_MS)  # expired two months ago
    store.add("fresh-1", now + DAY_MS, now)
    store.close()
    b.start()
    b.send(b.signed(cmd_id="new-1"))
    assert b.ack("new-1")["ok"] is True

    def ids() -> set[str]:
        con = sqlite3.connect(db)
        try:
            return {r[0] for r in con.execute("SELECT id FROM seen")}
        finally:
            con.close()

    wait_until(lambda: "old-1" not in ids(), timeout=20, what="old seen id purged")
    assert {"fresh-1", "new-1"} <= ids()
    health = wait_until(lambda: [h for h in b.watcher.on(f"loaxa/v1/{GW}/health")
                                 if h.get("commands_seen_purged", 0) >= 1], what="purge counted in health")
    assert health[-1]["commands_seen_purged"] == 1
    assert os.path.exists(db)
