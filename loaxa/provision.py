"""Provisioning a commune on the central server: ``loaxa commune add|remove|list``, ``loaxa device add``.

One command makes everything a new commune gateway needs, and keeps it where the next command (and
the backup) finds it::

    <root>/communes/<gw>/commune.yaml          what was provisioned (name, devices, LAN addresses)
    <root>/communes/<gw>/secrets/…             the passwords (0600), made once and never overwritten
    <root>/communes/<gw>/bundle-<gw>.tar.gz    the bundle to copy onto the Pi (0600: it holds secrets)

and on the server itself it changes three things, each from that state:

* the central broker's password file gets the gateway's account (``mosquitto_passwd``), and the
  central ACL is regenerated from ``configs/mosquitto/acl.example`` with the gateway's block;
* the scheduler's config gets a ``gateways:`` entry (its comments are kept: the entry is added or
  removed as text, and the result is validated before it replaces the file);
* optionally the running scheduler registers the gateway at once (``PUT /api/gateways/{id}``).

The bundle is laid out as the Pi's file system (``etc/loaxa/gateway.yaml``,
``etc/mosquitto/conf.d/loaxa-lan.conf``, …) with a ``MANIFEST.json`` of checksums;
``loaxa gateway install`` (:mod:`loaxa.gateway_install`) checks it and puts it in place.

Re-running any command is safe: secrets that exist are reused, the broker files and the config are
rewritten to the same content, and the bundle is rebuilt with the same identity.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import time
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator

from loaxa.brokers import (
    CENTRAL_ACL_EXAMPLE,
    EXAMPLE_GATEWAY,
    LAN_GATEWAY_USER,
    SCHEDULER_USER,
    VIEWER_USER,
    _blocks,
    _substitute,
    central_acl,
    lan_acl,
)
from loaxa.servers import MAX_PACKET_SIZE
from loaxa.yamlconf import StrictModel
from protocol.ids import validate_id

#: where the Pi's files go (the bundle mirrors the Pi's file system under these)
PI_CONFIG_DIR = "etc/loaxa"
PI_MOSQUITTO_DIR = "etc/mosquitto"
PI_DATA_DIR = "/var/lib/loaxa/gateway"
PI_MOSQUITTO_DATA = "/var/lib/mosquitto/"
BUNDLE_MANIFEST = "MANIFEST.json"
BUNDLE_FORMAT = 1
#: the absolute paths a bundle's configs name; ``loaxa gateway install --root`` moves them under root
PI_PATH_PREFIXES = ("/etc/loaxa", "/etc/mosquitto", "/var/lib/loaxa", "/var/lib/mosquitto")
DeviceKind = Literal["ip_speaker", "mqtt_sensor"]


class ProvisionError(RuntimeError):
    """A provisioning step cannot be done; the message says what to fix."""


# ------------------------------------------------------------------ state


class DeviceEntry(StrictModel):
    id: str = Field(pattern=r"^[a-z0-9-]{1,64}$")
    type: DeviceKind
    measurement: str | None = Field(default=None, max_length=64)


class CommuneState(StrictModel):
    """``<root>/communes/<gw>/commune.yaml``: what was provisioned for one commune.

    Every value here ends up in a generated file (a Mosquitto config, a YAML), so each is checked for
    its shape: a commune name with a line break must not be able to add a line to a broker config.
    """

    id: str = Field(pattern=r"^[a-z0-9-]{1,64}$")
    name: str = Field(min_length=1, max_length=200)
    uplink_url: str = Field(pattern=r"^mqtts?://[A-Za-z0-9.\-\[\]:]+:\d{1,5}$", max_length=300)
    lan_address: str = Field(default="192.168.10.1", pattern=r"^[A-Za-z0-9.\-:]{1,253}$")
    lan_port: int = Field(default=1883, ge=1, le=65535)
    local_port: int = Field(default=1883, ge=1, le=65535)
    media_public_url: str | None = Field(default=None, pattern=r"^https?://[A-Za-z0-9.\-\[\]:]+(:\d{1,5})?/?$",
                                         max_length=300)
    devices: list[DeviceEntry] = Field(default_factory=list)
    created_at: int = 0

    @field_validator("name")
    @classmethod
    def _printable(cls, v: str) -> str:
        if any(unicodedata.category(c).startswith("C") for c in v):
            raise ValueError("a commune name cannot hold line breaks or control characters")
        return v.strip()


@dataclass
class ServerPaths:
    """Where the server keeps what provisioning touches (all overridable, for tests and odd layouts)."""

    root: Path = Path("/etc/loaxa")
    scheduler_config: Path | None = None
    broker_passwd: Path = Path("/etc/mosquitto/loaxa.passwd")
    broker_acl: Path = Path("/etc/mosquitto/loaxa.acl")
    #: run after the broker files change (empty: the technician reloads Mosquitto himself)
    reload_command: list[str] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.scheduler_config or self.root / "scheduler.yaml"

    @property
    def communes(self) -> Path:
        return self.root / "communes"

    def commune_dir(self, gw: str) -> Path:
        return self.communes / validate_id(gw, "gateway id")

    def bundle_path(self, gw: str) -> Path:
        return self.commune_dir(gw) / f"bundle-{gw}.tar.gz"


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Replace ``path`` in one step (a crash leaves the old file or the new one, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if path.exists() and os.geteuid() == 0:  # keep who may read it (e.g. root:loaxa 0640)
            st = path.stat()
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_secret(path: Path, nbytes: int = 18) -> str:
    """The secret in ``path``, made (0600) if it does not exist yet. An existing one is never replaced."""
    if path.exists():
        value = path.read_text(encoding="utf-8").strip()
        if not value:
            raise ProvisionError(f"{path}: the secret file is empty; delete it to make a new one")
        return value
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def load_state(paths: ServerPaths, gw: str) -> CommuneState | None:
    f = paths.commune_dir(gw) / "commune.yaml"
    if not f.exists():
        return None
    from loaxa.yamlconf import load_config

    return load_config(f, CommuneState)


def save_state(paths: ServerPaths, state: CommuneState) -> None:
    d = paths.commune_dir(state.id)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = "# written by `loaxa commune add` / `loaxa device add`; edit with those commands\n"
    text += yaml.safe_dump(state.model_dump(exclude_none=True), sort_keys=False, allow_unicode=True)
    write_atomic(d / "commune.yaml", text, 0o600)


def list_communes(paths: ServerPaths) -> list[CommuneState]:
    if not paths.communes.is_dir():
        return []
    out = []
    for d in sorted(paths.communes.iterdir()):
        if (d / "commune.yaml").exists():
            st = load_state(paths, d.name)
            if st is not None:
                out.append(st)
    return out


# ------------------------------------------------------------------ central broker


def _mosquitto_passwd(*args: str) -> None:
    binary = shutil.which("mosquitto_passwd")
    if binary is None:
        raise ProvisionError("mosquitto_passwd is not installed (apt-get install mosquitto)")
    r = subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise ProvisionError(f"mosquitto_passwd {args[0]} {args[-2] if len(args) > 2 else ''}: "
                             f"{(r.stderr or r.stdout).strip()}")


def passwd_users(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {line.split(":", 1)[0] for line in path.read_text().splitlines() if ":" in line}


def set_broker_password(passwd: Path, user: str, password: str) -> None:
    """Add or update one account in a Mosquitto password file (``mosquitto_passwd -b``)."""
    if passwd.exists():
        _mosquitto_passwd("-b", str(passwd), user, password)
    else:
        passwd.parent.mkdir(parents=True, exist_ok=True)
        _mosquitto_passwd("-c", "-b", str(passwd), user, password)
        passwd.chmod(0o600)


def delete_broker_account(passwd: Path, user: str) -> bool:
    if user not in passwd_users(passwd):
        return False
    _mosquitto_passwd("-D", str(passwd), user)
    return True


@dataclass
class CentralAcl:
    """The central ACL as the generator sees it: read-only accounts, gateways, and blocks it did not
    write (kept verbatim, so that an ingest worker added by hand survives a regeneration)."""

    readers: list[str]
    gateways: list[str]
    custom: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> CentralAcl:
        _pre, blocks = _blocks(text)
        _epre, example = _blocks(CENTRAL_ACL_EXAMPLE.read_text())
        reader_body = _body(example[VIEWER_USER])
        readers: list[str] = []
        gateways: list[str] = []
        custom: dict[str, str] = {}
        for name, block in blocks.items():
            if name == SCHEDULER_USER:
                continue
            body = _body(block)
            if body == reader_body:
                readers.append(name)
            elif body == _body(_substitute(example[EXAMPLE_GATEWAY], name)):
                gateways.append(name)
            else:
                custom[name] = block
        return cls(readers, gateways, custom)

    def render(self) -> str:
        text = central_acl(self.gateways, self.readers)
        if self.custom:
            text += "\n# blocks kept as they were (not written by loaxa)\n" + "\n".join(self.custom.values())
        return text


def _body(block: str) -> list[str]:
    return [ln.strip() for ln in block.splitlines()[1:] if ln.strip() and not ln.strip().startswith("#")]


def update_central_acl(paths: ServerPaths, *, add: Iterable[str] = (), remove: Iterable[str] = ()) -> bool:
    """Regenerate the central ACL with these gateways added/removed. True when the file changed."""
    old = paths.broker_acl.read_text() if paths.broker_acl.exists() else None
    acl = CentralAcl.parse(old) if old is not None else CentralAcl([VIEWER_USER], [], {})
    for gw in add:
        acl.custom.pop(gw, None)  # a hand-written block of this gateway gives way to the generated one
        if gw not in acl.gateways:
            acl.gateways.append(gw)
    for gw in remove:
        acl.custom.pop(gw, None)  # whatever its block looked like, it goes: this revokes its access
    acl.gateways = [g for g in acl.gateways if g not in set(remove)]
    new = acl.render()
    if new == old:
        return False
    write_atomic(paths.broker_acl, new, paths.broker_acl.stat().st_mode & 0o777 if old is not None else 0o644)
    return True


def reload_broker(paths: ServerPaths) -> str:
    """Make the central Mosquitto read its files again; returns what the technician should know."""
    if not paths.reload_command:
        return "reload the central broker now: systemctl reload mosquitto"
    r = subprocess.run(paths.reload_command, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise ProvisionError(f"reloading the broker ({' '.join(paths.reload_command)}) failed: "
                             f"{(r.stderr or r.stdout).strip()}; run it by hand")
    return f"central broker reloaded ({' '.join(paths.reload_command)})"


# ------------------------------------------------------------------ scheduler config (edited as text)

_TOP_KEY = re.compile(r"^[A-Za-z_][\w-]*\s*:")


def _gateways_block(lines: list[str]) -> tuple[int, int] | None:
    """(index of the ``gateways:`` line, index after its block) or None."""
    for i, line in enumerate(lines):
        if re.match(r"^gateways\s*:", line):
            j = i + 1
            while j < len(lines) and not _TOP_KEY.match(lines[j]):
                j += 1
            while j > i + 1 and (not lines[j - 1].strip() or lines[j - 1].startswith("#")):
                j -= 1  # leave trailing blank lines and comments that belong to the next section
            return i, j
    return None


def _yaml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def config_with_gateway(text: str, gw: str, commune: str) -> str:
    """The scheduler config text with a ``gateways:`` entry for ``gw`` (added or its commune renamed)."""
    text = config_without_gateway(text, gw)
    lines = text.splitlines()
    where = _gateways_block(lines)
    indent = "  "
    if where is not None:
        items = [ln for ln in lines[where[0] + 1: where[1]] if ln.lstrip().startswith("- ")]
        if items:
            indent = items[0][: len(items[0]) - len(items[0].lstrip())]
    entry = [f"{indent}- id: {gw}", f"{indent}  commune: {_yaml_str(commune)}"]
    if where is None:
        lines += ["", "# the gateways this scheduler serves (loaxa commune add/remove keeps this list)",
                  "gateways:", *entry]
    else:
        i, j = where
        head = lines[i]
        if re.match(r"^gateways\s*:\s*\[\s*\]\s*(#.*)?$", head):
            lines[i] = "gateways:"
        elif not re.match(r"^gateways\s*:\s*(#.*)?$", head):
            raise ProvisionError("the scheduler config's 'gateways:' is written inline; write it as a block list")
        lines[j:j] = entry
    return "\n".join(lines) + "\n"


def config_without_gateway(text: str, gw: str) -> str:
    lines = text.splitlines()
    where = _gateways_block(lines)
    if where is None:
        return text
    i, j = where
    out = lines[: i + 1]
    k = i + 1
    while k < j:
        m = re.match(r"^(\s*)-\s+(?:id\s*:\s*[\"']?([a-z0-9-]+)[\"']?\s*$|\{.*\bid\s*:\s*[\"']?([a-z0-9-]+))", lines[k])
        if m and (m.group(2) or m.group(3)) == gw:
            indent = len(m.group(1))
            k += 1
            while k < j and lines[k].strip() and len(lines[k]) - len(lines[k].lstrip()) > indent \
                    and not lines[k].lstrip().startswith("-"):
                k += 1
            continue
        out.append(lines[k])
        k += 1
    out += lines[j:]
    result = "\n".join(out) + "\n"
    # an emptied block list must still be a list
    block = _gateways_block(result.splitlines())
    if block is not None:
        bi, bj = block
        body = [ln for ln in result.splitlines()[bi + 1: bj] if ln.strip() and not ln.lstrip().startswith("#")]
        if not body and re.match(r"^gateways\s*:\s*(#.*)?$", result.splitlines()[bi]):
            lines2 = result.splitlines()
            lines2[bi] = "gateways: []"
            result = "\n".join(lines2) + "\n"
    return result


def _gateway_ids(text: str) -> list[str]:
    data = yaml.safe_load(text) or {}
    return [str(g.get("id")) for g in (data.get("gateways") or []) if isinstance(g, dict)]


def checked_edit(path: Path, old: str, new: str, gw: str, *, present: bool) -> None:
    """Make sure the text edit did what it should (``gw`` listed once, or not at all; every other
    gateway kept), whatever the file's layout, before :func:`write_scheduler_config` replaces it."""
    before, after = _gateway_ids(old), _gateway_ids(new)
    others_kept = [g for g in after if g != gw] == [g for g in before if g != gw]
    if not others_kept or after.count(gw) != (1 if present else 0):
        raise ProvisionError(f"{path}: could not {'add' if present else 'remove'} gateway {gw} under 'gateways:' "
                             "automatically (unusual layout); edit that list by hand and run the command again")
    write_scheduler_config(path, new)


def write_scheduler_config(path: Path, text: str) -> None:
    """Validate the new text as a scheduler config (in the same folder, so relative secrets resolve)
    and only then replace the file."""
    from loaxa.yamlconf import ConfigError
    from scheduler.config import load_scheduler_config

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".yaml")
    os.close(fd)
    try:
        Path(tmp).write_text(text, encoding="utf-8")
        try:
            load_scheduler_config(tmp)
        except ConfigError as exc:
            raise ProvisionError(f"{path}: the edited config would not be valid (the file is left unchanged):\n"
                                 + "\n".join(str(p).replace(tmp, str(path)) for p in exc.problems)) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    write_atomic(path, text, path.stat().st_mode & 0o777)


def register_via_api(api: str, token: str, gw: str, commune: str) -> None:
    import httpx

    r = httpx.put(f"{api.rstrip('/')}/api/gateways/{gw}", json={"commune": commune},
                  headers={"Authorization": f"Bearer {token}"}, timeout=30)
    if r.status_code != 200:
        raise ProvisionError(f"the scheduler at {api} refused to register {gw}: HTTP {r.status_code} {r.text[:200]}")


# ------------------------------------------------------------------ the bundle


def gateway_yaml(state: CommuneState, trusted: list[tuple[str, str]], *, ca: bool) -> dict[str, Any]:
    """The Pi's gateway.yaml (secrets as files next to it)."""
    devices: list[dict[str, Any]] = []
    for d in state.devices:
        entry: dict[str, Any] = {"id": d.id, "type": d.type}
        if d.measurement:
            entry["measurement"] = d.measurement
        devices.append(entry)
    uplink: dict[str, Any] = {"url": state.uplink_url, "username": state.id,
                              "password": {"file": "secrets/uplink.password"}, "keepalive_s": 30}
    if ca:
        uplink["ca_file"] = f"/{PI_CONFIG_DIR}/ca.crt"
    cfg: dict[str, Any] = {
        "gateway": {"id": state.id, "commune": state.name, "data_dir": PI_DATA_DIR},
        "uplink": uplink,
        "local_broker": {"url": f"mqtt://127.0.0.1:{state.local_port}", "username": LAN_GATEWAY_USER,
                         "password": {"file": "secrets/lan.password"}, "keepalive_s": 30},
        "trust": {"keys": [{"id": kid, "public_key": pub} for kid, pub in trusted]},
        "devices": devices,
    }
    media_url = state.media_public_url
    if media_url is None and any(d.type == "ip_speaker" for d in state.devices):
        # the speakers reach the Pi at lan_address already (their broker listener is bound there), so
        # that is where they fetch media too; the gateway refuses IP speakers without a media server
        media_url = f"http://{_url_host(state.lan_address)}:{DEFAULT_MEDIA_PORT}"
    if media_url:
        cfg["broadcast"] = {"media_listen": f"0.0.0.0:{_port_of(media_url)}", "media_public_url": media_url}
    return cfg


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


#: where a provisioned gateway serves its media cache to the speakers, unless --media-url says otherwise
DEFAULT_MEDIA_PORT = 8091


def _port_of(url: str) -> int:
    m = re.match(r"^https?://[^/:]+:(\d+)", url)
    return int(m.group(1)) if m else 80


def lan_conf(state: CommuneState) -> str:
    """The commune LAN broker's Mosquitto config (conf.d snippet), as configs/mosquitto/commune-lan.conf.example."""
    return f"""\
# Loa Xã commune LAN broker of {state.id} ({state.name}); written by `loaxa commune add`.
# Speakers and sensors connect on the LAN listener with their own accounts; the gateway on loopback.

allow_anonymous false
password_file /{PI_MOSQUITTO_DIR}/loaxa-lan.passwd
acl_file /{PI_MOSQUITTO_DIR}/loaxa-lan.acl

listener {state.local_port} 127.0.0.1
listener {state.lan_port} {state.lan_address}
use_username_as_clientid true

max_packet_size {MAX_PACKET_SIZE}
# persistence: Debian's /etc/mosquitto/mosquitto.conf sets `persistence true` and its location
# (a second persistence_location here would stop Mosquitto from starting). Save every second and
# keep the gateway's session 30 days (docs/telemetry.md, "What survives what").
autosave_interval 1
persistent_client_expiration 30d
max_queued_messages 100000
"""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def trusted_keys(paths: ServerPaths) -> list[tuple[str, str]]:
    """(key id, base64 public key) of the scheduler's signing key, from its config."""
    from loaxa.yamlconf import ConfigError
    from protocol.signing import key_id_for, load_private_key, public_key_b64
    from scheduler.config import load_scheduler_config

    try:
        cfg = load_scheduler_config(paths.config)
        public = load_private_key(cfg.signing.private_key.get()).public_key()
    except ConfigError as exc:
        raise ProvisionError(f"{paths.config}: not a valid scheduler config:\n"
                             + "\n".join(str(p) for p in exc.problems)) from None
    except (RuntimeError, ValueError) as exc:
        raise ProvisionError(f"{paths.config}: cannot load the signing key: {exc}") from None
    if cfg.signing.key_id is not None and cfg.signing.key_id != key_id_for(public):
        raise ProvisionError(f"{paths.config}: signing.key_id is not the id of signing.private_key")
    keys = [(key_id_for(public), public_key_b64(public))]
    return keys + [k for k in extra_trusted_keys(paths) if k not in keys]


def extra_trusted_keys(paths: ServerPaths) -> list[tuple[str, str]]:
    """More keys every gateway trusts, one ``KEY_ID PUBLIC_KEY`` a line in ``<root>/trusted-keys.txt``
    (``#`` comments): the next key during a rotation (docs/operations.md, "Rotate the signing key")."""
    from protocol.signing import key_id_for, load_public_key

    f = paths.root / "trusted-keys.txt"
    if not f.exists():
        return []
    out = []
    for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("write KEY_ID PUBLIC_KEY (as `loaxa keys generate` prints them)")
            derived = key_id_for(load_public_key(parts[1]))
            if derived != parts[0]:
                raise ValueError(f"{parts[0]!r} is not the id of this key; it is {derived!r}")
        except ValueError as exc:
            raise ProvisionError(f"{f}:{n}: {exc}") from None
        out.append((parts[0], parts[1]))
    return out


def build_bundle(paths: ServerPaths, state: CommuneState) -> Path:
    """Write ``bundle-<gw>.tar.gz`` from the commune's state and secrets; checks the gateway.yaml first."""
    from gateway.config import load_gateway_config
    from loaxa.yamlconf import ConfigError
    from scheduler.config import load_scheduler_config

    cdir = paths.commune_dir(state.id)
    sec = cdir / "secrets"
    files: dict[str, tuple[bytes, int]] = {}
    files[f"{PI_CONFIG_DIR}/secrets/uplink.password"] = (
        (ensure_secret(sec / "uplink.password") + "\n").encode(), 0o600)
    lan_pw = ensure_secret(sec / "lan-gateway.password")
    files[f"{PI_CONFIG_DIR}/secrets/lan.password"] = ((lan_pw + "\n").encode(), 0o600)
    creds = {d.id: ensure_secret(sec / "devices" / f"{d.id}.password") for d in state.devices}
    files[f"{PI_CONFIG_DIR}/devices.json"] = (json.dumps(creds, indent=1).encode(), 0o600)

    ca_file = load_scheduler_config(paths.config).broker.ca_file
    if ca_file is not None:
        ca_path = ca_file if ca_file.is_absolute() else paths.config.parent / ca_file
        try:
            files[f"{PI_CONFIG_DIR}/ca.crt"] = (ca_path.read_bytes(), 0o644)
        except OSError as exc:
            raise ProvisionError(f"{paths.config}: broker.ca_file {ca_path}: {exc.strerror}; the gateways need "
                                 "this CA certificate (loaxa tls init)") from None
    cfg = gateway_yaml(state, trusted_keys(paths), ca=ca_file is not None)
    header = (f"# Gateway of {state.name} ({state.id}); written by `loaxa commune add` on the server.\n"
              "# Install with `loaxa gateway install`; change devices on the server (`loaxa device add`).\n")
    files[f"{PI_CONFIG_DIR}/gateway.yaml"] = (
        (header + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)).encode(), 0o640)
    files[f"{PI_MOSQUITTO_DIR}/conf.d/loaxa-lan.conf"] = (lan_conf(state).encode(), 0o644)
    files[f"{PI_MOSQUITTO_DIR}/loaxa-lan.acl"] = (lan_acl(state.id).encode(), 0o644)

    with tempfile.TemporaryDirectory(prefix="loaxa-bundle-") as tmpd:
        tmp = Path(tmpd)
        passwd = tmp / "loaxa-lan.passwd"
        set_broker_password(passwd, LAN_GATEWAY_USER, lan_pw)
        for dev, pw in creds.items():
            set_broker_password(passwd, dev, pw)
        files[f"{PI_MOSQUITTO_DIR}/loaxa-lan.passwd"] = (passwd.read_bytes(), 0o600)
        # every file written must pass `loaxa config check`: check the gateway.yaml where it will be
        for rel, (data, mode) in files.items():
            out = tmp / "root" / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
            out.chmod(mode)
        try:
            load_gateway_config(tmp / "root" / PI_CONFIG_DIR / "gateway.yaml")
        except ConfigError as exc:
            raise ProvisionError("the generated gateway.yaml is not valid:\n"
                                 + "\n".join(str(p) for p in exc.problems)) from None

    manifest = {
        "format": BUNDLE_FORMAT,
        "gateway": state.id,
        "commune": state.name,
        "created_at": int(time.time()),
        "files": {rel: {"sha256": _sha256(data), "size": len(data), "mode": oct(mode)}
                  for rel, (data, mode) in sorted(files.items())},
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _add(tar, BUNDLE_MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False).encode(), 0o644)
        for rel, (data, mode) in sorted(files.items()):
            _add(tar, rel, data, mode)
    out_path = paths.bundle_path(state.id)
    write_atomic(out_path, buf.getvalue(), 0o600)
    return out_path


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


# ------------------------------------------------------------------ the commands


@contextlib.contextmanager
def _locked(paths: ServerPaths) -> Iterator[None]:
    """One provisioning command at a time: two running at once would each rewrite the broker's files
    and the scheduler config from what they read before the other wrote."""
    paths.communes.mkdir(parents=True, exist_ok=True)
    with open(paths.communes / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ProvisionError(f"another `loaxa commune`/`loaxa device` command is running "
                                 f"({paths.communes / '.lock'}); wait for it") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class Result:
    bundle: Path | None = None
    notes: list[str] = field(default_factory=list)


def default_uplink_url(paths: ServerPaths) -> str:
    from scheduler.config import load_scheduler_config

    return load_scheduler_config(paths.config).broker.url


def _ensure_devices(state: CommuneState, new: Iterable[DeviceEntry]) -> None:
    have = {d.id for d in state.devices}
    for d in new:
        if d.id == LAN_GATEWAY_USER:
            raise ProvisionError(f"{d.id!r} is the gateway's own account on the LAN broker, not a device id")
        if d.id not in have:
            state.devices.append(d)
            have.add(d.id)


def _add_commune(
    paths: ServerPaths,
    gw: str,
    name: str,
    *,
    devices: Iterable[DeviceEntry] = (),
    uplink_url: str | None = None,
    lan_address: str | None = None,
    lan_port: int | None = None,
    local_port: int | None = None,
    media_public_url: str | None = None,
    api: str | None = None,
    token: str | None = None,
) -> Result:
    """Provision (or re-provision) commune gateway ``gw``. Safe to re-run: it never replaces a secret."""
    validate_id(gw, "gateway id")
    if gw in (SCHEDULER_USER, VIEWER_USER):
        raise ProvisionError(f"{gw!r} is the name of a server account; choose another gateway id")
    if not paths.config.exists():
        raise ProvisionError(f"{paths.config}: no scheduler config (give --config)")
    state = load_state(paths, gw)
    if state is None:
        state = CommuneState(id=gw, name=name, uplink_url=uplink_url or default_uplink_url(paths),
                             created_at=int(time.time()))
    state.name = name
    for attr, value in (("uplink_url", uplink_url), ("lan_address", lan_address), ("lan_port", lan_port),
                        ("local_port", local_port), ("media_public_url", media_public_url)):
        if value is not None:
            setattr(state, attr, value)
    _ensure_devices(state, devices)
    state = CommuneState.model_validate(state.model_dump())
    save_state(paths, state)
    result = Result()
    result.bundle = build_bundle(paths, state)

    # the central broker: account and ACL block
    uplink_pw = ensure_secret(paths.commune_dir(gw) / "secrets" / "uplink.password")
    set_broker_password(paths.broker_passwd, gw, uplink_pw)
    update_central_acl(paths, add=[gw])
    result.notes.append(reload_broker(paths))

    # the scheduler: a gateways: entry, and at once through the API when it runs
    text = paths.config.read_text(encoding="utf-8")
    new = config_with_gateway(text, gw, name)
    if new != text:
        checked_edit(paths.config, text, new, gw, present=True)
        result.notes.append(f"{paths.config}: gateway {gw} added under 'gateways:'")
    if api and token:
        register_via_api(api, token, gw, name)
        result.notes.append(f"registered at the running scheduler ({api})")
    else:
        result.notes.append("the scheduler serves it after its next restart (or give --api/--token-file "
                            "to register it at once)")
    return result


def _rebuild_bundles(paths: ServerPaths, ids: Iterable[str] = ()) -> list[Path]:
    """Rebuild the bundles of these communes (all when none is named) from their state: after a change
    of the trusted keys or the CA. Nothing on the server's brokers changes."""
    states = list_communes(paths)
    wanted = list(ids)
    if wanted:
        by_id = {st.id: st for st in states}
        missing = [gw for gw in wanted if gw not in by_id]
        if missing:
            raise ProvisionError(f"no commune {missing[0]!r} under {paths.communes}")
        states = [by_id[gw] for gw in wanted]
    return [build_bundle(paths, st) for st in states]


def _add_device(paths: ServerPaths, gw: str, dev: str, kind: DeviceKind, measurement: str | None = None) -> Result:
    state = load_state(paths, gw)
    if state is None:
        raise ProvisionError(f"no commune {gw!r} under {paths.communes} (loaxa commune add first)")
    validate_id(dev, "device id")
    if any(d.id == dev and d.type != kind for d in state.devices):
        raise ProvisionError(f"device {dev!r} of {gw} exists already with another type")
    _ensure_devices(state, [DeviceEntry(id=dev, type=kind,
                                        measurement=measurement if kind == "mqtt_sensor" else None)])
    save_state(paths, state)
    return Result(bundle=build_bundle(paths, state),
                  notes=["copy the new bundle to the Pi and run `loaxa gateway install` there again"])


def _remove_commune(paths: ServerPaths, gw: str) -> Result:
    """Undo :func:`add_commune`: the broker account and ACL block go first (access is revoked), then
    the config entry and the provisioned state."""
    validate_id(gw, "gateway id")
    result = Result()
    removed = delete_broker_account(paths.broker_passwd, gw)
    changed = update_central_acl(paths, remove=[gw])
    if removed or changed:
        result.notes.append(reload_broker(paths))
    if paths.config.exists():
        text = paths.config.read_text(encoding="utf-8")
        new = config_without_gateway(text, gw)
        if new != text or gw in _gateway_ids(text):
            checked_edit(paths.config, text, new, gw, present=False)
            result.notes.append(f"{paths.config}: gateway {gw} removed from 'gateways:' (its history stays "
                                "in the database)")
    cdir = paths.commune_dir(gw)
    if cdir.exists():
        shutil.rmtree(cdir)
        result.notes.append(f"{cdir} deleted")
    if not (removed or changed or result.notes):
        result.notes.append(f"nothing to remove: {gw} was not provisioned")
    return result


def add_commune(paths: ServerPaths, gw: str, name: str, **kw: Any) -> Result:
    """Provision (or re-provision) commune gateway ``gw`` (see :func:`_add_commune` for the options)."""
    with _locked(paths):
        return _add_commune(paths, gw, name, **kw)


def add_device(paths: ServerPaths, gw: str, dev: str, kind: DeviceKind, measurement: str | None = None) -> Result:
    with _locked(paths):
        return _add_device(paths, gw, dev, kind, measurement)


def remove_commune(paths: ServerPaths, gw: str) -> Result:
    with _locked(paths):
        return _remove_commune(paths, gw)


def rebuild_bundles(paths: ServerPaths, ids: Iterable[str] = ()) -> list[Path]:
    with _locked(paths):
        return _rebuild_bundles(paths, ids)
