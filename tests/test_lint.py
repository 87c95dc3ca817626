"""The code stays clean: ruff over the tree, mypy over every package (strict on protocol/)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PACKAGES = ["protocol", "loaxa", "gateway", "devices", "firmware_bridge", "scheduler"]


def _tool(name: str) -> list[str]:
    if shutil.which(name) is None and subprocess.run([sys.executable, "-m", name, "--version"],
                                                      capture_output=True).returncode != 0:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'", pytrace=False)
    return [sys.executable, "-m", name]


def test_ruff_clean() -> None:
    result = subprocess.run([*_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]


def test_mypy_clean() -> None:
    result = subprocess.run([*_tool("mypy"), *PACKAGES], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
