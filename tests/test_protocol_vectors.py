"""docs/protocol.md's test vectors, checked with PyNaCl (libsodium): not the library Loa Xã signs with."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import nacl.exceptions
import nacl.signing
import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def _block(name: str) -> str:
    m = re.search(rf"```{name}\n(.*?)\n```", DOC.read_text(encoding="utf-8"), re.S)
    assert m, f"docs/protocol.md has no ```{name} block"
    return m.group(1)


def _vectors() -> dict[str, str]:
    return dict(line.split(": ", 1) for line in _block("vectors").splitlines())


def _canonical_by_hand(obj: object) -> str:
    """Canonical JSON written independently of protocol.canonical (sorted keys, no spaces, raw UTF-8)."""
    if isinstance(obj, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_canonical_by_hand(obj[k])}"
                              for k in sorted(obj)) + "}"
    if isinstance(obj, list):
        return "[" + ",".join(_canonical_by_hand(x) for x in obj) + "]"
    return json.dumps(obj, ensure_ascii=False)


def test_public_key_derives_from_seed() -> None:
    v = _vectors()
    sk = nacl.signing.SigningKey(bytes.fromhex(v["private_key_seed_hex"]))
    assert base64.b64encode(bytes(sk.verify_key)).decode() == v["public_key_b64"]
    assert v["key_id"] == "ed25519-" + hashlib.sha256(bytes(sk.verify_key)).hexdigest()[:16]


def test_canonical_bytes_match_envelope() -> None:
    v = _vectors()
    env = json.loads(_block("envelope"))
    env.pop("sig")
    canon = _block("canonical")
    assert _canonical_by_hand(env) == canon
    assert hashlib.sha256(canon.encode("utf-8")).hexdigest() == v["canonical_sha256_hex"]


def test_signature_verifies_and_is_deterministic() -> None:
    v = _vectors()
    canon = _block("canonical").encode("utf-8")
    env = json.loads(_block("envelope"))
    sig = base64.b64decode(env["sig"])
    assert sig.hex() == v["signature_hex"] and env["sig"] == v["signature_b64"]
    vk = nacl.signing.VerifyKey(base64.b64decode(v["public_key_b64"]))
    vk.verify(canon, sig)
    sk = nacl.signing.SigningKey(bytes.fromhex(v["private_key_seed_hex"]))
    assert sk.sign(canon).signature == sig
    with pytest.raises(nacl.exceptions.BadSignatureError):
        vk.verify(canon.replace(b'"volume":80', b'"volume":81'), sig)


def test_doc_matches_the_code() -> None:
    from protocol.vectors import vector

    v = vector()
    assert _block("canonical") == v["canonical_utf8"]
    assert _block("envelope") == v["envelope_json"]
    assert {k: _vectors()[k] for k in _vectors()} == {k: v[k] for k in _vectors()}


def _jcs_cases() -> list[dict[str, str]]:
    return [json.loads(line) for line in _block("jcs").splitlines()]


def test_jcs_cases_match_rfc8785_and_the_code() -> None:
    """Every canonical form on the page is what an independent RFC 8785 implementation writes."""
    import rfc8785

    from protocol.canonical import canonical_json
    from protocol.vectors import canonical_cases

    assert _jcs_cases() == canonical_cases()
    for case in _jcs_cases():
        obj = json.loads(case["input"])
        assert rfc8785.dumps(obj).decode("utf-8") == case["canonical"]
        assert canonical_json(obj).decode("utf-8") == case["canonical"]


def test_signed_vector_is_jcs() -> None:
    import rfc8785

    env = json.loads(_block("envelope"))
    env.pop("sig")
    assert rfc8785.dumps(env).decode("utf-8") == _block("canonical")


def test_warning_rules_vector_verifies_and_matches_the_code() -> None:
    from protocol.vectors import warning_rules_vector

    v = _vectors()
    env = json.loads(_block("warning-rules-envelope"))
    sig = base64.b64decode(env.pop("sig"))
    canon = _canonical_by_hand(env).encode("utf-8")
    nacl.signing.VerifyKey(base64.b64decode(v["public_key_b64"])).verify(canon, sig)
    code = warning_rules_vector()
    assert _block("warning-rules-envelope") == code["envelope_json"]
    assert hashlib.sha256(canon).hexdigest() == code["canonical_sha256_hex"]
    assert code["canonical_sha256_hex"] in DOC.read_text(encoding="utf-8")
