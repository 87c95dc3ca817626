"""scripts/install.sh: each role installs what it needs and nothing else, and the script never stops,
disables or restarts a service (re-running it during an upgrade must not silence a server)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install.sh"


def packages(role: str) -> set[str]:
    out = subprocess.run(["bash", str(SCRIPT), role, "--print-packages"], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def test_a_gateway_gets_no_database_servers_and_no_tts() -> None:
    gw = packages("gateway")
    assert {"mosquitto", "ffmpeg", "python3-venv"} <= gw
    assert not gw & {"influxdb", "victoria-metrics", "espeak-ng", "postgresql", "chromium"}


def test_the_server_has_tts_and_the_broker() -> None:
    assert {"mosquitto", "espeak-ng", "ffmpeg"} <= packages("server")
    assert "victoria-metrics" not in packages("server")


def test_dev_is_a_superset_of_the_other_roles() -> None:
    assert packages("gateway") | packages("server") <= packages("dev")


def test_unknown_role_is_refused_with_usage() -> None:
    res = subprocess.run(["bash", str(SCRIPT), "pi"], capture_output=True, text=True)
    assert res.returncode == 2 and "gateway|server|dev" in res.stderr


SCRIPTS = ["scripts/install.sh", "scripts/install-deps.sh", "scripts/test.sh", "scripts/demo.sh"]


@pytest.mark.parametrize("path", SCRIPTS)
def test_no_script_stops_or_disables_a_service(path: str) -> None:
    text = (ROOT / path).read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"systemctl\s+(\S+\s+)*(stop|disable|restart|mask)\b", code), path
