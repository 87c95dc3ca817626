"""Loa Xã wire contract v1.

Everything that crosses MQTT between the centre, the gateways and the devices is defined here and only
here: topic names, payload models, size limits, canonical JSON and Ed25519-signed command envelopes.
Both ``gateway`` and ``scheduler`` import this package; neither imports the other.
"""

from protocol.canonical import canonical_json
from protocol.errors import PayloadError, TopicError, VerifyError
from protocol.ids import ID_PATTERN, is_valid_id, validate_id
from protocol.limits import MAX_PAYLOAD_BYTES, parse_json, parse_payload

__all__ = [
    "ID_PATTERN",
    "MAX_PAYLOAD_BYTES",
    "PayloadError",
    "TopicError",
    "VerifyError",
    "canonical_json",
    "is_valid_id",
    "parse_json",
    "parse_payload",
    "validate_id",
]
