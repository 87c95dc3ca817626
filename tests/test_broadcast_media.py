"""Media cache: sha256-verified, resumed downloads over real HTTP, size cap that spares needed media;
and the gateway's media server that speakers fetch from (Range included)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.broadcast.media import MediaCache, MediaError
from gateway.broadcast.mediaserver import serve
from loaxa.servers import free_port
from tests.broadcast_env import MediaServer


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
