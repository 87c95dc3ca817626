"""Size limits and safe JSON parsing for everything read off the wire."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from protocol.errors import PayloadError

#: No payload on any topic may exceed this; it is refused before any parsing.
MAX_PAYLOAD_BYTES = 256 * 1024

M = TypeVar("M", bound=BaseModel)


def _refuse_constant(name: str) -> Any:
    raise PayloadError(f"{name} is not allowed in a payload", reason="not_finite")


#: one decoder for every payload (``json.loads`` with an option builds a new one per call)
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def parse_json(raw: bytes | bytearray | str, *, limit: int = MAX_PAYLOAD_BYTES) -> Any:
    """Parse a payload as JSON after checking its size; NaN and Infinity are refused."""
    size = len(raw.encode("utf-8")) if isinstance(raw, str) else len(raw)
    if size > limit:
        raise PayloadError(f"payload of {size} bytes exceeds the limit of {limit} bytes", reason="too_large")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
        if text.startswith("\ufeff"):  # as json.loads
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _DECODER.decode(text)
    except UnicodeDecodeError as exc:
        raise PayloadError(f"payload is not UTF-8: {exc}", reason="not_utf8") from exc
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", reason="bad_json"
        ) from exc


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``field.path: message``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(payload)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def parse_payload(raw: bytes | bytearray | str, model: type[M], *, limit: int = MAX_PAYLOAD_BYTES) -> M:
    """Parse and validate a payload into ``model``, raising :class:`PayloadError` on any problem."""
    data = parse_json(raw, limit=limit)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise PayloadError(describe_validation_error(exc), reason="invalid") from exc
