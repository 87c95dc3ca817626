"""Error types of the wire contract. Each carries a short machine-readable ``reason``."""

from __future__ import annotations


class ProtocolError(ValueError):
    """Base class: something on the wire does not follow contract v1."""

    reason: str = "protocol"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class TopicError(ProtocolError):
    """A topic that is not one of ours, or whose ids are malformed."""

    reason = "bad_topic"


class PayloadError(ProtocolError):
    """A payload that is too large, not JSON, or does not match its model."""

    reason = "bad_payload"


class VerifyError(ProtocolError):
    """A command envelope that must not be acted on (signature, key, expiry, replay)."""

    reason = "bad_signature"
