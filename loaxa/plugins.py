"""Optional parts that plug in by module name (subcommands, simulators, gateway services)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType


def optional_modules(names: tuple[str, ...]) -> Iterator[tuple[str, ModuleType]]:
    """Import each named module that exists; a module that is absent from this build is skipped,
    while an import error *inside* a present module is raised (it is a bug, not an absence)."""
    for name in names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
                continue
            raise
        yield name, module
