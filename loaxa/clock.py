"""Wall-clock helpers. Broadcasts start on the wall clock (the Pi is NTP-synced), so sleeps re-read it."""

from __future__ import annotations

import asyncio

from protocol.signing import now_ms

__all__ = ["now_ms", "sleep_until"]


async def sleep_until(wall_ms: int) -> None:
    """Sleep until the wall clock reads ``wall_ms``. Long waits are cut into 5 s pieces so a clock step
    (NTP correcting the Pi after boot) is followed; the last few ms use short sleeps so a start lands
    within about a millisecond of its time."""
    while True:
        left = wall_ms - now_ms()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 5000) / 1000 if left < 20 else min(left - 10, 5000) / 1000)
