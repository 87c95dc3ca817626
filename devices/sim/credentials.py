"""Per-device broker credentials for the simulators (``--credentials FILE``).

A commune LAN broker gives every speaker and sensor its own account, user name = device id
(configs/mosquitto/commune-lan.acl.example). The simulators read the passwords from a JSON file
``{"<device id>": "<password>", ...}`` (mode 0600, written by the demo and the tests) and connect each
simulated device with its own account, exactly as real devices do.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from loaxa.mqttconf import MqttEndpoint
from loaxa.yamlconf import Secret
from protocol.ids import is_valid_id

MAX_FILE_BYTES = 4 * 1024 * 1024


def load_credentials(path: Path, devices: Iterable[str]) -> dict[str, str]:
    """Read the file and check it names a password for every one of ``devices`` (ValueError names the
    file and what is wrong)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from exc
    if len(raw) > MAX_FILE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f'{path}: must be an object {{"<device id>": "<password>", ...}}')
    bad = [k for k in data if not is_valid_id(k)]
    if bad:
        raise ValueError(f"{path}: invalid device id(s) {', '.join(map(repr, bad[:5]))}")
    missing = [d for d in devices if d not in data]
    if missing:
        raise ValueError(f"{path}: no password for device(s) {', '.join(missing[:10])}")
    return dict(data)


def device_endpoint(endpoint: MqttEndpoint, device: str, credentials: Mapping[str, str] | None) -> MqttEndpoint:
    """``endpoint`` logged in as ``device`` with its own password (unchanged without credentials)."""
    if credentials is None:
        return endpoint
    return endpoint.model_copy(update={"username": device, "password": Secret(value=credentials[device])})
