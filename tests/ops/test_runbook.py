"""The runbook (docs/operations.md) names only commands and options that exist: every `loaxa …` line in
its shell blocks is parsed by the real command-line parser (nothing is run)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from loaxa.cli import build_parser

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _commands() -> list[tuple[int, list[str]]]:
    out = []
    in_sh = False
    lines = RUNBOOK.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("```"):
            in_sh = line.strip() == "```sh"
        elif in_sh:
            text, n = line, i + 1
            while text.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i].strip()
            text = text.split("#", 1)[0]
            for part in re.split(r"&&|\||;|\(|\)", text):
                words = shlex.split(part.replace("<", "").replace(">", " > "))
                if words[:1] == ["sudo"]:
                    words = words[3:] if words[1:2] == ["-u"] else words[1:]
                if words and (words[0] == "loaxa" or words[0].endswith("/bin/loaxa")):
                    args = words[1:]
                    if ">" in args:
                        args = args[: args.index(">")]
                    out.append((n, args))
        i += 1
    return out


COMMANDS = _commands()


def test_the_runbook_has_commands() -> None:
    assert len(COMMANDS) > 25


@pytest.mark.parametrize(("line", "args"), COMMANDS, ids=[f"L{n}" for n, _a in COMMANDS])
def test_runbook_command_parses(line: int, args: list[str]) -> None:
    parser = build_parser()
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        raise AssertionError(f"docs/operations.md:{line}: `loaxa {' '.join(args)}` is not a valid command") from exc
