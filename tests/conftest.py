"""Fixtures that start real servers (Mosquitto, InfluxDB 1.6.7, VictoriaMetrics, PostgreSQL) on free ports.

Each server lives in the test's temporary directory and is stopped after the test. A missing binary
fails the test with the Debian package to install; nothing here fakes a broker or a database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from loaxa.brokers import CentralBroker, LanBroker
from loaxa.servers import InfluxDB1, Mosquitto, MosquittoUser, PostgreSQL, ServerUnavailable, VictoriaMetrics

ROOT = Path(__file__).resolve().parent.parent


def _start(server: Any) -> Any:
    try:
        return server.start()
    except ServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Call it to start a Mosquitto with ``users=[MosquittoUser(...)]`` and their own ACL lines; all are
    stopped after. A test of the system uses :func:`central_broker_factory` / :func:`lan_broker_factory`
    (the production ACLs); this one is for tests of the harness itself. No broker here is anonymous.
    """
    started: list[Mosquitto] = []

    def make(name: str = "mosquitto", users: list[MosquittoUser] | None = None) -> Mosquitto:
        if not users:
            raise ValueError("mosquitto_factory needs users=[...]; use central_broker_factory / lan_broker_factory")
        broker = _start(Mosquitto(tmp_path / f"{name}-{len(started)}", users=users))
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture
def mosquitto(central_broker_factory: Callable[..., CentralBroker]) -> CentralBroker:
    """A central broker as production runs it, with no gateway accounts yet (``add_gateway``)."""
    return central_broker_factory()


@pytest.fixture
def central_broker_factory(tmp_path: Path) -> Iterator[Callable[..., CentralBroker]]:
    """Start central brokers as production runs them: ``configs/mosquitto/acl.example``, an account per
    gateway (``gateways=[...]``, more with ``add_gateway``), ``scheduler`` and ``viewer``; client ids
    bound to user names."""
    started: list[CentralBroker] = []

    def make(gateways: list[str] | tuple[str, ...] = (), readers: tuple[str, ...] = ("viewer",),
             name: str = "central", workers: tuple[str, ...] = ()) -> CentralBroker:
        broker = _start(CentralBroker(tmp_path / f"{name}-{len(started)}", gateways=list(gateways),
                                      readers=list(readers), workers=list(workers)))
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture
def lan_broker_factory(tmp_path: Path) -> Iterator[Callable[..., LanBroker]]:
    """Start commune LAN brokers as production runs them: the ACL generated from
    ``configs/mosquitto/commune-lan.acl.example`` for ``gateway_id``, the ``gateway`` account on the
    loopback listener and an account per device (``devices=[...]``, more with ``add_device``) on the
    device listener (``device_url``)."""
    started: list[LanBroker] = []

    def make(gateway_id: str, devices: list[str] | tuple[str, ...] = (), name: str = "lan") -> LanBroker:
        broker = _start(LanBroker(tmp_path / f"{name}-{gateway_id}-{len(started)}", gateway_id=gateway_id,
                                  devices=list(devices)))
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture
def influxdb1(tmp_path: Path) -> Iterator[InfluxDB1]:
    server = _start(InfluxDB1(tmp_path / "influxdb"))
    yield server
    server.stop()


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    server = _start(VictoriaMetrics(tmp_path / "victoria-metrics"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgreSQL]:
    """One throwaway PostgreSQL cluster for the whole test session (initdb costs seconds)."""
    server = _start(PostgreSQL(tmp_path_factory.mktemp("postgresql")))
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgreSQL) -> Iterator[str]:
    """A fresh, empty database on the session's cluster; dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The scheduler's database URL, once for SQLite (a file) and once for PostgreSQL (a fresh database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'scheduler.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def loaxa_env(**extra: str) -> dict[str, str]:
    """Environment for a ``loaxa`` child process that imports this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_loaxa(*args: str, timeout: float = 60, env: dict[str, str] | None = None,
              **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run ``loaxa ARGS`` from this checkout and capture its output (``env``: extra variables)."""
    return subprocess.run([sys.executable, "-m", "loaxa", *args], capture_output=True, text=True,
                          timeout=timeout, env=loaxa_env(**(env or {})), cwd=ROOT, **kw)


def spawn_loaxa(*args: str, log: Path, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[bytes]:
    """Start ``loaxa ARGS`` in the background (``env``: extra variables), output to ``log``; the caller
    stops it."""
    out = open(log, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "loaxa", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=loaxa_env(**(env or {})), cwd=ROOT, start_new_session=True, **kw)
    finally:
        out.close()


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float = 30.0, log: Path | None = None) -> None:
    """SIGTERM ``proc`` and wait for a clean exit; kill it and fail, with its log's tail, if it hangs."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        tail = log.read_text(errors="replace").splitlines()[-30:] if log is not None and log.exists() else []
        pytest.fail(f"{' '.join(map(str, proc.args))} did not stop within {timeout:.0f} s of SIGTERM; "
                    "its log ends:\n" + "\n".join(tail))


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.1,
               what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")
