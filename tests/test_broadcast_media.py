"""Media cache: sha256-verified, resumed downloads over real HTTP, size cap that spares needed media;
and the gateway's media server that speakers fetch from (Range included)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.broadcast.media import MediaCache, MediaError
from gateway.broadcast.mediaserver import serve
from loaxa.servers import free_port
from tests.broadcast_env import MediaServer


@pytest.fixture(autouse=True)
async def _close_caches(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Every cache a test opens has its HTTP client closed at the end of the test."""
    opened: list[MediaCache] = []
    real_init = MediaCache.__init__

    def init(self: MediaCache, *a: Any, **kw: Any) -> None:
        real_init(self, *a, **kw)
        opened.append(self)

    monkeypatch.setattr(MediaCache, "__init__", init)
    yield
    for cache in opened:
        await cache.aclose()


@pytest.fixture
def server() -> Iterator[MediaServer]:
    s = MediaServer()
    yield s
    s.close()


async def test_fetch_verifies_and_reuses(tmp_path: Path, server: MediaServer) -> None:
    data = os.urandom(300_000)
    ref = server.add(data, 1000)
    cache = MediaCache(tmp_path, 10_000_000)
    path = await cache.ensure(ref)
    assert path.read_bytes() == data and path.name == ref.sha256
    assert await cache.ensure(ref) == path
    assert len(server.requests) == 1  # the second time it came from the cache


async def test_interrupted_download_resumes_with_range(tmp_path: Path, server: MediaServer) -> None:
    data = os.urandom(500_000)
    ref = server.add(data, 1000)
    server.cut_after[ref.sha256] = 200_000
    cache = MediaCache(tmp_path, 10_000_000)
    path = await cache.ensure(ref)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ref.sha256
    ranges = [r for s, r in server.requests if s == ref.sha256]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert int(ranges[1][6:].rstrip("-")) > 0 and cache.stats["resumed"] == 1
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


async def test_wrong_bytes_are_refused(tmp_path: Path, server: MediaServer) -> None:
    ref = server.add(b"the real announcement" * 100, 1000)
    server.tamper[ref.sha256] = b"something else entirely" * 90
    cache = MediaCache(tmp_path, 10_000_000)
    with pytest.raises(MediaError) as err:
        await cache.ensure(ref)
    assert err.value.reason == "media_mismatch"
    assert not cache.has(ref.sha256) and not os.listdir(tmp_path)


async def test_longer_than_announced_is_refused(tmp_path: Path, server: MediaServer) -> None:
    ref = server.add(b"x" * 1000, 10)
    server.tamper[ref.sha256] = b"x" * 5000
    with pytest.raises(MediaError) as err:
        await MediaCache(tmp_path, 10_000_000).ensure(ref)
    assert err.value.reason == "media_mismatch"


async def test_missing_media_fails_with_reason(tmp_path: Path, server: MediaServer) -> None:
    ref = server.add(b"abc", 10)
    del server.blobs[ref.sha256]
    with pytest.raises(MediaError) as err:
        await MediaCache(tmp_path, 10_000_000, retries=1).ensure(ref)
    assert err.value.reason == "media_unavailable"


async def test_eviction_spares_media_a_plan_needs(tmp_path: Path, server: MediaServer) -> None:
    refs = [server.add(os.urandom(400_000), 1000) for _ in range(4)]
    needed = {refs[0].sha256}  # the oldest file, but a future plan needs it
    cache = MediaCache(tmp_path, 1_000_000, pinned=lambda: needed)
    for r in refs:
        await cache.ensure(r)
        os.utime(cache.path(r.sha256), (1, 1 + refs.index(r)))  # make the age order explicit
    assert cache.has(refs[0].sha256), "needed media was evicted"
    assert cache.has(refs[3].sha256)
    assert cache.total_bytes() <= 1_000_000
    assert cache.stats["evicted"] >= 2


async def test_gateway_media_server_serves_verified_files_with_range(tmp_path: Path, server: MediaServer) -> None:
    data = os.urandom(100_000)
    ref = server.add(data, 1000)
    cache = MediaCache(tmp_path / "media", 10_000_000)
    await cache.ensure(ref)
    port = free_port()
    runner = await serve(cache, f"127.0.0.1:{port}")
    try:
        async with httpx.AsyncClient() as http:
            full = await http.get(f"http://127.0.0.1:{port}/media/{ref.sha256}")
            assert full.status_code == 200 and full.content == data
            part = await http.get(f"http://127.0.0.1:{port}/media/{ref.sha256}", headers={"Range": "bytes=1000-"})
            assert part.status_code == 206 and part.content == data[1000:]
            assert (await http.get(f"http://127.0.0.1:{port}/media/{'0' * 64}")).status_code == 404
            assert (await http.get(f"http://127.0.0.1:{port}/media/..%2Fetc%2Fpasswd")).status_code in (400, 404)
    finally:
        await runner.cleanup()


# ---- a cache that survives power cuts (issue 8, point 13)


async def test_truncated_file_left_by_a_power_cut_is_fetched_again(tmp_path: Path, server: MediaServer) -> None:
    data = os.urandom(200_000)
    ref = server.add(data, 1000)
    (tmp_path / ref.sha256).write_bytes(data[:70_000])  # renamed, but the bytes never reached the disk
    cache = MediaCache(tmp_path, 10_000_000)
    path = await cache.ensure(ref)
    assert path.read_bytes() == data
    assert [s for s, _r in server.requests] == [ref.sha256]


async def test_file_of_the_right_size_but_wrong_bytes_is_hashed_and_replaced(tmp_path: Path,
                                                                              server: MediaServer) -> None:
    data = os.urandom(100_000)
    ref = server.add(data, 1000)
    (tmp_path / ref.sha256).write_bytes(b"\0" * len(data))
    cache = MediaCache(tmp_path, 10_000_000)
    assert cache.ready(ref) is None  # never trusted before it has been hashed in this run
    path = await cache.ensure(ref)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ref.sha256
    assert cache.ready(ref) == path and len(server.requests) == 1
    # once hashed, using it again costs a stat and no download; shrinking it is noticed
    assert await cache.ensure(ref) == path and len(server.requests) == 1
    path.write_bytes(data[:10])
    assert cache.ready(ref) is None
    assert (await cache.ensure(ref)).read_bytes() == data and len(server.requests) == 2


async def test_verify_all_at_start_up_deletes_what_does_not_hash_to_its_name(tmp_path: Path,
                                                                            server: MediaServer) -> None:
    good = os.urandom(50_000)
    bad = os.urandom(50_000)
    good_sha = hashlib.sha256(good).hexdigest()
    bad_sha = hashlib.sha256(bad).hexdigest()
    (tmp_path / good_sha).write_bytes(good)
    (tmp_path / bad_sha).write_bytes(bad[:1234])
    cache = MediaCache(tmp_path, 10_000_000)
    assert await cache.verify_all() == 1
    assert cache.is_verified(good_sha) and not cache.is_verified(bad_sha)
    assert sorted(os.listdir(tmp_path)) == [good_sha]


async def test_download_is_fsynced_before_the_rename_and_the_folder_after(
        tmp_path: Path, server: MediaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = server.add(os.urandom(30_000), 1000)
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    cache = MediaCache(tmp_path, 10_000_000)
    path = await cache.ensure(ref)
    assert synced == [str(path) + ".part", str(tmp_path)]
