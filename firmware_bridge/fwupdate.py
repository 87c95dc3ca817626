"""Firmware update of one node over the serial link: resumable transfer, verification, A/B commit,
health check, confirm or roll back.

1. HELLO: the node must have the FW_UPDATE capability and no image on trial (or be on trial with
   exactly this image, when a previous run died after COMMIT: then we go straight to step 5).
2. FW_BEGIN(size, sha256, version): the node answers the offset to resume from (0 for a new image;
   more when it already holds the first part of this very image, even across its own reboots).
3. FW_CHUNK(offset, data) with up to ``window`` chunks in flight (go-back-N: the node accepts only
   the next contiguous offset and answers the offset it expects next). Any silence — reboot, cable
   pulled, noise — sends us back to step 2 once the node answers again.
4. FW_END: the node hashes the slot; a SHA-256 mismatch is refused (NAK BAD_DIGEST) and nothing changes.
5. FW_COMMIT: the node reboots into the new image *on trial*. We wait for its HELLO, then poll STATUS:
   the right version and no fault flags ``health_checks`` times in a row → FW_CONFIRM. Anything else →
   FW_ROLLBACK. A node whose new image never answers rolls back by itself (boot counter / trial timer).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from firmware_bridge.client import NodeClient
from firmware_bridge.errors import BridgeError, LinkError, NakError
from firmware_bridge.messages import BootState, Cap, Hello, NakCode

log = logging.getLogger(__name__)

#: ``progress(done_bytes, total_bytes, phase)``
Progress = Callable[[int, int, str], None]


class FirmwareError(BridgeError):
    """The update cannot go on; the node still runs the image it ran before."""


@dataclass
class UpdateResult:
    outcome: str  # "confirmed" | "rolled_back" | "already_running"
    old_version: str
    version: str  # what the node runs now
    size: int
    resumed_from: int  # first offset of the first BEGIN (0 = fresh)
    resumes: int  # how often the transfer restarted from the node's offset
    bytes_sent: int  # chunk data bytes sent, retransmissions included
    transfer_s: float
    elapsed_s: float
    detail: str = ""


@dataclass
class FirmwareUpdater:
    client: NodeClient
    window: int = 4
    chunk_size: int = 256
    progress: Progress | None = None
    health_checks: int = 3
    health_interval_s: float = 0.5
    boot_timeout_s: float = 30.0
    reconnect_timeout_s: float = 60.0
    max_resumes: int = 1000

    def _report(self, done: int, total: int, phase: str) -> None:
        if self.progress is not None:
            self.progress(done, total, phase)

    async def _hello_when_back(self, within_s: float, accept: Callable[[Hello], bool] = lambda h: True) -> Hello:
        """Poll HELLO until the node answers (and ``accept`` likes the answer)."""
        deadline = time.monotonic() + within_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                hello = await self.client.hello()
                if accept(hello):
                    return hello
                last = None
            except LinkError as exc:
                last = exc
            await asyncio.sleep(0.1)
        raise FirmwareError(f"node {self.client.address} did not come back within {within_s:.0f}s"
                            + (f": {last}" if last else ""))

    async def update(self, image: bytes, version: str, *, expected_sha256: str | None = None,
                     force: bool = False) -> UpdateResult:
        t0 = time.monotonic()
        digest = hashlib.sha256(image).digest()
        if expected_sha256 is not None and digest.hex() != expected_sha256.lower():
            raise FirmwareError(f"image SHA-256 is {digest.hex()}, expected {expected_sha256}: "
                                "the file is damaged or not the one announced; nothing was sent")
        if not image:
            raise FirmwareError("the image is empty")
        hello = await self._hello_when_back(self.reconnect_timeout_s)
        old = hello.fw_version
        if not hello.capabilities & Cap.FW_UPDATE:
            raise FirmwareError(f"node {self.client.address} ({hello.device_id}) cannot be updated over the link")
        size = len(image)
        stats = {"resumed_from": -1, "resumes": 0, "sent": 0}
        t_transfer = 0.0
        if hello.boot_state == BootState.TRIAL and hello.fw_version == version:
            log.info("node %d already runs %s on trial: checking its health", self.client.address, version)
            old = "(previous image)"
        else:
            if hello.boot_state == BootState.TRIAL:
                raise FirmwareError(f"node {self.client.address} runs {hello.fw_version} on trial; confirm "
                                    "or roll it back before sending another image")
            if hello.fw_version == version and not force:
                return UpdateResult("already_running", old, old, size, 0, 0, 0, 0.0, time.monotonic() - t0)
            t1 = time.monotonic()
            await self._transfer(image, digest, version, stats)
            t_transfer = time.monotonic() - t1
            self._report(size, size, "commit")
            try:
                await self.client.fw_commit()
            except LinkError:
                pass  # the answer may be lost in the reset; the HELLO below tells what happened
        outcome, now_version, detail = await self._trial(version, old)
        return UpdateResult(outcome, old, now_version, size, max(0, stats["resumed_from"]), stats["resumes"],
                            stats["sent"], t_transfer, time.monotonic() - t0, detail)

    async def _transfer(self, image: bytes, digest: bytes, version: str, stats: dict[str, int]) -> None:
        size = len(image)
        while True:
            try:
                begin = await self.client.fw_begin(size, digest, version)
                if stats["resumed_from"] < 0:
                    stats["resumed_from"] = begin.offset
                chunk = max(1, min(self.chunk_size, begin.max_chunk))
                await self._stream(image, begin.offset, chunk, stats)
                self._report(size, size, "verify")
                await self.client.fw_end()
                return
            except NakError as exc:
                if exc.code == NakCode.BAD_DIGEST:
                    raise FirmwareError(f"node {self.client.address} refused the image: its SHA-256 does "
                                        "not match (the node discarded it and still runs its old image)") from None
                if exc.code in (NakCode.OUT_OF_ORDER, NakCode.NO_SESSION):
                    pass  # the node lost part of the upload (a reset): BEGIN again and resume
                else:
                    raise FirmwareError(str(exc)) from None
            except LinkError as exc:
                log.info("transfer to node %d interrupted (%s); resuming when it answers", self.client.address, exc)
                await self._hello_when_back(self.reconnect_timeout_s)
            stats["resumes"] += 1
            if stats["resumes"] > self.max_resumes:
                raise FirmwareError(f"gave up after {self.max_resumes} interruptions")

    async def _stream(self, image: bytes, offset: int, chunk: int, stats: dict[str, int]) -> None:
        """Go-back-N with ``window`` chunks in flight, from ``offset`` to the end."""
        size = len(image)
        acked = next_send = offset
        inflight: deque[tuple[int, asyncio.Task[int]]] = deque()
        self._report(acked, size, "transfer")
        try:
            while acked < size:
                while len(inflight) < self.window and next_send < size:
                    data = image[next_send : next_send + chunk]
                    inflight.append((next_send, asyncio.create_task(self.client.fw_chunk(next_send, data))))
                    stats["sent"] += len(data)
                    next_send += len(data)
                off, task = inflight.popleft()
                try:
                    expected = await task
                except NakError as exc:
                    if exc.code != NakCode.OUT_OF_ORDER:
                        raise
                    expected = exc.detail
                if expected > size:
                    raise FirmwareError(f"node {self.client.address} claims offset {expected} past the image end")
                if expected == off + (min(chunk, size - off)) and expected > acked:
                    acked = expected
                    self._report(acked, size, "transfer")
                    continue
                # the node is somewhere else than we thought (a lost chunk, a reset): restart from there
                acked = max(acked, expected) if expected >= acked else expected
                for _, t in inflight:
                    t.cancel()
                await asyncio.gather(*(t for _, t in inflight), return_exceptions=True)
                inflight.clear()
                next_send = acked
                self._report(acked, size, "transfer")
        finally:
            for _, t in inflight:
                t.cancel()
            await asyncio.gather(*(t for _, t in inflight), return_exceptions=True)

    async def _trial(self, version: str, old: str) -> tuple[str, str, str]:
        """Wait for the node to boot the new image on trial, check its health, confirm or roll back."""
        self._report(0, self.health_checks, "reboot")

        def booted(h: Hello) -> bool:
            return (h.boot_state == BootState.TRIAL and h.fw_version == version) or \
                   h.boot_state == BootState.ROLLED_BACK

        hello = await self._hello_when_back(self.boot_timeout_s, booted)
        if hello.boot_state == BootState.ROLLED_BACK:
            return "rolled_back", hello.fw_version, "the new image did not start; the node went back by itself"
        problem = ""
        for i in range(self.health_checks):
            await asyncio.sleep(self.health_interval_s)
            try:
                status = await self.client.status()
            except LinkError as exc:
                problem = f"no STATUS from the new image: {exc}"
                break
            if status.faults:
                problem = f"the new image reports faults 0x{status.faults:04x}"
                break
            self._report(i + 1, self.health_checks, "health")
        if not problem:
            try:
                await self.client.fw_confirm()
                return "confirmed", version, ""
            except LinkError as exc:
                problem = f"confirmation failed: {exc}"
        log.warning("node %d: %s; rolling back", self.client.address, problem)
        try:
            await self.client.fw_rollback()
        except LinkError:
            pass  # unconfirmed, it rolls back by itself when its trial timer runs out
        hello = await self._hello_when_back(self.boot_timeout_s, lambda h: h.boot_state != BootState.TRIAL)
        return "rolled_back", hello.fw_version, problem
