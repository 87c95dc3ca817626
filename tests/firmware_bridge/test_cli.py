"""``loaxa firmware update/info`` and ``loaxa sim serial-node`` as a technician runs them."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from firmware_bridge.refnode import RefNode
from firmware_bridge.simbus import PtyDevice
from gateway.serial.firmware_cli import version_from_name
from loaxa.localsetup import gateway_config, make_signer, write_yaml
from tests.conftest import loaxa_env, run_loaxa


def test_update_through_gateway_config_and_rerun(tmp_path: Path, pty_factory: Callable[..., PtyDevice]) -> None:
    dev = pty_factory([RefNode(1, "a", reboot_s=0.2), RefNode(3, "b", reboot_s=0.2)])
    cfg = gateway_config("xa-test", data_dir=tmp_path / "gw", uplink_url="mqtt://127.0.0.1:1",
                         lan_url="mqtt://127.0.0.1:1", signer=make_signer(),
                         devices=[{"id": "loa-cho", "type": "serial_node", "port": dev.path, "address": 3}])
    path = write_yaml(tmp_path / "gw.yaml", cfg)
    image = tmp_path / "loa-2.0.0.bin"
    image.write_bytes(os.urandom(6000))
    r = run_loaxa("firmware", "update", "--gateway-config", str(path), "--device", "loa-cho",  # version from name
                  "--sha256", hashlib.sha256(image.read_bytes()).hexdigest(), str(image))
    assert r.returncode == 0, r.stderr
    assert "1.0.0 → 2.0.0, confirmed" in r.stdout and "100%" in r.stderr
    assert dev.nodes[3].flash.slots[dev.nodes[3].running].image == image.read_bytes()
    assert dev.nodes[1].flash.slots[dev.nodes[1].running].version == "1.0.0"  # its neighbour untouched
    r = run_loaxa("firmware", "info", "--gateway-config", str(path), "--device", "loa-cho")
    assert r.returncode == 0 and "2.0.0" in r.stdout and "normal" in r.stdout
    r = run_loaxa("firmware", "update", "--port", dev.path, "--address", "3", "--version", "2.0.0", str(image))
    assert r.returncode == 0 and "already runs 2.0.0" in r.stdout


def test_update_errors_are_clear(tmp_path: Path, pty_factory: Callable[..., PtyDevice]) -> None:
    dev = pty_factory([RefNode(1, "a", reboot_s=0.2)])
    image = tmp_path / "fw.bin"
    image.write_bytes(b"LOAXA-SIM:fault" + os.urandom(2000))
    r = run_loaxa("firmware", "update", "--port", dev.path, "--version", "3.0.0", "--sha256", "00" * 32, str(image))
    assert r.returncode == 3 and "SHA-256" in r.stderr and "nothing was sent" in r.stderr
    r = run_loaxa("firmware", "update", "--port", dev.path, "--version", "3.0.0", str(image))
    assert r.returncode == 1 and "ROLLED BACK" in r.stderr and "runs 1.0.0 again" in r.stderr
    r = run_loaxa("firmware", "update", "--port", str(tmp_path / "nope"), "--version", "3.0.0", str(image))
    assert r.returncode == 3 and "cannot open serial port" in r.stderr
    r = run_loaxa("firmware", "update", "--gateway-config", str(tmp_path / "missing.yaml"), "--device", "x",
                  "--version", "1", str(image))
    assert r.returncode != 0 and "missing.yaml" in r.stderr
    r = run_loaxa("firmware", "update", "--port", dev.path, str(image))  # fw.bin: no version in the name
    assert r.returncode == 2 and "give --version" in r.stderr


@pytest.mark.parametrize(("name", "version"), [("loa-2.1.0.bin", "2.1.0"), ("node_3.4.img", "3.4"),
                                               ("x-1.2.3-rc1.bin", "1.2.3-rc1"), ("firmware.bin", None)])
def test_version_from_file_name(name: str, version: str | None) -> None:
    assert version_from_name(Path(name)) == version


def test_sim_serial_node_prints_its_pty(tmp_path: Path) -> None:
    link = tmp_path / "ttyNODE"
    proc = subprocess.Popen([sys.executable, "-m", "loaxa", "sim", "serial-node", "--pty", "--link", str(link),
                             "--node", "4:loa-x:combo"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=loaxa_env(), cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert path == str(link) and link.is_symlink()
        r = run_loaxa("firmware", "info", "--port", path, "--address", "4")
        assert r.returncode == 0, r.stderr
        assert "loa-x" in r.stdout and "sensors" in r.stdout and "amplifier" in r.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    assert not link.exists()
