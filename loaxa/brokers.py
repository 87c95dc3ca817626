"""Brokers as production runs them: accounts, passwords and the ACLs of ``configs/mosquitto/``.

The ACL files an operator deploys are generated here from the examples in ``configs/mosquitto/``
(never written a second time by hand), so the demo, the tests and ``loaxa broker acl`` all run
exactly what docs/operations.md tells a technician to install:

* the central ACL (``acl.example``) keeps its ``scheduler`` block, repeats its read-only ``viewer``
  block for each read-only account and its gateway block (``xa-an-binh``) for each gateway id;
* a commune LAN ACL (``commune-lan.acl.example``) is the example with the commune's gateway id in
  place of ``xa-an-binh``.

:class:`CentralBroker` and :class:`LanBroker` start a real Mosquitto with those files, one password
per account, and client ids bound to user names where production binds them.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loaxa.servers import Mosquitto, MosquittoUser
from protocol.ids import validate_id

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "mosquitto"
CENTRAL_ACL_EXAMPLE = CONFIG_DIR / "acl.example"
LAN_ACL_EXAMPLE = CONFIG_DIR / "commune-lan.acl.example"
LAN_CONF_EXAMPLE = CONFIG_DIR / "commune-lan.conf.example"
#: the settings of ``commune-lan.conf.example`` a :class:`LanBroker` runs with, as production does
LAN_PERSISTENCE_KEYS = ("autosave_interval", "autosave_on_changes", "persistent_client_expiration",
                        "max_queued_messages")
#: the gateway id the examples are written for
EXAMPLE_GATEWAY = "xa-an-binh"
SCHEDULER_USER = "scheduler"
VIEWER_USER = "viewer"
#: a second read-only account (the demo's status follower), built from the viewer block
MONITOR_USER = "monitor"
#: the account of the gateway itself on its commune LAN broker
LAN_GATEWAY_USER = "gateway"


class AclExampleError(ValueError):
    """The ACL example does not have the shape this generator relies on."""


def _blocks(text: str) -> tuple[str, dict[str, str]]:
    """Split an ACL file into its preamble (comments, patterns) and its ``user`` blocks by name."""
    preamble: list[str] = []
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        m = re.match(r"^user\s+(\S+)\s*$", line)
        if m:
            current = blocks.setdefault(m.group(1), [])
        (preamble if current is None else current).append(line)
    return "\n".join(preamble), {name: "\n".join(lines).strip() + "\n" for name, lines in blocks.items()}


def _substitute(text: str, gw: str) -> str:
    return re.sub(rf"(?<![a-z0-9-]){re.escape(EXAMPLE_GATEWAY)}(?![a-z0-9-])", gw, text)


def central_acl(gateways: Iterable[str], readers: Iterable[str] = (VIEWER_USER,), *,
                example: str | None = None, workers: Iterable[str] = ()) -> str:
    """The central broker's ACL for these gateway ids and read-only accounts, from ``acl.example``.

    ``workers``: accounts of further scheduler workers (docs/scaling.md), each with the ``scheduler``
    block: one account per worker, since the broker binds client ids to user names."""
    readers = list(readers)
    workers = list(workers)
    text = example if example is not None else CENTRAL_ACL_EXAMPLE.read_text()
    preamble, blocks = _blocks(text)
    for needed in (SCHEDULER_USER, VIEWER_USER, EXAMPLE_GATEWAY):
        if needed not in blocks:
            raise AclExampleError(f"{CENTRAL_ACL_EXAMPLE}: no 'user {needed}' block to build from")
    if re.search(r"^\s*pattern\s", preamble, re.MULTILINE):
        raise AclExampleError(f"{CENTRAL_ACL_EXAMPLE}: 'pattern' lines apply to every account; use user blocks")
    out = [preamble.rstrip() + "\n", blocks[SCHEDULER_USER]]
    for worker in workers:
        validate_id(worker, "scheduler worker account name")
        if worker in (SCHEDULER_USER, VIEWER_USER) or worker in readers:
            raise ValueError(f"{worker!r} is already the name of another account")
        out.append(re.sub(r"^user\s+\S+", f"user {worker}", blocks[SCHEDULER_USER], count=1))
    for reader in readers:
        validate_id(reader, "read-only account name")
        if reader == SCHEDULER_USER:
            raise ValueError(f"{reader!r} cannot be a read-only account")
        out.append(re.sub(r"^user\s+\S+", f"user {reader}", blocks[VIEWER_USER], count=1))
    for gw in gateways:
        validate_id(gw, "gateway id")
        if gw in (SCHEDULER_USER, VIEWER_USER) or gw in readers or gw in workers:
            raise ValueError(f"gateway id {gw!r} is already the name of another account")
        out.append(_substitute(blocks[EXAMPLE_GATEWAY], gw))
    return "\n".join(out)


def lan_acl(gateway_id: str, *, example: str | None = None) -> str:
    """The commune LAN broker's ACL for this gateway, from ``commune-lan.acl.example``."""
    validate_id(gateway_id, "gateway id")
    text = example if example is not None else LAN_ACL_EXAMPLE.read_text()
    if EXAMPLE_GATEWAY not in text:
        raise AclExampleError(f"{LAN_ACL_EXAMPLE}: names no gateway {EXAMPLE_GATEWAY!r} to replace")
    return _substitute(text, gateway_id)


def lan_persistence(example: str | None = None) -> dict[str, str]:
    """The persistence settings of the commune LAN broker's production config."""
    text = example if example is not None else LAN_CONF_EXAMPLE.read_text()
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0] in LAN_PERSISTENCE_KEYS:
            out[parts[0]] = parts[1].strip()
    return out


def new_password() -> str:
    return secrets.token_urlsafe(12)


def endpoint(url: str, user: MosquittoUser) -> dict[str, Any]:
    """A config section (``uplink``, ``local_broker``, ``broker``) for this account."""
    return {"url": url, "username": user.username, "password": {"value": user.password}}


@dataclass
class CentralBroker(Mosquitto):
    """The central broker: the production ACL, an account per gateway (user name = gateway id),
    ``scheduler`` and read-only accounts; client ids bound to user names."""

    gateways: list[str] = field(default_factory=list)
    readers: list[str] = field(default_factory=lambda: [VIEWER_USER])
    #: accounts of further scheduler workers (``scheduler`` is the first)
    workers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bind_clientid = True
        names = [SCHEDULER_USER, *self.workers, *self.readers, *self.gateways]
        self.users = [MosquittoUser(n, new_password()) for n in names]
        self.acl_text = central_acl(self.gateways, self.readers, workers=self.workers)

    def _add(self, name: str) -> MosquittoUser:
        try:
            return self.user(name)
        except KeyError:
            pass
        account = MosquittoUser(name, new_password())
        self.users.append(account)
        self.acl_text = central_acl(self.gateways, self.readers, workers=self.workers)
        self.reload_accounts(probe=account)
        return account

    def add_gateway(self, gw: str) -> MosquittoUser:
        """An account for one more gateway (the broker reloads its password file and ACL)."""
        if gw not in self.gateways:
            self.gateways.append(validate_id(gw, "gateway id"))
        return self._add(gw)

    def add_reader(self, name: str) -> MosquittoUser:
        """One more read-only account (a monitor, a test's watcher): each live connection needs its
        own, since the client id is the user name."""
        if name not in self.readers:
            self.readers.append(name)
        return self._add(name)

    def endpoint(self, name: str) -> dict[str, Any]:
        return endpoint(self.url, self.user(name))

    def gateway_auth(self, gw: str) -> tuple[str, str]:
        """(user name, password) of gateway ``gw``'s uplink, making its account if needed."""
        account = self.add_gateway(gw)
        return account.username, account.password


@dataclass
class LanBroker(Mosquitto):
    """A commune LAN broker: the commune's ACL, the ``gateway`` account (on the loopback listener,
    its own client ids) and an account per device (on the device listener, client id = device id)."""

    gateway_id: str = EXAMPLE_GATEWAY
    devices: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.device_port = self.device_port or -1
        self.users = [MosquittoUser(LAN_GATEWAY_USER, new_password())]
        self.users += [MosquittoUser(validate_id(d, "device id"), new_password()) for d in self.devices]
        self.acl_text = lan_acl(self.gateway_id)
        self.conf_overrides = {**lan_persistence(), **self.conf_overrides}

    def add_device(self, dev: str) -> MosquittoUser:
        """An account for one more device (the broker reloads its password file)."""
        try:
            return self.user(dev)
        except KeyError:
            pass
        if dev == LAN_GATEWAY_USER:
            raise ValueError(f"{LAN_GATEWAY_USER!r} is the gateway's own account, not a device id")
        account = MosquittoUser(validate_id(dev, "device id"), new_password())
        self.devices.append(dev)
        self.users.append(account)
        self.reload_accounts(probe=account)
        return account

    def gateway_auth(self) -> tuple[str, str]:
        """(user name, password) of the gateway's own account on this broker."""
        account = self.user(LAN_GATEWAY_USER)
        return account.username, account.password

    def gateway_endpoint(self) -> dict[str, Any]:
        """The gateway's ``local_broker`` section."""
        return endpoint(self.url, self.user(LAN_GATEWAY_USER))

    def device_credentials(self, devices: Iterable[str] | None = None) -> dict[str, str]:
        """``{device id: password}`` (the simulators' ``--credentials`` file), adding missing accounts."""
        wanted = list(devices) if devices is not None else list(self.devices)
        return {d: self.add_device(d).password for d in wanted}

    def write_credentials(self, path: Path, devices: Iterable[str] | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.device_credentials(devices), indent=1))
        path.chmod(0o600)
        return path
