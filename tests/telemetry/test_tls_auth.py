"""The v1 writer over TLS with user/password against a real InfluxDB 1.6.7 (https + auth enabled)."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import InfluxSection
from gateway.telemetry.writer import TransientError, V1Writer
from loaxa.servers import _Process, find_binary, free_port, wait_for_port
from loaxa.tlsca import init_ca, issue_server

USER, PASSWORD = "gw-test", "s3cret-pw"


def make_ca_and_cert(d: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (made as `loaxa tls init` makes them)."""
    tls = d / "tls"
    init_ca(tls, "Loa Xa test CA")
    issue_server(tls, ["127.0.0.1"], days=2)
    return tls / "ca.crt", tls / "server.crt", tls / "server.key"


class SecureInflux(_Process):
    """InfluxDB 1.x with https-enabled and auth-enabled (an admin user gw-test)."""

    def start_secure(self, cert: Path, key: Path, ca: Path) -> SecureInflux:
        self.port = free_port()
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "influxdb.conf"
        conf.write_text(
            f'reporting-disabled = true\nbind-address = "127.0.0.1:{free_port()}"\n'
            f'[meta]\n  dir = "{d}/meta"\n[data]\n  dir = "{d}/data"\n  wal-dir = "{d}/wal"\n'
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  auth-enabled = true\n  log-enabled = false\n'
            f'  https-enabled = true\n  https-certificate = "{cert}"\n  https-private-key = "{key}"\n'
            "[monitor]\n  store-enabled = false\n[subscriber]\n  enabled = false\n"
        )
        self.proc = self._spawn([find_binary("influxd", "influxdb"), "-config", str(conf)], "influxd.log")
        wait_for_port(self.port, self.proc, 30, "influxd (https)", self.log_path)
        self.ctx = ssl.create_default_context(cafile=str(ca))
        for q in (f"CREATE USER \"{USER}\" WITH PASSWORD '{PASSWORD}' WITH ALL PRIVILEGES", 'CREATE DATABASE "loaxa"'):
            self.query(q, auth=q.startswith("CREATE DATABASE"))
        return self

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def query(self, q: str, auth: bool = True) -> dict[str, Any]:
        creds = "?" + urllib.parse.urlencode({"u": USER, "p": PASSWORD}) if auth else ""  # 1.x reads them from the URL
        body = urllib.parse.urlencode({"q": q, "db": "loaxa", "epoch": "ms"}).encode()
        deadline = time.monotonic() + 15
        while True:
            try:
                req = urllib.request.Request(f"{self.url}/query{creds}", data=body)
                with urllib.request.urlopen(req, context=self.ctx, timeout=5) as resp:
                    return json.loads(resp.read())  # type: ignore[no-any-return]
            except urllib.error.HTTPError:
                raise
            except OSError:  # not listening yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@pytest.fixture
def secure_influx(tmp_path: Path) -> Iterator[tuple[SecureInflux, Path]]:
    ca, cert, key = make_ca_and_cert(tmp_path)
    server = SecureInflux(tmp_path / "influx-tls").start_secure(cert, key, ca)
    yield server, ca
    server.stop()


async def test_v1_writer_tls_and_password(secure_influx: tuple[SecureInflux, Path]) -> None:
    server, ca = secure_influx
    base = {"api": "v1", "url": server.url, "database": "loaxa", "username": USER, "timeout_s": 5}
    ok = V1Writer(InfluxSection.model_validate({**base, "password": {"value": PASSWORD}, "ca_file": str(ca)}))
    ts = int(time.time() * 1000)
    await ok.write([f"environment,device=s1,gateway=gw-test temp_c=21.5 {ts}"])
    await ok.close()
    ans = server.query('SELECT "temp_c" FROM "environment"')
    assert ans["results"][0]["series"][0]["values"] == [[ts, 21.5]]

    wrong = V1Writer(InfluxSection.model_validate({**base, "password": {"value": "nope"}, "ca_file": str(ca)}))
    with pytest.raises(TransientError, match="HTTP 401"):  # retried (and shown in health), never dropped
        await wrong.write([f"environment,device=s1,gateway=gw-test temp_c=1.0 {ts + 1}"])
    await wrong.close()
    untrusted = V1Writer(InfluxSection.model_validate({**base, "password": {"value": PASSWORD}}))
    with pytest.raises(TransientError, match="CERTIFICATE_VERIFY_FAILED"):  # the system CAs do not know ours
        await untrusted.write([f"environment,device=s1,gateway=gw-test temp_c=1.0 {ts + 2}"])
    await untrusted.close()
