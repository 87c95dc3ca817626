"""The real gateway process (``loaxa gateway run``) with serial_node devices on a pty and real Mosquitto:
state and alarms reach the centre, device.set reaches the node, a broadcast plays on the serial speaker,
a pulled cable is noticed and healed."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from firmware_bridge.messages import EventKind
from firmware_bridge.refnode import RefNode
from firmware_bridge.simbus import PtyDevice
from loaxa.brokers import SCHEDULER_USER, CentralBroker, LanBroker
from loaxa.localsetup import gateway_config, make_signer, write_yaml
from protocol.models import BroadcastPlanBody, DeviceSetBody, PlanItem
from tests.broadcast_env import MediaServer, tone_wav
from tests.conftest import run_loaxa, spawn_loaxa, wait_until
from tests.test_gateway_core import Watcher

GW = "xa-serial"


def test_gateway_with_serial_nodes(tmp_path: Path, central_broker_factory: Callable[..., CentralBroker],
                                   lan_broker_factory: Callable[..., LanBroker],
                                   pty_factory: Callable[..., PtyDevice]) -> None:
    central, lan = central_broker_factory(gateways=[GW]), lan_broker_factory(GW)
    dev = pty_factory([RefNode(1, "fw-1"), RefNode(2, "fw-2", kind="sensor")])
    common = {"type": "serial_node", "port": dev.path, "poll_interval_s": 0.2, "offline_after": 2, "retries": 1}
    signer = make_signer()
    cfg = gateway_config(GW, data_dir=tmp_path / "gw", uplink_url=central.url, lan_url=lan.url,
                         signer=signer, health_interval_s=1,
                         uplink_auth=central.gateway_auth(GW), lan_auth=lan.gateway_auth(),
                         devices=[{"id": "loa-1", "address": 1, **common},
                                  {"id": "cb-2", "address": 2, "role": "sensor", **common}])
    path = write_yaml(tmp_path / "gw.yaml", cfg)
    w = Watcher(central.port, central.user(SCHEDULER_USER))
    proc = spawn_loaxa("gateway", "run", "--config", str(path), log=tmp_path / "gw.log")
    state = f"loaxa/v1/{GW}/dev/loa-1/state"
    state2 = f"loaxa/v1/{GW}/dev/cb-2/state"
    try:
        first = wait_until(lambda: w.on(state), timeout=30, what="state of loa-1")[0]
        assert first["online"] is True and first["firmware"] == "1.0.0" and first["volume"] == 50
        wait_until(lambda: w.on(state2), what="state of cb-2")

        env = signer.envelope("device.set", DeviceSetBody(targets=["loa-1"], volume=35, power=True), gw=GW,
                              cmd_id="set-1")
        w.publish(f"loaxa/v1/{GW}/cmd", env.model_dump_json())
        ack = wait_until(lambda: [a for a in w.on(f"loaxa/v1/{GW}/ack") if a["id"] == "set-1"], what="ack")[0]
        assert ack["ok"] is True, ack
        assert (dev.nodes[1].volume, dev.nodes[1].power) == (35, True)
        wait_until(lambda: w.on(state)[-1]["volume"] == 35 and w.on(state)[-1]["power"] is True,
                   what="state with the new volume")
        env = signer.envelope("device.set", DeviceSetBody(targets=["nope"], volume=1), gw=GW, cmd_id="set-2")
        w.publish(f"loaxa/v1/{GW}/cmd", env.model_dump_json())
        ack = wait_until(lambda: [a for a in w.on(f"loaxa/v1/{GW}/ack") if a["id"] == "set-2"], what="ack 2")[0]
        assert ack["ok"] is False and ack["reason"] == "unknown_device"

        # a broadcast plays on the serial speaker like on any other speaker (the sensor node is not one)
        media = MediaServer()
        try:
            ref = media.add(tone_wav(600), 600)
            plan = BroadcastPlanBody(items=[PlanItem(broadcast_id="bc-serial-1", media=ref, targets="*", volume=60)])
            env = signer.envelope("broadcast.plan", plan, gw=GW, cmd_id="plan-1")
            w.publish(f"loaxa/v1/{GW}/cmd", env.model_dump_json())
            wait_until(lambda: [a for a in w.on(f"loaxa/v1/{GW}/ack") if a["id"] == "plan-1" and a["ok"]],
                       what="plan accepted")
            reports = wait_until(
                lambda: [(e["device"], e["state"]) for e in w.on(f"loaxa/v1/{GW}/event")
                         if e.get("kind") == "playback" and e["broadcast_id"] == "bc-serial-1"
                         and e["state"] in ("finished", "failed")], timeout=30, what="end of the broadcast")
            assert reports == [("loa-1", "finished")]
            played = [(e["device"], e["state"]) for e in w.on(f"loaxa/v1/{GW}/event") if e.get("kind") == "playback"]
            assert ("loa-1", "started") in played and not any(d == "cb-2" for d, _ in played)
            assert dev.nodes[1].volume == 60
        finally:
            media.close()

        events = f"loaxa/v1/{GW}/event"
        dev.call(dev.nodes[2].add_event, EventKind.TAMPER, 7, 1)
        alarm = wait_until(lambda: [e for e in w.on(events) if e.get("code") == "device_tamper"],
                           what="tamper alarm")[0]
        assert alarm["device"] == "cb-2" and alarm["severity"] == "critical" and alarm["details"]["event_code"] == 7

        health = wait_until(lambda: [h for h in w.on(f"loaxa/v1/{GW}/health") if h.get("serial_nodes_online") == 2],
                            what="health with serial nodes")[-1]
        assert health["serial_nodes_total"] == 2 and dev.path in health["serial_links"]

        # a firmware update while the gateway runs goes through the gateway's control socket
        image = tmp_path / "loa-2.0.0.bin"
        image.write_bytes(os.urandom(5000))
        r = run_loaxa("firmware", "update", "--gateway-config", str(path), "--device", "loa-1", str(image))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "the gateway is running" in r.stderr and "1.0.0 → 2.0.0, confirmed" in r.stdout
        assert dev.nodes[1].flash.slots[dev.nodes[1].running].image == image.read_bytes()
        wait_until(lambda: w.on(state)[-1]["firmware"] == "2.0.0", what="state with the new firmware")
        assert [e for e in w.on(events) if e.get("code") == "firmware_confirmed" and e["device"] == "loa-1"]
        assert not [e for e in w.on(events) if e.get("code") == "device_offline"]  # its restart was expected
        r = run_loaxa("firmware", "info", "--gateway-config", str(path), "--device", "cb-2")
        assert r.returncode == 0 and "running gateway" in r.stdout and "fw-2" in r.stdout

        dev.unplug()  # the cable is pulled
        wait_until(lambda: w.on(state)[-1]["online"] is False and w.on(state2)[-1]["online"] is False,
                   what="both offline")
        offline = [e for e in w.on(events) if e.get("code") == "device_offline"]
        assert {e["device"] for e in offline} == {"loa-1", "cb-2"}
        dev.replug()  # and put back
        wait_until(lambda: w.on(state)[-1]["online"] is True and w.on(state2)[-1]["online"] is True,
                   timeout=20, what="both online again")
        assert {e["device"] for e in w.on(events) if e.get("code") == "device_online"} == {"loa-1", "cb-2"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        w.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
