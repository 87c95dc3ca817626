"""Playwright on Debian's chromium (no browser download) against a real scheduler process.

``launch_chromium`` starts /usr/bin/chromium through Playwright; ``SchedulerProcess`` runs
``loaxa scheduler run`` on a real Mosquitto with a fresh SQLite database. ``check_accessibility``
runs our own checks in the page (labels, alt texts, names of buttons, contrast of every text).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from loaxa.brokers import CentralBroker
from loaxa.servers import free_port
from tests.conftest import spawn_loaxa, wait_until
from tests.sched_support import Keys, scheduler_config_dict

HERE = Path(__file__).resolve().parent
CHROMIUM_ARGS = [
    "--no-sandbox",  # tests run as root in CI containers
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Screenshots for review go here (ignored by git); LOAXA_SCREENSHOTS moves them.
SCREENSHOTS = Path(os.environ.get("LOAXA_SCREENSHOTS", HERE / "screenshots"))
PHONE = {"width": 360, "height": 740}


def launch_chromium(playwright: Any) -> Any:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed: apt-get install chromium (scripts/install.sh dev does)", pytrace=False)
    return playwright.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)


@dataclass
class SchedulerProcess:
    """``loaxa scheduler run`` in the background; ``url`` is its HTTP root."""

    url: str
    config: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, tmp: Path, broker: CentralBroker, *, keys: Keys | None = None, gateways: tuple[str, ...] = (),
              **sections: dict[str, Any]) -> SchedulerProcess:
        port = free_port()
        cfg = scheduler_config_dict(tmp, broker, keys or Keys(), port=port, gateways=gateways, **sections)
        path = tmp / "scheduler.yaml"
        path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
        log = tmp / "scheduler.log"
        proc = spawn_loaxa("scheduler", "run", "--config", str(path), log=log)
        url = f"http://127.0.0.1:{port}"
        sched = cls(url, path, proc, log)

        def up() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"the scheduler exited ({proc.returncode}):\n{log.read_text()}", pytrace=False)
            try:
                with urllib.request.urlopen(url + "/api/health", timeout=2) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_until(up, timeout=60, what="scheduler HTTP")
        return sched

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


A11Y_JS = (HERE / "a11y.js").read_text()


def check_accessibility(page: Any) -> list[str]:
    """Problems our in-page checks find (empty when the page passes)."""
    found: list[str] = page.evaluate(A11Y_JS)
    return found


def horizontal_overflow(page: Any) -> int:
    """How many pixels the page is wider than the viewport (0: no horizontal scrolling)."""
    width: int = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    return width


#: One page and everything it loads, uncompressed, must stay under this (4G in the countryside).
PAGE_BUDGET = 100_000


def page_weight(page: Any) -> int:
    """Bytes of the document and every resource it loaded (decoded sizes: cache or not, compressed or not)."""
    total: int = page.evaluate(
        "() => performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
        ".reduce((sum, e) => sum + (e.decodedBodySize || 0), 0)"
    )
    return total


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=1)
