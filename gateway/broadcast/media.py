"""Content-addressed media cache of the gateway.

Files live at ``{root}/{sha256}``; a download in progress lives at ``{root}/{sha256}.part`` and is
resumed with an HTTP ``Range`` request after an interruption. A file enters the cache only after
its bytes hash to the announced sha256 (and have the announced size); bytes that do not match are
thrown away and the fetch fails with reason ``media_mismatch``. The cache keeps its total size under
``max_bytes`` by evicting the least recently used files, never a file that a pending plan needs
(``pinned``).

Surviving a power cut: a downloaded file is fsynced before it is renamed into place, and the folder
after the rename, so a file named by its sha256 is complete once it is there. Even so, a file found
on disk is not trusted blindly: its size is checked every time it is about to be used, and its bytes
are hashed once per run of the gateway (at start-up by :meth:`MediaCache.verify_all`, or on first
use if that has not reached it yet) before it is played; a file that fails either check is deleted
and downloaded again. After that, a broadcast of media already in the cache costs one ``stat``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import aiohttp

from protocol.models import MediaRef

log = logging.getLogger(__name__)

CHUNK = 64 * 1024


class MediaError(Exception):
    """The media could not be made available; ``reason`` is short and machine readable."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Retry(Exception):
    """A download that stopped short or got an unexpected answer: resumed after a pause."""


class MediaCache:
    def __init__(
        self,
        root: Path,
        max_bytes: int,
        *,
        pinned: Callable[[], Iterable[str]] = lambda: (),
        timeout_s: float = 30.0,
        retries: int = 5,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._pinned = pinned
        self._timeout_s = timeout_s
        self._retries = retries
        self._inflight: dict[str, asyncio.Task[Path]] = {}
        #: files whose bytes were hashed (or downloaded and hashed) during this run, with their size
        self._verified: dict[str, int] = {}
        #: bytes in the cache as last counted (plus downloads since): evict() scans only when over
        self._approx_bytes: int | None = None
        self._client: aiohttp.ClientSession | None = None
        self.stats: dict[str, int] = {"fetched": 0, "resumed": 0, "mismatch": 0, "evicted": 0, "errors": 0}
        root.mkdir(parents=True, exist_ok=True)

    def client(self) -> aiohttp.ClientSession:
        """One HTTP client for the life of the cache (building one costs tens of ms of CPU on a Pi).
        aiohttp, which the gateway's media server loads anyway: a second HTTP stack would cost the
        Pi about 6 MB of RAM and a few ms of CPU per download more."""
        if self._client is None or self._client.closed:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout_s, sock_read=self._timeout_s)
            # raw bytes: what is hashed is what was published, whatever a proxy claims about encoding
            self._client = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    # ------------------------------------------------------------------ queries

    def path(self, sha256: str) -> Path:
        return self.root / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def ready(self, media: MediaRef) -> Path | None:
        """The local path of ``media`` if it is in the cache, hashed during this run and still of
        its size (one ``stat``, no I/O beyond it); None when :meth:`ensure` has work to do."""
        if self._verified.get(media.sha256) != media.bytes:
            return None
        path = self.path(media.sha256)
        if _size(path) != media.bytes:
            self._verified.pop(media.sha256, None)
            return None
        return path

    def is_verified(self, sha256: str) -> bool:
        return sha256 in self._verified

    async def verify_all(self) -> int:
        """Hash every file of the cache once (at start-up, in a thread); delete those whose bytes do
        not hash to their name, and leftover partial downloads whose name is not a sha256. Returns
        the number of files deleted."""
        bad = 0
        for p in await asyncio.to_thread(lambda: sorted(self.root.iterdir())):
            name = p.name
            if name.endswith(".part") or name in self._verified or not _is_sha(name):
                continue
            try:
                digest = await asyncio.to_thread(_sha256_file, p)
                size = _size(p)
            except OSError as exc:
                log.warning("media cache: cannot read %s: %s", p, exc)
                continue
            if digest == name:
                self._verified[name] = size
            elif name not in self._inflight:
                bad += 1
                self.stats["mismatch"] += 1
                log.warning("media cache: %s does not hash to its name (truncated by a power cut?): deleted", p)
                _rm(p)
        return bad

    def total_bytes(self) -> int:
        total = 0
        for p in self.root.iterdir():
            with contextlib.suppress(OSError):
                total += p.stat().st_size
        return total

    # ------------------------------------------------------------------ fetch

    def prefetch(self, media: MediaRef) -> asyncio.Task[Path]:
        """Start (or join) the download of ``media``; the task's result is the verified local path."""
        task = self._inflight.get(media.sha256)
        if task is None or task.done():
            task = asyncio.create_task(self._fetch(media), name=f"media-{media.sha256[:12]}")
            self._inflight[media.sha256] = task
            task.add_done_callback(functools.partial(self._forget, media.sha256))
            task.add_done_callback(_consume)
        return task

    def _forget(self, sha256: str, task: asyncio.Task[Path]) -> None:
        if self._inflight.get(sha256) is task:
            del self._inflight[sha256]

    async def ensure(self, media: MediaRef) -> Path:
        return await self.prefetch(media)

    async def _fetch(self, media: MediaRef) -> Path:
        final = self.path(media.sha256)
        if await self._check_present(media, final):
            with contextlib.suppress(OSError):
                os.utime(final)  # most recently used: evicted last
            return final
        part = final.with_name(final.name + ".part")
        delay = 0.5
        last: Exception | None = None
        client = self.client()
        for _attempt in range(self._retries + 1):
            try:
                await self._download(client, media, part)
                break
            except MediaError:
                _rm(part)
                raise
            except (aiohttp.ClientError, OSError, TimeoutError, _Retry) as exc:
                last = exc
                self.stats["errors"] += 1
                log.warning("media %s from %s: %s (will resume)", media.sha256[:12], media.url, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        else:
            raise MediaError(f"could not fetch {media.url}: {last}", "media_unavailable")
        digest = await asyncio.to_thread(_sha256_file, part)
        if digest != media.sha256:
            part.unlink(missing_ok=True)
            self.stats["mismatch"] += 1
            raise MediaError(f"bytes from {media.url} hash to {digest}, expected {media.sha256}", "media_mismatch")
        await asyncio.to_thread(self._make_room, set(self._pinned()) | {media.sha256})
        await asyncio.to_thread(_commit, part, final)
        self._verified[media.sha256] = media.bytes
        if self._approx_bytes is not None:
            self._approx_bytes += media.bytes
        self.stats["fetched"] += 1
        return final

    async def _check_present(self, media: MediaRef, final: Path) -> bool:
        """Whether ``final`` is there with the announced size and (once per run) the right hash;
        a file that fails is deleted so that it is downloaded again."""
        size = _size(final)
        if size == 0:  # not there (an empty file is never complete media either)
            _rm(final)
            return False
        if size == media.bytes and self._verified.get(media.sha256) == size:
            return True
        if size == media.bytes and await asyncio.to_thread(_sha256_file, final) == media.sha256:
            self._verified[media.sha256] = size
            return True
        self._verified.pop(media.sha256, None)
        self.stats["mismatch"] += 1
        log.warning("media cache: %s has %d bytes (announced %d) or wrong bytes: downloading it again",
                    final, size, media.bytes)
        _rm(final)
        return False

    async def _download(self, client: aiohttp.ClientSession, media: MediaRef, part: Path) -> None:
        have = _size(part)
        if have > media.bytes:
            _rm(part)
            have = 0
        if have == media.bytes:
            return
        headers = {"Range": f"bytes={have}-"} if have else {}
        async with client.get(media.url, headers=headers, allow_redirects=True) as resp:
            if resp.status == 416 and have:  # our partial file is stale: start over
                _rm(part)
                raise _Retry("range not satisfiable, restarting")
            if resp.status == 404:
                raise MediaError(f"{media.url}: HTTP 404", "media_unavailable")
            if resp.status not in (200, 206):
                raise _Retry(f"{media.url}: HTTP {resp.status}")
            mode = "ab"
            if resp.status == 200:
                mode, have = "wb", 0
                total = resp.headers.get("Content-Length")
            else:
                self.stats["resumed"] += 1
                total = resp.headers.get("Content-Range", "").rpartition("/")[2]
            if total and total.isdigit() and int(total) != media.bytes:
                self.stats["mismatch"] += 1
                raise MediaError(f"{media.url} has {total} bytes, the plan announced {media.bytes}", "media_mismatch")
            with open(part, mode) as f:  # noqa: ASYNC230 - small chunked writes
                async for chunk in resp.content.iter_chunked(CHUNK):
                    have += len(chunk)
                    if have > media.bytes:
                        break
                    f.write(chunk)
        if have > media.bytes:
            _rm(part)
            self.stats["mismatch"] += 1
            raise MediaError(f"{media.url} sent more than the announced {media.bytes} bytes", "media_mismatch")
        if have < media.bytes:
            raise _Retry(f"download stopped at {have} of {media.bytes} bytes")

    # ------------------------------------------------------------------ eviction

    def _make_room(self, pinned: set[str]) -> None:
        """Delete least recently used files until under the cap, sparing ``pinned`` (runs in a thread;
        ``pinned`` is computed on the event loop)."""
        files = []
        total = 0
        for p in self.root.iterdir():
            try:
                st = p.stat()
            except OSError:
                continue
            total += st.st_size
            if p.name.endswith(".part"):
                continue
            files.append((st.st_mtime, st.st_size, p))
        over = total - self.max_bytes  # the incoming file is already counted as its .part
        self._approx_bytes = total
        if over <= 0:
            return
        for _mtime, size, p in sorted(files):
            if p.name in pinned:
                continue
            p.unlink(missing_ok=True)
            self.stats["evicted"] += 1
            log.info("media cache: evicted %s (%d bytes)", p.name, size)
            over -= size
            self._approx_bytes -= size
            if over <= 0:
                return
        log.warning("media cache over its cap by %d bytes: everything left is needed by a pending plan", over)

    async def evict(self) -> None:
        """Bring the cache under its cap (after a plan is done); no folder scan while the cache is
        known to be under it."""
        if self._approx_bytes is not None and self._approx_bytes <= self.max_bytes:
            return
        await asyncio.to_thread(self._make_room, set(self._pinned()))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _rm(path: Path) -> None:
    path.unlink(missing_ok=True)


def _is_sha(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _commit(part: Path, final: Path) -> None:
    """Make a verified download durable under its final name: fsync the bytes, rename, fsync the
    folder (so that neither a truncated file nor a lost rename survives a power cut)."""
    with open(part, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(part, final)
    fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _consume(task: asyncio.Task[Path]) -> None:
    if not task.cancelled():
        task.exception()
