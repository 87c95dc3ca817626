"""A small certificate authority for one Loa Xã installation (the central broker and its clients).

The district server runs Mosquitto with TLS; gateways check the broker's certificate against the
installation's own CA (``ca.crt``), never the public web PKI, so a 4G operator's middlebox or a
rogue access point cannot pose as the broker. This module makes that CA and the certificates it
signs with the ``cryptography`` library:

* ``ca.crt`` / ``ca.key``: the CA (ECDSA P-256, 10 years by default). ``ca.key`` signs certificates
  and nothing else: keep it off the broker if you can (a backup, an offline USB stick).
* ``server.crt`` / ``server.key``: the broker's certificate, with every DNS name and IP address that
  clients use in its subjectAltName (clients check the name; a CN alone is not enough).
* ``clients/<name>.crt`` / ``.key``: optional client certificates (e.g. a gateway), CN = the name.

Private keys are written with mode 0600 and never overwritten; certificates can be renewed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 825  # what browsers accept for a leaf; renew with `loaxa tls server` well before
#: Clocks of a Pi that just booted without NTP may be slightly behind: back-date a little.
BACKDATE = dt.timedelta(hours=1)


class TlsError(RuntimeError):
    """A CA file is missing, unreadable, or would be overwritten."""


@dataclass(frozen=True)
class CertInfo:
    path: Path
    subject: str
    names: tuple[str, ...]
    not_after: dt.datetime
    is_ca: bool

    def days_left(self, now: dt.datetime | None = None) -> float:
        now = now or dt.datetime.now(dt.UTC)
        return (self.not_after - now).total_seconds() / 86400


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a PEM private key with mode 0600; refuse to replace an existing key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise TlsError(f"{path}: already exists; not overwriting a private key") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    """Write a PEM certificate atomically (a renewal replaces the old one in one rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _load_or_make_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TlsError(f"{path}: not an EC private key")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    _write_private(path, key)
    return key


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


@dataclass(frozen=True)
class CaPaths:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    def client_cert(self, name: str) -> Path:
        return self.directory / "clients" / f"{name}.crt"

    def client_key(self, name: str) -> Path:
        return self.directory / "clients" / f"{name}.key"


def init_ca(directory: Path, common_name: str = "Loa Xa CA", days: int = CA_DAYS) -> CaPaths:
    """Create the CA in ``directory``; refuse if one is there already."""
    paths = CaPaths(directory)
    if paths.ca_cert.exists() or paths.ca_key.exists():
        raise TlsError(f"{paths.ca_cert}: a CA exists already; use it (or move it away to start over)")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(paths.ca_key, key)
    _write_cert(paths.ca_cert, cert)
    return paths


def _load_ca(paths: CaPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not paths.ca_cert.exists() or not paths.ca_key.exists():
        raise TlsError(f"{paths.directory}: no CA here (ca.crt and ca.key); create one with `loaxa tls init`")
    cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsError(f"{paths.ca_key}: not an EC private key")
    return cert, key


def _issue(paths: CaPaths, cert_path: Path, key_path: Path, common_name: str, names: list[str],
           usage: x509.ObjectIdentifier, days: int) -> Path:
    ca_cert, ca_key = _load_ca(paths)
    key = _load_or_make_key(key_path)
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(_san(names), critical=False)
    _write_cert(cert_path, builder.sign(ca_key, hashes.SHA256()))
    return cert_path


def issue_server(directory: Path, names: list[str], days: int = LEAF_DAYS) -> Path:
    """The broker's certificate for every name/address clients use (the first is also its CN).

    Re-running renews the certificate with the same key, so nothing else needs to change."""
    if not names:
        raise TlsError("give at least one --name: the host name or IP address gateways connect to")
    paths = CaPaths(directory)
    return _issue(paths, paths.server_cert, paths.server_key, names[0], names, ExtendedKeyUsageOID.SERVER_AUTH, days)


def issue_client(directory: Path, name: str, days: int = LEAF_DAYS) -> Path:
    """A client certificate with CN = ``name`` (a gateway id, for brokers that map CN to user)."""
    paths = CaPaths(directory)
    return _issue(paths, paths.client_cert(name), paths.client_key(name), name, [],
                  ExtendedKeyUsageOID.CLIENT_AUTH, days)


def describe(path: Path) -> CertInfo:
    """Subject, names and expiry of a PEM certificate."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsError(f"{path}: not a readable PEM certificate ({exc})") from exc
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        names += [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(path, cert.subject.rfc4514_string(), tuple(names), cert.not_valid_after_utc, is_ca)
