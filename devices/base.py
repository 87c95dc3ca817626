"""The small interfaces every device driver implements, so the gateway treats them alike.

A sensor driver produces readings into a sink; a speaker driver plays, stops and sets. Drivers do
their blocking I/O (serial, GPIO, ffmpeg) off the event loop (``asyncio.to_thread`` or an executor).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from protocol.models import PlaybackState, Reading

#: Where a sensor driver hands its readings: ``await sink(device_id, measurement, readings)``.
#: The sink returns only once the readings are safely on disk (the gateway's spool).
ReadingSink = Callable[[str, str, Sequence[Reading]], Awaitable[None]]

#: How a speaker driver reports what really played:
#: ``await report(device_id, broadcast_id, state, at_ms, reason)``.
PlaybackReport = Callable[[str, str, PlaybackState, int, str | None], Awaitable[None]]


class SensorDriver(abc.ABC):
    """Polls or listens to one sensor (or one bus) and hands readings to the sink."""

    device_id: str

    @abc.abstractmethod
    async def run(self, sink: ReadingSink) -> None:
        """Produce readings until cancelled. Errors are counted, not raised, unless fatal."""

    def stats(self) -> Mapping[str, int | float | str | None]:
        """Per-driver counters for the gateway's health report (errors, timeouts, last_error...)."""
        return {}


@dataclass(frozen=True)
class PlayRequest:
    broadcast_id: str
    media_path: Path  # verified local copy in the gateway's media cache
    media_url: str  # where a networked speaker can fetch the same bytes
    sha256: str
    duration_ms: int
    start_at_ms: int  # wall clock, UTC epoch ms
    volume: int
    priority: int
    repeat: int = 1  # passes of the media back to back


class SpeakerDriver(abc.ABC):
    """One speaker (IP speaker, local amplifier, serial node). Plays one thing at a time."""

    device_id: str
    online: bool = False

    async def start(self, report: PlaybackReport) -> None:  # noqa: B027 - optional hook
        """Connect / prepare; keep ``report`` to tell what played."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device."""

    @abc.abstractmethod
    async def play(self, req: PlayRequest) -> None:
        """Start ``req`` at ``req.start_at_ms`` (or now if that is past) and report started/finished/failed."""

    @abc.abstractmethod
    async def stop(self, broadcast_id: str, state: PlaybackState = "preempted", reason: str | None = None) -> None:
        """Stop ``broadcast_id`` if it is playing and report ``state``."""

    @abc.abstractmethod
    async def set(self, *, volume: int | None = None, power: bool | None = None) -> None:
        """Change volume (0–100) and/or amplifier power."""
