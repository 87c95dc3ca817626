"""``loaxa groups list|show|add|edit|remove``: speaker groups ("cụm loa") through the scheduler's
HTTP API (signed in like ``loaxa broadcast``: ``LOAXA_TOKEN``, ``--token-file`` or ``--login``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

GROUPS_HELP = """\
A speaker group ("cụm loa") is some speakers of one commune, e.g. those of one thôn/ấp. Target it
in a broadcast or a schedule as GATEWAY/@GROUP, next to whole communes (GATEWAY) and single
speakers (GATEWAY/DEVICE). The group's speakers are read when the broadcast is made, and the
broadcast records them: changing a group later never changes what a past broadcast reports. A
schedule reads its groups each time an occurrence is sent (up to 8 days ahead).

A group holds 1 to 500 speakers of its own commune; a commune has at most 200 groups. Making,
changing and removing groups needs group:write on the commune (operators, approvers, admins);
a group that a schedule still targets cannot be removed.

Examples:
  loaxa groups list --commune xa-an-binh
  loaxa groups add xa-an-binh thon-dong --name "Thôn Đông" --speaker loa-cho --speaker loa-dinh
  loaxa groups edit xa-an-binh thon-dong --name "Thôn Đông" --speaker loa-cho --speaker loa-truong
  loaxa broadcast now --media thong-bao.mp3 --targets xa-an-binh/@thon-dong
  loaxa groups remove xa-an-binh thon-dong
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="scheduler HTTP address (default: $LOAXA_URL, or from --config)")
    p.add_argument("--config", type=Path, help="a scheduler YAML config, only to find its address")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--token-file", type=Path, help="file holding an API token (default: $LOAXA_TOKEN)")
    auth.add_argument("--login", help="sign in as this account (password: $LOAXA_PASSWORD or a prompt)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _wrap(fn: Any) -> Any:
    from scheduler.cli import _handle

    return _handle(fn)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    g = sub.add_parser("groups", help="speaker groups (cụm loa) of a commune: target them as GW/@GROUP",
                       description=GROUPS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    gsub = g.add_subparsers(title="groups commands", metavar="ACTION")
    ls = gsub.add_parser("list", help="groups of your communes")
    ls.add_argument("--commune", action="append", metavar="GATEWAY", help="only this commune (repeatable)")
    _common(ls)
    ls.set_defaults(func=_wrap(run_list))
    for name, helptext, fn in (("show", "one group and its speakers", run_show),
                               ("remove", "remove a group no schedule targets", run_remove)):
        c = gsub.add_parser(name, help=helptext)
        c.add_argument("commune", metavar="GATEWAY")
        c.add_argument("group", metavar="GROUP")
        _common(c)
        c.set_defaults(func=_wrap(fn))
    for name, helptext, fn in (("add", "make a group of a commune's speakers", run_add),
                               ("edit", "replace a group's name and speakers", run_edit)):
        c = gsub.add_parser(name, help=helptext, description=GROUPS_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        c.add_argument("commune", metavar="GATEWAY", help="the commune's gateway id")
        c.add_argument("group", metavar="GROUP", help="short id: a-z, 0-9 and -, e.g. thon-dong")
        c.add_argument("--name", required=True, help='what staff call it, e.g. "Thôn Đông"')
        c.add_argument("--speaker", action="append", required=True, dest="speakers", metavar="DEVICE",
                       help="a speaker of the commune (repeatable; `loaxa devices list` lists them)")
        _common(c)
        c.set_defaults(func=_wrap(fn))
    g.set_defaults(func=lambda _a: (g.print_help(), 2)[1])


def _print(gr: dict[str, Any]) -> None:
    print(f"{gr['target']}  {gr['name']}  ({len(gr['speakers'])} speaker(s))")
    print(f"  speakers: {' '.join(gr['speakers'])}")


def run_list(args: argparse.Namespace) -> int:
    from scheduler.cli import Api

    rows = Api(args).call("GET", "/api/groups", params={"commune": args.commune} if args.commune else None)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    for gr in rows:
        _print(gr)
    print(f"{len(rows)} group(s)")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from scheduler.cli import Api

    gr = Api(args).call("GET", f"/api/groups/{args.commune}/{args.group}")
    print(json.dumps(gr, ensure_ascii=False, indent=2)) if args.json else _print(gr)
    return 0


def run_add(args: argparse.Namespace) -> int:
    from scheduler.cli import Api

    gr = Api(args).call("POST", "/api/groups", json={"gateway": args.commune, "id": args.group, "name": args.name,
                                                     "speakers": args.speakers})
    print(json.dumps(gr, ensure_ascii=False, indent=2)) if args.json else _print(gr)
    return 0


def run_edit(args: argparse.Namespace) -> int:
    from scheduler.cli import Api

    gr = Api(args).call("PUT", f"/api/groups/{args.commune}/{args.group}",
                        json={"name": args.name, "speakers": args.speakers})
    print(json.dumps(gr, ensure_ascii=False, indent=2)) if args.json else _print(gr)
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from scheduler.cli import Api
    from scheduler.schedules.cli import _raw

    _raw(Api(args), "DELETE", f"/api/groups/{args.commune}/{args.group}")
    print(f"speaker group {args.commune}/@{args.group} removed")
    return 0
