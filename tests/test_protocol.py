"""Unit tests of the wire contract: topics, limits, models, canonical JSON, signatures."""

from __future__ import annotations

import json

import pytest

from loaxa.localsetup import make_signer
from protocol import canonical_json, parse_json, parse_payload
from protocol.errors import PayloadError, TopicError, VerifyError
from protocol.models import Envelope, PingBody, Status, Telemetry
from protocol.signing import Verifier, key_id_for, load_private_key, load_public_key, parse_body, private_key_b64
from protocol.topics import device_topic, filter_devices, parse_topic, status_topic


@pytest.mark.parametrize("gw", ["xa-an-binh", "26701", "a", "a" * 64])
def test_valid_gateway_ids(gw: str) -> None:
    assert parse_topic(status_topic(gw)).gateway == gw


@pytest.mark.parametrize("gw", ["", "Xa", "xa_an", "a" * 65, "x/y", "+", "#", "xã"])
def test_invalid_ids_rejected(gw: str) -> None:
    with pytest.raises(TopicError):
        status_topic(gw)


def test_parse_topic_forms() -> None:
    t = parse_topic("loaxa/v1/g1/dev/loa-1/telemetry")
    assert (t.gateway, t.device, t.kind) == ("g1", "loa-1", "telemetry")
    assert parse_topic("loaxa/v1/g1/ack").kind == "ack"
    assert filter_devices("g1", "state") == "loaxa/v1/g1/dev/+/state"
    assert device_topic("g1", "s-2", "cmd") == "loaxa/v1/g1/dev/s-2/cmd"
    for bad in ["loaxa/v2/g1/ack", "loaxa/v1/g1/bogus", "loaxa/v1/g1/dev/X/state", "loaxa/v1/g1/dev/a/b/state",
                "other/v1/g1/ack", "loaxa/v1"]:
        with pytest.raises(TopicError):
            parse_topic(bad)


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": {"d": [1, "ũ"], "c": None}}) == '{"a":{"c":null,"d":[1,"ũ"]},"b":1}'.encode()
    with pytest.raises(PayloadError):
        canonical_json({"x": float("nan")})


def test_size_limit_checked_before_parsing() -> None:
    with pytest.raises(PayloadError) as exc:
        parse_json(b"[" * (256 * 1024 + 1))
    assert exc.value.reason == "too_large"


@pytest.mark.parametrize("raw,reason", [
    (b'{"ts": NaN, "fields": {}}', "not_finite"),
    (b'{"a": Infinity}', "not_finite"),
    (b"\xff\xfe", "not_utf8"),
    (b'{"a": 1', "bad_json"),
])
def test_bad_json(raw: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as exc:
        parse_json(raw)
    assert exc.value.reason == reason


def test_telemetry_single_and_batch() -> None:
    single = parse_payload(b'{"ts": 1795575600000, "fields": {"water_level_cm": 132.5}}', Telemetry)
    assert [r.fields for r in single.as_readings()] == [{"water_level_cm": 132.5}]
    batch = parse_payload(json.dumps({"readings": [{"ts": 1, "fields": {"a": 1}}, {"ts": 2, "fields": {"a": 2}}]}),
                          Telemetry)
    assert [r.ts for r in batch.as_readings()] == [1, 2]


@pytest.mark.parametrize("payload", [
    {"ts": 1, "fields": {"bad name": 1}},
    {"ts": 1, "fields": {"a": "12"}},
    {"ts": 1, "fields": {"a": True}},
    {"ts": 1, "fields": {}},
    {"ts": 1},
    {"fields": {"a": 1}},
    {"ts": 1, "fields": {"a": 1}, "readings": []},
    {"ts": -5, "fields": {"a": 1}},
    {"ts": 1, "fields": {"a": 1}, "extra": 1},
])
def test_telemetry_rejects(payload: dict[str, object]) -> None:
    with pytest.raises(PayloadError):
        parse_payload(json.dumps(payload), Telemetry)


def test_status_accepts_unknown_keys() -> None:
    s = parse_payload(b'{"state": "online", "ts": 5, "future_key": 1}', Status)
    assert s.state == "online"


def test_sign_verify_and_tamper() -> None:
    signer = make_signer()
    verifier = Verifier({signer.key_id: signer.private_key.public_key()})
    env = signer.envelope("ping", PingBody(), gw="xa-test")
    verifier.verify(verifier.parse(env.model_dump_json()))
    assert isinstance(parse_body(env), PingBody)
    tampered = Envelope.model_validate({**env.model_dump(), "kind": "device.set"})
    with pytest.raises(VerifyError) as exc:
        verifier.verify(tampered)
    assert exc.value.reason == "bad_signature"
    with pytest.raises(VerifyError) as exc:
        verifier.verify(env, at_ms=env.expires_at)
    assert exc.value.reason == "expired"
    with pytest.raises(VerifyError) as exc:
        verifier.verify(env, at_ms=env.issued_at - 10 * 60_000)
    assert exc.value.reason == "future"
    with pytest.raises(VerifyError) as exc:
        Verifier({}).verify(env)
    assert exc.value.reason == "unknown_key"


def test_key_round_trip() -> None:
    signer = make_signer(bytes(range(32)))
    again = load_private_key(private_key_b64(signer.private_key))
    assert key_id_for(again.public_key()) == signer.key_id == "ed25519-56475aa75463474c"
    with pytest.raises(ValueError):
        load_public_key("AAAA")
