"""Consistent Overhead Byte Stuffing: removes every 0x00 from a frame so 0x00 can delimit frames.

Overhead is one byte per 254 bytes of input (plus one), so a 272-byte frame grows by two bytes.
"""

from __future__ import annotations


class CobsError(ValueError):
    """The bytes between two delimiters are not a valid COBS encoding."""


def encode(data: bytes | bytearray | memoryview) -> bytes:
    """COBS-encode ``data``; the result contains no 0x00 byte (the delimiter is not added)."""
    src = bytes(data)
    out = bytearray()
    start = 0
    n = len(src)
    while True:
        # a block is at most 254 non-zero bytes, preceded by its length + 1
        end = start
        while end < n and end - start < 254 and src[end] != 0:
            end += 1
        out.append(end - start + 1)
        out += src[start:end]
        if end >= n:
            break
        if end - start == 254:  # full block: no implied zero after it
            start = end
            continue
        start = end + 1  # skip the zero this block implies
        if start == n:  # trailing zero: one more (empty) block encodes it
            out.append(1)
            break
    return bytes(out)


def decode(data: bytes | bytearray | memoryview) -> bytes:
    """Decode one COBS block sequence (without the 0x00 delimiter). Raises :class:`CobsError`."""
    src = bytes(data)
    out = bytearray()
    i = 0
    n = len(src)
    if n == 0:
        raise CobsError("empty COBS frame")
    while i < n:
        code = src[i]
        if code == 0:
            raise CobsError(f"0x00 inside a COBS frame at byte {i}")
        end = i + code
        if end > n:
            raise CobsError(f"COBS block at byte {i} claims {code - 1} bytes but only {n - i - 1} remain")
        block = src[i + 1 : end]
        if 0 in block:
            raise CobsError(f"0x00 inside a COBS frame near byte {i}")
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)
