"""The gateway's side of one serial bus: request/response with ACK/NAK, retransmission, duplicate
suppression and automatic reopening of the port.

The gateway is the only master. Every request carries a 16-bit sequence number; the node's answer
(the ACK, carrying the answer's data) or refusal (a NAK frame) echoes it. An answer that does not
match a request in flight — a late duplicate, a reordered frame, another node's frame — is counted
and dropped, never delivered. A request with no answer within its timeout is sent again, up to
``retries`` times, then fails with :class:`LinkTimeout`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from dataclasses import dataclass, field

from firmware_bridge.errors import LinkTimeout, MessageError, NakError, PortUnavailable
from firmware_bridge.frame import (
    ADDR_BROADCAST,
    FLAG_EVENTS_PENDING,
    FLAG_RETRANSMISSION,
    MAX_NODE_ADDR,
    Frame,
    StreamDecoder,
)
from firmware_bridge.messages import MsgType, Nak
from firmware_bridge.port import AsyncSerialPort

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 16


@dataclass
class LinkStats:
    requests: int = 0
    frames_tx: int = 0
    bytes_tx: int = 0
    retries: int = 0
    timeouts: int = 0
    failures: int = 0
    naks: int = 0
    duplicates: int = 0
    unexpected: int = 0
    port_opens: int = 0
    port_losses: int = 0
    max_in_flight: int = 0


@dataclass
class _Pending:
    address: int
    type: int
    future: asyncio.Future[Frame]
    wire_len: int


@dataclass
class BusMaster:
    """Master of one serial bus (one port, one or many node addresses)."""

    path: str
    baud: int = 115200
    timeout_s: float = 0.1  # node processing allowance on top of the time the bytes need on the line
    retries: int = 3
    reopen_interval_s: float = 0.5
    exclusive: bool = True
    #: "half": two-wire RS-485, one request on the bus at a time; "full": UART or four-wire, several
    #: requests to the same node may be in flight (the firmware update's window)
    duplex: str = "full"
    stats: LinkStats = field(default_factory=LinkStats)

    def __post_init__(self) -> None:
        self.decoder = StreamDecoder()
        self._pending: dict[int, _Pending] = {}
        self._seq = random.randrange(0x10000)  # a restarted gateway must not reuse the node's cached seq
        self._port: AsyncSerialPort | None = None
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self.events_pending: set[int] = set()
        self.last_error: str | None = None
        self._inflight_bytes = 0
        self._cond = asyncio.Condition()
        self._queue: deque[object] = deque()
        self._busy_addr: int | None = None
        self._busy_n = 0

    # ---------------------------------------------------------------- connection

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _open_once(self) -> None:
        port = AsyncSerialPort(self.path, self.baud, self._on_data, self._on_lost, exclusive=self.exclusive)
        port.open()
        self._port = port
        self.decoder.reset()
        self._lost.clear()
        self._connected.set()
        self.stats.port_opens += 1
        port.write(b"\x00")  # end whatever half frame the node may hold

    async def open(self) -> None:
        """Open the port now (raises :class:`PortUnavailable`); :meth:`run` keeps it open afterwards."""
        self._open_once()

    async def run(self) -> None:
        """Keep the port open until cancelled: reopen it whenever it is lost (cable pulled, adapter gone)."""
        try:
            while True:
                if not self.connected:
                    try:
                        self._open_once()
                        self.last_error = None
                    except PortUnavailable as exc:
                        if self.last_error != str(exc):
                            log.warning("%s", exc)
                        self.last_error = str(exc)
                        await asyncio.sleep(self.reopen_interval_s)
                        continue
                await self._lost.wait()
                await asyncio.sleep(self.reopen_interval_s)
        finally:
            self.close()

    def close(self) -> None:
        if self._port is not None:
            self._port.close()
            self._port = None
        self._connected.clear()  # requests in flight time out and fail by themselves

    def _on_lost(self, reason: str) -> None:
        self.stats.port_losses += 1
        self.last_error = f"{self.path}: {reason}"
        self._port = None
        self._connected.clear()
        self._lost.set()

    # ---------------------------------------------------------------- receive

    def _on_data(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            self._on_frame(frame)

    def _on_frame(self, frame: Frame) -> None:
        if not frame.is_response:
            self.stats.unexpected += 1  # nodes only answer; a request here is an echo or a stray master
            return
        pending = self._pending.get(frame.seq)
        if pending is None or pending.future.done():
            self.stats.duplicates += 1  # a late answer to a retransmitted request, or a replayed frame
            return
        if frame.address != pending.address or frame.type not in (pending.type, MsgType.NAK):
            self.stats.unexpected += 1
            return
        if frame.flags & FLAG_EVENTS_PENDING:
            self.events_pending.add(frame.address)
        else:
            self.events_pending.discard(frame.address)
        pending.future.set_result(frame)

    # ---------------------------------------------------------------- requests

    def _next_seq(self) -> int:
        for _ in range(0x10000):
            self._seq = (self._seq + 1) & 0xFFFF
            if self._seq not in self._pending:
                return self._seq
        raise RuntimeError("no free sequence number")  # 65,536 requests in flight: impossible by design

    def byte_time(self) -> float:
        return 10.0 / self.baud  # 8N1: start + 8 data + stop bits

    async def _wait_connected(self, within_s: float) -> None:
        if self.connected:
            return
        try:
            await asyncio.wait_for(self._connected.wait(), within_s)
        except TimeoutError:
            raise PortUnavailable(self.last_error or f"serial port {self.path} is not open") from None

    # ---------------------------------------------------------------- who may talk

    def _fits(self, address: int) -> bool:
        if self._busy_n == 0:
            return True
        return self.duplex == "full" and address == self._busy_addr and self._busy_n < MAX_IN_FLIGHT

    async def _acquire(self, address: int) -> None:
        """Wait for the bus, first come first served. Requests in flight at the same time all go to one
        node (its answers come one after the other, so nodes never talk over each other), and on a
        half-duplex bus only one request is in flight at all."""
        token = object()
        async with self._cond:
            self._queue.append(token)
            try:
                await self._cond.wait_for(lambda: self._queue[0] is token and self._fits(address))
            except BaseException:
                self._queue.remove(token)
                self._cond.notify_all()
                raise
            self._queue.popleft()
            self._busy_addr = address
            self._busy_n += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self._busy_n)
            self._cond.notify_all()

    async def _release(self) -> None:
        async with self._cond:
            self._busy_n -= 1
            if self._busy_n == 0:
                self._busy_addr = None
            self._cond.notify_all()

    async def request(self, address: int, mtype: int, payload: bytes = b"", *,
                      timeout_s: float | None = None, retries: int | None = None) -> Frame:
        """Send a request and return the node's positive answer. Raises :class:`NakError` when the node
        refuses, :class:`LinkTimeout` when it stays silent, :class:`PortUnavailable` without a port."""
        if not 1 <= address <= MAX_NODE_ADDR:
            raise ValueError(f"node address {address} out of 1..{MAX_NODE_ADDR}")
        await self._acquire(address)
        try:
            return await self._exchange(address, mtype, payload, timeout_s, retries)
        finally:
            await asyncio.shield(self._release())

    async def _exchange(self, address: int, mtype: int, payload: bytes, timeout_s: float | None,
                        retries: int | None) -> Frame:
        retries = self.retries if retries is None else retries
        base = self.timeout_s if timeout_s is None else timeout_s
        seq = self._next_seq()
        frame = Frame(address=address, type=mtype, seq=seq, payload=payload)
        wire = frame.encode()
        loop = asyncio.get_running_loop()
        pending = _Pending(address, mtype, loop.create_future(), len(wire))
        self._pending[seq] = pending
        self.stats.requests += 1
        self._inflight_bytes += len(wire)
        try:
            for attempt in range(retries + 1):
                # the line needs time for everything queued ahead of us, our frame and the answer
                line_time = (self._inflight_bytes + 64 + (self._port.pending_out if self._port else 0)) \
                    * self.byte_time()
                deadline = base + 2 * line_time
                try:
                    await self._wait_connected(deadline)
                except PortUnavailable:
                    self.stats.failures += 1
                    raise
                assert self._port is not None
                if attempt:
                    self.stats.retries += 1
                    retry = Frame(address=address, type=mtype, seq=seq, payload=payload,
                                  flags=FLAG_RETRANSMISSION)
                    data = b"\x00" + retry.encode()  # a leading delimiter ends any half frame
                else:
                    data = wire
                self._port.write(data)
                self.stats.frames_tx += 1
                self.stats.bytes_tx += len(data)
                try:
                    answer = await asyncio.wait_for(asyncio.shield(pending.future), deadline)
                except TimeoutError:
                    self.stats.timeouts += 1
                    continue
                if answer.type == MsgType.NAK:
                    self.stats.naks += 1
                    try:
                        nak = Nak.unpack(answer.payload)
                    except MessageError as exc:
                        raise NakError(0, 0, f"node {address} refused (unreadable NAK: {exc})") from None
                    raise NakError(nak.code, nak.detail, f"node {address} refused {type_name(mtype)}: "
                                   f"{nak.describe()}")
                return answer
            self.stats.failures += 1
            raise LinkTimeout(f"node {address} on {self.path} did not answer {type_name(mtype)} "
                              f"after {retries + 1} attempts")
        finally:
            self._inflight_bytes -= len(wire)
            self._pending.pop(seq, None)
            if not pending.future.done():
                pending.future.cancel()

    def broadcast(self, mtype: int, payload: bytes = b"") -> None:
        """Send to every node (address 255); nodes never answer a broadcast."""
        if self._port is None:
            raise PortUnavailable(f"serial port {self.path} is not open")
        self._port.write(Frame(ADDR_BROADCAST, mtype, self._next_seq(), payload).encode())

    def link_stats(self) -> dict[str, int]:
        d = dict(self.stats.__dict__)
        d.update({f"rx_{k}": v for k, v in self.decoder.stats.as_dict().items()})
        return d


def type_name(mtype: int) -> str:
    try:
        return MsgType(mtype).name
    except ValueError:
        return f"type 0x{mtype:02x}"
