"""``loaxa tls``: the installation's own CA and the central broker's certificates."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = """\
Certificates for the central MQTT broker (TLS), made with the installation's own CA.

  loaxa tls init /etc/loaxa/tls --name mqtt.huyen.example.vn --name 203.0.113.10
      creates ca.crt/ca.key (the CA) and server.crt/server.key (the broker) in that folder
  loaxa tls server /etc/loaxa/tls --name mqtt.huyen.example.vn
      renews the broker's certificate (same key) — run before it expires
  loaxa tls client /etc/loaxa/tls xa-an-binh
      a client certificate (CN = the gateway id), for brokers that require one
  loaxa tls show /etc/loaxa/tls/server.crt
      subject, names and days left

Give the broker server.crt + server.key + ca.crt (configs/mosquitto/central.conf.example) and every
gateway ca.crt (mqtt.ca_file in gateway.yaml). Keys are written 0600 and never overwritten. Keep
ca.key off the broker if you can: whoever holds it can impersonate the broker.
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("tls", help="CA and broker certificates (TLS)", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    tsub = p.add_subparsers(title="tls commands", metavar="ACTION")

    i = tsub.add_parser("init", help="create the CA and the broker's certificate",
                        description="Create ca.crt/ca.key and server.crt/server.key in DIR.")
    i.add_argument("dir", type=Path, help="folder for the CA and certificates (created)")
    i.add_argument("--name", action="append", required=True, metavar="HOST_OR_IP",
                   help="a DNS name or IP address clients use to reach the broker (repeat for more)")
    i.add_argument("--ca-name", default="Loa Xa CA", help="the CA's common name (default: %(default)s)")
    i.add_argument("--days", type=int, default=None, help="lifetime of the broker certificate in days (default 825)")
    i.set_defaults(func=run_init)

    s = tsub.add_parser("server", help="issue or renew the broker's certificate",
                        description="Issue or renew server.crt in DIR (the key is kept).")
    s.add_argument("dir", type=Path)
    s.add_argument("--name", action="append", required=True, metavar="HOST_OR_IP")
    s.add_argument("--days", type=int, default=None)
    s.set_defaults(func=run_server)

    c = tsub.add_parser("client", help="issue a client certificate (CN = NAME)")
    c.add_argument("dir", type=Path)
    c.add_argument("name", help="e.g. the gateway id")
    c.add_argument("--days", type=int, default=None)
    c.set_defaults(func=run_client)

    w = tsub.add_parser("show", help="print a certificate's subject, names and expiry")
    w.add_argument("cert", type=Path, nargs="+")
    w.set_defaults(func=run_show)
    p.set_defaults(func=lambda _a: (p.print_help(), 2)[1])


def _days(args: argparse.Namespace) -> int:
    from loaxa.tlsca import LEAF_DAYS

    days = LEAF_DAYS if args.days is None else int(args.days)
    if not 1 <= days <= 3650:
        raise SystemExit("--days: between 1 and 3650")
    return days


def _print(path: Path) -> None:
    from loaxa.tlsca import describe

    info = describe(path)
    names = ", ".join(info.names) or "-"
    kind = "CA" if info.is_ca else "certificate"
    print(f"{path}: {kind} {info.subject}; names: {names}; expires {info.not_after:%Y-%m-%d} "
          f"({info.days_left():.0f} days left)")


def run_init(args: argparse.Namespace) -> int:
    from loaxa.tlsca import TlsError, init_ca, issue_server

    try:
        paths = init_ca(args.dir, args.ca_name)
        issue_server(args.dir, args.name, _days(args))
    except TlsError as exc:
        print(f"error: {exc}")
        return 2
    _print(paths.ca_cert)
    _print(paths.server_cert)
    print(f"private keys (mode 0600): {paths.ca_key}, {paths.server_key}")
    return 0


def run_server(args: argparse.Namespace) -> int:
    from loaxa.tlsca import TlsError, issue_server

    try:
        path = issue_server(args.dir, args.name, _days(args))
    except TlsError as exc:
        print(f"error: {exc}")
        return 2
    _print(path)
    print("reload the broker to use it: systemctl reload mosquitto")
    return 0


def run_client(args: argparse.Namespace) -> int:
    from loaxa.tlsca import TlsError, issue_client

    try:
        path = issue_client(args.dir, args.name, _days(args))
    except TlsError as exc:
        print(f"error: {exc}")
        return 2
    _print(path)
    return 0


def run_show(args: argparse.Namespace) -> int:
    from loaxa.tlsca import TlsError

    rc = 0
    for cert in args.cert:
        try:
            _print(cert)
        except TlsError as exc:
            print(f"error: {exc}")
            rc = 2
    return rc
