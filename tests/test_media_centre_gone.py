"""Media never leaves the commune at play time (issue 15, point 3): a gateway configured by
``loaxa.localsetup.gateway_config`` (what the demo runs) holds the verified media of a plan, then the
whole centre goes away (central broker stopped, the centre's media HTTP server closed); the
broadcast still plays on every speaker, which fetch the file from the gateway's cache."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from loaxa.brokers import LAN_GATEWAY_USER, SCHEDULER_USER
from loaxa.clock import now_ms
from loaxa.localsetup import gateway_config, make_signer, write_yaml
from loaxa.servers import free_port
from protocol.models import BroadcastPlanBody, PlanItem
from tests.broadcast_env import MediaServer, Recorder, tone_wav
from tests.conftest import spawn_loaxa, wait_until

GW = "xa-media"
SPEAKERS = ["loa-01", "loa-02", "loa-03"]


def test_broadcast_plays_with_the_whole_centre_gone(tmp_path: Path, central_broker_factory: Any,
                                                     lan_broker_factory: Any) -> None:
    central, lan = central_broker_factory(gateways=[GW]), lan_broker_factory(GW)
    signer = make_signer()
    centre_http = MediaServer()
    cfg = gateway_config(GW, data_dir=tmp_path / "gw", uplink_url=central.url, lan_url=lan.url, signer=signer,
                         devices=[{"id": s, "type": "ip_speaker"} for s in SPEAKERS], health_interval_s=2,
                         uplink_auth=central.gateway_auth(GW), lan_auth=lan.gateway_auth(), media_port=free_port())
    path = write_yaml(tmp_path / "gw.yaml", cfg)
    up = Recorder(central.port, central.user(SCHEDULER_USER))
    down = Recorder(lan.port, lan.user(LAN_GATEWAY_USER))
    creds = lan.write_credentials(tmp_path / "speakers.json", SPEAKERS)
    procs = [spawn_loaxa("gateway", "run", "--config", str(path), log=tmp_path / "gw.log")]
    try:
        wait_until(lambda: any(s.get("state") == "online" for s in up.on(f"{GW}/status")), 45, what="gateway online")
        procs.append(spawn_loaxa("sim", "speakers", "--broker", lan.device_url, "--gateway", GW, "--count",
                                 str(len(SPEAKERS)), "--credentials", str(creds), log=tmp_path / "sim.log"))
        wait_until(lambda: all((st := down.on(f"/dev/{s}/state")) and st[-1].get("online") for s in SPEAKERS), 30,
                   what="speakers online")
        media = centre_http.add(tone_wav(600), 600)
        start = now_ms() + 9000
        item = PlanItem(broadcast_id="b-gone", media=media, start_at=start, priority=5, targets="*", volume=60)
        env = signer.envelope("broadcast.plan", BroadcastPlanBody(items=[item]), gw=GW)
        up.publish(f"loaxa/v1/{GW}/cmd", env.model_dump_json())
        wait_until(lambda: [a for a in up.on(f"{GW}/ack") if a.get("id") == env.id and a.get("ok")], 20,
                   what="plan acknowledged")
        # the gateway has the verified file once it was fetched in full (the plan is acked after that,
        # or very soon after: wait for the file in its cache)
        cached = tmp_path / "gw" / "media" / media.sha256
        wait_until(cached.exists, 20, what="media in the gateway's cache")
        # the whole centre goes away before the start
        central.stop()
        centre_http.close()
        finished = wait_until(
            lambda: (lambda e: e if set(e) == set(SPEAKERS) else None)(
                {p["device"]: p for p in down.on("/event", lambda p: p.get("broadcast_id") == "b-gone"
                                                 and p.get("state") in ("finished", "failed"))}),
            40, what="every speaker's end of the broadcast")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except Exception:
                p.kill()
        up.close()
        down.close()
    assert {d: e["state"] for d, e in finished.items()} == dict.fromkeys(SPEAKERS, "finished"), finished
    # one download by the gateway; no speaker ever asked the centre for the file
    assert [r for r in centre_http.requests if r[0] == media.sha256] == [(media.sha256, None)]
