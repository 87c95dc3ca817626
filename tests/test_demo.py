"""`loaxa demo --for N`: starts everything, names reachable servers, shows both gateways online, exits 0."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import paho.mqtt.client as paho

from loaxa.brokers import central_acl, lan_acl
from loaxa.servers import can_log_in
from tests.conftest import run_loaxa, spawn_loaxa, wait_until


def _count(influx_url: str, measurement: str) -> int:
    q = urllib.parse.urlencode({"db": "loaxa", "q": f'SELECT count(*) FROM "{measurement}"'})
    with urllib.request.urlopen(f"{influx_url}/query?{q}", timeout=5) as resp:
        series = json.loads(resp.read())["results"][0].get("series") or []
    return max((v for s in series for v in s["values"][0][1:] if isinstance(v, int)), default=0)


def _get(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def test_demo_runs_and_reports_endpoints(tmp_path: Path) -> None:
    ep_file = tmp_path / "endpoints.json"
    proc = spawn_loaxa("demo", "--for", "600", "--endpoints-file", str(ep_file), "--data-dir", str(tmp_path / "d"),
                       "--http-port", "0", log=tmp_path / "demo.log")
    try:
        wait_until(lambda: ep_file.exists() and ep_file.stat().st_size > 0, timeout=60, what="endpoints file")
        ep = json.loads(ep_file.read_text())
        with urllib.request.urlopen(ep["influxdb"]["url"] + "/ping", timeout=5) as resp:
            assert resp.status == 204
        statuses: dict[str, str] = {}
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, client_id="demo-test")
        c.username_pw_set(ep["central_mqtt"]["viewer"]["username"], ep["central_mqtt"]["viewer"]["password"])
        c.on_message = lambda _c, _u, m: statuses.__setitem__(m.topic.split("/")[2], json.loads(m.payload)["state"])
        c.connect("127.0.0.1", int(ep["central_mqtt"]["url"].rsplit(":", 1)[1]))
        c.subscribe("loaxa/v1/+/status", qos=1)
        c.loop_start()
        gateways = set(ep["gateways"])
        assert len(gateways) == 2
        # every broker runs with accounts and the production ACLs generated from the examples
        data = tmp_path / "d"
        confs = sorted(data.rglob("mosquitto.conf"))
        assert len(confs) == 3 and all("allow_anonymous false" in f.read_text() for f in confs)
        assert (data / "central-mqtt" / "acl").read_text() == central_acl(sorted(gateways), ["viewer", "monitor"])
        for g in gateways:
            assert (data / g / "lan-mqtt" / "acl").read_text() == lan_acl(g)
            for url in (ep["gateways"][g]["lan_mqtt"], ep["gateways"][g]["lan_devices_mqtt"]):
                assert not can_log_in(int(url.rsplit(":", 1)[1]), "loa-01", "not-its-password")
        creds = json.loads(Path(ep["gateways"]["xa-an-binh"]["device_credentials"]).read_text())
        assert set(creds) == {*ep["gateways"]["xa-an-binh"]["speakers"], *(
            s for s in ep["gateways"]["xa-an-binh"]["sensors"] if s.startswith("lan-"))}
        wait_until(lambda: {g for g, s in statuses.items() if s == "online"} == gateways, timeout=30,
                   what="both demo gateways online")

        # the demo's accounts: named, with roles per commune, and an IOC token
        url = ep["scheduler"]["url"]
        accounts, tokens = ep["accounts"], ep["tokens"]
        assert accounts["admin"]["roles"] == [{"role": "admin", "areas": "*"}]
        assert accounts["chutich-an-binh"]["roles"] == [{"role": "approver", "areas": ["xa-an-binh"]}]
        assert accounts["canbo-phu-my"]["roles"] == [{"role": "operator", "areas": ["xa-phu-my"]}]
        assert accounts["kythuat"]["roles"] == [{"role": "technician", "areas": "*"}]
        assert tokens["ioc"]["role"] == "ioc" and tokens["ioc"]["token"].startswith("lxa_")
        wait_until(lambda: _get(url + "/api/health") == 200, timeout=30, what="scheduler HTTP up")
        assert _get(url + "/api/gateways") == 401
        assert _get(url + "/api/gateways", tokens["ioc"]["token"]) == 200
        # an operator of one commune cannot broadcast to the other
        denied = run_loaxa("broadcast", "now", "--url", url, "--login", "canbo-an-binh", "--text", "Thử",
                           "--targets", "xa-phu-my", env={"LOAXA_PASSWORD": accounts["canbo-an-binh"]["password"]})
        assert denied.returncode == 2 and "HTTP 403" in denied.stderr, denied.stderr

        # a broadcast from the CLI plays on both gateways' simulated speakers
        admin = {"LOAXA_URL": url, "LOAXA_PASSWORD": accounts["admin"]["password"]}
        sent = run_loaxa("broadcast", "now", "--login", "admin", "--text", "Thông báo thử nghiệm",
                         "--targets", *sorted(gateways), "--json", env=admin)
        assert sent.returncode == 0, sent.stderr
        bc_id = json.loads(sent.stdout)["id"]

        def speakers_finished() -> list[dict[str, object]] | None:
            out = run_loaxa("broadcast", "status", bc_id, "--login", "admin", "--json", env=admin)
            speakers = json.loads(out.stdout)["speakers"] if out.returncode == 0 else []
            done = len(speakers) == 6 and all(s["state"] == "finished" for s in speakers)
            return speakers if done else None

        speakers = wait_until(speakers_finished, timeout=30, interval=1, what="all 6 speakers finished")
        assert {(s["gateway"], s["device"]) for s in speakers} == {
            (g, d) for g in gateways for d in ep["gateways"][g]["speakers"]}

        # readings from the in-gateway and the LAN simulated sensors reach InfluxDB
        influx = ep["influxdb"]["url"]
        for measurement in ("water_level", "rain", "environment", "air_quality", "power", "gateway_health"):
            wait_until(lambda m=measurement: _count(influx, m) > 0, timeout=30, interval=1,
                       what=f"{measurement} readings in InfluxDB")
        # the IOC's curl line from the banner: a CSV of the commune's water levels, read with its token
        first = next(iter(ep["gateways"]))

        def ioc_rows() -> list[str] | None:
            req = urllib.request.Request(
                f"{url}/ioc/v1/readings?measurement=water_level&gateway={first}&format=csv",
                headers={"Authorization": f"Bearer {tokens['ioc']['token']}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                rows = resp.read().decode().splitlines()
            return rows if len(rows) > 1 else None

        rows = wait_until(ioc_rows, timeout=30, interval=1, what="water levels through the IOC API")
        assert rows[0].startswith("time,gateway,device,commune,") and "water_level_cm" in rows[0], rows[:2]
        assert all(r.split(",")[1] == first for r in rows[1:]), rows[:3]
        assert f"&gateway={first}&format=csv" in (tmp_path / "demo.log").read_text()
        # the daily programme: drafted by the commune's operator, approved by its chairman; a notice waits
        wait_until(lambda: "daily programme approved by chutich-an-binh" in (tmp_path / "demo.log").read_text(),
                   timeout=60, interval=1, what="the demo's schedules seeded")
        listed = run_loaxa("schedule", "list", "--login", "admin", "--json", env=admin)
        assert listed.returncode == 0, listed.stderr
        by_status = {(s["title"], s["status"]) for s in json.loads(listed.stdout)}
        assert by_status == {("Bản tin 6h30 và 17h30 (trừ Chủ nhật)", "approved"), ("Thông báo họp dân", "draft")}
        proc.terminate()  # Ctrl-C, as a newcomer would stop it
        assert proc.wait(90) == 0, (tmp_path / "demo.log").read_text()[-3000:]
        # a clean stop: each gateway said offline on its way out
        wait_until(lambda: all(statuses.get(g) == "offline" for g in gateways), timeout=5,
                   what="gateways offline after the demo")
        c.loop_stop()
        out = (tmp_path / "demo.log").read_text()
        assert "Demo stopped." in out and "xa-an-binh: online" in out
        assert f"chutich-an-binh    password {accounts['chutich-an-binh']['password']}" in out
    finally:
        if proc.poll() is None:  # stop it cleanly even when the test failed, so nothing it started lingers
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
