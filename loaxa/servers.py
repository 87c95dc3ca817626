"""Start and stop the real servers Loa Xã talks to: Mosquitto, InfluxDB 1.x, VictoriaMetrics, PostgreSQL.

Used by the test fixtures, the demo and the benchmarks. Every server gets a free loopback port and a
directory of its own, is waited for until it answers, and is stopped (SIGTERM, then SIGKILL) on
``stop()``. A missing binary raises :class:`ServerUnavailable` naming the Debian package to install.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])


class ServerUnavailable(RuntimeError):
    """A server binary is missing or the server did not come up."""


def find_binary(name: str, package: str) -> str:
    path = shutil.which(name, path=SEARCH_PATH)
    if path is None:
        raise ServerUnavailable(f"{name} not found: install the Debian package '{package}' (apt-get install {package})")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerUnavailable(f"{what} exited with code {proc.returncode}; log: {tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ServerUnavailable(f"{what} did not listen on port {port} within {timeout:.0f}s; log: {tail(log)}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class _Process:
    workdir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    log_path: Path = field(init=False)

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / log_name
        log = open(self.log_path, "ab")
        try:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                    start_new_session=True)
        finally:
            log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), then forcefully."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


@dataclass
class MosquittoUser:
    username: str
    password: str
    #: ACL lines for this user, e.g. ``["topic readwrite loaxa/v1/gw-1/#"]``.
    acl: list[str] = field(default_factory=list)


def password_line(username: str, password: str, *, salt: bytes | None = None, iterations: int = 101) -> str:
    """One line of a Mosquitto 2.0 password file (``$7$``: PBKDF2-SHA512, what mosquitto_passwd writes).

    Written here rather than by running ``mosquitto_passwd`` once per account: a fleet benchmark has
    a thousand device accounts.
    """
    if ":" in username or "\n" in username or "\n" in password:
        raise ValueError(f"user name {username!r} or its password cannot go in a Mosquitto password file")
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"{username}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


@dataclass
class Mosquitto(_Process):
    """A Mosquitto broker on 127.0.0.1 with a password file and an ACL (``users`` and ``acl_text``).

    There is no anonymous mode: every test, bench and the demo run with accounts and the production
    ACL (:mod:`loaxa.brokers`).
    ``bind_clientid`` sets ``use_username_as_clientid`` on the main listener; ``device_port=-1`` adds
    a second listener (for the devices of a commune LAN) on which the client id is the user name.
    """

    port: int = 0
    users: list[MosquittoUser] = field(default_factory=list)
    persistence: bool = True
    #: a whole ACL file's text; when given it replaces the per-user ``acl`` lines
    acl_text: str | None = None
    bind_clientid: bool = False
    device_port: int = 0
    #: persistence settings (``autosave_interval``, ...) replacing the defaults below, e.g. the
    #: production LAN broker's (:class:`loaxa.brokers.LanBroker`)
    conf_overrides: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def device_url(self) -> str:
        """The URL of the device listener (client id bound to the user name)."""
        if self.device_port <= 0:
            raise ValueError("this broker has no device listener")
        return f"mqtt://127.0.0.1:{self.device_port}"

    def user(self, username: str) -> MosquittoUser:
        for u in self.users:
            if u.username == username:
                return u
        raise KeyError(f"no account {username!r} on the broker in {self.workdir}")

    def _write_accounts(self) -> tuple[Path, Path]:
        passwd = self.workdir / "passwd"
        passwd.write_text("".join(password_line(u.username, u.password) + "\n" for u in self.users))
        passwd.chmod(0o600)
        acl = self.workdir / "acl"
        if self.acl_text is not None:
            acl.write_text(self.acl_text)
        else:
            acl.write_text("".join(f"user {u.username}\n" + "".join(f"{r}\n" for r in u.acl) + "\n"
                                   for u in self.users))
        return passwd, acl

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "protocol mqtt",
        ]
        if self.bind_clientid:
            lines.append("use_username_as_clientid true")
        if self.device_port:
            lines += [f"listener {self.device_port} 127.0.0.1", "protocol mqtt", "use_username_as_clientid true"]
        lines += [
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
            # payloads are limited to 256 KiB by the contract; the packet adds topic and properties
            f"max_packet_size {MAX_PACKET_SIZE}",
        ]
        if self.conf_overrides:
            lines = [ln for ln in lines if ln.split(" ", 1)[0] not in self.conf_overrides]
            lines += [f"{k} {v}" for k, v in self.conf_overrides.items()]
        lines += _run_as_self()
        if not self.users:
            raise ValueError("a Mosquitto needs accounts (users=...): no broker here is anonymous")
        passwd, acl = self._write_accounts()
        lines += ["allow_anonymous false", f"password_file {passwd}", f"acl_file {acl}"]
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 15.0) -> Self:
        binary = find_binary("mosquitto", "mosquitto")
        if not self.port:
            self.port = free_port()
        if self.device_port < 0:
            self.device_port = free_port()
        conf = self.write_config()
        deadline = time.monotonic() + timeout
        while True:
            self.proc = self._spawn([binary, "-c", str(conf)], "mosquitto.log")
            try:
                wait_for_port(self.port, self.proc, max(1.0, deadline - time.monotonic()), "mosquitto", self.log_path)
                return self
            except ServerUnavailable:
                # A restart on the same port (a broker outage in a test) can find it briefly held: a
                # client that keeps dialling a closed loopback port may be handed that very port as its
                # own and connect to itself until it gives up. Such a socket goes away: try again.
                if self.proc.poll() is None or time.monotonic() > deadline or "Address already in use" not in tail(
                        self.log_path, 3):
                    raise
                time.sleep(0.5)

    def reload_accounts(self, probe: MosquittoUser | None = None, timeout: float = 15.0) -> None:
        """Rewrite the password file and ACL and make the running broker read them (SIGHUP).

        With ``probe``, return only once that account can log in (the reload is asynchronous).
        """
        self._write_accounts()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGHUP)
        if probe is not None:
            deadline = time.monotonic() + timeout
            while not can_log_in(self.port, probe.username, probe.password):
                if time.monotonic() > deadline:
                    raise ServerUnavailable(f"mosquitto did not take account {probe.username!r} within {timeout:.0f}s;"
                                            f" log: {tail(self.log_path)}")
                time.sleep(0.05)


#: what our brokers allow (docs/telemetry.md measures how many readings fit)
MAX_PACKET_SIZE = 270000


@dataclass
class MosquittoTls(_Process):
    """Mosquitto with one TLS listener on 127.0.0.1 (server certificate ``cert``/``key`` from ``ca``),
    accounts only: ``passwords`` (user → password), and the ACL file text ``acl`` if given."""

    passwords: dict[str, str] = field(default_factory=dict)
    acl: str | None = None
    port: int = 0

    def start_tls(self, ca: Path, cert: Path, key: Path) -> MosquittoTls:
        self.port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        passwd = self.workdir / "passwd"
        passwd.write_text("".join(password_line(u, pw) + "\n" for u, pw in self.passwords.items()))
        passwd.chmod(0o600)
        lines = [
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {passwd}",
            f"listener {self.port} 127.0.0.1",
            f"cafile {ca}",
            f"certfile {cert}",
            f"keyfile {key}",
            "tls_version tlsv1.2",
            "persistence false",
            "log_dest stdout",
            "max_queued_messages 100000",
        ]
        if self.acl is not None:
            acl = self.workdir / "acl"
            acl.write_text(self.acl)
            lines.append(f"acl_file {acl}")
        lines += _run_as_self()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.proc = self._spawn([find_binary("mosquitto", "mosquitto"), "-c", str(conf)], "mosquitto.log")
        wait_for_port(self.port, self.proc, 15, "mosquitto (TLS)", self.log_path)
        return self


def _run_as_self() -> list[str]:
    """Mosquitto drops root privileges unless told to keep the current user (tests run as root in CI)."""
    if os.geteuid() != 0:
        return []
    import pwd

    return [f"user {pwd.getpwuid(os.getuid()).pw_name}"]


def can_log_in(port: int, username: str, password: str, timeout: float = 5.0) -> bool:
    """Whether an MQTT 3.1.1 CONNECT with these credentials gets CONNACK 0 (a bare socket, no library)."""
    def field_(b: bytes) -> bytes:
        return len(b).to_bytes(2, "big") + b

    client_id = f"probe-{os.getpid()}-{time.monotonic_ns()}".encode()
    body = field_(b"MQTT") + bytes([4, 0xC2]) + (5).to_bytes(2, "big")
    body += field_(client_id) + field_(username.encode()) + field_(password.encode())
    packet = bytes([0x10, len(body)]) + body if len(body) < 128 else None
    if packet is None:
        raise ValueError("user name and password too long for the probe")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(packet)
            ack = s.recv(4)
            if len(ack) == 4 and ack[0] == 0x20 and ack[3] == 0:
                s.sendall(b"\xe0\x00")  # DISCONNECT
                return True
            return False
    except OSError:
        return False


def _http(url: str, data: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, what: str, log: Path,
               ok: tuple[int, ...] = (200, 204)) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerUnavailable(f"{what} exited with code {proc.returncode}; log: {tail(log)}")
        with contextlib.suppress(OSError):
            status, _ = _http(url, timeout=1.0)
            if status in ok:
                return
        time.sleep(0.1)
    raise ServerUnavailable(f"{what} did not answer {url} within {timeout:.0f}s; log: {tail(log)}")


@dataclass
class InfluxDB1(_Process):
    """InfluxDB 1.x (Debian ``influxdb``): v1 ``/write`` and InfluxQL ``/query``, with ``database`` created."""

    port: int = 0
    database: str = "loaxa"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> InfluxDB1:
        binary = find_binary("influxd", "influxdb")
        if not self.port:
            self.port = free_port()
        rpc_port = free_port()
        d = self.workdir
        conf = d / "influxdb.conf"
        d.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            f'reporting-disabled = true\nbind-address = "127.0.0.1:{rpc_port}"\n'
            f'[meta]\n  dir = "{d}/meta"\n'
            f'[data]\n  dir = "{d}/data"\n  wal-dir = "{d}/wal"\n  query-log-enabled = false\n'
            f'  wal-fsync-delay = "0s"\n'
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
            f"  max-body-size = 0\n"
            "[monitor]\n  store-enabled = false\n"
            "[subscriber]\n  enabled = false\n"
            "[continuous_queries]\n  enabled = false\n"
        )
        self.proc = self._spawn([binary, "-config", str(conf)], "influxd.log")
        _wait_http(f"{self.url}/ping", self.proc, timeout, "influxd", self.log_path)
        self.query(f'CREATE DATABASE "{self.database}"')
        return self

    def query(self, q: str, *, database: str | None = None, epoch: str = "ms") -> dict[str, Any]:
        """Run InfluxQL and return the decoded JSON answer (raises on HTTP errors)."""
        params = {"q": q, "epoch": epoch, "db": database or self.database}
        status, body = _http(f"{self.url}/query", data=urllib.parse.urlencode(params).encode())
        if status != 200:
            raise RuntimeError(f"InfluxQL {q!r} failed with HTTP {status}: {body[:300]!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def points(self, measurement: str, *, where: str = "") -> list[dict[str, object]]:
        """All points of a measurement as dicts (time in ms), for tests and checks."""
        ans = self.query(f'SELECT * FROM "{measurement}" {where}')
        out: list[dict[str, object]] = []
        for res in ans.get("results", []):
            for series in res.get("series", []) or []:
                cols = series["columns"]
                out.extend(dict(zip(cols, row, strict=True)) for row in series["values"])
        return out


@dataclass
class VictoriaMetrics(_Process):
    """VictoriaMetrics (Debian ``victoria-metrics``): accepts the InfluxDB v2 write API."""

    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> VictoriaMetrics:
        binary = find_binary("victoria-metrics", "victoria-metrics")
        if not self.port:
            self.port = free_port()
        self.proc = self._spawn(
            [binary, f"-storageDataPath={self.workdir / 'data'}", f"-httpListenAddr=127.0.0.1:{self.port}",
             "-loggerLevel=WARN", "-retentionPeriod=100y", "-search.latencyOffset=0s", "-search.disableCache"],
            "victoria-metrics.log",
        )
        _wait_http(f"{self.url}/health", self.proc, timeout, "victoria-metrics", self.log_path)
        return self

    def flush(self) -> None:
        """Make recently written samples visible to queries."""
        _http(f"{self.url}/internal/force_flush")

    def export(self, match: str = '{__name__!=""}') -> list[dict[str, object]]:
        """Every series matching ``match`` as VictoriaMetrics' JSON-lines export (values and ms timestamps)."""
        self.flush()
        q = urllib.parse.urlencode({"match[]": match})
        status, body = _http(f"{self.url}/api/v1/export?{q}")
        if status != 200:
            raise RuntimeError(f"export failed with HTTP {status}: {body[:300]!r}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]


def find_postgres_binary(name: str) -> str:
    """``initdb``/``postgres`` of the newest PostgreSQL under /usr/lib/postgresql (Debian keeps them off PATH)."""
    def version(path: str) -> int:
        try:
            return int(Path(path).parts[-3])
        except ValueError:
            return 0

    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=version)
    if found:
        return found[-1]
    return find_binary(name, "postgresql")


#: The unprivileged account a throwaway cluster runs as when we are root (PostgreSQL refuses root).
#: ``nobody`` exists on every Debian machine; override with LOAXA_PG_USER.
PG_TEST_USER = "nobody"


@dataclass
class PostgreSQL(_Process):
    """A throwaway PostgreSQL cluster (Debian ``postgresql``) on 127.0.0.1, role ``loaxa`` with a password.

    ``initdb`` and the server run as the current user, or, when that is root (as on CI), as an
    unprivileged account (``nobody`` unless LOAXA_PG_USER says otherwise): the cluster then lives in
    its own directory under the system temp dir, owned by that account, because a root-only test
    directory cannot be entered by it. The unix socket is in that directory too (not
    /var/run/postgresql). Durability is switched off (``fsync=off``): this cluster is for tests and
    is deleted by :meth:`stop`.
    """

    port: int = 0
    role: str = "loaxa"
    password: str = "loaxa-test-pw"
    cluster_dir: Path | None = field(default=None, init=False)
    _owns_cluster_dir: bool = field(default=False, init=False)

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the ``postgres`` database (psycopg 3)."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{self.role}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _account(self) -> tuple[int, int] | None:
        """(uid, gid) to run as, or None to stay as we are."""
        if os.geteuid() != 0:
            return None
        import pwd

        name = os.environ.get("LOAXA_PG_USER", PG_TEST_USER)
        try:
            entry = pwd.getpwnam(name)
        except KeyError as exc:
            raise ServerUnavailable(f"PostgreSQL cannot run as root and there is no user {name!r} "
                                    "(set LOAXA_PG_USER to an unprivileged account)") from exc
        return entry.pw_uid, entry.pw_gid

    def _run_as(self) -> dict[str, Any]:
        acct = self._account()
        if acct is None:
            return {}
        return {"user": acct[0], "group": acct[1], "extra_groups": []}

    def start(self, timeout: float = 60.0) -> PostgreSQL:
        initdb = find_postgres_binary("initdb")
        postgres = find_postgres_binary("postgres")
        if not self.port:
            self.port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        acct = self._account()
        if acct is None:
            self.cluster_dir = self.workdir / "cluster"
            self.cluster_dir.mkdir(exist_ok=True)
        else:
            self.cluster_dir = Path(tempfile.mkdtemp(prefix="loaxa-pg-"))
            self._owns_cluster_dir = True
            os.chown(self.cluster_dir, *acct)
        d = self.cluster_dir
        pwfile = d / "pwfile"
        pwfile.write_text(self.password + "\n")
        if acct is not None:
            os.chown(pwfile, *acct)
        run_as = self._run_as()
        env = {"PATH": SEARCH_PATH, "LANG": "C.UTF-8", "HOME": str(d)}
        done = subprocess.run(
            [initdb, "-D", str(d / "data"), "-U", self.role, f"--pwfile={pwfile}", "-E", "UTF8", "--no-locale",
             "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"],
            capture_output=True, cwd=d, env=env, timeout=timeout, **run_as,
        )
        pwfile.unlink()
        if done.returncode != 0:
            raise ServerUnavailable(f"initdb failed ({done.returncode}): {done.stderr.decode(errors='replace')[-800:]}")
        self.log_path = self.workdir / "postgres.log"
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [postgres, "-D", str(d / "data"), "-p", str(self.port), "-k", str(d),
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=50", "-c", "shared_buffers=16MB"],
                stdout=log, stderr=subprocess.STDOUT, cwd=d, env=env, start_new_session=True, **run_as,
            )
        finally:
            log.close()
        # a cluster outlives its parent (own session): stop it at interpreter exit if nobody did
        atexit.register(self.stop)
        wait_for_port(self.port, self.proc, timeout, "postgres", self.log_path)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """The port opens before the server accepts logins ("the database system is starting up")."""
        import psycopg

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self._dsn("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                last = exc
                if self.proc is not None and self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        raise ServerUnavailable(f"postgres did not accept logins on port {self.port}: {last}; "
                                f"log: {tail(self.log_path)}")

    def _dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.role} password={self.password} dbname={database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (a plain identifier) and return its SQLAlchemy URL."""
        import psycopg

        if not name.replace("_", "").isalnum() or not name.isascii():
            raise ValueError(f"database name {name!r}: letters, digits and _ only")
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self, timeout: float = 20.0) -> None:
        """Fast shutdown (SIGINT: clients are disconnected), then forcefully; the cluster is deleted."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self.cluster_dir is not None:
            shutil.rmtree(self.cluster_dir, ignore_errors=True)
            self.cluster_dir = None
