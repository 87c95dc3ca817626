"""The speaker simulator's timing: speakers of one process due at the same instant wake together
(so the simulator does not measure its own queue), and simulated clock offsets are reproducible."""

from __future__ import annotations

import asyncio

from devices.sim.speakers import Alarms, clock_offsets
from loaxa.clock import now_ms


async def test_speakers_due_at_one_instant_take_their_timestamps_together() -> None:
    alarms = Alarms()
    due = now_ms() + 300
    stamps: list[int] = []

    async def speaker() -> None:
        await alarms.wait(due)
        stamps.append(now_ms())  # what a simulated speaker reports as its start, then it yields
        await asyncio.sleep(0)
        # the work each speaker does after starting (publishing its report) must not delay the others
        sum(range(20_000))

    await asyncio.gather(*(speaker() for _ in range(50)))
    assert len(stamps) == 50
    assert min(stamps) >= due
    assert max(stamps) - min(stamps) <= 2, stamps


async def test_different_instants_each_get_their_own_timer() -> None:
    alarms = Alarms()
    t0 = now_ms()
    woke: dict[int, int] = {}

    async def wait(at: int) -> None:
        await alarms.wait(at)
        woke[at] = now_ms()

    await asyncio.gather(wait(t0 + 100), wait(t0 + 250), wait(t0 + 100))
    assert woke[t0 + 100] >= t0 + 100 and woke[t0 + 250] >= t0 + 250
    assert woke[t0 + 100] < t0 + 250


def test_clock_offsets_are_reproducible_and_bounded() -> None:
    ids = [f"loa-{i:02d}" for i in range(1, 41)]
    a = clock_offsets(ids, 15)
    assert a == clock_offsets(ids, 15)
    assert all(-15 <= v <= 15 for v in a.values()) and len(set(a.values())) > 5
    assert set(clock_offsets(ids, 0).values()) == {0}
