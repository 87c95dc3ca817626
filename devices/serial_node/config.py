"""Configuration of a ``serial_node`` device: one node (one bus address) on a serial port.

Several entries may share a port (an RS-485 bus): they must then agree on ``baud`` and have
different ``address`` values. Example::

    - id: loa-cau-moi
      type: serial_node
      port: /dev/serial/by-id/usb-FTDI_FT232R-if00-port0
      baud: 115200
      address: 3
      role: speaker
      poll_interval_s: 2
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import Field

from loaxa.yamlconf import StrictModel
from protocol.ids import DeviceId

MeasurementName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,63}$")]
BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)


class SerialNodeConfig(StrictModel):
    """A speaker or sensor microcontroller on a UART or RS-485 bus (docs/firmware-protocol.md)."""

    # same fields as devices.config_base.DeviceBase, written out so that the field order stays as documented
    id: DeviceId
    name: str | None = Field(default=None, max_length=200, description="human name, e.g. 'Loa cầu Mới'")
    type: Literal["serial_node"]
    port: str = Field(min_length=1, max_length=4096, description=(
        "serial port path; prefer a stable /dev/serial/by-id/... name over /dev/ttyUSB0"))
    baud: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600] = 115200
    address: int = Field(default=1, ge=1, le=247, description="bus address of the node (1..247)")
    role: Literal["speaker", "sensor", "combo"] = Field(default="speaker", description=(
        "speaker: amplifier control; sensor: READ_SENSORS readings; combo: both"))
    measurement: MeasurementName = Field(default="environment", description="InfluxDB measurement of its sensors")
    poll_interval_s: float = Field(default=2.0, ge=0.05, le=3600, description="how often to ask for STATUS")
    offline_after: int = Field(default=3, ge=1, le=100, description=(
        "unanswered polls in a row before the node counts as offline"))
    timeout_s: float = Field(default=0.1, gt=0, le=10, description="node answer allowance on top of line time")
    retries: int = Field(default=3, ge=0, le=20, description="retransmissions before a request fails")
    volume: int = Field(default=70, ge=0, le=100, description="volume for a broadcast that gives none")
    duplex: Literal["full", "half"] = Field(default="half", description=(
        "half: two-wire RS-485 (one request on the bus at a time); full: a UART to one node, or "
        "four-wire RS-422/485 (several requests to the same node in flight: faster firmware updates)"))
    window: int = Field(default=4, ge=1, le=16, description="firmware chunks in flight on a full-duplex link")


def bus_problems(nodes: Iterable[SerialNodeConfig]) -> list[str]:
    """Conflicts between nodes sharing a port: different baud rates, the same address twice."""
    problems: list[str] = []
    by_port: dict[str, list[SerialNodeConfig]] = {}
    for n in nodes:
        by_port.setdefault(n.port, []).append(n)
    for port, group in by_port.items():
        duplex = {n.duplex for n in group}
        if len(duplex) > 1:
            problems.append(f"serial port {port}: devices {', '.join(n.id for n in group)} disagree on duplex")
        bauds = {n.baud for n in group}
        if len(bauds) > 1:
            problems.append(f"serial port {port}: devices {', '.join(n.id for n in group)} disagree on baud "
                            f"({', '.join(str(b) for b in sorted(bauds))}); one bus has one baud rate")
        seen: dict[int, str] = {}
        for n in group:
            if n.address in seen:
                problems.append(f"serial port {port}: devices {seen[n.address]} and {n.id} both use "
                                f"address {n.address}")
            seen[n.address] = n.id
    return problems
