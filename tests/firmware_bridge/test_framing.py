"""Framing: CRC, COBS, frame encode/decode, the streaming decoder's resynchronisation; property tests."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge import cobs
from firmware_bridge.crc import crc16
from firmware_bridge.errors import CrcError, FrameError
from firmware_bridge.frame import (
    FLAG_EVENTS_PENDING,
    FLAG_RESPONSE,
    FLAG_RETRANSMISSION,
    MAX_ENCODED,
    MAX_PAYLOAD,
    Frame,
    StreamDecoder,
    decode_frame,
)

frames = st.builds(
    Frame,
    address=st.integers(0, 255),
    type=st.integers(0, 255),
    seq=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=MAX_PAYLOAD),
    flags=st.sampled_from([0, FLAG_RESPONSE, FLAG_RESPONSE | FLAG_EVENTS_PENDING, FLAG_RETRANSMISSION]),
)


def test_crc16_check_value() -> None:
    assert crc16(b"123456789") == 0x29B1
    assert crc16(b"") == 0xFFFF
    # incremental computation gives the same result
    assert crc16(b"6789", crc16(b"12345")) == 0x29B1


@pytest.mark.parametrize(("raw", "encoded"), [
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
    (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255))),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
])
def test_cobs_reference_vectors(raw: bytes, encoded: bytes) -> None:
    assert cobs.encode(raw) == encoded
    assert cobs.decode(encoded) == raw


@given(st.binary(max_size=2000))
def test_cobs_round_trip_and_no_zero(data: bytes) -> None:
    enc = cobs.encode(data)
    assert 0 not in enc
    assert len(enc) <= len(data) + len(data) // 254 + 1
    assert cobs.decode(enc) == data


@given(frames)
def test_frame_round_trip(frame: Frame) -> None:
    wire = frame.encode()
    assert wire.endswith(b"\x00") and 0 not in wire[:-1]
    assert len(wire) - 1 <= MAX_ENCODED
    assert decode_frame(wire) == frame


@given(st.binary(max_size=3000))
@settings(max_examples=500)
def test_decode_frame_raises_only_its_own_error(data: bytes) -> None:
    try:
        decode_frame(data)
    except FrameError:
        pass


@given(st.lists(st.binary(max_size=1500), max_size=20))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_stream_decoder_never_raises_and_stays_bounded(chunks: list[bytes]) -> None:
    dec = StreamDecoder()
    for c in chunks:
        for f in dec.feed(c):
            assert isinstance(f, Frame)
        assert len(dec._buf) <= MAX_ENCODED


small_frames = st.builds(Frame, address=st.integers(0, 255), type=st.integers(0, 255), seq=st.integers(0, 0xFFFF),
                         payload=st.binary(max_size=300), flags=st.sampled_from([0, FLAG_RESPONSE]))


@given(st.lists(st.tuples(small_frames, st.binary(max_size=64)), min_size=1, max_size=6),
       st.integers(1, 97))
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_stream_recovers_every_frame_between_garbage(items: list[tuple[Frame, bytes]], split: int) -> None:
    """Garbage (ended by a delimiter, as any line noise eventually is) never costs a good frame."""
    stream = b"".join(g + b"\x00" + f.encode() for f, g in items)
    dec = StreamDecoder()
    got: list[Frame] = []
    for i in range(0, len(stream), split):  # arbitrary read boundaries
        got += dec.feed(stream[i : i + split])
    assert got == [f for f, _ in items]


def test_bit_flip_is_caught_by_crc_and_counted() -> None:
    frame = Frame(3, 0x02, 77, b"hello world")
    wire = bytearray(frame.encode())
    raw = bytearray(cobs.decode(bytes(wire[:-1])))
    raw[9] ^= 0x10
    with pytest.raises(CrcError):
        decode_frame(cobs.encode(bytes(raw)))
    dec = StreamDecoder()
    assert dec.feed(cobs.encode(bytes(raw)) + b"\x00" + frame.encode()) == [frame]
    assert dec.stats.crc_errors == 1 and dec.stats.resyncs == 1 and dec.stats.frames == 1


def test_truncated_frame_then_good_frame() -> None:
    good = Frame(1, 0x01, 5, b"abc")
    cut = Frame(1, 0x02, 6, os.urandom(100)).encode()[:40]
    dec = StreamDecoder()
    # the truncated frame runs into the next one's bytes: that segment fails, the one after is fine
    got = dec.feed(cut + b"\x00" + good.encode())
    assert got == [good]
    assert dec.stats.resyncs == 1


def test_endless_garbage_without_delimiter_is_bounded_and_counted() -> None:
    dec = StreamDecoder()
    noise = bytes(b or 1 for b in os.urandom(5000))
    assert dec.feed(noise) == []
    assert dec.stats.oversize == 1 and len(dec._buf) == 0
    good = Frame(2, 0x02, 9, b"ok")
    assert dec.feed(b"\x00" + good.encode()) == [good]


@pytest.mark.parametrize("payload_len", [0, 1, 253, 254, 255, 256, 260, 508, 1024])
def test_wire_length_formula(payload_len: int) -> None:
    """Encoded size is at most raw + ceil(raw / 254) + 1 delimiter byte."""
    f = Frame(1, 0x21, 1, bytes([0x5A]) * payload_len)
    raw = len(f.raw())
    assert len(f.encode()) <= raw + (raw + 253) // 254 + 1
    with pytest.raises(ValueError):
        Frame(1, 0x21, 1, bytes(MAX_PAYLOAD + 1))
