"""``loaxa broadcast now|at|status|cancel`` end to end against a running ``loaxa scheduler run``."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from loaxa.brokers import CentralBroker
from protocol.models import BroadcastPlanBody
from protocol.signing import parse_body_as
from scheduler.cli import CliError, parse_local_time
from tests.conftest import ROOT, loaxa_env, run_loaxa, wait_until
from tests.sched_support import Keys, TestGateway, make_tone, scheduler_config_dict

#: the gateways the tests' scheduler serves (it ignores any other gateway id)
GATEWAYS: tuple[str, ...] = ("xa-dong-son", "xa-go-sai")

@pytest.fixture
def mosquitto(central_broker_factory: Callable[..., CentralBroker]) -> CentralBroker:
    """The central broker as production runs it (ACL, accounts, client ids bound to user names)."""
    return central_broker_factory(gateways=GATEWAYS)


TZ = ZoneInfo("Asia/Ho_Chi_Minh")


def _health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as r:
            return bool(json.loads(r.read())["mqtt_connected"])
    except OSError:
        return False


#: Credentials of the CLI calls of a test (an API token made with `loaxa tokens create`).
CLI_ENV: dict[str, str] = {}


async def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_loaxa, *args, env=CLI_ENV if env is None else env)


async def test_broadcast_now_and_status_end_to_end(tmp_path: Path, mosquitto: CentralBroker) -> None:
    keys = Keys()
    key_file = tmp_path / "signing.key"
    key_file.write_text(keys.seed_b64 + "\n")
    cfg = scheduler_config_dict(tmp_path, mosquitto, keys, gateways=GATEWAYS)
    cfg["signing"]["private_key"] = {"file": "signing.key"}
    conf = tmp_path / "scheduler.yaml"
    conf.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    assert run_loaxa("config", "check", str(conf)).returncode == 0
    made = run_loaxa("tokens", "create", "--config", str(conf), "tong-dai", "--role", "admin")
    assert made.returncode == 0 and "shown this once" in made.stderr, made.stderr
    CLI_ENV["LOAXA_TOKEN"] = made.stdout.strip()
    port = cfg["http"]["port"]
    # systemd's notify socket (Type=notify, WatchdogSec=2): READY=1 and WATCHDOG=1 must arrive
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.2)
    notes: list[str] = []
    reader = threading.Thread(target=_read_notifications, args=(notify, notes), daemon=True)
    reader.start()
    log_file = open(tmp_path / "scheduler.log", "ab")  # noqa: ASYNC230
    proc = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "loaxa", "-v", "scheduler", "run", "--config", str(conf)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,
        env=loaxa_env(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="2000000"),
    )
    log_file.close()
    gw = TestGateway(mosquitto, "xa-dong-son", keys)
    try:
        wait_until(lambda: _health(port) or proc.poll() is not None, 30, what="scheduler up")
        assert proc.poll() is None, (tmp_path / "scheduler.log").read_text()
        await asyncio.to_thread(
            wait_until,
            lambda: any(n.startswith("READY=1") for n in notes) and "WATCHDOG=1" in notes,
            15,
            what="READY=1 and WATCHDOG=1 on the notify socket",
        )
        await gw.connect()
        audio = make_tone(tmp_path / "thong-bao.wav", 1.0)

        # --wait: the command stays until every speaker has a final state, then prints it
        waiting = asyncio.create_task(
            cli(
                "broadcast",
                "now",
                "--config",
                str(conf),
                "--media",
                str(audio),
                "--targets",
                "xa-dong-son/loa-1",
                "xa-dong-son/loa-2",
                "--priority",
                "emergency",
                "--volume",
                "85",
                "--title",
                "Lũ khẩn cấp",
                "--json",
                "--wait",
                "60",
            )
        )
        [plan] = await gw.wait_for(1, "broadcast.plan", within=30)
        item = parse_body_as(plan.envelope, BroadcastPlanBody).items[0]
        bid = item.broadcast_id
        assert plan.verified and item.priority == 9 and item.volume == 85
        assert item.targets == ["loa-1", "loa-2"] and item.title == "Lũ khẩn cấp"

        await gw.playback(bid, "loa-1", "started")
        await gw.playback(bid, "loa-1", "finished")
        await gw.playback(bid, "loa-2", "started")
        await gw.playback(bid, "loa-2", "failed", reason="speaker offline")
        res = await waiting
        assert res.returncode == 1, res.stderr  # one speaker did not play
        st = json.loads(res.stdout)
        assert st["id"] == bid
        assert {sp["device"]: sp["state"] for sp in st["speakers"]} == {"loa-1": "finished", "loa-2": "failed"}

        async def final() -> subprocess.CompletedProcess[str]:
            for _ in range(100):
                r = await cli("broadcast", "status", bid, "--config", str(conf), "--json")
                states = {sp["device"]: sp["state"] for sp in json.loads(r.stdout)["speakers"]}
                if states == {"loa-1": "finished", "loa-2": "failed"}:
                    return r
                await asyncio.sleep(0.2)
            raise AssertionError(f"speaker states never settled: {states}")

        r = await final()
        assert r.returncode == 1  # not every speaker finished
        table = await cli("broadcast", "status", bid, "--config", str(conf))
        lines = table.stdout.splitlines()
        row1 = next(x for x in lines if x.startswith("xa-dong-son") and "loa-1" in x)
        row2 = next(x for x in lines if x.startswith("xa-dong-son") and "loa-2" in x)
        assert "finished" in row1 and "speaker offline" in row2 and "failed" in row2
        assert "GATEWAY" in lines[2] and "STARTED" in lines[2] and "FINISHED" in lines[2]

        # scheduled in local time; then cancelled
        res = await cli(
            "broadcast",
            "at",
            "2099-01-01 06:00",
            "--config",
            str(conf),
            "--text",
            "Họp dân lúc tám giờ sáng tại nhà văn hóa.",
            "--targets",
            "xa-dong-son",
            "--json",
        )
        assert res.returncode == 0, res.stderr
        bid2 = json.loads(res.stdout)["id"]
        plans = await gw.wait_for(2, "broadcast.plan")
        item2 = parse_body_as(plans[1].envelope, BroadcastPlanBody).items[0]
        assert item2.start_at == int(datetime(2099, 1, 1, 6, 0, tzinfo=TZ).timestamp() * 1000)
        assert item2.targets == "*" and item2.media.duration_ms > 1000
        res = await cli("broadcast", "cancel", bid2, "--config", str(conf))
        assert res.returncode == 0 and "cancelled" in res.stdout, res.stderr
        await gw.wait_for(1, "broadcast.cancel")

        # an account signs in with its password instead (no token, no config: just the URL)
        made = run_loaxa("users", "add", "--config", str(conf), "canbo-dongson", "--role", "operator:xa-dong-son",
                         "--password-stdin", input="mat-khau-cua-can-bo\n")
        assert made.returncode == 0, made.stderr
        url = f"http://127.0.0.1:{port}"
        listing = await cli("broadcast", "list", "--url", url, "--login", "canbo-dongson",
                            env={"LOAXA_PASSWORD": "mat-khau-cua-can-bo"})
        assert listing.returncode == 0, listing.stderr
        rows = {line.split()[0]: line for line in listing.stdout.splitlines()[2:]}
        assert "emergency (9)" in rows[bid] and "yes" not in rows[bid]
        assert "normal (3)" in rows[bid2] and rows[bid2].rstrip().endswith("yes")

        # that operator's role and commune hold on the CLI too; the record says who asked
        res = await cli("broadcast", "now", "--url", url, "--login", "canbo-dongson", "--sha256", item.media.sha256,
                        "--targets", "xa-khac", env={"LOAXA_PASSWORD": "mat-khau-cua-can-bo"})
        assert res.returncode == 2 and "HTTP 403" in res.stderr and "xa-khac" in res.stderr
        res = await cli("broadcast", "now", "--url", url, "--login", "canbo-dongson", "--sha256", item.media.sha256,
                        "--targets", "xa-dong-son", "--json", env={"LOAXA_PASSWORD": "mat-khau-cua-can-bo"})
        assert res.returncode == 0 and json.loads(res.stdout)["created_by"] == "canbo-dongson", res.stderr
        assert st["created_by"] == "token:tong-dai"
        res = await cli("broadcast", "list", "--url", url, env={})
        assert res.returncode == 2 and "set LOAXA_TOKEN" in res.stderr
        res = await cli("broadcast", "list", "--url", url, env={"LOAXA_TOKEN": "lxa_sai"})
        assert res.returncode == 2 and "HTTP 401" in res.stderr and "invalid, expired or revoked" in res.stderr

        # a configured gateway that never connected: accepted (it may come later) but the operator is warned
        res = await cli(
            "broadcast", "now", "--config", str(conf), "--sha256", item.media.sha256, "--targets", "xa-go-sai"
        )
        assert res.returncode == 0 and "warning: gateway xa-go-sai has never connected" in res.stdout
        # a gateway id the scheduler was never told about: refused, naming it
        res = await cli(
            "broadcast", "now", "--config", str(conf), "--sha256", item.media.sha256, "--targets", "xa-khong-co"
        )
        assert res.returncode != 0 and "unknown gateway(s) xa-khong-co" in res.stderr

        # errors are clear and change nothing
        res = await cli(
            "broadcast",
            "now",
            "--config",
            str(conf),
            "--media",
            str(tmp_path / "scheduler.yaml"),
            "--targets",
            "xa-dong-son",
        )
        assert res.returncode == 2 and "not an audio file" in res.stderr
        res = await cli("broadcast", "status", "nope", "--config", str(conf))
        assert res.returncode == 2 and "no broadcast nope" in res.stderr
        res = await cli(
            "broadcast",
            "at",
            "2001-01-01 06:00",
            "--config",
            str(conf),
            "--sha256",
            "a" * 64,
            "--targets",
            "xa-dong-son",
        )
        assert res.returncode == 2 and "in the past" in res.stderr
    finally:
        notify.close()
        await gw.disconnect()
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(15) == 0, (tmp_path / "scheduler.log").read_text()
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def _read_notifications(sock: socket.socket, notes: list[str]) -> None:
    """Like systemd: keep reading the notify socket (a full socket would block the sender)."""
    while True:
        try:
            notes.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        except OSError:
            return  # closed


def test_cli_without_scheduler_says_so(tmp_path: Path) -> None:
    keys = Keys()
    conf = tmp_path / "s.yaml"
    conf.write_text(yaml.safe_dump(scheduler_config_dict(tmp_path, "mqtt://127.0.0.1:1", keys)))
    res = run_loaxa("broadcast", "status", "x", "--config", str(conf), env={"LOAXA_TOKEN": "lxa_x"})
    assert res.returncode == 2 and "is `loaxa scheduler run` running?" in res.stderr


def test_parse_local_time() -> None:
    now = datetime(2026, 11, 25, 9, 0, tzinfo=TZ)
    assert parse_local_time("today 18:30", "Asia/Ho_Chi_Minh", now) == datetime(2026, 11, 25, 18, 30, tzinfo=TZ)
    assert parse_local_time("ngày mai 06:00", "Asia/Ho_Chi_Minh", now) == datetime(2026, 11, 26, 6, tzinfo=TZ)
    assert parse_local_time("2026-12-01 06:00", "Asia/Ho_Chi_Minh", now) == datetime(2026, 12, 1, 6, tzinfo=TZ)
    utc = parse_local_time("2026-12-01T06:00:00Z", "Asia/Ho_Chi_Minh", now)
    assert utc.astimezone(TZ).hour == 13
    with pytest.raises(CliError, match="in the past"):
        parse_local_time("today 08:00", "Asia/Ho_Chi_Minh", now)
    with pytest.raises(CliError, match="cannot read the time"):
        parse_local_time("sáng mai", "Asia/Ho_Chi_Minh", now)


@pytest.mark.parametrize("text", ["Mon-Sat 06:00", "18:30", "01/12/2026 06:00", "Saturday 06:00", "6am"])
def test_parse_local_time_refuses_what_it_would_have_to_guess(text: str) -> None:
    """The old parser (dateutil's fuzzy parse) made "Mon-Sat 06:00" one broadcast on Saturday."""
    now = datetime(2026, 11, 25, 9, 0, tzinfo=TZ)  # a Wednesday
    with pytest.raises(CliError, match="today 17:00"):  # refused, with examples
        parse_local_time(text, "Asia/Ho_Chi_Minh", now)
