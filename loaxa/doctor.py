"""``loaxa doctor``: check one node (a gateway or the scheduler) and say in plain words what to fix.

Each check gives ``ok``, ``warn`` or ``fail`` with what it saw and, when not ok, what to do. The
checks only read: they connect to the brokers with the node's own credentials (and disconnect at
once), ping InfluxDB, read certificates and files; they change nothing. Exit code 0 with no
``fail``, 1 otherwise — so a monitoring job or an upgrade script can run it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import ssl
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from loaxa.mqttconf import MqttEndpoint

Level = Literal["ok", "warn", "fail"]
MARK = {"ok": "✔", "warn": "!", "fail": "✘"}

#: A certificate that expires within this many days is a warning.
CERT_WARN_DAYS = 30
#: Below this free space (and share of the disk) the spool and media cache are at risk.
DISK_WARN_BYTES = 1024**3
DISK_WARN_SHARE = 0.10

HELP = """\
Check this node and say what to fix, in plain words. Nothing is changed.

  loaxa doctor --config /etc/loaxa/gateway.yaml      # on a commune gateway (Pi)
  loaxa doctor --config /etc/loaxa/scheduler.yaml    # on the district server

It checks: the config file is valid; the programs it needs are installed; the clock is
synchronised; there is disk space for the spool and media; each MQTT broker answers and accepts
this node's own user and password (and TLS certificate); InfluxDB answers; certificates are not
about to expire; the signing key file is private; and, where systemd runs, that the services are up.
Exit code: 0 when nothing failed, 1 when something did (warnings do not fail).
"""


@dataclass(frozen=True)
class Result:
    name: str
    level: Level
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{MARK[self.level]} {self.name}: {self.detail}"
        return f"{text}\n    → {self.fix}" if self.fix else text


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("doctor", help="check this node and say what to fix", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True, help="the node's gateway.yaml or scheduler.yaml")
    p.add_argument("--kind", choices=["gateway", "scheduler"], help="force the kind of config")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each server (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    results = list(diagnose(args.config, args.kind, args.timeout))
    for r in results:
        print(r.line())
    fails = sum(r.level == "fail" for r in results)
    warns = sum(r.level == "warn" for r in results)
    print(f"{args.config}: {fails} problem(s), {warns} warning(s)")
    return 1 if fails else 0


def diagnose(path: Path, kind: str | None, timeout: float) -> Iterator[Result]:
    from loaxa.config_cmd import _guess_kind
    from loaxa.yamlconf import ConfigError

    kind = kind or _guess_kind(path)
    try:
        if kind == "scheduler":
            from scheduler.config import load_scheduler_config

            cfg: Any = load_scheduler_config(path)
        else:
            from gateway.config import load_gateway_config

            cfg = load_gateway_config(path)
    except ConfigError as exc:
        first = exc.problems[0] if exc.problems else str(exc)
        yield Result("config", "fail", f"{len(exc.problems)} problem(s), first: {first}",
                     f"run `loaxa config check {path}` and correct each line it names")
        return
    yield Result("config", "ok", f"{path} is a valid {kind} config")
    yield from check_programs(kind)
    yield check_clock()
    if kind == "scheduler":
        yield check_disk(cfg.scheduler.data_dir)
        yield check_mqtt("central broker", cfg.broker, timeout)
        yield from check_certs("central broker", cfg.broker)
        yield from check_signing_key(cfg)
        yield from check_services(["loaxa-scheduler", "mosquitto"])
    else:
        yield check_disk(cfg.gateway.data_dir)
        yield check_mqtt("uplink (central broker)", cfg.uplink, timeout)
        yield check_mqtt("commune LAN broker", cfg.local_broker, timeout)
        for label, ep in (("uplink", cfg.uplink), ("LAN broker", cfg.local_broker)):
            yield from check_certs(label, ep)
        if cfg.influx is not None:
            yield check_influx(cfg.influx.url, timeout, cfg.influx.ca_file, cfg.influx.verify_tls)
        yield check_media_local(cfg)
        yield from check_services(["loaxa-gateway", "mosquitto"])


def check_media_local(cfg: Any) -> Result:
    """IP speakers must fetch media from the gateway's cache: otherwise they are given the centre's
    URL and a broadcast whose file the gateway holds fails whenever the centre is unreachable."""
    speakers = [d.id for d in cfg.devices if getattr(d, "type", None) == "ip_speaker"]
    if not speakers:
        return Result("media", "ok", "no IP speakers: nothing fetches media over the network")
    bc = cfg.broadcast
    if bc.media_listen and bc.media_public_url:
        return Result("media", "ok", f"{len(speakers)} IP speaker(s) fetch media from {bc.media_public_url}")
    return Result("media", "fail",
                  f"{len(speakers)} IP speaker(s) but no broadcast.media_listen/media_public_url: they would fetch "
                  "media from the centre at play time and fail (media_unavailable) when it is unreachable",
                  "set broadcast.media_listen (e.g. 0.0.0.0:8091) and broadcast.media_public_url "
                  "(e.g. http://192.168.10.1:8091, the gateway's LAN address)")


def check_programs(kind: str) -> Iterator[Result]:
    need = {"ffmpeg": "ffmpeg", "ffprobe": "ffmpeg"}
    if kind == "scheduler":
        need["espeak-ng"] = "espeak-ng"
    missing = sorted({pkg for prog, pkg in need.items() if shutil.which(prog) is None})
    from loaxa import __version__

    if missing:
        role = "gateway" if kind == "gateway" else "server"
        yield Result("programs", "fail", f"missing: {', '.join(missing)}",
                     f"apt-get install {' '.join(missing)} (or re-run scripts/install.sh {role})")
    else:
        yield Result("programs", "ok", f"loaxa {__version__}, Python {sys.version.split()[0]}, "
                                       f"{', '.join(sorted(need))} found")


def check_clock(run_cmd: Callable[[list[str]], str | None] | None = None) -> Result:
    """systemd-timesyncd / chrony report synchronisation through timedatectl."""
    runner = run_cmd or _run
    out = runner(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
    if out is None:
        if Path("/run/systemd/timesync/synchronized").exists():
            return Result("clock", "ok", "synchronised (systemd-timesyncd)")
        return Result("clock", "warn", "cannot tell whether the clock is synchronised (no timedatectl)",
                      "make sure NTP runs (systemd-timesyncd or chrony): broadcasts start by this clock")
    if out.strip() == "yes":
        return Result("clock", "ok", "synchronised by NTP")
    return Result("clock", "fail", "NOT synchronised: scheduled broadcasts may start at the wrong time",
                  "check network access to an NTP server and `timedatectl timesync-status`; "
                  "a Pi without an RTC is behind after every power cut until NTP answers")


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def check_disk(data_dir: Path) -> Result:
    probe = data_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    free_gib = usage.free / 1024**3
    share = usage.free / usage.total if usage.total else 0.0
    detail = f"{free_gib:.1f} GiB free ({share:.0%}) where {data_dir} lives"
    if usage.free < DISK_WARN_BYTES / 4:
        return Result("disk", "fail", detail, "free space now: the spool drops the oldest readings when full")
    if usage.free < DISK_WARN_BYTES or share < DISK_WARN_SHARE:
        return Result("disk", "warn", detail, "free some space or move data_dir to a larger disk")
    return Result("disk", "ok", detail)


def check_mqtt(name: str, ep: MqttEndpoint, timeout: float) -> Result:
    """Connect with the node's own credentials (MQTT 5), then disconnect at once."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    where = f"{ep.url} as {ep.username or '(no user)'}"
    # a client id of its own: borrowing the node's would kick the running service off the broker
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=paho.MQTTv5)
    if ep.username:
        client.username_pw_set(ep.username, ep.password.get() if ep.password else None)
    try:
        ctx = ep.tls_context()
    except (OSError, ssl.SSLError) as exc:
        return Result(name, "fail", f"{where}: cannot load TLS files ({exc})", "check ca_file/cert_file/key_file")
    if ctx is not None:
        client.tls_set_context(ctx)
    done = threading.Event()
    outcome: list[Any] = []

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        outcome.append(rc)
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(ep.host, ep.port, keepalive=10)
    except ssl.SSLCertVerificationError as exc:
        return Result(name, "fail", f"{where}: the broker's certificate was refused ({exc.verify_message})",
                      "give this node the installation's ca.crt (ca_file) and connect by a name the "
                      "certificate carries (`loaxa tls show server.crt`)")
    except (OSError, ssl.SSLError) as exc:
        return Result(name, "fail", f"{where}: unreachable ({exc})",
                      "is the broker running and the address/port right? check the firewall and the 4G link")
    client.loop_start()
    try:
        if not done.wait(timeout):
            return Result(name, "fail", f"{where}: no answer within {timeout:.0f}s", "check the address and port")
        rc = outcome[0]
        if getattr(rc, "is_failure", False):
            # Mosquitto answers "Not authorized" both for a wrong password and an unknown user
            return Result(name, "fail", f"{where}: refused ({rc})",
                          "check this node's user name (= its gateway or device id) and password against "
                          "the broker's password file (mosquitto_passwd)")
        return Result(name, "ok", f"{where}: connected")
    finally:
        client.disconnect()
        client.loop_stop()


def check_certs(name: str, ep: MqttEndpoint, now: dt.datetime | None = None) -> Iterator[Result]:
    from loaxa.tlsca import TlsError, describe

    for label, path in (("CA", ep.ca_file), ("client certificate", ep.cert_file)):
        if path is None:
            continue
        try:
            info = describe(path)
        except TlsError as exc:
            yield Result(f"{name} {label}", "fail", str(exc), "copy the right PEM file to this path")
            continue
        days = info.days_left(now)
        detail = f"{path}: expires {info.not_after:%Y-%m-%d} ({days:.0f} days)"
        if days <= 0:
            yield Result(f"{name} {label}", "fail", detail + " — EXPIRED", "renew it: `loaxa tls server|client …`")
        elif days < CERT_WARN_DAYS:
            yield Result(f"{name} {label}", "warn", detail, "renew it soon: `loaxa tls server|client …`")
        else:
            yield Result(f"{name} {label}", "ok", detail)


def check_influx(url: str, timeout: float, ca_file: Path | None, verify: bool) -> Result:
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None) if url.startswith("https") else None
    if ctx is not None and not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=timeout, context=ctx) as resp:
            version = resp.headers.get("X-Influxdb-Version", "?")
            return Result("InfluxDB", "ok", f"{url} answers (version {version})")
    except urllib.error.HTTPError as exc:
        if exc.code in (200, 204):
            return Result("InfluxDB", "ok", f"{url} answers")
        return Result("InfluxDB", "fail", f"{url}: HTTP {exc.code}", "check the URL and the InfluxDB service")
    except OSError as exc:
        return Result("InfluxDB", "warn", f"{url}: unreachable ({exc})",
                      "readings wait in the spool meanwhile; check the InfluxDB server and the link")


def check_signing_key(cfg: Any) -> Iterator[Result]:
    secret = cfg.signing.private_key
    path = getattr(secret, "file", None)
    if path is None:
        yield Result("signing key", "warn", "the private key is inline in the config",
                     "keep it in a separate file with mode 0600 (signing.private_key.file)")
        return
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        yield Result("signing key", "fail", f"{path}: {exc.strerror}", "restore the key from the backup")
        return
    if mode & 0o077:
        yield Result("signing key", "fail", f"{path}: mode {mode:o}: others can read the key that makes speakers play",
                     f"chmod 600 {path}")
    else:
        yield Result("signing key", "ok", f"{path}: private (mode {mode:o})")


def check_services(names: list[str]) -> Iterator[Result]:
    if shutil.which("systemctl") is None or not Path("/run/systemd/system").exists():
        return  # not a systemd machine (a container, a developer's laptop): nothing to say
    for svc in names:
        state = (_run(["systemctl", "is-active", svc]) or "inactive").strip()
        if state == "active":
            yield Result(f"service {svc}", "ok", "running")
        else:
            enabled = (_run(["systemctl", "is-enabled", svc]) or "").strip()
            yield Result(f"service {svc}", "fail", f"{state} ({enabled or 'not installed'})",
                         f"systemctl enable --now {svc}; then `journalctl -u {svc} -n 50` for why it stopped")

