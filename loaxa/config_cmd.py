"""``loaxa config check``: validate a gateway or scheduler YAML file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = """\
Validate a configuration file without starting anything.

The kind of file (gateway or scheduler) is recognised by its top-level section ('gateway:' or
'scheduler:'/'signing:'), or given with --kind. Every problem is printed on its own line as
  PATH:LINE:COLUMN: field.path: message
and the exit code is 0 when the file is good, 2 when it is not.
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("config", help="check configuration files", description="Configuration tools.")
    csub = p.add_subparsers(title="config commands", metavar="ACTION")
    c = csub.add_parser("check", help="validate a gateway or scheduler YAML file", description=HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("path", type=Path, help="the YAML file")
    c.add_argument("--kind", choices=["gateway", "scheduler"], help="force the kind of file")
    c.set_defaults(func=run_check)
    p.set_defaults(func=lambda _a: (p.print_help(), 2)[1])


def _guess_kind(path: Path) -> str:
    try:
        head = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "gateway"
    for line in head.splitlines():
        if line.startswith("scheduler:") or line.startswith("signing:"):
            return "scheduler"
        if line.startswith("gateway:"):
            return "gateway"
    return "gateway"


def run_check(args: argparse.Namespace) -> int:
    from loaxa.yamlconf import ConfigError

    kind = args.kind or _guess_kind(args.path)
    try:
        if kind == "scheduler":
            from scheduler.config import load_scheduler_config

            load_scheduler_config(args.path)
        else:
            from gateway.config import load_gateway_config

            load_gateway_config(args.path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{args.path}: {len(exc.problems)} problem(s) in this {kind} config", file=sys.stderr)
        return 2
    print(f"{args.path}: OK ({kind} config)")
    return 0
