"""Dependencies point down: protocol/ imports no component; devices/ and firmware_bridge/ import
nothing of gateway/ or scheduler/; gateway/ and scheduler/ never import each other (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "protocol": {"gateway", "scheduler", "devices", "firmware_bridge", "loaxa"},
    "devices": {"gateway", "scheduler"},
    "firmware_bridge": {"gateway", "scheduler", "devices"},
    "gateway": {"scheduler"},
    "scheduler": {"gateway", "devices", "firmware_bridge"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement names, wherever it is (top level or inside a function)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_down(package: str) -> None:
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in _imports(path):
            if module.split(".")[0] in FORBIDDEN[package]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    assert not wrong, "\n".join(wrong)
