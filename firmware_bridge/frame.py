"""One frame of the Loa Xã serial protocol, and a streaming decoder that resynchronises after garbage.

On the wire: ``COBS(header ‖ payload ‖ crc16_le) ‖ 0x00``. Header (8 bytes, little-endian)::

    0  version   u8   = 1
    1  address   u8   node address 1..247 (0 = the gateway; 255 = every node, no answer)
    2  type      u8   message type (firmware_bridge.messages.MsgType)
    3  flags     u8   bit0 RESPONSE, bit1 EVENTS_PENDING, bit2 RETRANSMISSION; others 0
    4  seq       u16  sequence number, echoed by the response
    6  length    u16  payload length, 0..MAX_PAYLOAD

The CRC is CRC-16/CCITT-FALSE over header and payload. See docs/firmware-protocol.md.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from firmware_bridge import cobs
from firmware_bridge.crc import crc16
from firmware_bridge.errors import CobsFrameError, CrcError, FrameError, HeaderError

VERSION = 1
HEADER = struct.Struct("<BBBBHH")
HEADER_LEN = HEADER.size  # 8
CRC_LEN = 2
MAX_PAYLOAD = 1024
MAX_RAW = HEADER_LEN + MAX_PAYLOAD + CRC_LEN  # 1034
MAX_ENCODED = MAX_RAW + (MAX_RAW + 253) // 254  # 1039, without the delimiter
DELIMITER = 0x00

ADDR_GATEWAY = 0
ADDR_BROADCAST = 255
MAX_NODE_ADDR = 247

FLAG_RESPONSE = 0x01
FLAG_EVENTS_PENDING = 0x02
FLAG_RETRANSMISSION = 0x04
KNOWN_FLAGS = FLAG_RESPONSE | FLAG_EVENTS_PENDING | FLAG_RETRANSMISSION


@dataclass(frozen=True)
class Frame:
    address: int
    type: int
    seq: int
    payload: bytes = b""
    flags: int = 0
    version: int = VERSION

    def __post_init__(self) -> None:
        if not 0 <= self.address <= 255:
            raise ValueError(f"address {self.address} out of 0..255")
        if not 0 <= self.type <= 255:
            raise ValueError(f"type {self.type} out of 0..255")
        if not 0 <= self.seq <= 0xFFFF:
            raise ValueError(f"seq {self.seq} out of 0..65535")
        if self.flags & ~KNOWN_FLAGS & 0xFF or not 0 <= self.flags <= 255:
            raise ValueError(f"flags 0x{self.flags:02x} has unknown bits")
        if len(self.payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(self.payload)} bytes exceeds {MAX_PAYLOAD}")

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_RESPONSE)

    def raw(self) -> bytes:
        """Header, payload and CRC, before COBS."""
        body = HEADER.pack(self.version, self.address, self.type, self.flags, self.seq, len(self.payload))
        body += self.payload
        return body + struct.pack("<H", crc16(body))

    def encode(self) -> bytes:
        """The bytes to put on the wire, delimiter included."""
        return cobs.encode(self.raw()) + b"\x00"


def encode_frame(frame: Frame) -> bytes:
    return frame.encode()


def parse_raw(raw: bytes) -> Frame:
    """Parse header + payload + CRC (already COBS-decoded). Raises a :class:`FrameError`."""
    if len(raw) < HEADER_LEN + CRC_LEN:
        raise HeaderError(f"frame of {len(raw)} bytes is shorter than header and CRC ({HEADER_LEN + CRC_LEN})")
    if len(raw) > MAX_RAW:
        raise HeaderError(f"frame of {len(raw)} bytes exceeds the maximum of {MAX_RAW}")
    body, (got,) = raw[:-CRC_LEN], struct.unpack("<H", raw[-CRC_LEN:])
    want = crc16(body)
    if got != want:
        raise CrcError(f"CRC mismatch: frame says 0x{got:04x}, bytes give 0x{want:04x}")
    version, address, mtype, flags, seq, length = HEADER.unpack_from(body)
    if version != VERSION:
        raise HeaderError(f"protocol version {version} is not supported (this side speaks {VERSION})")
    if flags & ~KNOWN_FLAGS:
        raise HeaderError(f"unknown flag bits 0x{flags & ~KNOWN_FLAGS:02x}")
    if length != len(body) - HEADER_LEN:
        raise HeaderError(f"length field says {length} payload bytes, frame holds {len(body) - HEADER_LEN}")
    return Frame(address=address, type=mtype, seq=seq, payload=bytes(body[HEADER_LEN:]), flags=flags)


def decode_frame(wire: bytes) -> Frame:
    """Decode one frame from its COBS bytes (with or without the trailing 0x00)."""
    data = bytes(wire)
    if data.endswith(b"\x00"):
        data = data[:-1]
    if len(data) > MAX_ENCODED:
        raise HeaderError(f"encoded frame of {len(data)} bytes exceeds the maximum of {MAX_ENCODED}")
    try:
        raw = cobs.decode(data)
    except cobs.CobsError as exc:
        raise CobsFrameError(str(exc)) from None
    return parse_raw(raw)


@dataclass
class DecoderStats:
    frames: int = 0
    bytes: int = 0
    crc_errors: int = 0
    cobs_errors: int = 0
    header_errors: int = 0
    oversize: int = 0
    resyncs: int = 0
    discarded_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class StreamDecoder:
    """Feed it bytes as they arrive; it returns whole frames and counts what it had to throw away.

    Resynchronisation: everything up to the next 0x00 after a bad frame is discarded; a run of bytes
    longer than the largest possible frame is discarded up to the next 0x00 as well. Nothing it is
    fed can make it raise or grow without bound.
    """

    on_error: Callable[[FrameError], None] | None = None
    stats: DecoderStats = field(default_factory=DecoderStats)
    _buf: bytearray = field(default_factory=bytearray)
    _skipping: bool = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        frames: list[Frame] = []
        chunk = bytes(data)
        self.stats.bytes += len(chunk)
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\x00", start)
            if end < 0:
                piece = chunk[start:]
                if self._skipping:
                    self.stats.discarded_bytes += len(piece)
                else:
                    self._buf += piece
                    if len(self._buf) > MAX_ENCODED:
                        self.stats.oversize += 1
                        self.stats.resyncs += 1
                        self.stats.discarded_bytes += len(self._buf)
                        self._buf.clear()
                        self._skipping = True
                break
            piece = chunk[start:end]
            start = end + 1
            if self._skipping:
                self.stats.discarded_bytes += len(piece)
                self._skipping = False
                continue
            self._buf += piece
            segment = bytes(self._buf)
            self._buf.clear()
            if not segment:
                continue  # idle delimiters are allowed (a sender may flush with 0x00)
            if len(segment) > MAX_ENCODED:
                self.stats.oversize += 1
                self.stats.resyncs += 1
                self.stats.discarded_bytes += len(segment) + 1
                continue
            try:
                frame = decode_frame(segment)
            except FrameError as exc:
                setattr(self.stats, exc.kind, getattr(self.stats, exc.kind) + 1)
                self.stats.resyncs += 1
                self.stats.discarded_bytes += len(segment) + 1
                if self.on_error is not None:
                    self.on_error(exc)
                continue
            self.stats.frames += 1
            frames.append(frame)
        return frames

    def reset(self) -> None:
        """Forget a partial frame (after the port was reopened)."""
        self._buf.clear()
        self._skipping = False
