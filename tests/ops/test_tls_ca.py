"""`loaxa tls`: certificates it makes are accepted by a real Mosquitto TLS listener with certificate
checking on, and a client that trusts another CA, or asks for a name the certificate lacks, is refused."""

from __future__ import annotations

import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from loaxa.cli import main as loaxa_main
from loaxa.servers import MosquittoTls
from loaxa.tlsca import TlsError, describe, init_ca, issue_client, issue_server

USER, PASSWORD = "xa-an-binh", "tls-test-password"


def connect(port: int, ca: Path, host: str = "127.0.0.1") -> str:
    """Connect with certificate and host name checking; 'ok' or the error that stopped it."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=USER, protocol=paho.MQTTv5)
    client.username_pw_set(USER, PASSWORD)
    ctx = ssl.create_default_context(cafile=str(ca))  # verify_mode CERT_REQUIRED, check_hostname on
    client.tls_set_context(ctx)
    connected = threading.Event()
    result: list[str] = []

    def on_connect(_c: paho.Client, _u: object, _f: object, rc: object, _p: object = None) -> None:
        result.append("ok" if not getattr(rc, "is_failure", False) else f"refused: {rc}")
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=10)
    except (ssl.SSLError, OSError) as exc:
        return f"tls error: {exc}"
    client.loop_start()
    try:
        if not connected.wait(15):
            return "timeout"
        return result[0]
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "tls"
    rc = loaxa_main(["tls", "init", str(d), "--name", "127.0.0.1", "--name", "localhost"])
    assert rc == 0
    return d


@pytest.fixture
def broker(tmp_path: Path, pki: Path) -> Iterator[MosquittoTls]:
    b = MosquittoTls(tmp_path / "broker", passwords={USER: PASSWORD})
    b.start_tls(pki / "ca.crt", pki / "server.crt", pki / "server.key")
    yield b
    b.stop()


def test_init_writes_private_keys_0600_and_refuses_a_second_ca(pki: Path) -> None:
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((pki / key).stat().st_mode) == 0o600
    ca = describe(pki / "ca.crt")
    server = describe(pki / "server.crt")
    assert ca.is_ca and not server.is_ca
    assert set(server.names) == {"127.0.0.1", "localhost"}
    assert 800 < server.days_left() < 830
    with pytest.raises(TlsError, match="a CA exists already"):
        init_ca(pki)


def test_client_with_the_ca_connects_with_checking_on(broker: MosquittoTls, pki: Path) -> None:
    assert connect(broker.port, pki / "ca.crt") == "ok"


def test_client_trusting_another_ca_is_refused(broker: MosquittoTls, tmp_path: Path) -> None:
    other = tmp_path / "other-ca"
    init_ca(other, "Somebody else's CA")
    outcome = connect(broker.port, other / "ca.crt")
    assert outcome.startswith("tls error") and "CERTIFICATE_VERIFY_FAILED" in outcome


def test_name_missing_from_the_certificate_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "tls"
    init_ca(d)
    issue_server(d, ["mqtt.example.invalid"])  # no 127.0.0.1 in its names
    b = MosquittoTls(tmp_path / "broker", passwords={USER: PASSWORD})
    b.start_tls(d / "ca.crt", d / "server.crt", d / "server.key")
    try:
        outcome = connect(b.port, d / "ca.crt")
        assert outcome.startswith("tls error") and "CERTIFICATE_VERIFY_FAILED" in outcome
    finally:
        b.stop()


def test_renewal_keeps_the_key_and_client_certs_carry_the_name(pki: Path) -> None:
    key_before = (pki / "server.key").read_bytes()
    serial_before = describe(pki / "server.crt")
    issue_server(pki, ["127.0.0.1"], days=30)
    assert (pki / "server.key").read_bytes() == key_before
    renewed = describe(pki / "server.crt")
    assert renewed.names == ("127.0.0.1",) and renewed.not_after < serial_before.not_after
    path = issue_client(pki, "xa-an-binh")
    assert describe(path).subject == "CN=xa-an-binh"
    assert stat.S_IMODE(path.with_suffix(".key").stat().st_mode) == 0o600


def test_cli_without_a_ca_says_how_to_make_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = loaxa_main(["tls", "server", str(tmp_path / "none"), "--name", "x"])
    assert rc == 2
    assert "loaxa tls init" in capsys.readouterr().out
