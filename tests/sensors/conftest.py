"""Fixtures for the sensor driver tests: a real pseudo-terminal pair (socat) and a reading sink."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from protocol.models import Reading


class PtyPair:
    """Two linked pseudo-terminals made by socat: what one end writes, the other reads."""

    def __init__(self, workdir: Path) -> None:
        socat = shutil.which("socat")
        if socat is None:
            pytest.fail("socat not found: install the Debian package 'socat'", pytrace=False)
        self.a = str(workdir / "tty-gateway")
        self.b = str(workdir / "tty-sensor")
        self.proc = subprocess.Popen(
            [socat, f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not (Path(self.a).exists() and Path(self.b).exists()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("socat did not create the pseudo-terminal pair", pytrace=False)
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[PtyPair]:
    pair = PtyPair(tmp_path)
    yield pair
    pair.stop()


class Collector:
    """A ReadingSink that keeps what it is given (the spool's place in these tests)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, list[Reading]]] = []

    async def __call__(self, device_id: str, measurement: str, readings: Sequence[Reading]) -> None:
        self.items.append((device_id, measurement, list(readings)))

    def readings(self, device_id: str) -> list[Reading]:
        return [r for d, _m, rs in self.items if d == device_id for r in rs]

    def measurements(self, device_id: str) -> set[str]:
        return {m for d, m, _rs in self.items if d == device_id}


@pytest.fixture
def collector() -> Collector:
    return Collector()


async def until(predicate: object, timeout: float = 15.0, what: str = "condition") -> object:  # noqa: ASYNC109
    """Await ``predicate()`` turning truthy, yielding to the event loop; fail the test on timeout."""
    import asyncio
    from collections.abc import Callable

    assert callable(predicate)
    fn: Callable[[], object] = predicate
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while loop.time() < deadline:
        last = fn()
        if last:
            return last
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")
