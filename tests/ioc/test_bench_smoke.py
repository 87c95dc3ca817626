"""bench/ioc.py still runs end to end (tiny district), so the benchmark cannot rot unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, loaxa_env


def test_bench_runs_on_a_tiny_district() -> None:
    r = subprocess.run(
        [sys.executable, "bench/ioc.py", "--sensors", "40", "--gateways", "4", "--hours", "0.2", "--runs", "1"],
        cwd=ROOT, env=loaxa_env(), capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["bench"] == "ioc" and last["sensors"] == 40 and last["window_points"] > 0
    assert last["pull_requests"] == 5 and last["naive_s"] > 0 and last["pull_s_median"] > 0
