"""``loaxa broker acl``: write the Mosquitto ACL files from the examples in configs/mosquitto/.

The technician never edits an ACL by hand: the central one is built for a list of gateway ids (and
read-only accounts), a commune LAN one for its gateway id (docs/operations.md, sections 3 and 5).
"""

from __future__ import annotations

import argparse
import sys

HELP = """\
Print a Mosquitto ACL generated from the production examples (configs/mosquitto/):

  loaxa broker acl central --gateway xa-an-binh --gateway xa-phu-my [--reader viewer --reader ioc]
                           [--worker scheduler-2 --worker scheduler-3]
      the central broker: the scheduler's block (repeated for each further scheduler --worker, see
      docs/scaling.md), one read-only block per --reader (default: viewer) and one block per gateway
      (user name = gateway id). Re-run it when a gateway is added.
  loaxa broker acl lan --gateway xa-an-binh
      a commune LAN broker: the devices' rules and the gateway's account, for this gateway id.

Redirect the output to the ACL file and reload Mosquitto (systemctl reload mosquitto).
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("broker", help="Mosquitto ACL files for the central and commune brokers",
                       description="Broker tools.")
    bsub = p.add_subparsers(title="broker commands", metavar="ACTION")
    a = bsub.add_parser("acl", help="print an ACL generated from configs/mosquitto/*.example", description=HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("which", choices=("central", "lan"), help="central broker or a commune LAN broker")
    a.add_argument("--gateway", action="append", default=[], metavar="ID",
                   help="gateway id (several for central, exactly one for lan)")
    a.add_argument("--reader", action="append", default=[], metavar="USER",
                   help="a read-only account on the central broker (default: viewer)")
    a.add_argument("--worker", action="append", default=[], metavar="USER",
                   help="the account of a further scheduler worker on the central broker (docs/scaling.md)")
    a.set_defaults(func=run_acl)
    p.set_defaults(func=lambda _a: (p.print_help(), 2)[1])


def run_acl(args: argparse.Namespace) -> int:
    from loaxa.brokers import AclExampleError, central_acl, lan_acl
    from protocol.errors import ProtocolError

    try:
        if args.which == "central":
            if args.gateway and len(set(args.gateway)) != len(args.gateway):
                raise ValueError("a gateway id is given twice")
            text = central_acl(args.gateway, args.reader or ["viewer"], workers=args.worker)
        else:
            if len(args.gateway) != 1:
                raise ValueError("a LAN ACL is for exactly one --gateway")
            if args.reader or args.worker:
                raise ValueError("--reader and --worker are for the central broker only")
            text = lan_acl(args.gateway[0])
    except (ValueError, ProtocolError, AclExampleError, OSError) as exc:
        print(f"loaxa broker acl: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0
