#!/usr/bin/env python3
"""The web UI's catalogues: ``extract`` (print the msgids), ``update`` (merge them into each locale's
messages.po), ``compile`` (write .mo files; the scheduler compiles .po in memory and does not need
them), ``check`` (exit 1 and say what is missing, untranslated or written into a template directly).

    .venv/bin/python scripts/i18n.py update     # after changing a template, then translate in vi/…/messages.po
    .venv/bin/python scripts/i18n.py check
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scheduler.web import catalogue


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["extract", "update", "compile", "check"])
    args = p.parse_args(argv)
    if args.command == "extract":
        for msg in catalogue.extract():
            if msg.id:
                print(msg.id)
    elif args.command == "update":
        for path in catalogue.update():
            print(f"updated {path}")
    elif args.command == "compile":
        for path in catalogue.compile_mo():
            print(f"wrote {path}")
    else:
        found = catalogue.problems() + catalogue.untranslated_template_text()
        for line in found:
            print(line)
        if found:
            return 1
        print("catalogues complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
