"""``loaxa warnings rules set|check`` and ``loaxa warnings cap send|list|approve|reject``.

Like ``loaxa broadcast``, these talk to the RUNNING scheduler over its HTTP API (``--url`` or
``LOAXA_URL``; an API token in ``LOAXA_TOKEN``/``--token-file`` or ``--login``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RULES_HELP = """\
Send a gateway its local warning rules (they replace the rules it had; an empty list removes them).
The gateway checks every reading of the named sensor against them as it arrives and plays the
warning on its own speakers, even with the connection to the centre cut. docs/warnings.md explains
each field. Example FILE.yaml:

  rules:
    - id: lu-song-cai
      device: mucnuoc-song          # the gauge's device id on that gateway
      field: water_level_cm
      above: 180                    # cm
      for_s: 60                     # stays above for a minute
      hysteresis: 10                # cleared below 170 cm
      media: 9f86d0…0a08            # sha256 of an approved item of the audio library
      level: emergency              # normal | priority | emergency (Thông tư 39)
      repeat_every_min: 15
      max_plays: 4
"""


def _api(args: argparse.Namespace) -> Any:
    from scheduler.cli import Api

    return Api(args)


def _load_rules(path: Path) -> Any:
    from loaxa.yamlconf import ConfigError, load_config
    from scheduler.cli import CliError
    from scheduler.warnings.rules import RulesIn

    try:
        return load_config(path, RulesIn)
    except ConfigError as exc:
        raise CliError(str(exc)) from exc


def run_rules_check(args: argparse.Namespace) -> int:
    rules = _load_rules(args.file)
    print(f"{args.file}: {len(rules.rules)} rule(s) OK: {', '.join(r.id for r in rules.rules) or '(none)'}")
    return 0


def run_rules_set(args: argparse.Namespace) -> int:
    rules = _load_rules(args.file)
    api = _api(args)
    result = api.call("PUT", f"/api/gateways/{args.gateway}/warning-rules",
                      content=rules.model_dump_json(), headers={"Content-Type": "application/json"})
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        names = ", ".join(result["rules"]) or "(none)"
        print(f"gateway {args.gateway} accepted {len(result['rules'])} rule(s): {names}")
    return 0


def run_cap_send(args: argparse.Namespace) -> int:
    from scheduler.cli import CliError

    try:
        raw = args.file.read_bytes()
    except OSError as exc:
        raise CliError(f"{args.file}: {exc.strerror}") from exc
    api = _api(args)
    result = api.call("POST", "/api/cap", content=raw, headers={"Content-Type": "application/cap+xml"})
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


def run_cap_list(args: argparse.Namespace) -> int:
    rows = _api(args).call("GET", "/api/cap", params={"limit": args.limit})
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    for r in rows:
        print(f"{r['id']:>5}  {r['status']:<8} {r['msgType']:<7} {r['decision']:<17} {r['state']:<10} "
              f"{','.join(r['gateways']) or '-':<30} {r['identifier']}  {r['headline'] or ''}")
    return 0


def run_cap_approve(args: argparse.Namespace) -> int:
    result = _api(args).call("POST", f"/api/cap/{args.id}/approve")
    print(f"alert {args.id}: broadcast {result['broadcast_id']} sent to {', '.join(result['gateways'])}")
    return 0


def run_cap_reject(args: argparse.Namespace) -> int:
    _api(args).call("POST", f"/api/cap/{args.id}/reject", json={"reason": args.reason})
    print(f"alert {args.id}: rejected, nothing is broadcast ({args.reason})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from scheduler.cli import _add_common, _handle

    w = sub.add_parser("warnings", help="local warning rules for gateways; CAP 1.2 alerts",
                       description="Local warning rules (sensor → warning on the commune's speakers, works "
                                   "with the WAN cut) and CAP 1.2 alerts. See docs/warnings.md.")
    wsub = w.add_subparsers(title="commands", metavar="WHAT")
    rules = wsub.add_parser("rules", help="send or check a gateway's warning rules")
    rsub = rules.add_subparsers(title="commands", metavar="CMD")
    s = rsub.add_parser("set", help="send FILE.yaml's rules to GATEWAY", description=RULES_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("gateway", help="gateway id, e.g. xa-an-binh")
    s.add_argument("file", type=Path, help="YAML file with a 'rules:' list")
    _add_common(s)
    s.set_defaults(func=_handle(run_rules_set))
    c = rsub.add_parser("check", help="check FILE.yaml without sending it", description=RULES_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("file", type=Path)
    c.set_defaults(func=_handle(run_rules_check))
    rules.set_defaults(func=lambda _a: (rules.print_help(), 2)[1])
    cap = wsub.add_parser("cap", help="send, list, approve and reject CAP 1.2 alerts")
    csub = cap.add_subparsers(title="commands", metavar="CMD")
    send = csub.add_parser("send", help="post a CAP 1.2 XML file to the scheduler (token with cap:submit)")
    send.add_argument("file", type=Path)
    _add_common(send)
    send.set_defaults(func=_handle(run_cap_send))
    ls = csub.add_parser("list", help="recent CAP alerts and what was decided")
    ls.add_argument("--limit", type=int, default=50)
    _add_common(ls)
    ls.set_defaults(func=_handle(run_cap_list))
    ap = csub.add_parser("approve", help="send the broadcast of an alert waiting for approval")
    ap.add_argument("id", type=int)
    _add_common(ap)
    ap.set_defaults(func=_handle(run_cap_approve))
    rj = csub.add_parser("reject", help="refuse an alert waiting for approval: nothing is broadcast",
                         description="Refuse a CAP alert that waits for approval (an untrusted source). The "
                                     "reason is kept in the audit log, e.g. --reason 'không thuộc địa bàn'.")
    rj.add_argument("id", type=int)
    rj.add_argument("--reason", required=True, help="why it is not broadcast (1-500 characters)")
    _add_common(rj)
    rj.set_defaults(func=_handle(run_cap_reject))
    cap.set_defaults(func=lambda _a: (cap.print_help(), 2)[1])
    w.set_defaults(func=lambda _a: (w.print_help(), 2)[1])


