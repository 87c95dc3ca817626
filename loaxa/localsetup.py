"""Build configuration for a whole system on one machine (the demo, tests, benchmarks).

One place knows how a gateway config for local servers looks, so the demo and the tests agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.signing import Signer, key_id_for, private_key_b64, public_key_b64


def make_signer(seed: bytes | None = None) -> Signer:
    """A signer with a fresh key (or one from a 32-byte seed, for reproducible tests)."""
    key = Ed25519PrivateKey.from_private_bytes(seed) if seed else Ed25519PrivateKey.generate()
    return Signer(key_id_for(key.public_key()), key)


def gateway_config(
    gw_id: str,
    *,
    data_dir: Path,
    uplink_url: str,
    lan_url: str,
    signer: Signer,
    commune: str | None = None,
    devices: list[dict[str, Any]] | None = None,
    influx: dict[str, Any] | None = None,
    health_interval_s: float = 30.0,
    uplink_auth: tuple[str, str] | None = None,
    lan_auth: tuple[str, str] | None = None,
    media_port: int | None = None,
) -> dict[str, Any]:
    """A gateway config (as a dict ready for YAML) for servers on this machine. The gateway serves
    its verified media cache on ``media_port`` and tells its speakers to fetch from it, so a broadcast
    whose media the gateway holds plays with the whole centre gone (issue 15). The gateway refuses a
    config with IP speakers and no media server, so with IP speakers and no ``media_port`` a free
    port is taken."""
    cfg: dict[str, Any] = {
        "gateway": {"id": gw_id, "data_dir": str(data_dir)},
        "uplink": {"url": uplink_url, "keepalive_s": 10},
        "local_broker": {"url": lan_url, "keepalive_s": 10},
        "trust": {"keys": [{"id": signer.key_id, "public_key": public_key_b64(signer.private_key.public_key())}]},
        "health": {"interval_s": health_interval_s},
        "devices": devices or [],
    }
    if commune:
        cfg["gateway"]["commune"] = commune
    if uplink_auth:
        cfg["uplink"]["username"] = uplink_auth[0]
        cfg["uplink"]["password"] = {"value": uplink_auth[1]}
    if lan_auth:
        cfg["local_broker"]["username"] = lan_auth[0]
        cfg["local_broker"]["password"] = {"value": lan_auth[1]}
    if influx:
        cfg["influx"] = influx
    if media_port is None and any(d.get("type") == "ip_speaker" for d in devices or []):
        from loaxa.servers import free_port

        media_port = free_port()
    if media_port:
        cfg["broadcast"] = {"media_listen": f"127.0.0.1:{media_port}",
                            "media_public_url": f"http://127.0.0.1:{media_port}"}
    return cfg


def scheduler_config(*, data_dir: Path, broker_url: str, signer: Signer, key_file: Path, http_port: int,
                     influx: dict[str, Any] | None = None,
                     gateways: list[tuple[str, str | None]] | None = None) -> dict[str, Any]:
    """A scheduler config for servers on this machine; writes the signing key to ``key_file`` (0600)."""
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(private_key_b64(signer.private_key) + "\n")
    key_file.chmod(0o600)
    cfg: dict[str, Any] = {
        "scheduler": {"data_dir": str(data_dir)},
        "broker": {"url": broker_url},
        "signing": {"key_id": signer.key_id, "private_key": {"file": str(key_file)}},
        "http": {"host": "127.0.0.1", "port": http_port, "public_url": f"http://127.0.0.1:{http_port}"},
    }
    if influx:
        cfg["influx"] = influx
    if gateways:
        cfg["gateways"] = [{"id": gw, **({"commune": c} if c else {})} for gw, c in gateways]
    return cfg


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path
