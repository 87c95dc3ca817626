"""GPIO drivers with gpiozero's MockFactory; pins are driven from another thread, as real edges are."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devices.sensors.config import GpioInputsConfig, GpioRainGaugeConfig, check_device_set
from devices.sensors.factory import build_sensor_drivers
from devices.sensors.gpio import DigitalInputsDriver, RainGaugeDriver
from tests.sensors.conftest import Collector, until


@pytest.fixture
def mock_pins() -> Iterator[Any]:
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    old = Device.pin_factory
    Device.pin_factory = factory = MockFactory()
    yield factory
    factory.reset()
    Device.pin_factory = old


def gauge(**kw: Any) -> GpioRainGaugeConfig:
    return GpioRainGaugeConfig.model_validate({"id": "mua-ubnd", "type": "gpio_rain_gauge", "pin": 5,
                                               "mm_per_tip": 0.2, "report_interval_s": 1, "bounce_time_s": 0,
                                               **kw})


async def tip(pin: Any, times: int) -> None:
    def pulses() -> None:  # a bucket tip closes the reed switch to ground for a moment
        for _ in range(times):
            pin.drive_low()
            pin.drive_high()

    await asyncio.to_thread(pulses)


async def test_rain_gauge_counts_tips_and_keeps_total(mock_pins: Any, tmp_path: Path, collector: Collector) -> None:
    (drv,) = build_sensor_drivers([gauge()], gateway_id="xa-test", data_dir=tmp_path)
    assert isinstance(drv, RainGaugeDriver)
    task = asyncio.create_task(drv.run(collector))
    await until(lambda: drv.online, what="gauge open")
    pin = mock_pins.pin(5)
    await tip(pin, 7)
    await until(lambda: drv.stats()["tips_total"] == 7, what="7 tips seen on the loop")
    await until(lambda: sum(r.fields["tips"] for r in collector.readings("mua-ubnd")) == 7, what="tips reported")
    await until(lambda: len(collector.readings("mua-ubnd")) >= 2, what="a second interval")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    readings = collector.readings("mua-ubnd")
    assert collector.measurements("mua-ubnd") == {"rain"}
    assert sum(r.fields["rain_mm"] for r in readings) == pytest.approx(7 * 0.2)
    assert readings[-1].fields["rain_total_mm"] == pytest.approx(1.4)
    for r in readings:  # the rate is the interval's rain scaled to an hour
        assert r.fields["rain_rate_mm_h"] == pytest.approx(r.fields["rain_mm"] * 3600, rel=1e-3)
    assert pin.state is True  # released: pull-up holds it high

    # a restart (new driver, same data dir) continues the running total
    (again,) = build_sensor_drivers([gauge()], gateway_id="xa-test", data_dir=tmp_path)
    task = asyncio.create_task(again.run(collector))
    await until(lambda: again.online, what="gauge reopened")
    await tip(mock_pins.pin(5), 3)
    await until(lambda: collector.readings("mua-ubnd")[-1].fields["rain_total_mm"] >= 2.0 - 1e-9,
                what="total continued across the restart")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert collector.readings("mua-ubnd")[-1].fields["rain_total_mm"] == pytest.approx(2.0)


async def test_digital_inputs_report_each_change(mock_pins: Any, collector: Collector) -> None:
    cfg = GpioInputsConfig.model_validate({
        "id": "tu-dien", "type": "gpio_inputs", "report_interval_s": 3600, "measurement": "power",
        "inputs": [
            # door switch closes to ground while the door is shut; open door = pin pulled high
            {"field": "door_open", "pin": "GPIO17", "pull": "up", "active_when": "high", "bounce_time_s": 0},
            # mains-present relay drives the pin high through a divider while mains is on
            {"field": "mains_present", "pin": 27, "pull": "down", "bounce_time_s": 0},
        ]})
    (drv,) = build_sensor_drivers([cfg], gateway_id="xa-test")
    assert isinstance(drv, DigitalInputsDriver)
    door, mains = mock_pins.pin(17), mock_pins.pin(27)
    task = asyncio.create_task(drv.run(collector))
    try:
        await until(lambda: collector.readings("tu-dien"), what="first reading")
        # pull-up leaves the door pin high: "open" until the switch closes
        assert collector.readings("tu-dien")[0].fields == {"door_open": 1.0, "mains_present": 0.0}
        await asyncio.to_thread(door.drive_low)  # door shut
        await until(lambda: collector.readings("tu-dien")[-1].fields["door_open"] == 0.0, what="door shut")
        await asyncio.to_thread(mains.drive_high)  # mains back
        await until(lambda: collector.readings("tu-dien")[-1].fields == {"door_open": 0.0, "mains_present": 1.0},
                    what="mains present")
        await asyncio.to_thread(door.drive_high)  # someone opens the cabinet
        await until(lambda: collector.readings("tu-dien")[-1].fields["door_open"] == 1.0, what="door open")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert drv.stats()["changes"] == 3 and drv.stats()["errors"] == 0
    assert collector.measurements("tu-dien") == {"power"}


async def test_gpio_unavailable_is_counted_not_fatal(collector: Collector, monkeypatch: Any) -> None:
    import devices.sensors.gpio as gpio_mod

    def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("no GPIO here (not a Raspberry Pi?)")

    monkeypatch.setattr(gpio_mod, "_open_input", broken)
    monkeypatch.setattr(gpio_mod, "RETRY_OPEN_S", 0.05)
    drv = RainGaugeDriver(gauge())
    task = asyncio.create_task(drv.run(collector))
    await until(lambda: drv.stats()["errors"] >= 2, what="open failures counted")
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert "no GPIO" in str(drv.stats()["last_error"]) and drv.stats()["online"] == 0


def test_pin_used_twice_is_a_config_problem() -> None:
    a = gauge(pin="GPIO5")
    b = GpioInputsConfig.model_validate({"id": "tu", "type": "gpio_inputs",
                                         "inputs": [{"field": "door_open", "pin": 5}]})
    problems = check_device_set([a, b])
    assert len(problems) == 1 and "'tu'" in problems[0] and "'mua-ubnd'" in problems[0]
    with pytest.raises(ValueError, match="pin"):
        GpioInputsConfig.model_validate({"id": "tu", "type": "gpio_inputs", "inputs": [
            {"field": "a", "pin": 5}, {"field": "b", "pin": "BCM5"}]})
    with pytest.raises(ValueError, match="BCM number"):
        gauge(pin="GPIO99")


async def test_chattering_contact_does_not_flood(mock_pins: Any, collector: Collector) -> None:
    cfg = GpioInputsConfig.model_validate({"id": "tu", "type": "gpio_inputs", "report_interval_s": 3600,
                                           "inputs": [{"field": "door_open", "pin": 22, "bounce_time_s": 0}]})
    (drv,) = build_sensor_drivers([cfg], gateway_id="xa-test")
    task = asyncio.create_task(drv.run(collector))
    try:
        await until(lambda: collector.readings("tu"), what="first reading")
        pin = mock_pins.pin(22)

        def chatter() -> None:
            for _ in range(500):
                pin.drive_low()
                pin.drive_high()
            pin.drive_low()  # it settles closed: active (pull-up, active low) = 1

        await asyncio.to_thread(chatter)
        await until(lambda: drv.stats()["changes"] == 1001, what="every edge seen")
        await until(lambda: collector.readings("tu")[-1].fields["door_open"] == 1.0, what="settled state reported")
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(collector.readings("tu")) <= 10  # not one reading per edge
