"""``loaxa demo``: the whole system on one machine, in one terminal.

Starts a central Mosquitto (per-gateway credentials and ACL, as in production), InfluxDB 1.x, two
commune gateways each with its own LAN Mosquitto, simulated speakers and sensors, and the scheduler
when it is installed; prints what runs where, follows the gateways' status, and stops everything on
Ctrl-C (or after ``--for SECONDS``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HELP = """\
Run a complete Loa Xã system on this machine: a central MQTT broker, InfluxDB, two commune gateways
(each with its own LAN broker, simulated speakers and simulated sensors) and the central scheduler.

It prints the address of every server, how to watch the MQTT traffic, and a line whenever a
gateway goes online or offline. Stop with Ctrl-C; everything it started is stopped and, unless
--keep is given, its temporary data is removed.

Needs the Debian packages mosquitto, mosquitto-clients and influxdb (the README's first command
installs them).
"""

GATEWAYS = (("xa-an-binh", "Xã An Bình"), ("xa-phu-my", "Xã Phú Mỹ"))
SPEAKERS_PER_GATEWAY = 3
#: Sensors simulated inside each gateway (sim_sensor) ...
SIM_SENSORS = (("mucnuoc-01", "water_level"), ("mua-01", "rain"), ("moitruong-01", "environment"))
#: ... and on its commune LAN, publishing over MQTT like real networked sensors (mqtt_sensor).
LAN_SENSOR_KINDS = ("air_quality", "power")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="run the whole system on this machine", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--for", dest="duration", type=float, metavar="SECONDS",
                   help="stop by itself after this many seconds (exit 0 if every gateway came online)")
    p.add_argument("--endpoints-file", type=Path, metavar="PATH",
                   help="also write the endpoints (URLs, ports, database, credentials of the demo) as JSON")
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="where to keep the demo's data (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the data directory when stopping")
    p.add_argument("--no-example-schedules", dest="example_schedules", action="store_false",
                   help="do not create the example daily programme and notice (see Lịch phát)")
    p.add_argument("--http-port", type=int, default=8080, help="port of the scheduler's web UI and API (default 8080)")
    p.set_defaults(func=run)


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@dataclass
class Demo:
    root: Path
    http_port: int
    servers: list[Any] = field(default_factory=list)
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    endpoints: dict[str, Any] = field(default_factory=dict)

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.root / "logs" / f"{name}.log", "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([sys.executable, "-m", "loaxa", *args], stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        log.close()
        self.children.append((name, proc))
        return proc

    def start(self) -> None:
        from loaxa.brokers import (
            LAN_GATEWAY_USER,
            MONITOR_USER,
            SCHEDULER_USER,
            VIEWER_USER,
            CentralBroker,
            LanBroker,
        )
        from loaxa.localsetup import gateway_config, make_signer, scheduler_config, write_yaml
        from loaxa.servers import InfluxDB1, free_port

        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        step("central MQTT broker (production ACL, an account per gateway, client ids bound to user names)")
        central = CentralBroker(self.root / "central-mqtt", gateways=[gw for gw, _ in GATEWAYS],
                                readers=[VIEWER_USER, MONITOR_USER]).start()
        self.servers.append(central)
        step("InfluxDB 1.x")
        influx = InfluxDB1(self.root / "influxdb", database="loaxa").start()
        self.servers.append(influx)
        signer = make_signer()
        viewer, monitor = central.user(VIEWER_USER), central.user(MONITOR_USER)
        self.endpoints = {
            "central_mqtt": {"url": central.url,
                             "viewer": {"username": viewer.username, "password": viewer.password},
                             "monitor": {"username": monitor.username, "password": monitor.password}},
            "influxdb": {"url": influx.url, "database": influx.database, "api": "v1"},
            "gateways": {},
            "data_dir": str(self.root),
        }
        speakers_sim = _has("devices.sim.speakers_cli")
        lan_sensors_sim = _has("devices.sim.sensors_cli")
        for gw, commune in GATEWAYS:
            step(f"gateway {gw} ({commune}): LAN broker, gateway, simulated devices")
            speakers = [f"loa-{i:02d}" for i in range(1, SPEAKERS_PER_GATEWAY + 1)]
            devices: list[dict[str, Any]] = [{"id": s, "type": "ip_speaker", "name": f"Loa {s}"} for s in speakers]
            devices += [{"id": d, "type": "sim_sensor", "kind": kind, "interval_s": 5} for d, kind in SIM_SENSORS]
            lan_sensors: list[str] = []
            if lan_sensors_sim:
                from devices.sim.sensors_cli import make_devices

                sims = make_devices(gw, len(LAN_SENSOR_KINDS), LAN_SENSOR_KINDS, "lan", seed=None)
                lan_sensors = [d.id for d in sims]
                devices += [{"id": d.id, "type": "mqtt_sensor", "measurement": d.kind} for d in sims]
            # the commune's LAN broker: its ACL generated from the example for this gateway id, an
            # account for the gateway and one per speaker and networked sensor
            from loaxa import demo_warnings  # the river gauge of the local flood warning (issue 14)

            devices.append(demo_warnings.gauge_device())
            lan_sensors.append(demo_warnings.GAUGE)
            lan = LanBroker(self.root / gw / "lan-mqtt", gateway_id=gw, devices=speakers + lan_sensors).start()
            self.servers.append(lan)
            creds_file = lan.write_credentials(self.root / gw / "device-passwords.json")
            gw_lan = lan.user(LAN_GATEWAY_USER)
            cfg = gateway_config(
                gw, commune=commune, data_dir=self.root / gw / "data", uplink_url=central.url, lan_url=lan.url,
                signer=signer, devices=devices, health_interval_s=10,
                uplink_auth=(gw, central.user(gw).password), lan_auth=(gw_lan.username, gw_lan.password),
                influx={"api": "v1", "url": influx.url, "database": influx.database},
                media_port=free_port(),  # speakers fetch from the gateway's cache, never from the centre
            )
            path = write_yaml(self.root / gw / "gateway.yaml", cfg)
            self.spawn(f"gateway-{gw}", "gateway", "run", "--config", str(path))
            if speakers_sim:
                self.spawn(f"speakers-{gw}", "sim", "speakers", "--broker", lan.device_url, "--gateway", gw,
                           "--count", str(SPEAKERS_PER_GATEWAY), "--prefix", "loa", "--credentials", str(creds_file))
            if lan_sensors:
                self.spawn(f"lan-sensors-{gw}", "sim", "sensors", "--broker", lan.device_url, "--gateway", gw,
                           "--count", str(len(LAN_SENSOR_KINDS)), "--kinds", ",".join(LAN_SENSOR_KINDS),
                           "--prefix", "lan", "--interval", "5", "--credentials", str(creds_file))
            self.endpoints["gateways"][gw] = {"commune": commune, "lan_mqtt": lan.url,
                                              "lan_devices_mqtt": lan.device_url,
                                              "device_credentials": str(creds_file), "config": str(path),
                                              "speakers": speakers,
                                              "sensors": [d for d, _ in SIM_SENSORS] + lan_sensors}
        if _has("scheduler.http"):
            step("scheduler (dispatcher, web UI, API)")
            port = self.http_port if self.http_port and _port_free(self.http_port) else free_port()
            scfg = scheduler_config(data_dir=self.root / "scheduler", broker_url=central.url, signer=signer,
                                    key_file=self.root / "scheduler" / "signing.key", http_port=port,
                                    influx={"url": influx.url, "database": influx.database},
                                    gateways=list(GATEWAYS))
            sched = central.user(SCHEDULER_USER)
            scfg["broker"].update({"username": sched.username, "password": {"value": sched.password}})
            spath = write_yaml(self.root / "scheduler" / "scheduler.yaml", scfg)
            from scheduler.access.demo import create_demo_access

            self.endpoints.update(create_demo_access(spath, [gw for gw, _ in GATEWAYS]))
            self.spawn("scheduler", "scheduler", "run", "--config", str(spath))
            self.endpoints["scheduler"] = {"url": f"http://127.0.0.1:{port}", "config": str(spath)}

    def check_children(self) -> list[str]:
        return [f"{name} exited with code {proc.returncode} (log: {self.root / 'logs' / (name + '.log')})"
                for name, proc in self.children if proc.poll() is not None]

    def stop(self) -> None:
        for _name, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _name, proc in self.children:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for server in reversed(self.servers):
            server.stop()


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def step(text: str) -> None:
    print(f"  … starting {text}", flush=True)


class StatusFollower:
    """Prints a line whenever a gateway's retained status changes; remembers who came online."""

    def __init__(self, port: int, username: str, password: str) -> None:
        import paho.mqtt.client as paho

        self.online: set[str] = set()
        self.ever_online: set[str] = set()
        self.events = 0
        self._lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe([("loaxa/v1/+/status", 1), ("loaxa/v1/+/event", 1)])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        gw = msg.topic.split("/")[2]
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            return
        stamp = time.strftime("%H:%M:%S")
        if msg.topic.endswith("/status"):
            state = payload.get("state")
            with self._lock:
                if state == "online":
                    self.online.add(gw)
                    self.ever_online.add(gw)
                else:
                    self.online.discard(gw)
            print(f"  [{stamp}] gateway {gw}: {state}", flush=True)
        elif payload.get("kind") == "warning":
            print(f"  [{stamp}] {gw}: WARNING {payload.get('rule_id')} {payload.get('state')} "
                  f"({payload.get('device')} {payload.get('field')} = {payload.get('value')})", flush=True)
        elif payload.get("kind") == "playback":
            self.events += 1
            print(f"  [{stamp}] {gw}/{payload.get('device')}: {payload.get('broadcast_id')} {payload.get('state')}",
                  flush=True)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run(args: argparse.Namespace) -> int:
    from loaxa.servers import ServerUnavailable

    root = args.data_dir or Path(tempfile.mkdtemp(prefix="loaxa-demo-"))
    root = root.resolve()
    demo = Demo(root, args.http_port)
    print(f"Loa Xã demo — data and logs in {root}", flush=True)
    stopping = threading.Event()

    def on_signal(_sig: int, _frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    follower: StatusFollower | None = None
    code = 0
    try:
        demo.start()
        ep = demo.endpoints
        # its own read-only account: client ids are user names, so a technician's mosquitto_sub as
        # 'viewer' does not kick the follower off (nor the other way round)
        monitor = ep["central_mqtt"]["monitor"]
        follower = StatusFollower(int(ep["central_mqtt"]["url"].rsplit(":", 1)[1]), monitor["username"],
                                  monitor["password"])
        if args.endpoints_file:
            args.endpoints_file.write_text(json.dumps(ep, indent=2, ensure_ascii=False))
        print_banner(ep, args.endpoints_file)
        from loaxa import demo_schedules, demo_warnings

        if "scheduler" in ep:
            print("\n".join(demo_warnings.banner_lines(ep)
                            + (demo_schedules.banner_lines(ep) if args.example_schedules else [])), flush=True)
        demo_warnings.start(ep, stopping)
        if args.example_schedules:
            demo_schedules.start(ep, stopping)
        deadline = time.monotonic() + args.duration if args.duration else None
        while not stopping.is_set():
            problems = demo.check_children()
            if problems:
                for p in problems:
                    print(f"  ! {p}", file=sys.stderr, flush=True)
                code = 1
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            stopping.wait(0.5)
        if code == 0 and args.duration:
            missing = {gw for gw, _ in GATEWAYS} - follower.ever_online
            if missing:
                print(f"  ! never came online: {', '.join(sorted(missing))}", file=sys.stderr)
                code = 1
    except ServerUnavailable as exc:
        print(f"loaxa demo: {exc}", file=sys.stderr)
        code = 2
    finally:
        print("Stopping the demo …", flush=True)
        demo.stop()
        if follower is not None:
            follower.close()
        if not args.keep and not args.data_dir:
            shutil.rmtree(root, ignore_errors=True)
        elif args.keep or args.data_dir:
            print(f"Data and logs kept in {root}")
    print("Demo stopped." if code == 0 else f"Demo stopped with errors (exit {code}).", flush=True)
    return code


def print_banner(ep: dict[str, Any], endpoints_file: Path | None) -> None:
    c = ep["central_mqtt"]
    lines = [
        "",
        "Loa Xã demo is running:",
        f"  central MQTT broker  {c['url']}   (watch: mosquitto_sub -h 127.0.0.1 -p {c['url'].rsplit(':', 1)[1]}"
        f" -u viewer -P {c['viewer']['password']} -t 'loaxa/v1/#' -v)",
        f"  InfluxDB             {ep['influxdb']['url']}   database '{ep['influxdb']['database']}'"
        f"   (try: influx -port {ep['influxdb']['url'].rsplit(':', 1)[1]} -database loaxa"
        " -execute 'SHOW MEASUREMENTS')",
    ]
    if "scheduler" in ep:
        lines.append(f"  web UI (tiếng Việt)  {ep['scheduler']['url']}/   (sign in with a demo account)")
        lines.append(f"  scheduler API        {ep['scheduler']['url']}   (OpenAPI: {ep['scheduler']['url']}/docs)")
    for gw, info in ep["gateways"].items():
        lines.append(f"  gateway {gw:<12} {info['commune']}: LAN broker {info['lan_mqtt']},"
                     f" speakers {', '.join(info['speakers'])}")
    if endpoints_file:
        lines.append(f"  endpoints written to {endpoints_file}")
    if "scheduler" in ep:
        from scheduler.access.demo import banner_lines

        url = ep["scheduler"]["url"]
        gws = " ".join(ep["gateways"])
        lines += banner_lines(ep, url)
        lines += [
            "",
            "Try it in another terminal (speakers report below as they start and finish):",
            f"  export LOAXA_URL={url} LOAXA_PASSWORD='{ep['accounts']['admin']['password']}'",
            f"  .venv/bin/loaxa broadcast now --login admin --targets {gws} --priority emergency \\",
            "      --text 'Thông báo khẩn: lúc 17h30 ngày 02/12/2026 mực nước sông đạt 132,5 cm, "
            "bà con di chuyển lên vùng cao.'",
            "  .venv/bin/loaxa broadcast status BROADCAST_ID --login admin",
            "",
            "The IOC reads the last hour of water levels of one commune (CSV) with its token:",
            f"  curl -H 'Authorization: Bearer {ep['tokens']['ioc']['token']}' \\",
            f"      '{url}/ioc/v1/readings?measurement=water_level&gateway={next(iter(ep['gateways']))}&format=csv'",
        ]
    lines += [
        "",
        "Readings arrive in InfluxDB every few seconds: measurements water_level, rain, environment,",
        "air_quality, power and gateway_health, tagged by gateway, device and commune.",
    ]
    lines += ["", "Gateway status as it changes (Ctrl-C to stop):"]
    print("\n".join(lines), flush=True)


