"""Ed25519 signing and verification of command envelopes.

The signature is Ed25519 over ``canonical_json(envelope without "sig")``, base64 (standard alphabet,
with padding). Keys travel as base64 of the 32 raw bytes; a private key may also be a PKCS#8 PEM file.
Replay protection (a command id seen before) needs storage and lives with the receiver; this module
checks signature, trusted key and time window.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ValidationError

from protocol.canonical import canonical_json, parse_signed_json
from protocol.errors import PayloadError, VerifyError
from protocol.limits import describe_validation_error
from protocol.models import COMMAND_BODIES, Envelope

#: Accepted difference between the sender's and the receiver's clocks.
DEFAULT_CLOCK_SKEW_MS = 120_000
#: Longest allowed lifetime of a command (``expires_at - issued_at``): a leaked or stored envelope
#: stays dangerous for at most this long.
MAX_LIFETIME_MS = 7 * 24 * 3600 * 1000
#: What a key id looks like (see :func:`key_id_for`).
KEY_ID_PATTERN = r"^ed25519-[0-9a-f]{16}$"

B = TypeVar("B", bound=BaseModel)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """A short, stable id for a public key: ``ed25519-`` and the first 16 hex digits of its SHA-256."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519-" + hashlib.sha256(raw).hexdigest()[:16]


def public_key_b64(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def private_key_b64(private_key: Ed25519PrivateKey) -> str:
    raw = private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode("ascii")


def _raw_key(text: str, what: str) -> bytes:
    """The 32 raw bytes of a key written as base64."""
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"{what} is not valid base64: {exc}") from exc
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 {what} is 32 bytes, this one is {len(raw)}")
    return raw


def load_public_key(text: str) -> Ed25519PublicKey:
    """A public key from base64 of its 32 raw bytes, or from a PEM ``PUBLIC KEY`` block."""
    text = text.strip()
    if not text.startswith("-----BEGIN"):
        return Ed25519PublicKey.from_public_bytes(_raw_key(text, "public key"))
    key = serialization.load_pem_public_key(text.encode("ascii"))
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("PEM key is not an Ed25519 public key")
    return key


def load_private_key(text: str) -> Ed25519PrivateKey:
    """A private key from base64 of its 32 raw bytes (the seed), or from a PKCS#8 PEM block."""
    text = text.strip()
    if not text.startswith("-----BEGIN"):
        return Ed25519PrivateKey.from_private_bytes(_raw_key(text, "private key"))
    key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("PEM key is not an Ed25519 private key")
    return key


@dataclass(frozen=True)
class Signer:
    """Signs envelopes with one private key. Its key id is derived from the key (:func:`key_id_for`):
    a free label is refused, so a gateway can tell which key an id names without trusting a name."""

    key_id: str
    private_key: Ed25519PrivateKey

    def __post_init__(self) -> None:
        derived = key_id_for(self.private_key.public_key())
        if self.key_id != derived:
            raise ValueError(f"key id {self.key_id!r} is not the id of this key: it must be {derived!r}")

    @classmethod
    def for_key(cls, private_key: Ed25519PrivateKey) -> Signer:
        return cls(key_id_for(private_key.public_key()), private_key)

    def envelope(
        self,
        kind: str,
        body: BaseModel | Mapping[str, Any],
        *,
        gw: str,
        ttl_ms: int = 24 * 3600 * 1000,
        issued_at: int | None = None,
        cmd_id: str | None = None,
    ) -> Envelope:
        """Build and sign a command envelope for gateway ``gw``; ``ttl_ms`` is capped at :data:`MAX_LIFETIME_MS`."""
        issued = now_ms() if issued_at is None else issued_at
        ttl_ms = min(ttl_ms, MAX_LIFETIME_MS)
        body_dict = (
            body.model_dump(mode="json", exclude_none=True) if isinstance(body, BaseModel) else dict(body)
        )
        env = Envelope(
            id=cmd_id or uuid.uuid4().hex,
            gw=gw,
            kind=kind,
            issued_at=issued,
            expires_at=issued + ttl_ms,
            key=self.key_id,
            body=body_dict,
        )
        return self.sign(env)

    def sign(self, env: Envelope) -> Envelope:
        sig = self.private_key.sign(canonical_json(env.signed_part()))
        return env.model_copy(update={"sig": base64.b64encode(sig).decode("ascii")})


class Verifier:
    """Checks envelopes against a set of trusted public keys (key id → key).

    Each trusted id must be the id derived from its key (:func:`key_id_for`).
    """

    def __init__(self, trusted: Mapping[str, Ed25519PublicKey], *, skew_ms: int = DEFAULT_CLOCK_SKEW_MS,
                 max_lifetime_ms: int = MAX_LIFETIME_MS):
        for kid, key in trusted.items():
            derived = key_id_for(key)
            if kid != derived:
                raise ValueError(f"trusted key id {kid!r} is not the id of its key: it must be {derived!r}")
        self._trusted = dict(trusted)
        self._skew_ms = skew_ms
        self._max_lifetime_ms = max_lifetime_ms

    @property
    def skew_ms(self) -> int:
        return self._skew_ms

    def parse(self, raw: bytes | str) -> Envelope:
        """Parse an envelope off the wire (size limit, strict JSON, schema with no conversion);
        raises :class:`PayloadError`. The envelope keeps the object as received, which is what
        :meth:`verify` checks the signature over."""
        data = parse_signed_json(raw)
        if not isinstance(data, dict):
            raise PayloadError("an envelope is a JSON object", reason="malformed")
        try:
            return Envelope.from_received(data)
        except ValidationError as exc:
            raise PayloadError(describe_validation_error(exc), reason="malformed") from exc

    def verify_signature(self, env: Envelope, *, gateway: str | None = None) -> None:
        """Key, signature, target gateway and lifetime: everything that does not depend on the clock.

        ``gateway``: the receiving gateway's id. An envelope naming another gateway is refused
        (``wrong_gateway``), and so is one naming none (``missing_gateway``)."""
        key = self._trusted.get(env.key)
        if key is None:
            raise VerifyError(f"key {env.key!r} is not trusted", reason="unknown_key")
        try:
            sig = base64.b64decode(env.sig, validate=True)
        except binascii.Error as exc:
            raise VerifyError("signature is not valid base64", reason="bad_signature") from exc
        try:
            signed = canonical_json(env.signed_part())
        except PayloadError as exc:
            raise VerifyError(f"envelope has no canonical form: {exc}", reason=exc.reason) from exc
        try:
            key.verify(sig, signed)
        except InvalidSignature as exc:
            raise VerifyError("signature does not verify", reason="bad_signature") from exc
        if gateway is not None:
            if env.gw is None:
                raise VerifyError(f"command {env.id} names no target gateway; this is {gateway}",
                                  reason="missing_gateway")
            if env.gw != gateway:
                raise VerifyError(f"command {env.id} is for gateway {env.gw}, not {gateway}", reason="wrong_gateway")
        if env.expires_at < env.issued_at:
            raise VerifyError("expires_at is before issued_at", reason="malformed")
        if env.expires_at - env.issued_at > self._max_lifetime_ms:
            raise VerifyError(f"lifetime of {(env.expires_at - env.issued_at) // 1000} s exceeds the maximum of "
                              f"{self._max_lifetime_ms // 1000} s", reason="lifetime_too_long")

    def check_time(self, env: Envelope, *, at_ms: int | None = None) -> None:
        """The time window on the receiver's clock: ``expired`` or ``future``."""
        now = now_ms() if at_ms is None else at_ms
        if env.expires_at <= now:
            raise VerifyError(f"command expired at {env.expires_at} (now {now})", reason="expired")
        if env.issued_at > now + self._skew_ms:
            raise VerifyError(f"command issued in the future ({env.issued_at}, now {now})", reason="future")

    def verify(self, env: Envelope, *, at_ms: int | None = None, gateway: str | None = None) -> None:
        """Raise :class:`VerifyError` (with ``reason``) unless the envelope may be acted on."""
        self.verify_signature(env, gateway=gateway)
        self.check_time(env, at_ms=at_ms)


def parse_body(env: Envelope) -> BaseModel:
    """Validate the body of a verified envelope against the model for its kind."""
    model = COMMAND_BODIES.get(env.kind)
    if model is None:
        raise PayloadError(f"unknown command kind {env.kind!r}", reason="unknown_kind")
    try:
        return model.model_validate(env.body, strict=True)
    except ValidationError as exc:
        raise PayloadError(f"body of {env.kind}: {describe_validation_error(exc)}", reason="malformed") from exc


def parse_body_as(env: Envelope, model: type[B]) -> B:
    body = parse_body(env)
    if not isinstance(body, model):
        raise PayloadError(f"{env.kind} is not a {model.__name__}", reason="unknown_kind")
    return body
