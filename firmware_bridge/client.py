"""Typed requests to one node on a bus: ``NodeClient(bus, address).status()`` and friends."""

from __future__ import annotations

from dataclasses import dataclass, field

from firmware_bridge.link import BusMaster
from firmware_bridge.messages import (
    Event,
    EventPoll,
    Events,
    FwBegin,
    FwBeginReply,
    FwChunk,
    Hello,
    MsgType,
    Offset,
    Sensors,
    SetRequest,
    Status,
)


@dataclass
class NodeClient:
    bus: BusMaster
    address: int
    _ack_id: int | None = field(default=None, init=False)
    _prev_ids: set[int] = field(default_factory=set, init=False)

    async def hello(self) -> Hello:
        return Hello.unpack((await self.bus.request(self.address, MsgType.HELLO)).payload)

    async def status(self) -> Status:
        return Status.unpack((await self.bus.request(self.address, MsgType.STATUS)).payload)

    async def set(self, *, volume: int | None = None, power: bool | None = None,
                  source: int | None = None) -> Status:
        """Change what is given; the node answers with its new STATUS."""
        req = SetRequest(volume, power, source)
        return Status.unpack((await self.bus.request(self.address, MsgType.SET, req.pack())).payload)

    async def read_sensors(self) -> dict[str, float]:
        return Sensors.unpack((await self.bus.request(self.address, MsgType.READ_SENSORS)).payload).fields

    async def poll_events(self) -> list[Event]:
        """New events since the last poll, each delivered once. The node keeps an event until a later
        poll names it in ``ack_id`` (it then drops it and every older one), so a lost answer loses
        nothing; an event seen in the previous answer is a replay and is not delivered again."""
        ack = EventPoll(self._ack_id or 0, self._ack_id is not None)
        events = Events.unpack((await self.bus.request(self.address, MsgType.EVENT_POLL, ack.pack())).payload)
        fresh = [ev for ev in events.events if ev.id not in self._prev_ids]
        if events.events:
            self._ack_id = events.events[-1].id
            self._prev_ids = {ev.id for ev in events.events}
        return fresh

    async def fw_begin(self, size: int, sha256: bytes, version: str) -> FwBeginReply:
        frame = await self.bus.request(self.address, MsgType.FW_BEGIN, FwBegin(size, sha256, version).pack())
        return FwBeginReply.unpack(frame.payload)

    async def fw_chunk(self, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset``; returns the next offset the node expects."""
        frame = await self.bus.request(self.address, MsgType.FW_CHUNK, FwChunk(offset, data).pack())
        return Offset.unpack(frame.payload).offset

    async def fw_end(self) -> None:
        await self.bus.request(self.address, MsgType.FW_END, timeout_s=2.0)

    async def fw_commit(self) -> None:
        await self.bus.request(self.address, MsgType.FW_COMMIT)

    async def fw_confirm(self) -> None:
        await self.bus.request(self.address, MsgType.FW_CONFIRM)

    async def fw_rollback(self) -> None:
        await self.bus.request(self.address, MsgType.FW_ROLLBACK)
