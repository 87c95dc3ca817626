"""Canonical JSON: the exact bytes that are signed, and the strict reader of signed payloads.

The canonical form is the JSON Canonicalization Scheme (RFC 8785, "JCS") restricted to what a
signed envelope may carry, so that any JCS implementation produces the same bytes:

* values are objects, arrays, strings, ``true``, ``false``, ``null`` and **integers** in the safe
  range ``-(2**53 - 1)`` … ``2**53 - 1``. Floats are refused: JCS writes every number the way
  ECMAScript prints a double, and integers in the safe range are the only numbers every language
  writes identically (``7``, never ``7.0`` or ``7e0``);
* object keys are unique and sorted by their UTF-16 code units (RFC 8785 §3.2.3). For keys made of
  characters of the Basic Multilingual Plane this is the same as code-point order;
* no white space; ``,`` and ``:`` as separators;
* strings are written as UTF-8 with every character as itself, except ``"`` → ``\\"``,
  ``\\`` → ``\\\\``, the control characters U+0008, U+0009, U+000A, U+000C, U+000D as ``\\b \\t \\n \\f \\r``
  and the other control characters below U+0020 as ``\\u00xx`` (lower-case hex). Strings must be
  well-formed Unicode: a lone surrogate (``"\\ud800"``) is refused.

A signed payload is read with :func:`parse_signed_json`, which refuses, each with its own reason,
what the canonical form cannot represent: duplicate keys, floats, integers outside the safe range,
lone surrogates and nesting deeper than :data:`MAX_DEPTH`. The signature is then checked over
``canonical_json`` of the object exactly as received, before any model converts a single value.
"""

from __future__ import annotations

import json
from typing import Any

from protocol.errors import PayloadError
from protocol.limits import MAX_PAYLOAD_BYTES

#: Largest integer magnitude allowed in signed content (the I-JSON / ECMAScript "safe" range).
MAX_SAFE_INT = 2**53 - 1
#: Objects and arrays nest at most this deep in a signed payload (an envelope needs 5).
MAX_DEPTH = 32


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _string(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PayloadError(f"string {value[:40]!r} is not well-formed Unicode (lone surrogate)",
                           reason="bad_unicode") from exc
    return json.dumps(value, ensure_ascii=False)


def _write(obj: Any, out: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise PayloadError(f"nested deeper than {MAX_DEPTH} levels", reason="too_deep")
    if obj is None:
        out.append("null")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif isinstance(obj, int):
        if not -MAX_SAFE_INT <= obj <= MAX_SAFE_INT:
            raise PayloadError(f"integer {obj} is outside ±(2^53 - 1)", reason="int_out_of_range")
        out.append(str(int(obj)))
    elif isinstance(obj, float):
        raise PayloadError(f"number {obj!r} is not an integer: signed content carries integers only",
                           reason="float_not_allowed")
    elif isinstance(obj, str):
        out.append(_string(obj))
    elif isinstance(obj, dict):
        for key in obj:
            if not isinstance(key, str):
                raise PayloadError(f"object key {key!r} is not a string", reason="not_canonical")
        out.append("{")
        for i, key in enumerate(sorted(obj, key=_utf16_key)):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _write(obj[key], out, depth + 1)
        out.append("}")
    elif isinstance(obj, list | tuple):
        out.append("[")
        for i, item in enumerate(obj):
            if i:
                out.append(",")
            _write(item, out, depth + 1)
        out.append("]")
    else:
        raise PayloadError(f"cannot encode a {type(obj).__name__} canonically", reason="not_canonical")


def canonical_json(obj: Any) -> bytes:
    """Encode ``obj`` as canonical JSON bytes (see the module docstring); raises :class:`PayloadError`."""
    out: list[str] = []
    _write(obj, out, 1)
    return "".join(out).encode("utf-8")


# ---------------------------------------------------------------- strict reading


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise PayloadError(f"key {key[:64]!r} appears twice in one object", reason="duplicate_key")
        obj[key] = value
    return obj


def _float(text: str) -> Any:
    raise PayloadError(f"number {text[:40]} is not an integer: signed content carries integers only",
                       reason="float_not_allowed")


def _int(text: str) -> int:
    if len(text.lstrip("-")) > 16:  # 2**53 has 16 digits: refuse before converting a huge number
        raise PayloadError(f"integer {text[:40]} is outside ±(2^53 - 1)", reason="int_out_of_range")
    value = int(text)
    if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        raise PayloadError(f"integer {text} is outside ±(2^53 - 1)", reason="int_out_of_range")
    return value


def _constant(name: str) -> Any:
    raise PayloadError(f"{name} is not allowed in a payload", reason="not_finite")


def _check_tree(obj: Any, depth: int) -> None:
    """Depth and string checks the JSON reader's hooks do not cover (strings, and keys)."""
    if depth > MAX_DEPTH:
        raise PayloadError(f"nested deeper than {MAX_DEPTH} levels", reason="too_deep")
    if isinstance(obj, str):
        _string(obj)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _string(key)
            _check_tree(value, depth + 1)
    elif isinstance(obj, list):
        for item in obj:
            _check_tree(item, depth + 1)


def parse_signed_json(raw: bytes | bytearray | str, *, limit: int = MAX_PAYLOAD_BYTES) -> Any:
    """Parse a signed payload strictly: size, UTF-8, JSON, then everything :func:`canonical_json`
    could not represent exactly is refused with a named reason (see the module docstring)."""
    size = len(raw.encode("utf-8", "surrogatepass")) if isinstance(raw, str) else len(raw)
    if size > limit:
        raise PayloadError(f"payload of {size} bytes exceeds the limit of {limit} bytes", reason="too_large")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
    except UnicodeDecodeError as exc:
        raise PayloadError(f"payload is not UTF-8: {exc}", reason="not_utf8") from exc
    try:
        data = json.loads(text, object_pairs_hook=_pairs, parse_float=_float, parse_int=_int,
                          parse_constant=_constant)
    except RecursionError as exc:
        raise PayloadError(f"nested deeper than {MAX_DEPTH} levels", reason="too_deep") from exc
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", reason="bad_json"
        ) from exc
    _check_tree(data, 1)
    return data
