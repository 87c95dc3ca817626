"""The canonical form against an independent RFC 8785 (JCS) implementation, and the strict reader of
signed payloads: every way a signed envelope could be read two ways is refused with its own reason."""

from __future__ import annotations

import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from loaxa.localsetup import make_signer
from protocol.canonical import MAX_SAFE_INT, canonical_json, parse_signed_json
from protocol.errors import PayloadError, VerifyError
from protocol.models import PingBody
from protocol.signing import MAX_LIFETIME_MS, Signer, Verifier, now_ms

# what a signed envelope may carry: integers in the safe range, any well-formed string, no floats
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_scalars = st.none() | st.booleans() | st.integers(-MAX_SAFE_INT, MAX_SAFE_INT) | _text
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_text, inner, max_size=5),
                       max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(_values)
def test_canonical_bytes_equal_rfc8785(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@settings(max_examples=200, deadline=None)
@given(_values)
def test_strict_reader_round_trips_what_it_allows(value: Any) -> None:
    assert parse_signed_json(canonical_json(value)) == value


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"id": "a", "id": "b"}', "duplicate_key"),
    (b'{"body": {"volume": 80, "volume": 10}}', "duplicate_key"),
    (b'{"issued_at": 1795575600000.0}', "float_not_allowed"),
    (b'{"volume": 8e1}', "float_not_allowed"),
    (b'{"n": 9007199254740992}', "int_out_of_range"),
    (b'{"n": -9007199254740992}', "int_out_of_range"),
    (b'{"n": ' + b"9" * 5000 + b"}", "int_out_of_range"),
    (b'{"title": "\\ud800"}', "bad_unicode"),
    (b'{"\\udfff": 1}', "bad_unicode"),
    (b"[" * 40 + b"]" * 40, "too_deep"),
    (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
    (b'{"a": NaN}', "not_finite"),
    (b'\xff{}', "not_utf8"),
    (b'{"a": 1', "bad_json"),
])
def test_strict_reader_refuses_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as exc:
        parse_signed_json(raw)
    assert exc.value.reason == reason


def test_canonical_json_refuses_floats_and_big_ints() -> None:
    for bad, reason in ((1.5, "float_not_allowed"), (2**53, "int_out_of_range"), ("\ud800", "bad_unicode")):
        with pytest.raises(PayloadError) as exc:
            canonical_json({"x": bad})
        assert exc.value.reason == reason


def _signed(signer: Signer, **kw: Any) -> dict[str, Any]:
    return json.loads(signer.envelope("ping", PingBody(), gw="xa-a", **kw).model_dump_json())


def _resign(signer: Signer, data: dict[str, Any]) -> bytes:
    """Sign ``data`` as it stands (canonical form of the object itself) and return the wire bytes."""
    import base64

    unsigned = {k: v for k, v in data.items() if k != "sig"}
    sig = base64.b64encode(signer.private_key.sign(canonical_json(unsigned))).decode()
    return json.dumps({**unsigned, "sig": sig}).encode()


@pytest.mark.parametrize("change", [{"issued_at": "STR"}, {"v": True}, {"expires_at": "STR"}])
def test_coerced_values_are_refused_even_when_signed_as_sent(change: dict[str, Any]) -> None:
    """On main, a string issued_at or "v": true verified (the signature covered the coerced model)."""
    signer = make_signer()
    verifier = Verifier({signer.key_id: signer.private_key.public_key()})
    data = _signed(signer)
    for key, value in change.items():
        data[key] = str(data[key]) if value == "STR" else value
    with pytest.raises(PayloadError) as exc:
        verifier.parse(_resign(signer, data))
    assert exc.value.reason == "malformed"


def test_signature_is_over_the_object_as_received() -> None:
    """Extra white space or key order on the wire does not matter; any value change does."""
    signer = make_signer()
    verifier = Verifier({signer.key_id: signer.private_key.public_key()})
    data = _signed(signer)
    spaced = json.dumps(dict(reversed(list(data.items()))), indent=3).encode()
    verifier.verify(verifier.parse(spaced), gateway="xa-a")
    data["body"] = {"extra": 1}
    env = verifier.parse(json.dumps(data).encode())
    with pytest.raises(VerifyError) as exc:
        verifier.verify(env, gateway="xa-a")
    assert exc.value.reason == "bad_signature"


def test_target_gateway_is_bound() -> None:
    signer = make_signer()
    verifier = Verifier({signer.key_id: signer.private_key.public_key()})
    env = verifier.parse(json.dumps(_signed(signer)).encode())
    verifier.verify(env, gateway="xa-a")
    with pytest.raises(VerifyError) as exc:
        verifier.verify(env, gateway="xa-b")
    assert exc.value.reason == "wrong_gateway"
    data = _signed(signer)
    del data["gw"]
    with pytest.raises(VerifyError) as exc:
        verifier.verify(verifier.parse(_resign(signer, data)), gateway="xa-a")
    assert exc.value.reason == "missing_gateway"


def test_lifetime_is_capped() -> None:
    signer = make_signer()
    verifier = Verifier({signer.key_id: signer.private_key.public_key()})
    t0 = now_ms()
    data = _signed(signer, issued_at=t0)
    assert data["expires_at"] - data["issued_at"] == 24 * 3600 * 1000
    data["expires_at"] = t0 + MAX_LIFETIME_MS + 1
    with pytest.raises(VerifyError) as exc:
        verifier.verify(verifier.parse(_resign(signer, data)), gateway="xa-a")
    assert exc.value.reason == "lifetime_too_long"
    capped = _signed(signer, issued_at=t0, ttl_ms=30 * 24 * 3600 * 1000)
    assert capped["expires_at"] - capped["issued_at"] == MAX_LIFETIME_MS


def test_key_ids_are_derived_from_keys() -> None:
    signer = make_signer()
    with pytest.raises(ValueError, match="not the id of this key"):
        Signer("centre-key-1", signer.private_key)
    with pytest.raises(ValueError, match="not the id of its key"):
        Verifier({"centre-key-1": signer.private_key.public_key()})
    other = make_signer()
    with pytest.raises(ValueError, match="not the id of its key"):
        Verifier({other.key_id: signer.private_key.public_key()})
