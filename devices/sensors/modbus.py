"""Modbus RTU slaves on an RS-485 bus, read with pymodbus's asyncio serial client.

One :class:`ModbusBus` per serial port holds the client and a lock, so several sensors on one
bus take turns (RS-485 is half-duplex: one request at a time). Each sensor is a
:class:`ModbusRtuDriver` with its own counters. A timeout is counted and the bus stays open; a
broken port (USB adapter unplugged) is closed and reopened on the next poll.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from devices.sensors.common import PollingDriver, SensorError, SensorTimeout, make_reading
from devices.sensors.config import ModbusRegister, ModbusRtuConfig
from loaxa.clock import now_ms
from protocol.models import Reading

log = logging.getLogger(__name__)

# pymodbus logs every timeout as an error; the drivers count and report them (once per outage)
if logging.getLogger("pymodbus").level == logging.NOTSET:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

MAX_REGISTERS_PER_REQUEST = 125  # the Modbus limit for functions 3 and 4


@dataclass(frozen=True)
class Block:
    """One request: ``count`` registers from ``address`` with one function, feeding some fields."""

    function: str
    address: int
    count: int
    registers: tuple[ModbusRegister, ...] = field(default=())


def plan_blocks(registers: Sequence[ModbusRegister], max_gap: int = 0) -> list[Block]:
    """Group register entries into as few requests as allowed (same function, at most ``max_gap`` apart)."""
    blocks: list[Block] = []
    for function in ("holding", "input"):
        regs = sorted((r for r in registers if r.function == function), key=lambda r: r.address)
        cur: list[ModbusRegister] = []
        start = end = 0
        for r in regs:
            r_end = r.address + r.count
            if cur and r.address - end <= max_gap and max(end, r_end) - start <= MAX_REGISTERS_PER_REQUEST:
                cur.append(r)
                end = max(end, r_end)
                continue
            if cur:
                blocks.append(Block(function, start, end - start, tuple(cur)))
            cur, start, end = [r], r.address, r_end
        if cur:
            blocks.append(Block(function, start, end - start, tuple(cur)))
    return blocks


_STRUCT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}


def decode(reg: ModbusRegister, words: Sequence[int]) -> float:
    """The scaled value of ``reg`` from its raw 16-bit words (as received, in wire order)."""
    if len(words) != reg.count:
        raise SensorError(f"field {reg.field}: expected {reg.count} register(s), got {len(words)}")
    ordered = list(words) if reg.word_order == "big" else list(reversed(words))
    raw = struct.unpack(_STRUCT[reg.type], b"".join(w.to_bytes(2, "big") for w in ordered))[0]
    return float(raw) * reg.scale + reg.offset


class ModbusBus:
    """One serial port and its pymodbus client, shared by every slave on that RS-485 line."""

    def __init__(self, port: str, *, baudrate: int, parity: str, stopbits: int, bytesize: int,
                 timeout_s: float, retries: int) -> None:
        self.port = port
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits
        self.bytesize = bytesize
        self.timeout_s = timeout_s
        self.retries = retries
        self.lock = asyncio.Lock()
        self._client: Any = None
        self.users = 0
        self.opens = 0

    @classmethod
    def for_config(cls, cfg: ModbusRtuConfig) -> ModbusBus:
        return cls(cfg.port, baudrate=cfg.baudrate, parity=cfg.parity, stopbits=cfg.stopbits,
                   bytesize=cfg.bytesize, timeout_s=cfg.timeout_s, retries=cfg.retries)

    def widen(self, cfg: ModbusRtuConfig) -> None:
        """A further slave on this bus: the slowest one sets the timeout and retries."""
        if cfg.bus_settings() != (self.baudrate, self.parity, self.stopbits, self.bytesize):
            raise ValueError(f"device {cfg.id!r}: port {cfg.port} is already used with other serial settings")
        self.timeout_s = max(self.timeout_s, cfg.timeout_s)
        self.retries = max(self.retries, cfg.retries)

    async def _connected(self) -> Any:
        if self._client is not None and self._client.connected:
            return self._client
        from pymodbus.client import AsyncModbusSerialClient

        self.close()
        client = AsyncModbusSerialClient(
            self.port, baudrate=self.baudrate, parity=self.parity, stopbits=self.stopbits,
            bytesize=self.bytesize, timeout=self.timeout_s, retries=self.retries, reconnect_delay=0,
            name=f"modbus:{self.port}",
        )
        try:
            ok = await client.connect()
        except Exception as exc:  # pyserial/pymodbus raise various things for a bad device node
            client.close()
            raise SensorError(f"cannot open serial port {self.port}: {exc}") from exc
        if not ok:
            client.close()
            raise SensorError(f"cannot open serial port {self.port}")
        self._client = client
        self.opens += 1
        return client

    async def read(self, unit_id: int, function: str, address: int, count: int) -> list[int]:
        """Read registers; the caller holds :attr:`lock`. Raises SensorTimeout / SensorError."""
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        client = await self._connected()
        call = client.read_holding_registers if function == "holding" else client.read_input_registers
        try:
            resp = await call(address, count=count, device_id=unit_id)
        except ModbusIOException as exc:
            why = "no answer" if "No response" in str(exc) else f"bad answer ({exc})"
            raise SensorTimeout(f"unit {unit_id} on {self.port}: {why} within {self.timeout_s:g}s "
                                f"({function} registers {address}..{address + count - 1})") from exc
        except (ConnectionException, OSError) as exc:
            self.close()
            raise SensorError(f"serial port {self.port}: {exc}") from exc
        except ModbusException as exc:
            raise SensorError(f"unit {unit_id} on {self.port}: {exc}") from exc
        if resp.isError():
            code: int = int(getattr(resp, "exception_code", 0) or 0)
            raise SensorError(f"unit {unit_id} on {self.port}: exception code {code} for {function} registers "
                              f"{address}..{address + count - 1} ({_EXC_NAMES.get(code, 'error')})")
        regs = list(resp.registers)
        if len(regs) < count:
            raise SensorError(f"unit {unit_id} on {self.port}: asked {count} registers, got {len(regs)}")
        return regs[:count]

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # closing a dead port must not raise
                log.debug("closing %s failed", self.port, exc_info=True)
            self._client = None


_EXC_NAMES = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
              4: "slave device failure", 6: "slave busy", 11: "gateway target failed to respond"}


class ModbusRtuDriver(PollingDriver):
    """One Modbus slave: reads its register map every ``poll_interval_s`` into one reading."""

    def __init__(self, cfg: ModbusRtuConfig, bus: ModbusBus) -> None:
        super().__init__(cfg.id, cfg.measurement, cfg.poll_interval_s)
        self.cfg = cfg
        self.bus = bus
        self.blocks = plan_blocks(cfg.registers, cfg.max_gap)
        self.range_errors = 0

    async def poll(self) -> Sequence[Reading]:
        fields: dict[str, float] = {}
        async with self.bus.lock:
            ts = now_ms()
            for block in self.blocks:
                words = await self.bus.read(self.cfg.unit_id, block.function, block.address, block.count)
                for reg in block.registers:
                    at = reg.address - block.address
                    value = decode(reg, words[at:at + reg.count])
                    if not math.isfinite(value) or (reg.min is not None and value < reg.min) or (
                            reg.max is not None and value > reg.max):
                        self.range_errors += 1
                        log.warning("device %s: %s = %s is outside its valid range, dropped",
                                    self.device_id, reg.field, value)
                        continue
                    fields[reg.field] = value
        if not fields:
            raise SensorError("every value was outside its valid range (sensor fault?)")
        return [make_reading(fields, ts)]

    def stats(self) -> Mapping[str, int | float | str | None]:
        return {**super().stats(), "range_errors": self.range_errors}

    async def open(self) -> None:
        self.bus.users += 1

    async def close(self) -> None:
        self.bus.users -= 1
        if self.bus.users <= 0:
            self.bus.close()
