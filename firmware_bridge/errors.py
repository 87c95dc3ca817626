"""Errors of the serial bridge. Decoders raise only :class:`FrameError` (and its subclasses)."""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error this package raises on purpose."""


class FrameError(BridgeError):
    """Bytes on the wire that are not a valid frame (bad COBS, CRC, header or length)."""

    #: short machine-readable reason, also the name of the link statistic it is counted under
    kind = "frame_errors"


class CrcError(FrameError):
    kind = "crc_errors"


class CobsFrameError(FrameError):
    kind = "cobs_errors"


class HeaderError(FrameError):
    kind = "header_errors"


class MessageError(BridgeError):
    """A frame whose payload does not parse as the message its type says."""


class LinkError(BridgeError):
    """The request could not be completed on the link."""


class LinkTimeout(LinkError):
    """No answer after every retry: the node is silent (off, unplugged, wrong address or baud)."""


class PortUnavailable(LinkError):
    """The serial port is closed or cannot be opened right now."""


class NakError(LinkError):
    """The node refused the request and said why."""

    def __init__(self, code: int, detail: int, message: str):
        super().__init__(message)
        self.code = code
        self.detail = detail
