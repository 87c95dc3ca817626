"""Modbus RTU driver against pymodbus's own serial server on the far end of a real pseudo-terminal."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.sensors.config import ModbusRegister, ModbusRtuConfig
from devices.sensors.factory import build_sensor_drivers
from devices.sensors.modbus import ModbusBus, ModbusRtuDriver, decode, plan_blocks
from tests.sensors.conftest import Collector, PtyPair, until


def words(fmt: str, value: float, word_order: str = "big") -> list[int]:
    raw = struct.pack(fmt, value)
    ws = [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]
    return ws if word_order == "big" else list(reversed(ws))


class SensorSide:
    """The sensors' end of the bus: pymodbus's ModbusSerialServer with one SimDevice per slave.

    ``table[(unit, function_code, address)] = word`` sets what a slave answers (function 3 or 4).
    """

    def __init__(self, port: str, units: list[int]) -> None:
        self.port = port
        self.units = units
        self.table: dict[tuple[int, int, int], int] = {}
        self.requests = 0
        self.server: Any = None
        self.task: asyncio.Task[None] | None = None

    def _device(self, unit: int) -> Any:
        from pymodbus.simulator import SimData, SimDevice
        from pymodbus.simulator.simutils import DataType

        async def action(fc: int, start: int, _addr: int, _count: int, regs: list[int], _set: Any) -> None:
            self.requests += 1
            for i in range(len(regs)):
                regs[i] = self.table.get((unit, fc, start + i), 0)

        bits = [SimData(0, values=False, datatype=DataType.BITS)]
        regs = [SimData(0, count=100, values=0, datatype=DataType.REGISTERS)]
        return SimDevice(unit, simdata=(bits, list(bits), regs, list(regs)), action=action)

    def _silent_for_absent_units(self, sending: bool, data: bytes) -> bytes:
        # On a real RS-485 bus nobody answers an address that no slave has; pymodbus 3.16's
        # simulator answers "slave device failure" instead, so that answer is not put on the wire.
        if sending and data and data[0] not in self.units:
            return b""
        return data

    async def start(self) -> None:
        from pymodbus.server import ModbusSerialServer

        self.server = ModbusSerialServer([self._device(u) for u in self.units], port=self.port, baudrate=19200,
                                         trace_packet=self._silent_for_absent_units)
        self.task = asyncio.create_task(self.server.serve_forever())
        await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        self.server = self.task = None


@pytest.fixture
async def sensor_side(pty_pair: PtyPair) -> AsyncIterator[SensorSide]:
    side = SensorSide(pty_pair.b, units=[1, 2])
    await side.start()
    yield side
    await side.stop()


def level_sensor(port: str, **kw: Any) -> ModbusRtuConfig:
    cfg: dict[str, Any] = {
        "id": "mucnuoc-cau", "type": "modbus_rtu", "port": port, "baudrate": 19200, "unit_id": 1,
        "measurement": "water_level", "timeout_s": 0.3, "retries": 0, "poll_interval_s": 0.2,
        "registers": [
            {"field": "water_level_cm", "address": 0, "type": "uint16", "scale": 0.1, "max": 6000},
            {"field": "flow_m3s", "address": 10, "function": "input", "type": "float32", "word_order": "little"},
            {"field": "offset_mm", "address": 1, "type": "int32", "scale": 1, "offset": -5},
        ],
    }
    cfg.update(kw)
    return ModbusRtuConfig.model_validate(cfg)


def env_sensor(port: str) -> ModbusRtuConfig:
    return ModbusRtuConfig.model_validate({
        "id": "nhietdo-truong", "type": "modbus_rtu", "port": port, "baudrate": 19200, "unit_id": 2,
        "measurement": "environment", "timeout_s": 0.3, "retries": 0, "poll_interval_s": 0.2,
        "registers": [
            {"field": "temperature_c", "address": 0, "function": "input", "type": "int16", "scale": 0.1},
            {"field": "humidity_pct", "address": 1, "function": "input", "type": "uint16", "scale": 0.1},
        ],
    })


def fill(side: SensorSide, level_raw: int, flow: float, offset: int, temp_raw: int, hum_raw: int) -> None:
    side.table[(1, 3, 0)] = level_raw
    for i, w in enumerate(words(">f", flow, "little")):
        side.table[(1, 4, 10 + i)] = w
    for i, w in enumerate(words(">i", offset)):
        side.table[(1, 3, 1 + i)] = w
    side.table[(2, 4, 0)] = temp_raw & 0xFFFF
    side.table[(2, 4, 1)] = hum_raw


async def run_drivers(drivers: list[Any], sink: Collector) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(d.run(sink)) for d in drivers]


async def cancel(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_two_slaves_share_one_bus_values_scaled(pty_pair: PtyPair, sensor_side: SensorSide,
                                                      collector: Collector) -> None:
    fill(sensor_side, level_raw=1325, flow=12.75, offset=-70000, temp_raw=-52, hum_raw=873)
    drivers = build_sensor_drivers([level_sensor(pty_pair.a), env_sensor(pty_pair.a)], gateway_id="xa-test")
    assert len(drivers) == 2
    assert isinstance(drivers[0], ModbusRtuDriver) and isinstance(drivers[1], ModbusRtuDriver)
    assert drivers[0].bus is drivers[1].bus  # one client and one lock per port
    tasks = await run_drivers(drivers, collector)
    try:
        await until(lambda: len(collector.readings("mucnuoc-cau")) >= 3
                    and len(collector.readings("nhietdo-truong")) >= 3, what="readings from both slaves")
    finally:
        await cancel(tasks)
    lvl = collector.readings("mucnuoc-cau")[-1].fields
    assert lvl["water_level_cm"] == pytest.approx(1325 * 0.1)
    assert lvl["flow_m3s"] == pytest.approx(12.75)
    assert lvl["offset_mm"] == pytest.approx(-70000 - 5)
    env = collector.readings("nhietdo-truong")[-1].fields
    assert env == pytest.approx({"temperature_c": -5.2, "humidity_pct": 87.3})
    assert collector.measurements("mucnuoc-cau") == {"water_level"}
    assert collector.measurements("nhietdo-truong") == {"environment"}
    for d in drivers:
        s = d.stats()
        assert s["errors"] == 0 and s["reads"] >= 3 and s["online"] == 1
    assert drivers[0].bus.opens == 1  # the port stays open between polls
    # holding 0..2 is one request; input 10..11 another: two requests per poll, not three
    assert drivers[0].blocks == plan_blocks(level_sensor("x").registers)
    assert len(drivers[0].blocks) == 2


async def test_out_of_range_value_is_dropped_and_counted(pty_pair: PtyPair, sensor_side: SensorSide,
                                                         collector: Collector) -> None:
    fill(sensor_side, level_raw=0xFFFF, flow=1.5, offset=3, temp_raw=250, hum_raw=500)  # 6553.5 cm: a fault
    (drv,) = build_sensor_drivers([level_sensor(pty_pair.a)], gateway_id="xa-test")
    tasks = await run_drivers([drv], collector)
    try:
        await until(lambda: collector.readings("mucnuoc-cau"), what="a reading")
    finally:
        await cancel(tasks)
    fields = collector.readings("mucnuoc-cau")[0].fields
    assert "water_level_cm" not in fields and fields["flow_m3s"] == pytest.approx(1.5)
    assert drv.stats()["range_errors"] >= 1


async def test_server_stopped_counts_timeouts_then_recovers(pty_pair: PtyPair, sensor_side: SensorSide,
                                                            collector: Collector) -> None:
    fill(sensor_side, level_raw=500, flow=0.0, offset=0, temp_raw=300, hum_raw=600)
    drivers = build_sensor_drivers([level_sensor(pty_pair.a), env_sensor(pty_pair.a)], gateway_id="xa-test")
    tasks = await run_drivers(drivers, collector)
    try:
        await until(lambda: all(d.stats()["reads"] >= 1 for d in drivers), what="first reads")
        await sensor_side.stop()
        await until(lambda: all(d.stats()["timeouts"] >= 2 for d in drivers), what="timeouts counted")
        for d in drivers:
            s = d.stats()
            assert s["online"] == 0 and s["errors"] >= s["timeouts"]
            assert "no answer" in str(s["last_error"])
        assert not any(t.done() for t in tasks)  # nothing crashed
        before = len(collector.readings("mucnuoc-cau"))
        sensor_side.table[(1, 3, 0)] = 777
        await sensor_side.start()
        await until(lambda: len(collector.readings("mucnuoc-cau")) > before
                    and all(d.stats()["online"] == 1 for d in drivers), what="recovery after the server is back")
    finally:
        await cancel(tasks)
    assert collector.readings("mucnuoc-cau")[-1].fields["water_level_cm"] == pytest.approx(77.7)


async def test_exception_response_is_an_error_not_a_timeout(pty_pair: PtyPair, sensor_side: SensorSide,
                                                            collector: Collector) -> None:
    cfg = level_sensor(pty_pair.a, registers=[{"field": "x", "address": 500}])  # beyond the slave's map
    (drv,) = build_sensor_drivers([cfg], gateway_id="xa-test")
    tasks = await run_drivers([drv], collector)
    try:
        await until(lambda: drv.stats()["errors"] >= 2, what="errors counted")
    finally:
        await cancel(tasks)
    s = drv.stats()
    assert s["timeouts"] == 0 and "illegal data address" in str(s["last_error"])
    assert collector.readings("mucnuoc-cau") == []


async def test_missing_port_is_counted(tmp_path: Any, collector: Collector) -> None:
    cfg = level_sensor(str(tmp_path / "no-such-tty"))
    drv = ModbusRtuDriver(cfg, ModbusBus.for_config(cfg))
    readings = await drv.poll_once()
    assert readings == [] and drv.stats()["errors"] == 1 and "cannot open" in str(drv.stats()["last_error"])


def test_shared_port_with_other_settings_is_refused() -> None:
    a = level_sensor("/dev/ttyUSB0")
    b = env_sensor("/dev/ttyUSB0").model_copy(update={"baudrate": 9600})
    with pytest.raises(ValueError, match="ttyUSB0"):
        build_sensor_drivers([a, b], gateway_id="xa-test")


# ---------------------------------------------------------------- pure functions


@given(st.sampled_from(["int16", "uint16", "int32", "uint32", "float32"]), st.sampled_from(["big", "little"]),
       st.integers(-(2**31), 2**32 - 1), st.floats(-1e6, 1e6, allow_nan=False, width=32))
def test_decode_agrees_with_pymodbus(kind: str, order: str, i: int, f: float) -> None:
    from pymodbus.client import ModbusSerialClient as C

    dt = {"int16": C.DATATYPE.INT16, "uint16": C.DATATYPE.UINT16, "int32": C.DATATYPE.INT32,
          "uint32": C.DATATYPE.UINT32, "float32": C.DATATYPE.FLOAT32}[kind]
    lo, hi = {"int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1),
              "uint32": (0, 2**32 - 1), "float32": (0, 0)}[kind]
    value: float = f if kind == "float32" else min(max(i, lo), hi)
    regs = C.convert_to_registers(value, dt, word_order=order)  # type: ignore[arg-type]
    reg = ModbusRegister(field="v", address=0, type=kind, word_order=order, scale=2.0, offset=1.0)  # type: ignore[arg-type]
    expected = C.convert_from_registers(regs, dt, word_order=order)  # type: ignore[arg-type]
    assert decode(reg, regs) == pytest.approx(float(expected) * 2.0 + 1.0)  # type: ignore[arg-type]


def test_plan_blocks_merges_only_within_gap() -> None:
    regs = [ModbusRegister(field=f"f{a}", address=a, type=t) for a, t in  # type: ignore[arg-type]
            [(0, "uint16"), (1, "float32"), (5, "uint16"), (200, "int16")]]
    assert [(b.address, b.count) for b in plan_blocks(regs, 0)] == [(0, 3), (5, 1), (200, 1)]
    assert [(b.address, b.count) for b in plan_blocks(regs, 2)] == [(0, 6), (200, 1)]


async def test_absent_slave_does_not_stop_the_others(pty_pair: PtyPair, sensor_side: SensorSide,
                                                     collector: Collector) -> None:
    fill(sensor_side, level_raw=42, flow=0.5, offset=0, temp_raw=215, hum_raw=700)
    absent = env_sensor(pty_pair.a).model_copy(update={"id": "vang-mat", "unit_id": 7})
    drivers = build_sensor_drivers([level_sensor(pty_pair.a), absent, env_sensor(pty_pair.a)], gateway_id="xa-test")
    tasks = await run_drivers(drivers, collector)
    try:
        await until(lambda: drivers[1].stats()["timeouts"] >= 3 and len(collector.readings("mucnuoc-cau")) >= 3
                    and len(collector.readings("nhietdo-truong")) >= 3, what="others read while one is absent")
    finally:
        await cancel(tasks)
    assert drivers[0].stats()["errors"] == 0 and drivers[2].stats()["errors"] == 0
    assert drivers[1].stats()["reads"] == 0 and collector.readings("vang-mat") == []
    assert collector.readings("nhietdo-truong")[-1].fields["temperature_c"] == pytest.approx(21.5)


async def test_adapter_unplugged_and_replugged(tmp_path: Any, collector: Collector) -> None:
    """The pty pair itself goes away (as a USB adapter pulled out) and comes back under the same name."""
    pair = PtyPair(tmp_path)
    side = SensorSide(pair.b, units=[1, 2])
    fill(side, level_raw=100, flow=0.0, offset=0, temp_raw=0, hum_raw=0)
    await side.start()
    (drv,) = build_sensor_drivers([level_sensor(pair.a)], gateway_id="xa-test")
    assert isinstance(drv, ModbusRtuDriver)
    task = asyncio.create_task(drv.run(collector))
    try:
        await until(lambda: drv.stats()["reads"] >= 1, what="first read")
        await side.stop()
        await asyncio.to_thread(pair.stop)
        await until(lambda: drv.stats()["errors"] >= 2, what="errors while the adapter is gone")
        assert not task.done()
        pair = await asyncio.to_thread(PtyPair, tmp_path)
        side = SensorSide(pair.b, units=[1, 2])
        fill(side, level_raw=250, flow=0.0, offset=0, temp_raw=0, hum_raw=0)
        await side.start()
        await until(lambda: collector.readings("mucnuoc-cau")[-1].fields["water_level_cm"] == pytest.approx(25.0),
                    what="readings after the adapter is back")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await side.stop()
        pair.stop()
    assert drv.bus.opens >= 2 and drv.stats()["online"] == 1
