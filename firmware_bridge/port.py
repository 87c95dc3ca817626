"""A serial port driven by the asyncio loop: pyserial opens and configures it (baud, raw mode,
exclusive lock); reads and writes then go through its file descriptor with ``loop.add_reader`` /
``add_writer``, so no thread blocks and nothing blocks the loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable

import serial

from firmware_bridge.errors import PortUnavailable

log = logging.getLogger(__name__)


class AsyncSerialPort:
    """One open serial port. ``on_data(bytes)`` is called on the loop for every read; ``on_lost(reason)``
    once when the port goes away (cable pulled, USB adapter gone, pty closed)."""

    def __init__(self, path: str, baud: int, on_data: Callable[[bytes], None],
                 on_lost: Callable[[str], None], *, exclusive: bool = True):
        self.path = path
        self.baud = baud
        self._on_data = on_data
        self._on_lost = on_lost
        self._exclusive = exclusive
        self._ser: serial.Serial | None = None
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._out = bytearray()
        self._writer_registered = False
        self.drained = asyncio.Event()
        self.drained.set()

    @property
    def is_open(self) -> bool:
        return self._ser is not None

    def open(self) -> None:
        """Open and configure the port (8N1, raw, no flow control). Raises :class:`PortUnavailable`."""
        self._loop = asyncio.get_running_loop()
        try:
            ser = serial.Serial(self.path, baudrate=self.baud, bytesize=8, parity="N", stopbits=1,
                                timeout=0, write_timeout=0, exclusive=self._exclusive)
        except (serial.SerialException, OSError, ValueError) as exc:
            hint = " (another program holds it: is the gateway running?)" if "lock" in str(exc).lower() else ""
            raise PortUnavailable(f"cannot open serial port {self.path}: {exc}{hint}") from None
        self._ser = ser
        self._fd = ser.fileno()
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._readable)
        log.info("opened %s at %d baud", self.path, self.baud)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(f"read failed: {exc.strerror or exc}")
            return
        if not data:
            self._lost("end of file (device closed)")
            return
        self._on_data(data)

    def write(self, data: bytes) -> None:
        """Queue ``data``; it is written as fast as the port takes it. Raises :class:`PortUnavailable`."""
        if self._ser is None:
            raise PortUnavailable(f"serial port {self.path} is not open")
        self._out += data
        self.drained.clear()
        self._flush()

    def _flush(self) -> None:
        while self._out:
            try:
                n = os.write(self._fd, self._out)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    n = 0
                else:
                    self._lost(f"write failed: {exc.strerror or exc}")
                    return
            if n == 0:
                if not self._writer_registered and self._loop is not None:
                    self._loop.add_writer(self._fd, self._flush)
                    self._writer_registered = True
                return
            del self._out[:n]
        if self._writer_registered and self._loop is not None:
            self._loop.remove_writer(self._fd)
            self._writer_registered = False
        self.drained.set()

    @property
    def pending_out(self) -> int:
        return len(self._out)

    def _lost(self, reason: str) -> None:
        if self._ser is None:
            return
        log.warning("serial port %s lost: %s", self.path, reason)
        self.close()
        self._on_lost(reason)

    def close(self) -> None:
        ser, self._ser = self._ser, None
        if ser is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            if self._writer_registered:
                self._loop.remove_writer(self._fd)
                self._writer_registered = False
        self._out.clear()
        self.drained.set()
        try:
            ser.close()
        except (OSError, serial.SerialException):
            pass
        self._fd = -1
