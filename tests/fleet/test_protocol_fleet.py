"""The fleet's additions to the wire contract: docs/protocol.md's fleet vectors verified with PyNaCl
(not the library Loa Xã signs with), and the new models accept what the doc shows and refuse the rest."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import nacl.signing
import pytest
from pydantic import ValidationError

from protocol.models import (
    COMMAND_BODIES,
    DeviceCommand,
    DeviceReport,
    DeviceSetBody,
    GatewayRestartBody,
    Health,
    PingBody,
)
from protocol.vectors import SEED, fleet_vectors
from tests.test_protocol_vectors import _canonical_by_hand

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _doc_lines() -> list[str]:
    m = re.search(r"```fleet-vectors\n(.*?)\n```", DOC.read_text(encoding="utf-8"), re.S)
    assert m, "docs/protocol.md has no ```fleet-vectors block"
    return m.group(1).splitlines()


def test_doc_matches_the_code() -> None:
    assert _doc_lines() == fleet_vectors()


@pytest.mark.parametrize("line", _doc_lines())
def test_each_fleet_vector_verifies_and_its_body_fits_its_kind(line: str) -> None:
    env = json.loads(line)
    sig = base64.b64decode(env.pop("sig"))
    vk = nacl.signing.SigningKey(SEED).verify_key
    vk.verify(_canonical_by_hand(env).encode("utf-8"), sig)
    COMMAND_BODIES[env["kind"]].model_validate(env["body"])


def test_new_bodies_refuse_what_they_do_not_know() -> None:
    with pytest.raises(ValidationError):
        DeviceSetBody.model_validate({"targets": "*", "source": "Line In"})  # not [a-z0-9_-]
    with pytest.raises(ValidationError):
        PingBody.model_validate({"targets": ["loa-01"], "extra": 1})
    with pytest.raises(ValidationError):
        GatewayRestartBody.model_validate({"reason": "x" * 201})
    assert PingBody.model_validate({}).targets is None


def test_health_device_list_and_device_report() -> None:
    h = Health.model_validate({"ts": 1, "devices": [{"id": "loa-cho", "kind": "speaker", "type": "ip_speaker"}]})
    assert h.devices is not None and h.devices[0].kind == "speaker"
    with pytest.raises(ValidationError):
        Health.model_validate({"ts": 1, "devices": [{"id": "Loa Chợ"}]})
    with pytest.raises(ValidationError):
        Health.model_validate({"ts": 1, "devices": [{"id": f"d-{i}"} for i in range(2001)]})
    rep = DeviceReport.model_validate({"kind": "device_report", "command_id": "cmd-1", "device": "loa-cho",
                                       "ok": True, "rtt_ms": 38, "at": 2, "state": {"online": True, "volume": 60}})
    assert rep.state is not None and rep.state.volume == 60
    assert DeviceCommand.model_validate({"id": "d1", "op": "source", "ts": 1, "source": "fm"}).source == "fm"
