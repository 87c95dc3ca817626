"""``loaxa WORD …`` imports only the module of WORD (a gateway does not carry the scheduler's imports)."""

from __future__ import annotations

import argparse
import subprocess
import sys

from loaxa.cli import COMMAND_INDEX, COMMAND_MODULES, build_parser, command_word
from loaxa.plugins import optional_modules


def test_index_names_every_command_of_every_module() -> None:
    registered: dict[str, str] = {}
    for name, module in optional_modules(COMMAND_MODULES):
        sub = argparse.ArgumentParser().add_subparsers()
        module.register(sub)
        registered.update({word: name for word in sub.choices})
    assert COMMAND_INDEX == registered


def test_command_word_skips_loaxa_options() -> None:
    assert command_word(["-vv", "gateway", "run", "--config", "x"]) == "gateway"
    assert command_word(["--version"]) is None
    assert command_word(["--", "gateway"]) is None


def test_gateway_run_imports_no_other_command() -> None:
    code = ("import sys; from loaxa.cli import build_parser; "
            "p = build_parser(['gateway', 'run', '--config', 'x.yaml']); "
            "a = p.parse_args(['gateway', 'run', '--config', 'x.yaml']); "
            "print(a.func.__module__, sorted({m.split('.')[0] for m in sys.modules} & {'scheduler', 'alembic', "
            "'sqlalchemy', 'fastapi'}), 'loaxa.demo' in sys.modules, 'loaxa.provision_cmd' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["gateway.cli", "[]", "False", "False"]


def test_unknown_word_and_help_still_list_every_command() -> None:
    parser = build_parser(["no-such-command"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMAND_INDEX)
