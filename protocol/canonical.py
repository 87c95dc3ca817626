"""Canonical JSON: the exact bytes that are signed.

Rules: object keys sorted by code point, no insignificant white space, UTF-8 (non-ASCII characters
written as themselves, not ``\\u`` escapes), NaN and Infinity refused. Signed bodies should carry only
integers, strings, booleans, null, arrays and objects: integers have one spelling in every language,
floats do not.
"""

from __future__ import annotations

import json
from typing import Any

from protocol.errors import PayloadError


def canonical_json(obj: Any) -> bytes:
    """Encode ``obj`` as canonical JSON bytes."""
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:  # NaN / Infinity
        raise PayloadError(f"cannot encode canonically: {exc}", reason="not_canonical") from exc
    return text.encode("utf-8")
