"""The reference device's wire: one or more :class:`RefNode` on a pseudo-terminal, paced to a baud
rate, with fault injection. ``PtyDevice`` runs it on its own thread and event loop so it behaves like
a separate board; ``loaxa sim serial-node --pty`` runs it in the foreground.

Pacing: bytes "arrive" at the node no faster than the line could carry them (10 bits per byte at
8N1), and the node's answers leave no faster either, so throughput measured through the pty is the
throughput a real UART at that baud rate would give.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

from firmware_bridge.frame import Frame, StreamDecoder
from firmware_bridge.refnode import RefNode

log = logging.getLogger(__name__)


@dataclass
class Faults:
    """Probabilities (0..1) per frame, and extra delays. Change them at any time."""

    rx_drop: float = 0.0  # a request is lost on the way to the node
    tx_drop: float = 0.0  # an answer is lost on the way back
    corrupt: float = 0.0  # one byte of an answer is flipped (the CRC must catch it)
    duplicate: float = 0.0  # an answer is sent twice
    reorder: float = 0.0  # an answer is held back and sent after the next one
    garbage: float = 0.0  # random bytes (line noise) before an answer
    delay: float = 0.0  # probability of an extra delay before answering
    delay_s: float = 0.0
    silent: bool = False  # the node hears nothing and says nothing (cable cut)


@dataclass
class SimBus:
    nodes: dict[int, RefNode]
    baud: int = 115200  # 0 = as fast as the pty goes
    faults: Faults = field(default_factory=Faults)
    seed: int | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.decoder = StreamDecoder()
        self.stats: dict[str, int] = {"rx_frames": 0, "tx_frames": 0, "dropped": 0, "corrupted": 0,
                                      "duplicated": 0, "reordered": 0, "garbage": 0}
        self._fd = -1
        self._tx: asyncio.Queue[bytes] | None = None
        self._rx: asyncio.Queue[tuple[float, bytes]] | None = None
        self._held: bytes | None = None
        self._rx_clock = 0.0
        self._tx_clock = 0.0

    def byte_time(self) -> float:
        return 10.0 / self.baud if self.baud else 0.0

    def attach(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        self.detach()
        self._fd = fd
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)
        self.decoder.reset()

    def detach(self) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
        self._fd = -1

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: nobody has the other end open right now
            data = b""
        if not data:
            # the gateway closed its end; wait a little instead of spinning on EIO
            loop = asyncio.get_running_loop()
            fd = self._fd
            loop.remove_reader(fd)
            loop.call_later(0.05, lambda: self._fd == fd and loop.add_reader(fd, self._readable))
            return
        assert self._rx is not None
        self._rx.put_nowait((time.monotonic(), data))

    async def run(self) -> None:
        self._rx = asyncio.Queue()
        self._tx = asyncio.Queue()
        tasks = [asyncio.create_task(self._rx_loop()), asyncio.create_task(self._tx_loop()),
                 asyncio.create_task(self._tick_loop())]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            self.detach()

    async def _sleep_until(self, t: float) -> None:
        delay = t - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _rx_loop(self) -> None:
        assert self._rx is not None
        bt = self.byte_time()
        while True:
            t_recv, data = await self._rx.get()
            if self.faults.silent:
                continue
            # split after each delimiter so each frame is handled when its last byte "arrives"
            start = 0
            while start < len(data):
                end = data.find(b"\x00", start)
                end = len(data) if end < 0 else end + 1
                piece = data[start:end]
                start = end
                self._rx_clock = max(self._rx_clock, t_recv) + len(piece) * bt
                await self._sleep_until(self._rx_clock)
                for frame in self.decoder.feed(piece):
                    self._on_frame(frame)

    def _on_frame(self, frame: Frame) -> None:
        self.stats["rx_frames"] += 1
        if self.rng.random() < self.faults.rx_drop:
            self.stats["dropped"] += 1
            return
        node = self.nodes.get(frame.address)
        targets = list(self.nodes.values()) if frame.address == 255 else [node] if node else []
        for n in targets:
            answer = n.handle(frame)
            if answer is not None:
                self._send(answer)

    def _send(self, answer: Frame) -> None:
        assert self._tx is not None
        f = self.faults
        wire = answer.encode()
        if self.rng.random() < f.tx_drop:
            self.stats["dropped"] += 1
            return
        if self.rng.random() < f.corrupt:
            i = self.rng.randrange(len(wire) - 1)
            b = bytearray(wire)
            b[i] = (b[i] ^ (1 << self.rng.randrange(8))) or 0x55  # never create a delimiter by accident
            wire = bytes(b)
            self.stats["corrupted"] += 1
        if self.rng.random() < f.garbage:
            noise = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 40)))
            self._tx.put_nowait(noise)
            self.stats["garbage"] += 1
        if self.rng.random() < f.delay and f.delay_s > 0:
            asyncio.get_running_loop().call_later(f.delay_s, self._tx.put_nowait, wire)
            return
        if self._held is None and self.rng.random() < f.reorder:
            self._held = wire
            self.stats["reordered"] += 1
            return
        self._tx.put_nowait(wire)
        if self.rng.random() < f.duplicate:
            self._tx.put_nowait(wire)
            self.stats["duplicated"] += 1
        if self._held is not None:
            self._tx.put_nowait(self._held)
            self._held = None

    async def _tx_loop(self) -> None:
        assert self._tx is not None
        bt = self.byte_time()
        while True:
            data = await self._tx.get()
            if self.faults.silent or self._fd < 0:
                continue
            self._tx_clock = max(self._tx_clock, time.monotonic()) + len(data) * bt
            await self._sleep_until(self._tx_clock)
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self._fd, view)
                except BlockingIOError:
                    await asyncio.sleep(0.002)
                    continue
                except OSError:
                    break  # nobody listening: the bytes are lost, as on a real line
                view = view[n:]
            self.stats["tx_frames"] += 1

    async def _tick_loop(self) -> None:
        while True:
            now = time.monotonic()
            for n in self.nodes.values():
                n.tick(now)
            await asyncio.sleep(0.02)


class PtyDevice:
    """Reference nodes on the master side of a new pseudo-terminal, on a background thread.

    ``path`` is the slave side to open with pyserial; with ``link`` a stable symlink points at it, and
    :meth:`unplug` / :meth:`replug` simulate pulling the cable and putting it back (a new pty, the
    symlink moved), as a USB serial adapter under /dev/serial/by-id behaves.
    """

    def __init__(self, nodes: list[RefNode], *, baud: int = 115200, link: str | Path | None = None,
                 faults: Faults | None = None, seed: int | None = None):
        self.bus = SimBus({n.address: n for n in nodes}, baud=baud, faults=faults or Faults(), seed=seed)
        self.link = Path(link) if link else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.master = -1
        self._slave = -1
        self.slave_path = ""
        self._new_pty()

    @property
    def nodes(self) -> dict[int, RefNode]:
        return self.bus.nodes

    @property
    def faults(self) -> Faults:
        return self.bus.faults

    @property
    def path(self) -> str:
        return str(self.link) if self.link else self.slave_path

    def _new_pty(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing even before the gateway opens it
        self.slave_path = os.ttyname(self._slave)
        if self.link:
            tmp = self.link.with_name(self.link.name + ".tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self.slave_path)
            tmp.replace(self.link)

    def _close_pty(self) -> None:
        for fd in (self.master, self._slave):
            if fd >= 0:
                os.close(fd)
        self.master = self._slave = -1

    def start(self) -> PtyDevice:
        self._thread = threading.Thread(target=self._main, name="ref-serial-node", daemon=True)
        self._thread.start()
        self._ready.wait(5)
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self.bus.attach(self.master)
            self._ready.set()
            await self.bus.run()

        self._task = loop.create_task(main())
        try:
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            loop.close()

    def call(self, fn: object, *args: object) -> object:
        """Run ``fn(*args)`` on the device's thread and return its result."""
        assert self._loop is not None
        done = threading.Event()
        box: list[object] = []

        def run() -> None:
            try:
                box.append(fn(*args))  # type: ignore[operator]
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(5)
        return box[0] if box else None

    def unplug(self) -> None:
        """Pull the cable: the pty goes away; the gateway's reads fail."""
        def do() -> None:
            self.bus.detach()
            self._close_pty()
            if self.link:
                self.link.unlink(missing_ok=True)
        self.call(do)

    def replug(self) -> None:
        """Put the cable back: a fresh pty behind the same ``link`` path."""
        def do() -> None:
            self._new_pty()
            self.bus.attach(self.master)
        self.call(do)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
            self._thread.join(5)
        self._close_pty()
        if self.link:
            self.link.unlink(missing_ok=True)

    def __enter__(self) -> PtyDevice:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
