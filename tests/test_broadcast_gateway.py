"""Gateway side of the broadcast path, end to end: a real gateway process between a real central
Mosquitto and a real commune Mosquitto, simulated IP speakers as a real process, media over HTTP.

Each test signs its own commands with protocol.signing (the role of the central dispatcher).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loaxa.brokers import LAN_GATEWAY_USER, SCHEDULER_USER, CentralBroker, LanBroker
from loaxa.clock import now_ms
from loaxa.localsetup import gateway_config, make_signer, write_yaml
from loaxa.servers import free_port
from protocol.models import (
    PRIORITY_EMERGENCY,
    PRIORITY_NORMAL,
    BroadcastCancelBody,
    BroadcastPlanBody,
    MediaRef,
    PlanItem,
)
from protocol.signing import Signer
from tests.broadcast_env import MediaServer, Recorder, tone_wav
from tests.conftest import spawn_loaxa, wait_until

GW = "xa-bc"


class Bench:
    def __init__(self, tmp: Path, central: CentralBroker, lan: LanBroker, count: int, faults: list[str],
                 extra_devices: list[dict[str, Any]] | None = None, settings: dict[str, Any] | None = None) -> None:
        self.tmp = tmp
        self.central = central
        self.lan = lan
        self.signer: Signer = make_signer()
        self.media = MediaServer()
        self.speakers = [f"loa-{i:02d}" for i in range(1, count + 1)]
        media_port = free_port()
        cfg = gateway_config(GW, data_dir=tmp / "gw", uplink_url=central.url, lan_url=lan.url, signer=self.signer,
                             devices=[{"id": s, "type": "ip_speaker"} for s in self.speakers] + (extra_devices or []),
                             health_interval_s=2, uplink_auth=central.gateway_auth(GW), lan_auth=lan.gateway_auth())
        cfg["broadcast"] = {"now_lead_ms": 400, "dispatch_ahead_ms": 1500, "report_grace_s": 3,
                            "ack_timeout_s": 0.5, "retries": 2, "media_listen": f"127.0.0.1:{media_port}",
                            "media_public_url": f"http://127.0.0.1:{media_port}", **(settings or {})}
        self.config = write_yaml(tmp / "gw.yaml", cfg)
        self.up = Recorder(central.port, central.user(SCHEDULER_USER))  # plays the centre: reads all, sends cmd
        self.down = Recorder(lan.port, lan.user(LAN_GATEWAY_USER))
        self.procs: list[Any] = []
        self.gateway: Any = None
        self.start_gateway()
        fault_args = [a for f in faults for a in ("--fault", f)]
        creds = lan.write_credentials(tmp / "speaker-passwords.json", self.speakers)
        self.sim = spawn_loaxa("sim", "speakers", "--broker", lan.device_url, "--gateway", GW, "--count", str(count),
                               "--credentials", str(creds), *fault_args, log=tmp / "sim.log")
        self.procs.append(self.sim)
        wait_until(lambda: all(self.speaker_online(s) for s in self.speakers), what="simulated speakers online")

    def start_gateway(self) -> None:
        self.gateway = spawn_loaxa("gateway", "run", "--config", str(self.config), log=self.tmp / "gw.log")
        self.procs.append(self.gateway)
        wait_until(lambda: self.up.on(f"{GW}/status")[-1:] == [{**self.up.on(f"{GW}/status")[-1], "state": "online"}]
                   if self.up.on(f"{GW}/status") else False, timeout=45, what="gateway online")

    def kill_gateway(self) -> None:
        self.gateway.send_signal(signal.SIGKILL)
        self.gateway.wait(10)

    def speaker_online(self, dev: str) -> bool:
        st = self.down.on(f"/dev/{dev}/state")
        return bool(st) and st[-1].get("online") is True

    def send(self, kind: str, body: Any, **kw: Any) -> str:
        env = self.signer.envelope(kind, body, gw=GW, **kw)
        self.up.publish(f"loaxa/v1/{GW}/cmd", env.model_dump_json())
        return env.id

    def ack(self, cmd_id: str, timeout: float = 10) -> dict[str, Any]:
        acks = wait_until(lambda: [a for a in self.up.on(f"{GW}/ack") if a.get("id") == cmd_id], timeout=timeout,
                          what=f"ack of {cmd_id}")
        return dict(acks[-1])

    def plan(self, bid: str, media: MediaRef, *, start_at: int | None = None, priority: int = PRIORITY_NORMAL,
             targets: Any = "*") -> dict[str, Any]:
        item = PlanItem(broadcast_id=bid, media=media, start_at=start_at, priority=priority, targets=targets, volume=60)
        return self.ack(self.send("broadcast.plan", BroadcastPlanBody(items=[item])))

    def wait_states(self, bid: str, state: str, devices: list[str] | None = None,
                    timeout: float = 20) -> dict[str, Any]:
        want = set(devices or self.speakers)
        return wait_until(lambda: (lambda got: got if want <= set(got) else None)(self.up.playback(bid, state)),
                          timeout=timeout, what=f"{state} of {bid} on {sorted(want)}")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.up.close()
        self.down.close()
        self.media.close()


@pytest.fixture
def make_bench(tmp_path: Path, central_broker_factory: Any, lan_broker_factory: Any) -> Iterator[Any]:
    made: list[Bench] = []

    def make(count: int = 3, faults: list[str] | None = None, extra_devices: list[dict[str, Any]] | None = None,
             settings: dict[str, Any] | None = None) -> Bench:
        b = Bench(tmp_path, central_broker_factory(gateways=[GW]), lan_broker_factory(GW), count, faults or [],
                  extra_devices, settings)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def _spread(events: dict[str, dict[str, Any]]) -> int:
    ats = [e["at"] for e in events.values()]
    return max(ats) - min(ats)


def test_now_broadcast_plays_on_every_speaker(make_bench: Any) -> None:
    b = make_bench(3)
    media = b.media.add(tone_wav(800), 800)
    sent = now_ms()
    assert b.plan("b-now", media)["ok"] is True
    started = b.wait_states("b-now", "started")
    finished = b.wait_states("b-now", "finished")
    assert _spread(started) <= 50, started  # one commune starts together
    for dev in b.speakers:
        assert started[dev]["at"] - sent < 3000
        assert finished[dev]["at"] - started[dev]["at"] >= 790
        assert started[dev]["scheduled_at"] == started["loa-01"]["scheduled_at"]
    # the speakers fetched the media from the gateway's cache, not from the centre
    assert [r for r in b.media.requests if r[0] == media.sha256] == [(media.sha256, None)]


def test_plays_on_time_with_central_broker_down(make_bench: Any) -> None:
    b = make_bench(2)
    media = b.media.add(tone_wav(500), 500)
    start = now_ms() + 4000
    assert b.plan("b-cut", media, start_at=start)["ok"] is True
    b.central.stop()
    on_lan = wait_until(lambda: (lambda e: e if len(e) == 2 else None)(
        {p["device"]: p for p in b.down.on("/event", lambda p: p.get("broadcast_id") == "b-cut"
                                             and p.get("state") == "finished")}), timeout=15, what="played on LAN")
    started = {p["device"]: p for p in b.down.on("/event", lambda p: p.get("broadcast_id") == "b-cut"
                                                   and p.get("state") == "started")}
    assert all(abs(e["at"] - start) <= 50 for e in started.values()), started
    assert set(on_lan) == set(b.speakers)
    b.central.start()  # the reports queued on the gateway reach the centre once the link is back
    b.wait_states("b-cut", "finished", timeout=40)
    assert set(b.up.playback("b-cut", "started")) == set(b.speakers)
    # no unread error of an abandoned MQTT client (tests/test_mqttlink_retire.py has the cause)
    assert "never retrieved" not in (b.tmp / "gw.log").read_text()


def test_plays_on_time_after_gateway_restart(make_bench: Any) -> None:
    b = make_bench(2)
    media = b.media.add(tone_wav(500), 500)
    start = now_ms() + 7000
    assert b.plan("b-reboot", media, start_at=start)["ok"] is True
    b.kill_gateway()
    time.sleep(0.5)
    b.start_gateway()
    started = b.wait_states("b-reboot", "started", timeout=20)
    b.wait_states("b-reboot", "finished")
    assert all(abs(e["at"] - start) <= 50 for e in started.values()), started
    # exactly one start per speaker, even though the plan was dispatched by the restarted gateway
    assert all(states.count("started") == 1 for states in b.up.states("b-reboot").values())


def test_emergency_preempts_normal(make_bench: Any) -> None:
    b = make_bench(2)
    long = b.media.add(tone_wav(6000), 6000)
    short = b.media.add(tone_wav(700, freq=880), 700)
    assert b.plan("b-normal", long)["ok"] is True
    b.wait_states("b-normal", "started")
    assert b.plan("b-alarm", short, priority=PRIORITY_EMERGENCY)["ok"] is True
    pre = b.wait_states("b-normal", "preempted")
    started = b.wait_states("b-alarm", "started")
    b.wait_states("b-alarm", "finished")
    for dev in b.speakers:
        assert pre[dev]["at"] <= started[dev]["at"] + 10
    assert not b.up.playback("b-normal", "finished")


def test_normal_waits_for_emergency(make_bench: Any) -> None:
    b = make_bench(1)
    alarm = b.media.add(tone_wav(1500), 1500)
    normal = b.media.add(tone_wav(300, freq=660), 300)
    assert b.plan("b-first", alarm, priority=PRIORITY_EMERGENCY)["ok"] is True
    b.wait_states("b-first", "started")
    assert b.plan("b-second", normal)["ok"] is True
    first_end = b.wait_states("b-first", "finished")["loa-01"]["at"]
    second = b.wait_states("b-second", "started")["loa-01"]
    assert second["at"] >= first_end  # one thing at a time: the lower priority waited
    assert not b.up.playback("b-first", "preempted")


def test_refused_commands_play_nothing_and_duplicates_play_once(make_bench: Any) -> None:
    b = make_bench(2)
    media = b.media.add(tone_wav(300), 300)
    body = BroadcastPlanBody(items=[PlanItem(broadcast_id="b-evil", media=media)])
    stranger = make_signer()
    forged = b.signer.envelope("broadcast.plan", body, gw=GW, cmd_id="forged-1").model_copy(
        update={"body": {"items": [{**body.items[0].model_dump(mode="json"), "volume": 100}]}})
    cases = {
        "unknown_key": stranger.envelope("broadcast.plan", body, gw=GW, cmd_id="stranger-1").model_dump_json(),
        "bad_signature": forged.model_dump_json(),
        "expired": b.signer.envelope("broadcast.plan", body, gw=GW, cmd_id="expired-1", issued_at=now_ms() - 10_000,
                                     ttl_ms=5_000).model_dump_json(),
        "malformed": b.signer.envelope("broadcast.plan", {"items": [{"broadcast_id": "b-evil"}]},
                                       gw=GW, cmd_id="malformed-1").model_dump_json(),
    }
    ids = {"unknown_key": "stranger-1", "bad_signature": "forged-1", "expired": "expired-1",
           "malformed": "malformed-1"}
    for payload in cases.values():
        b.up.publish(f"loaxa/v1/{GW}/cmd", payload)
    for reason, cmd_id in ids.items():
        ack = b.ack(cmd_id)
        assert ack["ok"] is False and ack["reason"] == reason, ack

    good = b.signer.envelope("broadcast.plan", BroadcastPlanBody(items=[PlanItem(broadcast_id="b-once", media=media)]),
                             gw=GW, cmd_id="good-1")
    b.up.publish(f"loaxa/v1/{GW}/cmd", good.model_dump_json())
    b.up.publish(f"loaxa/v1/{GW}/cmd", good.model_dump_json())  # duplicate delivery → replay
    # the same broadcast in a new command (the centre re-sends after a lost ack): accepted, not replayed twice
    again = b.plan("b-once", media)
    assert again["ok"] is True
    b.wait_states("b-once", "finished")
    acks = [a for a in b.up.on(f"{GW}/ack") if a["id"] == "good-1"]
    wait_until(lambda: len([a for a in b.up.on(f"{GW}/ack") if a["id"] == "good-1"]) == 2, what="both acks")
    acks = [a for a in b.up.on(f"{GW}/ack") if a["id"] == "good-1"]
    assert sorted(a["ok"] for a in acks) == [False, True]
    time.sleep(1.0)
    plays = [c for c in b.down.on("/cmd", lambda p: p.get("op") == "play")]
    assert sorted(c["broadcast_id"] for c in plays) == ["b-once", "b-once"]  # once per speaker
    assert all(s.count("started") == 1 for s in b.up.states("b-once").values())
    assert not b.up.playback("b-evil") and not [c for c in plays if c["broadcast_id"] == "b-evil"]


def test_media_mismatch_refused_and_reported(make_bench: Any) -> None:
    b = make_bench(2)
    media = b.media.add(tone_wav(300), 300)
    b.media.tamper[media.sha256] = tone_wav(300, freq=1000)  # same length, other bytes
    assert b.plan("b-bad", media)["ok"] is True
    failed = b.wait_states("b-bad", "failed")
    assert {e["reason"] for e in failed.values()} == {"media_mismatch"}
    alarms = wait_until(lambda: b.up.on(f"{GW}/event", lambda p: p.get("kind") == "alarm"), what="alarm")
    assert alarms[0]["code"] == "media_mismatch" and alarms[0]["details"]["broadcast_id"] == "b-bad"
    assert not b.down.on("/cmd", lambda p: p.get("op") == "play")


def test_unreachable_media_reported_before_start(make_bench: Any) -> None:
    b = make_bench(1)
    media = MediaRef(sha256="ab" * 32, url=f"http://127.0.0.1:{b.media.port}/media/{'ab' * 32}", bytes=100,
                     duration_ms=100)
    start = now_ms() + 3000
    assert b.plan("b-missing", media, start_at=start)["ok"] is True
    failed = b.wait_states("b-missing", "failed")
    assert failed["loa-01"]["reason"] == "media_unavailable" and failed["loa-01"]["at"] <= start + 500


def test_media_that_cannot_be_fetched_yet_is_tried_again_until_the_start(make_bench: Any) -> None:
    """The centre answers 404 (or is unreachable) for a while: the plan keeps trying with back-off and
    plays once the file is there, instead of failing media_unavailable at the first try."""
    b = make_bench(1, settings={"media_retry_max_s": 1})
    media = b.media.add(tone_wav(300), 300)
    blob = b.media.blobs.pop(media.sha256)  # not there yet: 404
    start = now_ms() + 9000
    assert b.plan("b-later", media, start_at=start)["ok"] is True
    wait_until(lambda: len([r for r in b.media.requests if r[0] == media.sha256]) >= 3, timeout=15,
               what="the media asked for again")
    assert not b.up.playback("b-later", "failed")
    b.media.blobs[media.sha256] = blob
    finished = b.wait_states("b-later", "finished", timeout=30)
    assert finished["loa-01"]["at"] >= start


def test_cancel_before_and_during_play(make_bench: Any) -> None:
    b = make_bench(2)
    long = b.media.add(tone_wav(5000), 5000)
    later = b.media.add(tone_wav(500, freq=300), 500)
    assert b.plan("b-later", later, start_at=now_ms() + 8000)["ok"] is True
    assert b.plan("b-playing", long)["ok"] is True
    b.wait_states("b-playing", "started")
    ack = b.ack(b.send("broadcast.cancel", BroadcastCancelBody(broadcast_ids=["b-later", "b-playing"])))
    assert ack["ok"] is True
    during = b.wait_states("b-playing", "preempted")  # interrupted while playing
    before = b.wait_states("b-later", "skipped")
    assert {e["reason"] for e in during.values()} == {"cancelled"}
    assert {e["reason"] for e in before.values()} == {"cancelled"}
    time.sleep(0.5)
    assert not b.down.on("/cmd", lambda p: p.get("op") == "play" and p.get("broadcast_id") == "b-later")
    assert not b.up.playback("b-playing", "finished")


def test_speaker_faults_are_reported(make_bench: Any) -> None:
    b = make_bench(3, faults=["refuse:loa-01", "no-ack:loa-02", "die-mid-play:loa-03"])
    media = b.media.add(tone_wav(2000), 2000)
    assert b.plan("b-faults", media)["ok"] is True
    failed = b.wait_states("b-faults", "failed", timeout=20)
    assert failed["loa-01"]["reason"].startswith("device_refused")
    assert failed["loa-02"]["reason"] == "no_ack"
    assert failed["loa-03"]["reason"] == "device_offline"
    assert b.up.playback("b-faults", "started").keys() == {"loa-03"}


def test_local_amplifier_plays_with_the_ip_speakers(make_bench: Any, tmp_path: Path) -> None:
    out = tmp_path / "amp-out.wav"
    b = make_bench(1, extra_devices=[{"id": "amp", "type": "amplifier", "gpio": "mock", "output": f"file:{out}",
                                      "warmup_s": 0.1, "cooldown_s": 1}])
    media = b.media.add(tone_wav(600), 600)
    assert b.plan("b-amp", media, start_at=now_ms() + 2500)["ok"] is True
    started = b.wait_states("b-amp", "started", ["loa-01", "amp"])
    b.wait_states("b-amp", "finished", ["loa-01", "amp"])
    assert _spread(started) <= 60, started
    assert out.stat().st_size > 600 * 8  # ffmpeg decoded the cached file into the sink
    health = wait_until(lambda: [h for h in b.up.on(f"{GW}/health") if h.get("speakers_total") == 2],
                        what="health with speaker counts")
    assert health[-1]["speakers_online"] == 2


def test_reports_survive_uplink_outage_and_gateway_restart(make_bench: Any) -> None:
    b = make_bench(2)
    media = b.media.add(tone_wav(400), 400)
    start = now_ms() + 3000
    assert b.plan("b-outbox", media, start_at=start)["ok"] is True
    b.central.stop()
    wait_until(lambda: len(b.down.on("/event", lambda p: p.get("broadcast_id") == "b-outbox"
                                     and p.get("state") == "finished")) == 2, timeout=15, what="played on LAN")
    time.sleep(1.0)  # the gateway has recorded the reports in its outbox
    b.kill_gateway()  # the reports were never sent: they are only on the gateway's disk
    b.central.start()
    b.start_gateway()
    finished = b.wait_states("b-outbox", "finished", timeout=30)
    started = b.wait_states("b-outbox", "started")
    assert all(abs(e["at"] - start) <= 50 for e in started.values()), started
    assert set(finished) == set(b.speakers)


def test_missed_start_after_long_outage_is_skipped(make_bench: Any) -> None:
    b = make_bench(1, settings={"late_max_s": 1})
    media = b.media.add(tone_wav(300), 300)
    start = now_ms() + 2500
    assert b.plan("b-missed", media, start_at=start)["ok"] is True
    b.kill_gateway()  # down across the start, for longer than late_max_s
    wait_until(lambda: now_ms() > start + 2500, timeout=10, what="the start to pass")
    b.start_gateway()
    skipped = b.wait_states("b-missed", "skipped")
    assert skipped["loa-01"]["reason"] == "missed_start"
    assert not b.down.on("/cmd", lambda p: p.get("op") == "play")


def test_device_set_volume_reaches_speakers(make_bench: Any) -> None:
    from protocol.models import DeviceSetBody

    b = make_bench(2)
    assert b.ack(b.send("device.set", DeviceSetBody(targets="*", volume=35)))["ok"] is True
    wait_until(lambda: all(b.down.on(f"/dev/{s}/state")[-1].get("volume") == 35 for s in b.speakers),
               what="speakers at volume 35")
    refused = b.ack(b.send("device.set", DeviceSetBody(targets=["loa-01", "loa-99"], volume=90)))
    assert refused["ok"] is False and refused["reason"] == "unknown_device"
    time.sleep(0.5)
    assert b.down.on("/dev/loa-01/state")[-1].get("volume") == 35  # refused: nothing changed


def test_cancelled_emergency_interrupts_nothing(make_bench: Any) -> None:
    b = make_bench(1)
    long = b.media.add(tone_wav(3500), 3500)
    alarm = b.media.add(tone_wav(500, freq=900), 500)
    assert b.plan("b-long", long)["ok"] is True
    b.wait_states("b-long", "started")
    start = now_ms() + 2500  # sent to the speaker 1.5 s ahead, i.e. about a second from now
    assert b.plan("b-alarm-x", alarm, start_at=start, priority=PRIORITY_EMERGENCY)["ok"] is True
    wait_until(lambda: b.down.on("/cmd", lambda p: p.get("broadcast_id") == "b-alarm-x"), what="alarm dispatched")
    cancel = BroadcastCancelBody(broadcast_ids=["b-alarm-x"])
    assert b.ack(b.send("broadcast.cancel", cancel))["ok"] is True
    assert b.wait_states("b-alarm-x", "skipped")["loa-01"]["reason"] == "cancelled"
    assert b.down.on("/cmd", lambda p: p.get("op") == "stop" and p.get("broadcast_id") == "b-alarm-x")
    b.wait_states("b-long", "finished")
    assert not b.up.playback("b-long", "preempted")
