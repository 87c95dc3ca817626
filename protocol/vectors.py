"""Test vectors for implementers: a fixed key, an envelope, its canonical bytes and signature, and
canonical forms of tricky values (Vietnamese text, characters outside the BMP, control characters,
key order by UTF-16 code units).

``python -m protocol.vectors`` prints them as JSON; docs/protocol.md carries the same values, and
tests check the document against independent Ed25519 (PyNaCl) and RFC 8785 (``rfc8785``) code.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.canonical import canonical_json
from protocol.models import (
    BroadcastPlanBody,
    Envelope,
    MediaRef,
    PlanItem,
    QuietHours,
    WarningRule,
    WarningRulesBody,
)
from protocol.signing import Signer, key_id_for, public_key_b64

#: The seed of the test key: bytes 0x00, 0x01, …, 0x1f. Never use it for anything real.
SEED = bytes(range(32))


def vector() -> dict[str, str]:
    key = Ed25519PrivateKey.from_private_bytes(SEED)
    signer = Signer(key_id_for(key.public_key()), key)
    body = BroadcastPlanBody(items=[PlanItem(
        broadcast_id="bc-2026-0001",
        media=MediaRef(sha256="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                       url="https://loaxa.example.gov.vn/media/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                       bytes=48213, duration_ms=30120),
        start_at=1795579200000, targets="*", volume=80, priority=9, repeat=1,
        title="Cảnh báo lũ",
    )])
    env = signer.sign(Envelope(id="cmd-0001", gw="xa-an-binh", kind="broadcast.plan", issued_at=1795575600000,
                               expires_at=1795662000000, key=signer.key_id,
                               body=body.model_dump(mode="json", exclude_none=True)))
    canon = canonical_json(env.signed_part())
    return {
        "private_key_seed_hex": SEED.hex(),
        "public_key_b64": public_key_b64(key.public_key()),
        "key_id": signer.key_id,
        "canonical_utf8": canon.decode("utf-8"),
        "canonical_sha256_hex": hashlib.sha256(canon).hexdigest(),
        "signature_b64": env.sig,
        "signature_hex": base64.b64decode(env.sig).hex(),
        "envelope_json": env.model_dump_json(),
    }


def warning_rules_vector() -> dict[str, str]:
    """A signed ``warning.rules`` command with the same test key (docs/protocol.md, "Kinds")."""
    key = Ed25519PrivateKey.from_private_bytes(SEED)
    signer = Signer(key_id_for(key.public_key()), key)
    sha = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
    body = WarningRulesBody(rules=[WarningRule(
        id="lu-song-cai", device="mucnuoc-cau-moi", field="water_level_cm", threshold_milli=180000, for_s=60,
        rise_per_10min_milli=30000, hysteresis_milli=10000,
        media=MediaRef(sha256=sha, url=f"https://loaxa.example.gov.vn/media/{sha}", bytes=96211, duration_ms=24000),
        targets="*", priority=9, volume=100, repeat_every_s=900, max_plays=4,
        quiet_hours=QuietHours(from_min=1320, to_min=360), title="Mực nước sông Cái báo động 2",
    )])
    env = signer.sign(Envelope(id="cmd-0002", gw="xa-an-binh", kind="warning.rules", issued_at=1795575600000,
                               expires_at=1795579200000, key=signer.key_id,
                               body=body.model_dump(mode="json", exclude_none=True)))
    canon = canonical_json(env.signed_part())
    return {"canonical_utf8": canon.decode("utf-8"), "canonical_sha256_hex": hashlib.sha256(canon).hexdigest(),
            "signature_b64": env.sig, "envelope_json": env.model_dump_json()}


#: Values whose canonical form an implementation is most likely to get wrong. Keys outside the BMP
#: never occur in a valid envelope (every key is ASCII), but the ordering rule is shown anyway:
#: "\U0001f514" (UTF-16 D83D DD14) sorts before "\uff61" (FF61), unlike by code point.
CANONICAL_CASES: list[Any] = [
    {"title": "Thông báo khẩn: nước sông Cái dâng cao, đề nghị bà con di dời", "volume": 80},
    {"title": "Loa 🔔 phát lúc 06:00", "emoji": "🇻🇳"},
    {"\uff61": 1, "\U0001f514": 2, "a": 3, "B": 4, "": 5},
    {"text": "tab\tnewline\nquote\"backslash\\bell\u0007del\u007fline-sep\u2028"},
    {"n": [0, -1, 9007199254740991, -9007199254740991], "b": [True, False, None], "o": {}, "l": []},
]


def canonical_cases() -> list[dict[str, str]]:
    return [{"input": json.dumps(case, ensure_ascii=True), "canonical": canonical_json(case).decode("utf-8")}
            for case in CANONICAL_CASES]


def fleet_vectors() -> list[str]:
    """One signed envelope (compact JSON, as it travels) for each kind of the fleet's remote actions,
    with the same test key; docs/protocol.md lists them in its ``fleet-vectors`` block."""
    from protocol.models import DeviceSetBody, GatewayRestartBody, HealthReportBody, PingBody

    key = Ed25519PrivateKey.from_private_bytes(SEED)
    signer = Signer(key_id_for(key.public_key()), key)
    bodies = [
        ("cmd-0101", "device.set", DeviceSetBody(targets=["loa-cho"], volume=60, source="line")),
        ("cmd-0102", "device.set", DeviceSetBody(targets="*", power=False)),
        ("cmd-0103", "ping", PingBody(targets=["loa-cho", "loa-dinh"])),
        ("cmd-0104", "ping", PingBody()),
        ("cmd-0105", "health.report", HealthReportBody()),
        ("cmd-0106", "gateway.restart", GatewayRestartBody(reason="cập nhật cấu hình")),
    ]
    extra: dict[str, str] = {"gw": "xa-an-binh"} if "gw" in Envelope.model_fields else {}
    out = []
    for cmd_id, kind, body in bodies:
        env = signer.sign(Envelope.model_validate({
            "id": cmd_id, "kind": kind, "issued_at": 1795575600000, "expires_at": 1795575660000,
            "key": signer.key_id, "body": body.model_dump(mode="json", exclude_none=True), **extra}))
        out.append(env.model_dump_json(exclude_none=True))
    return out


if __name__ == "__main__":
    import sys

    if "--fleet" in sys.argv:
        print("\n".join(fleet_vectors()))
    else:
        print(json.dumps({**vector(), "warning_rules": warning_rules_vector(), "canonical_cases": canonical_cases()},
                         ensure_ascii=False, indent=2))
