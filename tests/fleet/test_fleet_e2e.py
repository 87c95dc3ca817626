"""The fleet end to end: the scheduler, a real gateway process, simulated speakers as processes, the
central and commune brokers, a real SMTP server and a webhook receiver.

* speakers of the gateway's configuration are listed before they ever speak;
* a stopped speaker simulator raises "speaker offline" within the rule's delay; four speakers of one
  commune going offline together are ONE e-mail to the commune's technician (not to another
  commune's, not to the chairman, whose route takes only critical alarms) and one signed webhook
  call (delivered after a refused first attempt);
* restarting the simulator clears the alarms and sends one recovery e-mail;
* a maintenance silence suppresses both the alarm and the recovery notices;
* ``device.set`` answers with the speaker's own reported state; pings answer per device;
* a device removed from the gateway's configuration disappears after a remote restart, and a
  broadcast to the gateway then waits for no phantom speaker.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from protocol.signing import now_ms
from tests.fleet.common import COMMUNE, GW, FleetBench, SmtpSink, WebhookSink, fleet_section
from tests.sched_support import add_token, bearer, make_tone, wait_for_async

GROUP = ["loa-01", "loa-02", "loa-03", "loa-04"]
SPEAKERS = [*GROUP, "loa-05", "loa-06"]  # loa-06 is configured but never switched on


def online(d: dict[str, dict[str, Any]], ids: list[str]) -> bool:
    return all(d.get(i, {}).get("status") == "online" for i in ids)


async def test_speakers_offline_mail_recovery_silence_and_actions(tmp_path: Path, central_broker_factory: Any,
                                                                 lan_broker_factory: Any) -> None:
    smtp = SmtpSink()
    hook = WebhookSink(fail_first=1)
    bench = FleetBench(tmp_path, central_broker_factory(gateways=[GW]), lan_broker_factory(GW, devices=SPEAKERS),
                       devices=[{"id": d, "type": "ip_speaker"} for d in SPEAKERS]
                       + [{"id": "muc-nuoc", "type": "mqtt_sensor", "measurement": "water_level"}],
                       fleet=fleet_section(smtp.port, hook.url))
    await bench.start()
    try:
        # configured devices are listed before their first message: unknown, not absent
        listed = await bench.wait_devices(lambda d: "loa-06" in d and "muc-nuoc" in d, "the configured devices")
        assert listed["loa-06"]["status"] == "unknown" and listed["loa-06"]["configured"] is True
        assert listed["muc-nuoc"]["kind"] == "sensor" and listed["loa-06"]["kind"] == "speaker"
        bench.start_sim("group", GROUP)
        bench.start_sim("five", ["loa-05"])
        d = await bench.wait_devices(lambda d: online(d, [*GROUP, "loa-05"]), "five speakers online")
        spk = d["loa-05"]
        assert (spk["volume"], spk["power"], spk["source"], spk["firmware"], spk["rssi"]) == (
            70, True, "stream", "sim-1.0", -60)
        assert spk["last_seen"] is not None
        fleet = await bench.api("GET", "/api/fleet")
        (gw,) = fleet["gateways"]
        assert gw["status"] == "online" and gw["commune"] == COMMUNE and gw["health"]["uptime_s"] is not None
        first_seen = spk["last_seen"]

        # "last seen" stays current while online (the gateway's health every 2 s vouches for it)
        await bench.wait_devices(lambda d: d["loa-05"]["last_seen"] > first_seen + 1500, "last_seen moving on")

        # ---- four speakers die together: one alarm each, ONE e-mail
        killed_at = now_ms()
        bench.kill_sim("group")
        alarms = await bench.wait_alarms(lambda a: len([x for x in a if x["type"] == "speaker_offline"]) == 4,
                                         "four speaker_offline alarms")
        assert sorted(a["device"] for a in alarms) == GROUP
        raised_after = max(a["first_seen"] for a in alarms) - killed_at
        print(f"speaker_offline raised {raised_after} ms after the kill (rule delay 1000 ms)")
        assert 1000 <= raised_after < 10_000  # the rule's delay, and not much more
        assert all(a["state"] == "ACTIVE_UNACK" and a["severity"] == "minor" for a in alarms)
        await wait_for_async(lambda: _n(smtp.count() >= 1), within=30, what="the alarm e-mail")
        print(f"e-mail received {now_ms() - killed_at} ms after the kill (group wait 1000 ms)")
        await wait_for_async(lambda: _n(len(hook.calls) >= 1), within=30, what="the webhook call")
        text = smtp.text(0)
        assert all(s in text for s in GROUP) and COMMUNE in text and "speaker offline" in text
        assert smtp.rcpts[0] == ["kythuat@an-binh.test"]  # not the other commune's, not the chairman
        payload, signed = hook.calls[0]
        assert signed and payload["kind"] == "raised" and payload["gateway"] == GW
        assert sorted(a["device"] for a in payload["alarms"]) == GROUP and hook.attempts == 2  # one retry
        assert "loa-01" in payload["text"] and len(payload["text"]) <= 480
        d = await bench.devices_by_id()
        assert d["loa-01"]["status"] == "offline" and d["loa-05"]["status"] == "online"

        # acknowledge one with a note
        a1 = next(a for a in alarms if a["device"] == "loa-01")
        acked = await bench.api("POST", f"/api/alarms/{a1['id']}/ack", json={"note": "đang đến kiểm tra"})
        assert acked["state"] == "ACTIVE_ACK" and acked["ack_note"] == "đang đến kiểm tra"
        r = await bench.http.post(f"/api/alarms/{a1['id']}/ack", json={"note": "again"})
        assert r.status_code == 409

        # ---- back: the alarms clear by themselves and ONE recovery e-mail goes out
        bench.start_sim("group", GROUP)
        await bench.wait_alarms(lambda a: not [x for x in a if x["type"] == "speaker_offline"], "alarms cleared")
        await wait_for_async(lambda: _n(smtp.count() >= 2), within=30, what="the recovery e-mail")
        assert "RECOVERED" in smtp.text(1) and all(s in smtp.text(1) for s in GROUP)
        cleared = await bench.alarms("cleared")
        c1 = next(a for a in cleared if a["id"] == a1["id"])
        assert c1["state"] == "CLEARED_ACK" and c1["cleared_by"] is None
        hist = await bench.api("GET", f"/api/alarms/{a1['id']}")
        assert [e["action"] for e in hist["log"]] == ["raised", "acknowledged", "cleared"]

        # ---- maintenance: a silence suppresses the notices of both the alarm and its end
        sil = await bench.api("POST", "/api/silences", json={"gateway": GW, "duration_s": 600,
                                                              "reason": "thay dây loa"})
        assert sil["created_by"] == "token:fleet-test"
        sent_before = smtp.count()
        bench.kill_sim("group")
        silenced = await bench.wait_alarms(
            lambda a: len([x for x in a if x["type"] == "speaker_offline"]) == 4, "alarms under the silence")
        assert all(a["silenced"] and not a["notified"] for a in silenced)
        assert not bench.sched.fleet.notifier._groups  # nothing is waiting to be sent
        bench.start_sim("group", GROUP)
        await bench.wait_alarms(lambda a: not [x for x in a if x["type"] == "speaker_offline"], "cleared again")
        assert not bench.sched.fleet.notifier._groups
        notes = await bench.api("GET", "/api/notifications")
        assert smtp.count() == sent_before == 2 and len([n for n in notes if n["channel"] == "email"]) == 2
        await bench.api("DELETE", f"/api/silences/{sil['id']}")

        # ---- remote actions answered by the device itself
        await bench.wait_devices(lambda d: online(d, [*GROUP, "loa-05"]), "all back online")
        res = await bench.api("POST", f"/api/fleet/devices/{GW}/loa-05/set", json={"volume": 35, "source": "line"})
        assert res["ok"] and res["ack"]["ok"], res
        rep = res["devices"]["loa-05"]
        assert rep["reported"] and rep["state"]["volume"] == 35 and rep["state"]["source"] == "line"
        assert (await bench.devices_by_id())["loa-05"]["volume"] == 35
        ping = await bench.api("POST", f"/api/fleet/devices/{GW}/loa-05/ping")
        assert ping["ok"] and ping["devices"]["loa-05"]["ok"] and ping["devices"]["loa-05"]["rtt_ms"] >= 0
        ping6 = await bench.api("POST", f"/api/fleet/devices/{GW}/loa-06/ping")
        assert not ping6["ok"] and ping6["devices"]["loa-06"]["reason"] == "no_ack"
        gw_ping = await bench.api("POST", f"/api/fleet/gateways/{GW}/ping")
        assert gw_ping["ok"] and gw_ping["ack"]["rtt_ms"] >= 0
        health = await bench.api("POST", f"/api/fleet/gateways/{GW}/health-report")
        assert health["ok"] and health["health"]["devices"]
        r = await bench.http.post(f"/api/fleet/devices/{GW}/nope/set", json={"volume": 1})
        assert r.status_code == 404
        r = await bench.http.post(f"/api/fleet/devices/{GW}/loa-05/set", json={"volume": 101})
        assert r.status_code == 422

        # ---- loa-06 leaves the configuration; the gateway is restarted remotely
        bench.write_gateway_config([{"id": d, "type": "ip_speaker"} for d in SPEAKERS if d != "loa-06"])
        pid = bench.gateway.pid if bench.gateway else None
        restarted = await bench.api("POST", f"/api/fleet/gateways/{GW}/restart", json={"reason": "new config"})
        assert restarted["ok"] and restarted["status"] == "online", restarted
        assert bench.gateway is not None and bench.gateway.poll() is None and bench.gateway.pid == pid
        d = await bench.wait_devices(lambda d: "loa-06" not in d and "loa-05" in d, "loa-06 forgotten")
        assert "muc-nuoc" not in d
        gws = await bench.api("GET", "/api/gateways")
        assert sorted(s["device"] for s in gws[0]["speakers"]) == sorted([*GROUP, "loa-05"])
        tone = make_tone(tmp_path / "t.wav", 0.5)
        media = await bench.api("POST", "/api/media", content=tone.read_bytes())
        bc = await bench.api("POST", "/api/broadcasts", json={"media_sha256": media["sha256"], "targets": [GW]})
        assert sorted(s["device"] for s in bc["speakers"]) == sorted([*GROUP, "loa-05"])
    except BaseException:
        print(bench.logs())
        raise
    finally:
        await bench.close()
        smtp.stop()
        hook.stop()


async def _n(v: bool) -> bool:
    return v


async def test_flapping_speaker_is_one_alarm(tmp_path: Path, central_broker_factory: Any,
                                            lan_broker_factory: Any) -> None:
    """A speaker whose link drops and returns every ~1.3 s: never offline long enough for its own
    alarm (30 s), but 4 changes within a minute make ONE 'flapping' alarm and one e-mail."""
    from protocol.models import DeviceState
    from protocol.topics import device_topic

    smtp = SmtpSink()
    fleet = fleet_section(smtp.port, speaker_offline={"after_s": 30, "severity": "minor"})
    fleet["flapping"] = {"toggles": 4, "window_s": 60, "severity": "major"}
    bench = FleetBench(tmp_path, central_broker_factory(gateways=[GW]), lan_broker_factory(GW, devices=["loa-07"]),
                       devices=[{"id": "loa-07", "type": "ip_speaker"}], fleet=fleet)
    await bench.start()
    try:
        await bench.wait_devices(lambda d: "loa-07" in d, "loa-07 listed")
        async with bench.device_client("loa-07") as dev:
            topic = device_topic(GW, "loa-07", "state")
            for i in range(6):
                up = i % 2 == 0
                await dev.publish(topic, DeviceState(online=up, volume=60).model_dump_json(), qos=1, retain=True)
                await bench.wait_devices(lambda d, up=up: d["loa-07"]["online"] is up, f"change {i} at the centre")
                await asyncio.sleep(1.3)  # the device's own pace (the gateway relays one state per second)
        alarms = await bench.wait_alarms(lambda a: any(x["type"] == "flapping" for x in a), "the flapping alarm")
        assert [(a["type"], a["device"], a["severity"]) for a in alarms] == [("flapping", "loa-07", "major")]
        assert alarms[0]["details"]["condition"] == "speaker_offline"
        await wait_for_async(lambda: _n(smtp.count() >= 1), within=30, what="the flapping e-mail")
        assert "flapping" in smtp.text(0) and "loa-07" in smtp.text(0)
        assert len(await bench.alarms()) == 1
        assert smtp.count() == 1
    except BaseException:
        print(bench.logs())
        raise
    finally:
        await bench.close()
        smtp.stop()


async def test_water_level_above_threshold_for_the_window_is_critical(tmp_path: Path, central_broker_factory: Any,
                                                                      lan_broker_factory: Any, influxdb1: Any) -> None:
    """Readings go device → LAN broker → gateway spool → InfluxDB 1.6.7; the scheduler reads them
    back with InfluxQL. 160 cm held for 2 s raises a critical alarm (the chairman is mailed too: his
    route takes critical alarms); 145 cm keeps it (hysteresis: it clears below 140); 130 cm clears it."""
    import json as _json

    from protocol.signing import now_ms
    from protocol.topics import device_topic

    smtp = SmtpSink()
    fleet = fleet_section(smtp.port, thresholds=[{
        "name": "water_high", "measurement": "water_level", "field": "water_level_cm", "above": 150,
        "clear_at": 140, "for_s": 2, "severity": "critical"}])
    db = {"url": influxdb1.url, "database": influxdb1.database}
    bench = FleetBench(tmp_path, central_broker_factory(gateways=[GW]), lan_broker_factory(GW, devices=["muc-nuoc"]),
                       devices=[{"id": "muc-nuoc", "type": "mqtt_sensor", "measurement": "water_level"}],
                       fleet=fleet, influx=db, gateway_influx={"api": "v1", **db, "flush_interval_s": 0.2})
    await bench.start()
    topic = device_topic(GW, "muc-nuoc", "telemetry")
    try:
        await bench.wait_devices(lambda d: "muc-nuoc" in d, "the sensor listed")
        async with bench.device_client("muc-nuoc") as dev:

            async def feed(value: float, until: Any, what: str, within: float = 60) -> Any:
                """Send a reading every 0.25 s (the sensor's pace) until the alarms satisfy ``until``."""
                loop = asyncio.get_running_loop()
                deadline = loop.time() + within
                while loop.time() < deadline:
                    await dev.publish(topic, _json.dumps({"ts": now_ms(), "fields": {"water_level_cm": value}}), qos=1)
                    rows = await bench.alarms()
                    if until(rows):
                        return rows
                    await asyncio.sleep(0.25)
                raise AssertionError(f"timed out after {within}s feeding {value}: {what}")

            first = now_ms()
            rows = await feed(160.0, lambda a: any(x["type"] == "threshold_water_high" for x in a), "the alarm")
            (alarm,) = rows
            assert (alarm["severity"], alarm["device"], alarm["details"]["value"]) == ("critical", "muc-nuoc", 160.0)
            assert alarm["first_seen"] - first >= 2000  # not before the level had held for the window
            # the IOC reads it with its area token; another commune's token sees nothing of it
            ioc_here = bearer(add_token(bench.sched.store.store, "ioc", [GW]))
            ioc_other = bearer(add_token(bench.sched.store.store, "ioc", ["xa-khac"]))
            r = await bench.http.get("/ioc/v1/alarms", headers=ioc_here)
            assert r.status_code == 200, r.text
            (seen,) = r.json()["alarms"]
            assert (seen["type"], seen["severity"], seen["device"]) == ("threshold_water_high", "critical", "muc-nuoc")
            assert seen["first_seen"].endswith("Z")
            r = await bench.http.get("/ioc/v1/alarms", headers=ioc_other)
            assert r.status_code == 200 and r.json()["alarms"] == []
            r = await bench.http.get("/ioc/v1/alarms", params={"gateway": GW}, headers=ioc_other)
            assert r.status_code == 403
            metrics = (await bench.http.get("/metrics")).text
            assert 'loaxa_alarms_active{acknowledged="false",severity="critical"} 1.0' in metrics
            await feed(145.0, lambda a: a and a[0]["details"]["value"] == 145.0, "145 shown, alarm still active")
            await feed(130.0, lambda a: not a, "the alarm cleared below 140")
        await wait_for_async(lambda: _n(smtp.count() >= 4), within=30, what="alarm and recovery mails")
        got = sorted((r[0], "RECOVERED" in smtp.text(i)) for i, r in enumerate(smtp.rcpts))
        assert got == [("chutich@an-binh.test", False), ("chutich@an-binh.test", True),
                       ("kythuat@an-binh.test", False), ("kythuat@an-binh.test", True)]
        assert "CRITICAL" in smtp.text(0) or "CRITICAL" in smtp.text(1)
        (cleared,) = await bench.alarms("cleared")
        assert cleared["type"] == "threshold_water_high" and cleared["count"] == 1
    except BaseException:
        print(bench.logs())
        raise
    finally:
        await bench.close()
        smtp.stop()


async def test_gateway_offline_alarm_and_unknown_when_the_centre_is_cut_off(tmp_path: Path, central_broker_factory: Any,
                                                                            lan_broker_factory: Any) -> None:
    """A gateway killed without a goodbye: its will says offline, the alarm follows after the rule's
    delay, and its speakers show "unknown" (no speaker alarm: the gateway's alarm covers them). With
    the scheduler's own broker link down, everything is "unknown", never "offline"."""
    import os
    import signal

    from tests.conftest import spawn_loaxa

    smtp = SmtpSink()
    central = central_broker_factory(gateways=[GW])
    bench = FleetBench(tmp_path, central, lan_broker_factory(GW, devices=["loa-01"]),
                       devices=[{"id": "loa-01", "type": "ip_speaker"}], fleet=fleet_section(smtp.port))
    await bench.start()
    try:
        bench.start_sim("one", ["loa-01"])
        await bench.wait_devices(lambda d: online(d, ["loa-01"]), "loa-01 online")
        assert bench.gateway is not None
        os.killpg(bench.gateway.pid, signal.SIGKILL)
        bench.gateway.wait(10)
        (alarm,) = await bench.wait_alarms(lambda a: any(x["type"] == "gateway_offline" for x in a),
                                           "the gateway_offline alarm")
        assert alarm["severity"] == "major" and alarm["device"] is None and COMMUNE in alarm["message"]
        d = await bench.devices_by_id()
        assert d["loa-01"]["status"] == "unknown" and d["loa-01"]["online"] is None
        await wait_for_async(lambda: _n(smtp.count() >= 1), within=30, what="the gateway e-mail")
        assert "gateway offline" in smtp.text(0)

        bench.gateway = spawn_loaxa("gateway", "run", "--config", str(bench.gw_yaml), log=tmp_path / "gw.log")
        await bench.wait_alarms(lambda a: not a, "gateway alarm cleared")
        await bench.wait_devices(lambda d: online(d, ["loa-01"]), "loa-01 online again")
        assert not [a for a in await bench.alarms("cleared") if a["type"] == "speaker_offline"]

        central.stop()  # the centre is cut off from every gateway
        await wait_for_async(lambda: _n(not bench.sched.dispatcher.link.connected.is_set()), within=30,
                             what="the scheduler's link down")
        fleet = await bench.api("GET", "/api/fleet")
        assert fleet["connected"] is False
        (gw,) = fleet["gateways"]
        assert gw["status"] == "unknown" and gw["devices"][0]["status"] == "unknown"
        assert not await bench.alarms()  # and no alarm was raised by the cut
    except BaseException:
        print(bench.logs())
        raise
    finally:
        await bench.close()
        smtp.stop()


async def test_cli_devices_and_alarms(tmp_path: Path, central_broker_factory: Any, lan_broker_factory: Any) -> None:
    """``loaxa devices list|show|set|ping`` and ``loaxa alarms list|ack|silence|silences|unsilence``
    against the running scheduler, as a technician types them."""
    from tests.conftest import run_loaxa

    smtp = SmtpSink()
    bench = FleetBench(tmp_path, central_broker_factory(gateways=[GW]),
                       lan_broker_factory(GW, devices=["loa-01", "loa-02"]),
                       devices=[{"id": "loa-01", "type": "ip_speaker"}, {"id": "loa-02", "type": "ip_speaker"}],
                       fleet=fleet_section(smtp.port))
    await bench.start()

    async def cli(*args: str) -> tuple[int, str]:
        r = await asyncio.to_thread(run_loaxa, *args, "--config", str(bench.sched_yaml), "--token-file",
                                    str(bench.token_file), timeout=120)
        return r.returncode, r.stdout + r.stderr

    try:
        bench.start_sim("one", ["loa-01"])
        await bench.wait_devices(lambda d: online(d, ["loa-01"]), "loa-01 online")
        code, out = await cli("devices", "list")
        assert code == 0, out
        line = next(ln for ln in out.splitlines() if "loa-01" in ln)
        assert "online" in line and "speaker" in line and "sim-1.0" in line
        assert "unknown" in next(ln for ln in out.splitlines() if "loa-02" in ln)
        code, out = await cli("devices", "set", f"{GW}/loa-01", "--volume", "42", "--power", "off")
        assert code == 0, out
        assert "loa-01: reported" in out and "volume 42" in out and "power off" in out
        code, out = await cli("devices", "ping", f"{GW}/loa-01")
        assert code == 0 and "loa-01: answered in" in out, out
        code, out = await cli("devices", "ping", f"{GW}/loa-02")
        assert code == 1 and "no answer" in out, out
        code, out = await cli("devices", "set", f"{GW}/nope", "--volume", "1")
        assert code == 2 and "HTTP 404" in out, out
        code, out = await cli("devices", "show", f"{GW}/loa-01")
        assert code == 0 and '"volume": 42' in out, out

        code, out = await cli("alarms", "silence", f"{GW}/loa-01", "--for", "2h", "--reason", "thay loa")
        assert code == 0 and "silence 1:" in out, out
        code, out = await cli("alarms", "silences")
        assert "thay loa" in out and "loa-01" in out
        bench.kill_sim("one")
        (alarm,) = await bench.wait_alarms(lambda a: len(a) == 1, "loa-01 offline alarm")
        code, out = await cli("alarms", "list")
        assert code == 0 and "speaker_offline" in out and "silenced" in out, out
        code, out = await cli("alarms", "ack", str(alarm["id"]), "--note", "đã biết")
        assert code == 0 and "ACTIVE_ACK" in out, out
        code, out = await cli("alarms", "unsilence", "1")
        assert code == 0, out
        code, out = await cli("alarms", "silence", GW, "--for", "2 weeks")
        assert code == 2 and "duration" in out, out
        # the silence is over and the speaker is still offline: its alarm is notified now
        await wait_for_async(lambda: _n(smtp.count() >= 1), within=30, what="the e-mail after the silence")
        assert "loa-01" in smtp.text(0)
    except BaseException:
        print(bench.logs())
        raise
    finally:
        await bench.close()
        smtp.stop()
