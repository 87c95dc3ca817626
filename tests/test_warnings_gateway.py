"""Local warning rules, end to end: a real gateway process between a real central Mosquitto and a real
commune Mosquitto, simulated IP speakers as a real process, and a water-level gauge that publishes
over MQTT with its own LAN account (what ``loaxa sim water-level`` does). The rule is a signed
``warning.rules`` command; the warning must play with the central broker stopped.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from loaxa.brokers import LAN_GATEWAY_USER, SCHEDULER_USER, CentralBroker, LanBroker
from loaxa.clock import now_ms
from loaxa.localsetup import gateway_config, make_signer, write_yaml
from loaxa.servers import free_port
from protocol.models import MediaRef, WarningRule, WarningRulesBody
from protocol.signing import Signer
from tests.broadcast_env import MediaServer, Recorder, tone_wav
from tests.conftest import spawn_loaxa, wait_until

GW = "xa-canh-bao"
GAUGE = "mucnuoc-song"


class Gauge:
    """The river gauge: publishes water_level_cm readings on the LAN broker with its own account."""

    def __init__(self, lan: LanBroker) -> None:
        account = lan.add_device(GAUGE)
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=GAUGE, protocol=paho.MQTTv5)
        self.client.username_pw_set(account.username, account.password)
        self.client.connect("127.0.0.1", lan.device_port)
        self.client.loop_start()

    def level(self, cm: float, ts: int | None = None) -> int:
        ts = now_ms() if ts is None else ts
        info = self.client.publish(f"loaxa/v1/{GW}/dev/{GAUGE}/telemetry",
                                   json.dumps({"ts": ts, "fields": {"water_level_cm": cm}}), qos=1)
        info.wait_for_publish(10)
        return ts

    def hold(self, cm: float, seconds: float, every: float = 0.5) -> list[int]:
        """Report ``cm`` every ``every`` s for ``seconds``; the timestamps sent."""
        sent = []
        end = time.monotonic() + seconds
        while True:
            sent.append(self.level(cm))
            if time.monotonic() + every > end:
                return sent
            time.sleep(every)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Bench:
    def __init__(self, tmp: Path, central: CentralBroker, lan: LanBroker, count: int = 3) -> None:
        self.tmp, self.central, self.lan = tmp, central, lan
        self.signer: Signer = make_signer()
        self.media = MediaServer()
        self.speakers = [f"loa-{i:02d}" for i in range(1, count + 1)]
        media_port = free_port()
        devices = [{"id": s, "type": "ip_speaker"} for s in self.speakers]
        devices.append({"id": GAUGE, "type": "mqtt_sensor", "measurement": "water_level"})
        cfg = gateway_config(GW, data_dir=tmp / "gw", uplink_url=central.url, lan_url=lan.url, signer=self.signer,
                             devices=devices, health_interval_s=2, uplink_auth=central.gateway_auth(GW),
                             lan_auth=lan.gateway_auth())
        cfg["broadcast"] = {"now_lead_ms": 400, "dispatch_ahead_ms": 1500, "report_grace_s": 3,
                            "ack_timeout_s": 0.5, "retries": 2, "media_listen": f"127.0.0.1:{media_port}",
                            "media_public_url": f"http://127.0.0.1:{media_port}"}
        self.config = write_yaml(tmp / "gw.yaml", cfg)
        self.up = Recorder(central.port, central.user(SCHEDULER_USER))
        self.down = Recorder(lan.port, lan.user(LAN_GATEWAY_USER))
        self.gauge = Gauge(lan)
        self.procs: list[Any] = []
        self.start_gateway()
        creds = lan.write_credentials(tmp / "speaker-passwords.json", self.speakers)
        self.procs.append(spawn_loaxa("sim", "speakers", "--broker", lan.device_url, "--gateway", GW, "--count",
                                      str(count), "--credentials", str(creds), log=tmp / "sim.log"))
        wait_until(lambda: all(self.speaker_online(s) for s in self.speakers), timeout=30,
                   what="simulated speakers online")

    def start_gateway(self) -> None:
        before = len(self.up.on(f"{GW}/status"))
        self.gateway = spawn_loaxa("gateway", "run", "--config", str(self.config), log=self.tmp / "gw.log")
        self.procs.append(self.gateway)
        wait_until(lambda: any(s.get("state") == "online" for s in self.up.on(f"{GW}/status")[before:]),
                   timeout=45, what="gateway online")

    def kill_gateway(self) -> None:
        self.gateway.send_signal(signal.SIGKILL)
        self.gateway.wait(10)

    def speaker_online(self, dev: str) -> bool:
        st = self.down.on(f"/dev/{dev}/state")
        return bool(st) and st[-1].get("online") is True

    def send_rules(self, rules: list[WarningRule]) -> dict[str, Any]:
        env = self.signer.envelope("warning.rules", WarningRulesBody(rules=rules), gw=GW)
        self.up.publish(f"loaxa/v1/{GW}/cmd", env.model_dump_json())
        acks = wait_until(lambda: [a for a in self.up.on(f"{GW}/ack") if a.get("id") == env.id], timeout=30,
                          what="ack of warning.rules")
        return dict(acks[-1])

    def lan_started(self) -> dict[str, list[dict[str, Any]]]:
        """Warning playbacks the speakers reported on the LAN, by broadcast id."""
        out: dict[str, list[dict[str, Any]]] = {}
        for p in self.down.on("/event", lambda p: str(p.get("broadcast_id", "")).startswith("warn-")
                              and p.get("state") == "started"):
            out.setdefault(p["broadcast_id"], []).append(p)
        return out

    def warnings(self, state: str | None = None) -> list[dict[str, Any]]:
        """Warning events at the centre, each once (reports are at least once: a copy may come twice)."""
        got = self.up.on(f"{GW}/event", lambda p: p.get("kind") == "warning"
                         and (state is None or p.get("state") == state))
        return list({(p["rule_id"], p["state"], p["at"]): p for p in got}.values())

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.gauge.close()
        self.up.close()
        self.down.close()
        self.media.close()


@pytest.fixture
def bench(tmp_path: Path, central_broker_factory: Any, lan_broker_factory: Any) -> Iterator[Bench]:
    b = Bench(tmp_path, central_broker_factory(gateways=[GW]), lan_broker_factory(GW))
    yield b
    b.close()


def flood_rule(media: MediaRef, **kw: Any) -> WarningRule:
    return WarningRule(id="lu-song-cai", device=GAUGE, field="water_level_cm", threshold_milli=150_000, for_s=3,
                       hysteresis_milli=10_000, media=media, title="Cảnh báo lũ sông Cái", **kw)


def test_flood_warning_plays_with_the_central_broker_stopped(bench: Bench) -> None:
    media = bench.media.add(tone_wav(1000), 1000)
    assert bench.send_rules([flood_rule(media)])["ok"] is True
    bench.central.stop()  # the WAN is cut from here on
    bench.gauge.hold(100, 1.0)
    # a spike above the threshold, shorter than the 3 s the rule asks for, plays nothing
    bench.gauge.hold(170, 1.5)
    bench.gauge.hold(100, 1.0)
    # then the river stays above the threshold
    sent = bench.gauge.hold(170, 4.5)
    met_at = next(ts for ts in sent if ts - sent[0] >= 3000)  # the first reading that meets the rule
    started = wait_until(lambda: (lambda s: s if s and len(next(iter(s.values()))) >= len(bench.speakers) else None)(
        bench.lan_started()), timeout=20, what="warning playing on every speaker")
    assert len(started) == 1, started  # one warning: the spike did not start one of its own
    [(bid, events)] = started.items()
    assert {e["device"] for e in events} == set(bench.speakers)
    lateness = max(e["at"] - met_at for e in events)
    print(f"warning started on every speaker {lateness} ms after the reading that met the rule")
    assert lateness <= 5000, (events, met_at)
    # below the threshold but not below threshold - hysteresis: still active
    bench.gauge.hold(145, 1.0)
    time.sleep(1.0)
    bench.central.start()
    wait_until(lambda: bench.warnings("started"), timeout=40, what="the 'started' warning event at the centre")
    assert not bench.warnings("cleared")
    bench.gauge.hold(130, 1.0)
    cleared = wait_until(lambda: bench.warnings("cleared"), timeout=20, what="the 'cleared' warning event")
    assert cleared[0]["rule_id"] == "lu-song-cai" and cleared[0]["value"] == 130.0
    [start_ev] = bench.warnings("started")
    assert start_ev["broadcast_id"] == bid and start_ev["plays"] == 1
    # and the playback reports of the warning reached the centre like any broadcast's
    wait_until(lambda: set(bench.up.playback(bid, "finished")) == set(bench.speakers), timeout=30,
               what="playback reports of the warning at the centre")


def test_restart_while_active_keeps_it_active_without_replaying(bench: Bench) -> None:
    media = bench.media.add(tone_wav(600), 600)
    assert bench.send_rules([flood_rule(media, repeat_every_s=600, max_plays=3)])["ok"] is True
    bench.gauge.hold(180, 4.0)
    wait_until(lambda: len(next(iter(bench.lan_started().values()), [])) >= len(bench.speakers), timeout=20,
               what="warning playing")
    wait_until(lambda: bench.warnings("started"), timeout=20, what="'started' at the centre")
    bench.kill_gateway()
    bench.start_gateway()
    # the river is still high after the restart: the warning stays active and does not play again
    bench.gauge.hold(180, 5.0)
    time.sleep(2.0)
    assert len(bench.lan_started()) == 1, bench.lan_started()
    assert len(bench.warnings("started")) == 1
    assert not bench.warnings("repeated")
    bench.gauge.hold(100, 1.0)
    cleared = wait_until(lambda: bench.warnings("cleared"), timeout=20, what="'cleared' after the restart")
    assert cleared[0]["plays"] == 1


def test_rules_with_media_that_cannot_be_fetched_are_refused(bench: Bench) -> None:
    missing = MediaRef(sha256="ab" * 32, url=f"http://127.0.0.1:{bench.media.port}/media/{'ab' * 32}", bytes=100,
                       duration_ms=1000)
    ack = bench.send_rules([flood_rule(missing)])
    assert ack["ok"] is False and ack["reason"] == "media_unavailable"
    assert "lu-song-cai" in ack["error"]
