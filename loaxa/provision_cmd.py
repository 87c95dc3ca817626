"""``loaxa commune add|remove|list`` and ``loaxa device add`` (on the central server; see loaxa/provision.py)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ADD_HELP = """\
Provision a commune gateway on the central server, in one step:

  * its account on the central broker (mosquitto_passwd) and its block in the central ACL;
  * a LAN broker config, ACL and an account per speaker and sensor;
  * the gateway.yaml (trusting the scheduler's signing key; secrets in separate 0600 files);
  * its entry under 'gateways:' in the scheduler config (and, with --token-file, at once through
    the running scheduler's API);
  * a bundle, <root>/communes/ID/bundle-ID.tar.gz, to copy onto the Pi and install there with
    `loaxa gateway install bundle-ID.tar.gz`.

Running it again is safe: passwords are made once and reused, the bundle is rebuilt with the same
identity, and speakers or sensors named again are not added twice.

  loaxa commune add xa-an-binh --name "Xã An Bình" --speakers 4 --sensor mucnuoc-cau:water_level
"""


def _server_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the server keeps things")
    g.add_argument("--root", type=Path, default=Path(os.environ.get("LOAXA_ROOT", "/etc/loaxa")),
                   help="state of provisioned communes is kept in ROOT/communes/ (default /etc/loaxa)")
    g.add_argument("--config", type=Path, help="the scheduler config (default ROOT/scheduler.yaml)")
    g.add_argument("--broker-passwd", type=Path, default=Path("/etc/mosquitto/loaxa.passwd"),
                   help="the central broker's password file")
    g.add_argument("--broker-acl", type=Path, default=Path("/etc/mosquitto/loaxa.acl"),
                   help="the central broker's ACL file")
    g.add_argument("--reload", default=None, metavar="CMD",
                   help="command that makes the central broker re-read its files "
                        "(default 'systemctl reload mosquitto' where systemd runs; '' to skip)")


def _paths(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from loaxa.provision import ServerPaths

    if args.reload is None:
        systemd = shutil.which("systemctl") and Path("/run/systemd/system").is_dir()
        reload = ["systemctl", "reload", "mosquitto"] if systemd else []
    else:
        import shlex

        reload = shlex.split(args.reload)
    return ServerPaths(root=args.root, scheduler_config=args.config, broker_passwd=args.broker_passwd,
                       broker_acl=args.broker_acl, reload_command=reload)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("commune", help="provision commune gateways (server)", description="Commune provisioning.")
    csub = p.add_subparsers(title="commune commands", metavar="ACTION")

    a = csub.add_parser("add", help="provision a commune gateway and write its bundle", description=ADD_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("id", help="gateway id: the commune code or a slug [a-z0-9-]")
    a.add_argument("--name", required=True, help='the commune\'s name, e.g. "Xã An Bình"')
    a.add_argument("--speakers", type=int, default=0, metavar="N", help="IP speakers loa-01 … loa-NN")
    a.add_argument("--sensor", "--sensors", action="append", default=[], metavar="ID[:MEASUREMENT]",
                   help="an MQTT sensor (several: repeat or comma-separate); measurement default environment")
    a.add_argument("--uplink-url", help="the central broker as the Pi reaches it (default: the scheduler's broker.url)")
    a.add_argument("--lan-address", help="the Pi's LAN address for the devices' listener (default 192.168.10.1)")
    a.add_argument("--lan-port", type=int, help="the devices' listener port (default 1883)")
    a.add_argument("--local-port", type=int, help="the gateway's loopback listener port (default 1883)")
    a.add_argument("--media-url", help="URL the speakers fetch media from on the Pi (default with IP speakers: "
                   "http://LAN-ADDRESS:8091)")
    a.add_argument("--api", help="the running scheduler, to register the gateway at once (default http://127.0.0.1:PORT)")
    a.add_argument("--token-file", type=Path, help="an API token with gateway:admin (loaxa tokens create)")
    _server_args(a)
    a.set_defaults(func=run_add)

    r = csub.add_parser("remove", help="revoke a commune gateway's broker access and forget it")
    r.add_argument("id")
    _server_args(r)
    r.set_defaults(func=run_remove)

    rb = csub.add_parser("rebuild", help="rebuild bundles (all, or the ones named) after the trusted keys "
                         "or the CA changed")
    rb.add_argument("ids", nargs="*", metavar="ID")
    _server_args(rb)
    rb.set_defaults(func=run_rebuild)

    ls = csub.add_parser("list", help="provisioned communes")
    _server_args(ls)
    ls.set_defaults(func=run_list)
    p.set_defaults(func=lambda _a: (p.print_help(), 2)[1])

    d = sub.add_parser("device", help="add a speaker or sensor to a provisioned commune (server)",
                       description="Device provisioning.")
    dsub = d.add_subparsers(title="device commands", metavar="ACTION")
    da = dsub.add_parser("add", help="a LAN account and a gateway.yaml entry for one more device; rebuilds the bundle")
    da.add_argument("gateway", help="gateway id")
    da.add_argument("device", help="device id [a-z0-9-]")
    da.add_argument("--type", choices=("ip_speaker", "sensor"), default="ip_speaker")
    da.add_argument("--measurement", default="environment", help="for a sensor: water_level, rain, environment, …")
    _server_args(da)
    da.set_defaults(func=run_device_add)
    d.set_defaults(func=lambda _a: (d.print_help(), 2)[1])


def _sensors(specs: list[str]):  # type: ignore[no-untyped-def]
    from loaxa.provision import DeviceEntry

    out = []
    for spec in specs:
        for item in filter(None, (s.strip() for s in spec.split(","))):
            dev, _, meas = item.partition(":")
            out.append(DeviceEntry(id=dev, type="mqtt_sensor", measurement=meas or "environment"))
    return out


def _report(what: str, result) -> int:  # type: ignore[no-untyped-def]
    for note in result.notes:
        print(f"  {note}")
    if result.bundle:
        print(f"{what}: bundle {result.bundle}")
        print("  copy it to the Pi (scp) and run there:  sudo loaxa gateway install " + result.bundle.name)
    return 0


def _fail(cmd: str, exc: BaseException) -> int:
    print(f"loaxa {cmd}: {exc}", file=sys.stderr)
    return 2


def run_add(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from loaxa.provision import DeviceEntry, ProvisionError, add_commune
    from protocol.errors import ProtocolError

    try:
        if not 0 <= args.speakers <= 500:
            raise ValueError("--speakers must be 0..500")
        width = max(2, len(str(args.speakers)))
        devices = [DeviceEntry(id=f"loa-{i:0{width}d}", type="ip_speaker") for i in range(1, args.speakers + 1)]
        devices += _sensors(args.sensor)
        paths = _paths(args)
        token = None
        if args.token_file:
            # `loaxa tokens create` prints a line about the token, then the token: take the last line
            lines = [ln.strip() for ln in args.token_file.read_text().splitlines() if ln.strip()]
            token = lines[-1] if lines else None
        elif os.environ.get("LOAXA_TOKEN"):
            token = os.environ["LOAXA_TOKEN"]
        api = args.api
        if token and not api:
            from scheduler.config import load_scheduler_config

            api = f"http://127.0.0.1:{load_scheduler_config(paths.config).http.port}"
        result = add_commune(paths, args.id, args.name, devices=devices, uplink_url=args.uplink_url,
                             lan_address=args.lan_address, lan_port=args.lan_port, local_port=args.local_port,
                             media_public_url=args.media_url, api=api, token=token)
    except (ProvisionError, ValueError, ProtocolError, ValidationError, OSError) as exc:
        return _fail("commune add", exc)
    return _report(f"commune {args.id} provisioned", result)


def run_remove(args: argparse.Namespace) -> int:
    from loaxa.provision import ProvisionError, remove_commune
    from protocol.errors import ProtocolError

    try:
        result = remove_commune(_paths(args), args.id)
    except (ProvisionError, ValueError, ProtocolError, OSError) as exc:
        return _fail("commune remove", exc)
    return _report(f"commune {args.id} removed", result)


def run_rebuild(args: argparse.Namespace) -> int:
    from loaxa.provision import ProvisionError, rebuild_bundles
    from protocol.errors import ProtocolError

    try:
        bundles = rebuild_bundles(_paths(args), args.ids)
    except (ProvisionError, ValueError, ProtocolError, OSError) as exc:
        return _fail("commune rebuild", exc)
    for b in bundles:
        print(b)
    print(f"{len(bundles)} bundle(s) rebuilt: install each on its Pi (loaxa gateway install) and restart the gateway")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from loaxa.provision import list_communes

    for st in list_communes(_paths(args)):
        speakers = sum(d.type == "ip_speaker" for d in st.devices)
        print(f"{st.id}\t{st.name}\t{speakers} speakers, {len(st.devices) - speakers} sensors")
    return 0


def run_device_add(args: argparse.Namespace) -> int:
    from loaxa.provision import DeviceKind, ProvisionError, add_device
    from protocol.errors import ProtocolError

    kind: DeviceKind = "ip_speaker" if args.type == "ip_speaker" else "mqtt_sensor"
    try:
        result = add_device(_paths(args), args.gateway, args.device, kind, args.measurement)
    except (ProvisionError, ValueError, ProtocolError, OSError) as exc:
        return _fail("device add", exc)
    return _report(f"device {args.device} added to {args.gateway}", result)
